"""Evaluation metrics (paper §4.1) against scipy, numpy and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from tpt_aqa.scoring.metrics import (
    UndefinedMetricWarning,
    evaluate,
    fisher_z_mean,
    relative_l2,
    spearman,
)

AQA7_RHO = [0.8969, 0.8043, 0.7336, 0.6965, 0.9456, 0.9545]


# --------------------------------------------------------------------------- Spearman


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 8, size=40).astype(float)  # many ties
    pred = target + rng.integers(-3, 4, size=40)  # ties here too
    expected = stats.spearmanr(pred, target).statistic
    got = spearman(torch.tensor(pred, dtype=torch.float32), torch.tensor(target))
    assert got == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("n", [2, 3, 17, 353])
def test_spearman_equals_scipy_to_1e9_on_float64_scores(n):
    # Scores like MTL-AQA's: finals with ties (0.5 steps), a failed dive at 0, predictions float64.
    rng = np.random.default_rng(n)
    target = np.round(rng.uniform(0, 104.5, size=n) * 2) / 2
    target[0] = 0.0
    pred = target + rng.normal(0, 8, size=n)
    expected = stats.spearmanr(pred, target).statistic
    assert abs(spearman(torch.tensor(pred), torch.tensor(target)) - expected) < 1e-9
    assert abs(spearman(pred, target) - expected) < 1e-9  # numpy input as well


def test_spearman_exact_where_torchmetrics_is_not():
    # Σd² = 4 over n = 5: ρ = 1 − 6·4/(5·24) = 0.8 exactly (torchmetrics' float32 ranking with its
    # epsilon reads 0.7999994, which a 1e-9 tolerance refuses).
    pred, target = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0])
    assert abs(spearman(pred, target) - 0.8) < 1e-12
    assert spearman(torch.tensor([1.0, 2.0]), torch.tensor([5.0, 3.0])) == -1.0  # n = 2


def test_spearman_undefined_cases_are_nan_with_one_clear_warning():
    with pytest.warns(UndefinedMetricWarning, match="all 4 predictions are equal") as record:
        assert math.isnan(spearman(torch.full((4,), 3.0), torch.tensor([1.0, 2.0, 3.0, 4.0])))
    assert len(record) == 1
    with pytest.warns(UndefinedMetricWarning, match="all 3 targets are equal"):
        assert math.isnan(spearman(torch.tensor([1.0, 2.0, 3.0]), torch.full((3,), 7.0)))
    with pytest.warns(UndefinedMetricWarning, match="non-finite"):
        assert math.isnan(spearman(torch.tensor([1.0, math.nan]), torch.tensor([1.0, 2.0])))
    with pytest.raises(ValueError, match="3 predictions but 2 targets"):
        spearman(torch.zeros(3), torch.zeros(2))


def test_evaluate_per_class_and_fisher_z_from_exact_rhos():
    rng = np.random.default_rng(7)
    cls = np.repeat([0, 1, 2], 12)
    target = np.round(rng.uniform(20, 100, size=36))
    pred = target + rng.normal(0, 15, size=36)
    out = evaluate(torch.tensor(pred), torch.tensor(target), torch.tensor(cls), ["a", "b", "c"])
    per = [stats.spearmanr(pred[cls == c], target[cls == c]).statistic for c in range(3)]
    assert abs(out["srcc"] - stats.spearmanr(pred, target).statistic) < 1e-9
    for name, rho in zip("abc", per, strict=True):
        assert abs(out[f"srcc_{name}"] - rho) < 1e-9
    assert abs(out["srcc_avg"] - math.tanh(np.mean(np.arctanh(per)))) < 1e-9


def test_evaluate_keeps_undefined_metrics_as_nan():
    # Constant ground truth: ρ and R-ℓ2 are undefined and stay in the result as NaN.
    with pytest.warns(UndefinedMetricWarning):
        out = evaluate(torch.tensor([1.0, 2.0, 3.0]), torch.full((3,), 5.0), torch.zeros(3), None)
    assert set(out) == {"srcc", "rl2"}
    assert math.isnan(out["srcc"]) and math.isnan(out["rl2"])


def test_spearman_hand_value_with_ties():
    # pred ranks (1, 2.5, 2.5, 4), target ranks (1, 2, 3, 4): Pearson of the ranks.
    pred, target = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0, 40.0])
    r = np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]  # = 0.9486833
    assert spearman(pred, target) == pytest.approx(r, abs=1e-6)
    assert spearman(pred, target) == pytest.approx(0.9486833, abs=1e-6)
    assert spearman(-pred, target) == pytest.approx(-0.9486833, abs=1e-6)


def test_spearman_needs_two_samples():
    with pytest.warns(UndefinedMetricWarning, match="at least two"):
        assert math.isnan(spearman(torch.tensor([1.0]), torch.tensor([2.0])))


# --------------------------------------------------------------------------- R-ℓ2


@pytest.mark.parametrize("seed", range(3))
def test_relative_l2_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    target = rng.uniform(20, 100, size=30)
    target[:5] = target[5]  # ties do not matter for R-ℓ2 but keep them in
    pred = target + rng.normal(0, 5, size=30)
    expected = 100 * np.mean(((pred - target) / (target.max() - target.min())) ** 2)
    assert relative_l2(torch.tensor(pred), torch.tensor(target)) == pytest.approx(expected)


def test_relative_l2_uses_the_ground_truth_range():
    # gt (0, 10, 20), range 20; pred (5, 10, 15): errors ±5 → 100·mean(0.0625, 0, 0.0625)
    # = 4.1667. The prediction range (10) would give 16.67, the union range (20) happens to equal
    # the gt range, so also check an overshooting prediction: pred (−10, 10, 30), errors ±10 →
    # 100·mean(0.25, 0, 0.25) = 16.667 with the gt range (the union range 40 would give 4.1667).
    target = torch.tensor([0.0, 10.0, 20.0])
    assert relative_l2(torch.tensor([5.0, 10.0, 15.0]), target) == pytest.approx(25 / 6)
    assert relative_l2(torch.tensor([-10.0, 10.0, 30.0]), target) == pytest.approx(50 / 3)


def test_relative_l2_degenerate_cases():
    with pytest.warns(UndefinedMetricWarning, match="zero range"):
        assert math.isnan(relative_l2(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 3.0])))
    with pytest.warns(UndefinedMetricWarning, match="at least two"):
        assert math.isnan(relative_l2(torch.tensor([1.0]), torch.tensor([3.0])))
    assert relative_l2(torch.tensor([3.0, 9.0]), torch.tensor([3.0, 9.0])) == 0.0


# --------------------------------------------------------------------------- Fisher z


def test_fisher_z_mean_reproduces_the_paper_aqa7_average():
    got = fisher_z_mean(AQA7_RHO)
    assert got == pytest.approx(0.8715, abs=2e-4)
    # and it is not the arithmetic mean (0.8386)
    assert abs(got - float(np.mean(AQA7_RHO))) > 0.02


def test_fisher_z_mean_edge_cases():
    assert fisher_z_mean([0.5]) == pytest.approx(0.5)
    assert fisher_z_mean([0.5, -0.5]) == pytest.approx(0.0)
    with pytest.warns(UndefinedMetricWarning, match="over 1 of 2 correlations"):
        assert fisher_z_mean([0.5, float("nan")]) == pytest.approx(0.5)
    with pytest.warns(UndefinedMetricWarning, match="no defined"):
        assert math.isnan(fisher_z_mean([]))
    assert fisher_z_mean([1.0, 1.0]) == pytest.approx(1.0)


# --------------------------------------------------------------------------- evaluate


def _two_class_split():
    rng = np.random.default_rng(3)
    target = np.concatenate([rng.uniform(0, 100, 12), rng.uniform(40, 60, 10)])
    pred = target + rng.normal(0, 6, size=22)
    class_id = np.array([0] * 12 + [1] * 10)
    return torch.tensor(pred), torch.tensor(target), torch.tensor(class_id)


def test_evaluate_two_classes_adds_per_class_metrics_and_averages():
    pred, target, class_id = _two_class_split()
    out = evaluate(pred, target, class_id, ["diving", "gym_vault"])
    assert set(out) == {
        "srcc",
        "rl2",
        "srcc_diving",
        "rl2_diving",
        "srcc_gym_vault",
        "rl2_gym_vault",
        "srcc_avg",
        "rl2_avg",
    }
    p, t = pred.numpy(), target.numpy()
    for c, name in enumerate(["diving", "gym_vault"]):
        sel = class_id.numpy() == c
        assert out[f"srcc_{name}"] == pytest.approx(stats.spearmanr(p[sel], t[sel]).statistic)
        rl2 = 100 * np.mean(((p[sel] - t[sel]) / (t[sel].max() - t[sel].min())) ** 2)
        assert out[f"rl2_{name}"] == pytest.approx(rl2)  # per-class range, not the split's
    rhos = [out["srcc_diving"], out["srcc_gym_vault"]]
    assert out["srcc_avg"] == pytest.approx(math.tanh(np.mean(np.arctanh(rhos))))
    assert out["rl2_avg"] == pytest.approx((out["rl2_diving"] + out["rl2_gym_vault"]) / 2)
    assert out["srcc"] == pytest.approx(stats.spearmanr(p, t).statistic)
    # the narrow second class has a much larger per-class R-ℓ2 than the pooled split
    assert out["rl2_gym_vault"] > out["rl2"]


def test_evaluate_one_class_has_only_split_metrics():
    pred, target, class_id = _two_class_split()
    zeros = torch.zeros_like(class_id)
    assert set(evaluate(pred, target, zeros, ["all"])) == {"srcc", "rl2"}
    assert set(evaluate(pred, target, zeros, None)) == {"srcc", "rl2"}


def test_evaluate_skips_classes_absent_from_the_split():
    pred, target, class_id = _two_class_split()
    out = evaluate(pred, target, class_id, ["diving", "gym_vault", "ski_big_air"])
    assert "srcc_ski_big_air" not in out
    assert out["srcc_avg"] == pytest.approx(
        fisher_z_mean([out["srcc_diving"], out["srcc_gym_vault"]])
    )
