"""The paper's reported numbers (Bai et al., ECCV 2022, Tab. 1–5; docs/method.md §10), for results tables.

Keys are what a run's overrides say: the experiment and, for per-class or per-task models, the
class or task. R-ℓ2 is ×100 as everywhere in this package.
"""

from __future__ import annotations

# (Spearman's ρ, R-ℓ2 ×100); None where the paper gives no value
PAPER: dict[tuple[str, ...], tuple[float, float | None]] = {
    ("mtl_aqa_tpt",): (0.9607, 0.2378),
    ("mtl_aqa_tpt_no_dd",): (0.9451, 0.3222),
    ("aqa7_tpt", "diving"): (0.8969, 0.53),
    ("aqa7_tpt", "gym_vault"): (0.8043, 1.69),
    ("aqa7_tpt", "ski_big_air"): (0.7336, 2.89),
    ("aqa7_tpt", "snowboard_big_air"): (0.6965, 3.30),
    ("aqa7_tpt", "sync_diving_3m"): (0.9456, 0.33),
    ("aqa7_tpt", "sync_diving_10m"): (0.9545, 1.33),
    ("aqa7_tpt", "average"): (0.8715, 1.68),
    ("jigsaws_tpt", "Suturing"): (0.88, 2.722),
    ("jigsaws_tpt", "Needle_Passing"): (0.88, 5.259),
    ("jigsaws_tpt", "Knot_Tying"): (0.91, 3.022),
    ("jigsaws_tpt", "average"): (0.89, 3.668),
    # MTL-AQA w/ DD ablations (Tab. 4–5)
    ("mtl_aqa_tpt", "baseline_pool"): (0.9498, 0.2893),
    ("mtl_aqa_tpt", "adaptive_pool"): (0.9509, 0.2757),
    ("mtl_aqa_tpt", "no_aux_losses"): (0.9522, None),
    ("mtl_aqa_tpt", "no_sparsity_loss"): (0.9583, None),
    ("mtl_aqa_tpt", "temporal_conv"): (0.9526, 0.2758),
    ("mtl_aqa_tpt", "diversity_loss"): (0.9538, 0.2655),
    ("mtl_aqa_tpt", "pe_memory_query"): (0.9526, 0.2741),
    ("mtl_aqa_tpt", "pe_memory"): (0.9532, 0.2651),
    ("mtl_aqa_tpt", "part_enhanced_holistic"): (0.9578, 0.2391),
}


def paper_numbers(overrides: list[str]) -> tuple[float, float | None] | None:
    """The paper's (ρ, R-ℓ2) for a run described by its Hydra overrides, if the paper has one."""
    values = dict(o.split("=", 1) for o in overrides if "=" in o)
    experiment = values.get("experiment")
    if experiment is None:
        return None
    detail = values.get("dataset.classes") or values.get("dataset.task") or values.get("ablation")
    if detail and detail != "none":
        return PAPER.get((experiment, detail))
    return PAPER.get((experiment,))
