"""The score stage and what measures it (paper §3.3–3.4, docs/method.md §7): score groups, losses,
the vote over exemplars, the exemplar bank, correlation metrics and the step-parsing metrics."""
