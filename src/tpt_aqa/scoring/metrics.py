"""Evaluation metrics (paper §4.1): Spearman's ρ, R-ℓ2 ×100, per-class metrics and the Fisher-z mean."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined on the evaluated values (e.g. ρ of constant scores) and reads NaN."""


def spearman(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float:
    """Spearman's ρ exactly as ``scipy.stats.spearmanr``: average ranks for ties, float64.

    Ranks are taken in float64 on the CPU (torchmetrics ranks in float32 and adds an epsilon, which
    moves ρ in the 7th decimal). Undefined cases (fewer than two values, or constant predictions or
    targets) give NaN with an :class:`UndefinedMetricWarning` saying why.

    Args:
        pred: predictions ``(N,)``.
        target: ground truth ``(N,)``.

    Returns:
        ρ in [−1, 1], or NaN.
    """
    p = np.asarray(torch.as_tensor(pred).detach().cpu().double()).ravel()
    t = np.asarray(torch.as_tensor(target).detach().cpu().double()).ravel()
    if len(p) != len(t):
        raise ValueError(f"spearman: {len(p)} predictions but {len(t)} targets")
    if len(p) < 2:
        return undefined(f"Spearman's ρ needs at least two videos, got {len(p)}")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        return undefined("Spearman's ρ of non-finite values (NaN/inf)")
    rp, rt = rankdata(p) - (len(p) + 1) / 2, rankdata(t) - (len(t) + 1) / 2  # centred ranks
    for name, r in (("predictions", rp), ("targets", rt)):
        if not r.any():
            return undefined(f"Spearman's ρ is undefined: all {len(p)} {name} are equal")
    rho = float(np.dot(rp, rt) / math.sqrt(np.dot(rp, rp) * np.dot(rt, rt)))
    return max(-1.0, min(1.0, rho))


def undefined(why: str) -> float:
    """NaN, with an :class:`UndefinedMetricWarning` saying why (attributed to the metric's caller)."""
    warnings.warn(f"{why}; it reads NaN", UndefinedMetricWarning, stacklevel=3)
    return float("nan")


def relative_l2(pred: torch.Tensor, target: torch.Tensor) -> float:
    """R-ℓ2 ×100: 100·mean(((pred − gt)/(gt_max − gt_min))²), range from the evaluated ground truth."""
    if pred.numel() < 2:
        return undefined(f"R-ℓ2 needs at least two videos, got {pred.numel()}")
    span = float(target.max() - target.min())
    if span == 0:
        return undefined("R-ℓ2 is undefined: all ground-truth scores are equal (zero range)")
    return float(100.0 * (((pred.double() - target.double()) / span) ** 2).mean())


def fisher_z_mean(rhos: Sequence[float]) -> float:
    """Average correlations through Fisher's z: tanh(mean(atanh ρ)) (the paper's average ρ)."""
    defined = [r for r in rhos if not math.isnan(r)]
    if not defined:
        return undefined("the Fisher-z mean has no defined ρ to average")
    if len(defined) < len(rhos):
        warnings.warn(
            f"Fisher-z mean over {len(defined)} of {len(rhos)} correlations: the undefined (NaN) "
            "ones are left out",
            UndefinedMetricWarning,
            stacklevel=2,
        )
    rhos = defined
    clipped = [max(min(r, 1 - 1e-12), -1 + 1e-12) for r in rhos]
    return math.tanh(sum(math.atanh(r) for r in clipped) / len(clipped))


def evaluate(
    pred: torch.Tensor,
    target: torch.Tensor,
    class_id: torch.Tensor,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """All metrics of one split.

    Args:
        pred: predicted scores ``(N,)``.
        target: ground-truth scores ``(N,)`` on the reported scale.
        class_id: class per sample ``(N,)``.
        class_names: names of the classes, indexed by class id; with two or more, per-class
            ``srcc_<name>``/``rl2_<name>`` are added with their averages ``srcc_avg`` (Fisher-z) and
            ``rl2_avg`` (arithmetic).

    Returns:
        ``{"srcc", "rl2", ...}``.
    """
    out = {"srcc": spearman(pred, target), "rl2": relative_l2(pred, target)}
    if class_names is not None and len(class_names) > 1:
        rhos, rl2s = [], []
        for c, name in enumerate(class_names):
            sel = class_id == c
            if not bool(sel.any()):
                continue
            out[f"srcc_{name}"] = spearman(pred[sel], target[sel])
            out[f"rl2_{name}"] = relative_l2(pred[sel], target[sel])
            rhos.append(out[f"srcc_{name}"])
            rl2s.append(out[f"rl2_{name}"])
        out["srcc_avg"] = fisher_z_mean(rhos)
        valid = [r for r in rl2s if not math.isnan(r)]
        out["rl2_avg"] = sum(valid) / len(valid) if valid else float("nan")
    return out
