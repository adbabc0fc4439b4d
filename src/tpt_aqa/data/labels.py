"""What a split's labels say before any model sees them: the score differences of its pairs and
the steps of a per-frame label sequence.

``pair_deltas`` is the Δ list the score groups are fitted on (paper §3.3,
``tpt_aqa.scoring.groups``); ``step_runs`` cuts per-frame step labels into steps, as FineDiving's
annotations, the step-parsing metrics (``tpt_aqa.scoring.step_metrics``) and the figures read them.
"""

from __future__ import annotations

import numpy as np


def pair_deltas(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Absolute score differences of all unordered pairs i < j within the same exemplar group.

    Args:
        scores: training scores ``(N,)`` on the training scale.
        groups: exemplar-group id per sample ``(N,)``.

    Returns:
        The Δ list, concatenated over groups.
    """
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    out = []
    for g in np.unique(groups):
        s = scores[groups == g]
        i, j = np.triu_indices(len(s), k=1)
        out.append(np.abs(s[i] - s[j]))
    return np.concatenate(out) if out else np.zeros(0)


def step_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The steps of a label sequence: maximal runs of equal labels.

    Args:
        labels: one label per frame ``(F,)``.

    Returns:
        ``starts (S,)``, ``ends (S,)`` (exclusive) and the label of each step ``(S,)``.
    """
    labels = np.asarray(labels).ravel()
    if labels.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    ends = np.r_[starts[1:], labels.size]
    return starts.astype(np.int64), ends.astype(np.int64), labels[starts]
