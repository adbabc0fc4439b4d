"""Losses of docs/method.md §4 against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from tpt_aqa.models import TPTOutput
from tpt_aqa.scoring.losses import (
    LossMeans,
    TPTCriterion,
    attention_centers,
    diversity_loss,
    offset_loss,
    rank_loss,
    sparsity_loss,
)


def maps(*queries: list[float]) -> torch.Tensor:
    """One sample, one layer: ``maps([a1, a2, a3], [b1, b2, b3])`` → ``(1, 1, T, K)``."""
    return torch.tensor(queries, dtype=torch.float64).T[None, None]


# One-hot attention at clips t = 1 and t = 3 (T = 3, K = 2): centres c = (1, 3).
ONE_HOT = maps([1.0, 0.0, 0.0], [0.0, 0.0, 1.0])
SWAPPED = maps([0.0, 0.0, 1.0], [1.0, 0.0, 0.0])
# Soft attention: query 1 α = (0.5, 0.5, 0) → c1 = 0.5·1 + 0.5·2 = 1.5;
#                 query 2 α = (0.2, 0.3, 0.5) → c2 = 0.2·1 + 0.3·2 + 0.5·3 = 2.3.
SOFT = maps([0.5, 0.5, 0.0], [0.2, 0.3, 0.5])


def test_attention_centres_are_one_based():
    torch.testing.assert_close(attention_centers(ONE_HOT), torch.tensor([[[1.0, 3.0]]]).double())
    torch.testing.assert_close(attention_centers(SOFT), torch.tensor([[[1.5, 2.3]]]).double())


# --------------------------------------------------------------------------- rank


def test_rank_loss_one_hot_in_order():
    # c = (1, 3), m = 0.5: order max(0, 1 − 3 + 0.5) = 0; first max(0, 1 − 1 + 0.5) = 0.5;
    # last max(0, 3 − 3 + 0.5) = 0.5 → 1.0.
    assert rank_loss(ONE_HOT, margin=0.5).item() == pytest.approx(1.0)


def test_rank_loss_one_hot_swapped():
    # c = (3, 1), m = 0.5: order max(0, 3 − 1 + 0.5) = 2.5; first max(0, 1 − 3 + 0.5) = 0;
    # last max(0, 1 − 3 + 0.5) = 0 → 2.5.
    assert rank_loss(SWAPPED, margin=0.5).item() == pytest.approx(2.5)


def test_rank_loss_soft_attention():
    # c = (1.5, 2.3), m = 1.2: order max(0, 1.5 − 2.3 + 1.2) = 0.4; first max(0, 1 − 1.5 + 1.2)
    # = 0.7; last max(0, 2.3 − 3 + 1.2) = 0.5 → 1.6.
    assert rank_loss(SOFT, margin=1.2).item() == pytest.approx(1.6)


def test_rank_loss_can_reach_zero_with_room():
    # T = 5, c = (2, 4), m = 1: order max(0, 2 − 4 + 1) = 0, first max(0, 1 − 2 + 1) = 0,
    # last max(0, 4 − 5 + 1) = 0.
    attn = maps([0, 1.0, 0, 0, 0], [0, 0, 0, 1.0, 0])
    assert rank_loss(attn, margin=1.0).item() == pytest.approx(0.0)


def test_rank_loss_means_over_batch():
    # Sample 1 SOFT at m = 1.2 → 1.6; sample 2 ONE_HOT at m = 1.2: order max(0, 1 − 3 + 1.2) = 0,
    # first 1.2, last 1.2 → 2.4. Mean (1.6 + 2.4) / 2 = 2.0.
    attn = torch.cat([SOFT, ONE_HOT])
    assert rank_loss(attn, margin=1.2).item() == pytest.approx(2.0)


def test_rank_loss_sums_over_layers():
    two_layers = torch.cat([SOFT, SOFT], dim=1)  # (1, Y=2, T, K), the same map twice
    assert rank_loss(two_layers, margin=1.2).item() == pytest.approx(2 * 1.6)
    mixed = torch.cat([SOFT, SWAPPED], dim=1)
    # 1.6 + SWAPPED at m = 1.2: order 3 − 1 + 1.2 = 3.2, first max(0, −0.8) = 0, last 0 → 4.8.
    assert rank_loss(mixed, margin=1.2).item() == pytest.approx(4.8)


def test_rank_loss_with_release_settings_never_reaches_zero():
    # K = 5, T = 20, m = 3.2: 1 + (K + 1)·m = 20.2 > T, so some hinge is always active. Even the
    # evenly spread one-hot centres (2, 6, 10, 14, 18) leave 5 order terms of max(0, −4 + 3.2) = 0,
    # first max(0, 1 − 2 + 3.2) = 2.2, last max(0, 18 − 20 + 3.2) = 1.2 → 3.4.
    attn = torch.zeros(1, 1, 20, 5, dtype=torch.float64)
    for k, t in enumerate([2, 6, 10, 14, 18]):
        attn[0, 0, t - 1, k] = 1.0
    assert rank_loss(attn, margin=3.2).item() == pytest.approx(3.4)


# --------------------------------------------------------------------------- sparsity


def test_sparsity_zero_for_one_hot():
    assert sparsity_loss(ONE_HOT).item() == pytest.approx(0.0)
    assert sparsity_loss(SWAPPED, sum_over_queries=True).item() == pytest.approx(0.0)


def test_sparsity_uniform_map():
    # T = 3 uniform: c = 2, Σ_t |t − 2|/3 = (1 + 0 + 1)/3 = 2/3 for each query.
    attn = torch.full((1, 1, 3, 2), 1 / 3, dtype=torch.float64)
    assert sparsity_loss(attn).item() == pytest.approx(2 / 3)
    assert sparsity_loss(attn, sum_over_queries=True).item() == pytest.approx(4 / 3)


def test_sparsity_soft_mean_vs_sum_over_queries():
    # Query 1: c = 1.5, |1 − 1.5|·0.5 + |2 − 1.5|·0.5 + |3 − 1.5|·0 = 0.5.
    # Query 2: c = 2.3, |1 − 2.3|·0.2 + |2 − 2.3|·0.3 + |3 − 2.3|·0.5 = 0.26 + 0.09 + 0.35 = 0.70.
    # Mean over queries (release) 0.6; sum (paper) 1.2.
    assert sparsity_loss(SOFT).item() == pytest.approx(0.6)
    assert sparsity_loss(SOFT, sum_over_queries=True).item() == pytest.approx(1.2)


def test_sparsity_means_over_batch_and_sums_over_layers():
    # Batch: (0.6 + 0) / 2 = 0.3. Two identical layers: 2 · 0.6 = 1.2.
    assert sparsity_loss(torch.cat([SOFT, ONE_HOT])).item() == pytest.approx(0.3)
    assert sparsity_loss(torch.cat([SOFT, SOFT], dim=1)).item() == pytest.approx(1.2)


def test_sparsity_gradient_goes_through_the_centre():
    # One query, α = (0.6, 0.1, 0.3): c = 0.6 + 0.2 + 0.9 = 1.7, S = Σ_t |t − c|·α_t
    # = 0.7·0.6 + 0.3·0.1 + 1.3·0.3 = 0.84. With c = Σ_s s·α_s not detached,
    # ∂S/∂α_s = |s − c| − s·Σ_t sign(t − c)·α_t and Σ_t sign(t − c)·α_t = −0.6 + 0.1 + 0.3 = −0.2,
    # so the gradient is (0.7 + 0.2, 0.3 + 0.4, 1.3 + 0.6) = (0.9, 0.7, 1.9); a detached centre
    # would give (0.7, 0.3, 1.3).
    attn = maps([0.6, 0.1, 0.3]).requires_grad_(True)
    loss = sparsity_loss(attn)
    loss.backward()
    assert loss.item() == pytest.approx(0.84)
    torch.testing.assert_close(attn.grad[0, 0, :, 0], torch.tensor([0.9, 0.7, 1.9]).double())


# --------------------------------------------------------------------------- diversity


def test_diversity_loss_hand_values():
    # Centres (1, 2, 3); pairs differ by 1, 1, 2.
    attn = maps([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0])
    # σ = 1: 2·exp(−1/2) + exp(−4/2) = 2·0.60653066 + 0.13533528 = 1.34839660.
    assert diversity_loss(attn, sigma=1.0).item() == pytest.approx(1.3483966026618795)
    # σ = 2: 2·exp(−1/8) + exp(−4/8) = 2·0.88249690 + 0.60653066 = 2.37152446.
    assert diversity_loss(attn, sigma=2.0).item() == pytest.approx(2.3715244648818244)
    # Soft K = 2: centres 1.5, 2.3 → exp(−0.64/2) = exp(−0.32) = 0.72614904; two layers → twice.
    assert diversity_loss(torch.cat([SOFT, SOFT], 1), 1.0).item() == pytest.approx(2 * 0.72614904)


# --------------------------------------------------------------------------- offset

# Predicted offsets (N = 4, G = 4).
OFF_PRED = torch.tensor(
    [
        [0.5, 0.9, 0.9, 0.9],
        [0.1, 0.9, 0.9, 0.9],
        [0.9, 0.9, 0.9, 0.9],
        [0.1, 0.6, 0.1, 0.1],
    ]
)


def test_offset_loss_per_group_mean_summed_over_groups():
    # Labels (0, 0, 2, 1): predictions on the true group 0.5, 0.1, 0.9, 0.6 against targets
    # 0.3, 0.4, 0.5, 0.4 → squared errors 0.04, 0.09, 0.16, 0.04.
    # Group 0: (0.04 + 0.09)/2 = 0.065; group 1: 0.04; group 2: 0.16; group 3 empty: 0.
    # Sum 0.265 (a plain mean over samples would be 0.0825).
    labels = torch.tensor([0, 0, 2, 1])
    targets = torch.tensor([0.3, 0.4, 0.5, 0.4])
    assert offset_loss(OFF_PRED, labels, targets).item() == pytest.approx(0.265)


# --------------------------------------------------------------------------- criterion


def output(logits, offsets, attn_query=None, attn_exemplar=None) -> TPTOutput:
    return TPTOutput(
        logits=logits, offsets=offsets, attn_query=attn_query, attn_exemplar=attn_exemplar
    )


# Both orders of B = 2 pairs: rows 0–1 first order, rows 2–3 second order.
LABELS = torch.tensor([0, 0, 0, 1])
TARGETS = torch.tensor([0.3, 0.4, 0.5, 0.4])
# Squared errors 0.04, 0.09, 0.16, 0.04. Per order: first (0.04 + 0.09)/2 = 0.065; second
# group 0 0.16 + group 1 0.04 = 0.2. Sum over orders 0.265 (pooling the orders would give
# (0.04 + 0.09 + 0.16)/3 + 0.04 = 0.1367).
REG = 0.265


def test_criterion_keys_and_zero_logit_values():
    # Zero logits over G = 4: cross-entropy ln 4 per order, summed over the two orders: 2 ln 4.
    losses = TPTCriterion(margin=1.2)(output(torch.zeros(4, 4), OFF_PRED), LABELS, TARGETS)
    assert set(losses) == {"loss_cls", "loss_reg", "loss_rank", "loss_sparsity", "loss"}
    assert losses["loss_cls"].item() == pytest.approx(2 * math.log(4))
    assert losses["loss_reg"].item() == pytest.approx(REG)
    assert losses["loss_rank"].item() == 0.0
    assert losses["loss_sparsity"].item() == 0.0
    assert losses["loss"].item() == pytest.approx(2 * math.log(4) + REG)


def test_criterion_attention_losses_are_one_mean_over_query_and_exemplar_maps():
    # Query map SOFT: rank 1.6 (m = 1.2), sparsity 0.6. Exemplar map ONE_HOT: rank 2.4, sparsity 0.
    # Stacked into one batch of two maps: rank (1.6 + 2.4)/2 = 2.0, sparsity (0.6 + 0)/2 = 0.3.
    logits = torch.zeros(2, 4)
    off = torch.full((2, 4), 0.5)
    lab, tgt = torch.tensor([1, 2]), torch.tensor([0.5, 0.5])
    crit = TPTCriterion(margin=1.2)
    both = crit(output(logits, off, SOFT.float(), ONE_HOT.float()), lab, tgt)
    assert both["loss_rank"].item() == pytest.approx(2.0)
    assert both["loss_sparsity"].item() == pytest.approx(0.3)
    only_q = crit(output(logits, off, SOFT.float(), None), lab, tgt)
    assert only_q["loss_rank"].item() == pytest.approx(1.6)
    only_e = crit(output(logits, off, None, ONE_HOT.float()), lab, tgt)
    assert only_e["loss_rank"].item() == pytest.approx(2.4)
    assert only_e["loss_sparsity"].item() == pytest.approx(0.0)
    # cls 2 ln 4, reg 0, rank 2.0, sparsity 0.3 · 0.05 = 0.015.
    assert both["loss"].item() == pytest.approx(2 * math.log(4) + 2.0 + 0.015)


def test_criterion_attention_reduction_pinned_by_hand_b2_two_layers():
    """B = 2, Y = 2, T = 4, K = 2, m = 1: total = Σ_layers (mean over the 2B stacked maps).

    One-hot map (query 1 on t = 1, query 2 on t = 4): centres (1, 4); rank: order
    max(0, 1 − 4 + 1) = 0, first max(0, 1 − 1 + 1) = 1, last max(0, 4 − 4 + 1) = 1 → 2;
    sparsity 0. Uniform map (α = 1/4): centres (2.5, 2.5); rank: order max(0, 0 + 1) = 1, first
    max(0, 1 − 2.5 + 1) = 0, last max(0, 2.5 − 4 + 1) = 0 → 1; sparsity
    (1.5 + 0.5 + 0.5 + 1.5)/4 = 1 per query, mean over queries 1.
    Layer 1: query maps one-hot, exemplar maps uniform → rank (2+2+1+1)/4 = 1.5, sparsity
    (0+0+1+1)/4 = 0.5. Layer 2: all uniform → rank 1, sparsity 1.
    Sum over layers: rank 2.5, sparsity 1.5. (The doubled reduction, mean over query maps plus
    mean over exemplar maps, would give rank (2 + 1) + (1 + 1) = 5 and sparsity 3.)
    """
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])  # (T, K)
    uniform = torch.full((4, 2), 0.25)
    attn_q = torch.stack([one_hot, uniform])[None].expand(2, -1, -1, -1)  # (B, Y, T, K)
    attn_e = torch.stack([uniform, uniform])[None].expand(2, -1, -1, -1)
    logits, off = torch.zeros(4, 4), torch.full((4, 4), 0.5)
    lab, tgt = torch.tensor([1, 2, 1, 2]), torch.full((4,), 0.5)
    losses = TPTCriterion(margin=1.0)(output(logits, off, attn_q, attn_e), lab, tgt)
    assert losses["loss_rank"].item() == pytest.approx(2.5)
    assert losses["loss_sparsity"].item() == pytest.approx(1.5)
    assert losses["loss_reg"].item() == pytest.approx(0.0)
    # cls 2 ln 4 + reg 0 + 1 · 2.5 + 0.05 · 1.5
    assert losses["loss"].item() == pytest.approx(2 * math.log(4) + 2.5 + 0.075)
    # The gradient of the stacked mean: each of the 2B maps carries weight 1/(2B), not 1/B.
    attn_q = attn_q.clone().requires_grad_(True)
    TPTCriterion(margin=1.0, weight_sparsity=0.0)(output(logits, off, attn_q, attn_e), lab, tgt)[
        "loss"
    ].backward()
    x = attn_q.detach()[:1].clone().requires_grad_(True)
    rank_loss(x, 1.0).backward()
    assert torch.allclose(attn_q.grad[0], x.grad[0] / 4)


def test_criterion_without_attention_gives_zero_attention_losses():
    torch.manual_seed(0)
    logits = torch.randn(4, 4)
    losses = TPTCriterion()(output(logits, OFF_PRED), LABELS, TARGETS)
    assert losses["loss_rank"].item() == 0.0
    assert losses["loss_sparsity"].item() == 0.0
    expected = losses["loss_cls"] + losses["loss_reg"]
    assert losses["loss"].item() == pytest.approx(expected.item())
    assert losses["loss_cls"].item() > 0


def test_criterion_total_is_the_weighted_sum():
    # Weights 2, 3, 0.5, 10 on cls 2 ln 4, reg 0.265, rank (1.6 + 1.6 + 2.4 + 2.4)/4 = 2.0 (four
    # stacked Y = 1 maps with m = 1.2), sparsity (0.6 + 0.6 + 0 + 0)/4 = 0.3.
    crit = TPTCriterion(
        weight_cls=2.0, weight_reg=3.0, weight_rank=0.5, weight_sparsity=10.0, margin=1.2
    )
    out = output(torch.zeros(4, 4), OFF_PRED, torch.cat([SOFT, SOFT]), torch.cat([ONE_HOT] * 2))
    losses = crit(out, LABELS, TARGETS)
    assert losses["loss_cls"].item() == pytest.approx(2 * math.log(4))
    assert losses["loss_reg"].item() == pytest.approx(REG)
    assert losses["loss_rank"].item() == pytest.approx(2.0)
    assert losses["loss_sparsity"].item() == pytest.approx(0.3)
    expected = 2 * 2 * math.log(4) + 3 * REG + 0.5 * 2.0 + 10 * 0.3
    assert losses["loss"].item() == pytest.approx(expected)


def test_criterion_sparsity_sum_switch_and_diversity_variant():
    out = output(torch.zeros(2, 4), torch.full((2, 4), 0.5), SOFT.float(), None)
    lab, tgt = torch.tensor([1, 2]), torch.tensor([0.5, 0.5])
    summed = TPTCriterion(sparsity_sum_over_queries=True)(out, lab, tgt)
    assert summed["loss_sparsity"].item() == pytest.approx(1.2)
    div = TPTCriterion(order_loss="diversity", diversity_sigma=1.0)(out, lab, tgt)
    # Centres 1.5 and 2.3: exp(−0.8²/2) = exp(−0.32) = 0.72614904.
    # logged under its own name, never as a ranking loss
    assert "loss_rank" not in div
    assert div["loss_diversity"].item() == pytest.approx(0.72614904)


def test_criterion_bce_matches_manual_per_group_sum():
    torch.manual_seed(0)
    logits = torch.randn(4, 4, dtype=torch.float64)
    crit = TPTCriterion(cls_loss="bce")
    got = crit(output(logits.float(), OFF_PRED), LABELS, TARGETS)["loss_cls"].item()
    p = torch.sigmoid(logits)
    y = torch.zeros(4, 4, dtype=torch.float64)
    y[torch.arange(4), LABELS] = 1.0
    per_sample = -(y * p.log() + (1 - y) * (1 - p).log()).sum(1)  # summed over the G groups
    manual = per_sample[:2].mean() + per_sample[2:].mean()  # mean per order, summed over orders
    assert got == pytest.approx(manual.item(), rel=1e-5)
    # Zero logits: G·ln 2 per sample → 4 ln 2 per order → 8 ln 2, unlike cross-entropy's 2 ln 4.
    zero = crit(output(torch.zeros(4, 4), OFF_PRED), LABELS, TARGETS)["loss_cls"].item()
    assert zero == pytest.approx(8 * math.log(2))


def test_criterion_rejects_unknown_variants():
    with pytest.raises(ValueError):
        TPTCriterion(cls_loss="focal")
    with pytest.raises(ValueError):
        TPTCriterion(order_loss="spread")


def test_loss_means_weight_each_step_by_its_pairs():
    means = LossMeans()
    means.update({"loss_cls": torch.tensor(1.0), "loss": torch.tensor(2.0)}, pairs=2)
    means.update({"loss_cls": torch.tensor(4.0), "loss": torch.tensor(5.0)}, pairs=1)
    got = means.compute()
    # (2·1 + 1·4) / 3 = 2 and (2·2 + 1·5) / 3 = 3: pair-weighted, not the mean of step means (2.5, 3.5)
    assert list(got) == ["loss_cls", "loss"]
    assert got["loss_cls"].item() == pytest.approx(2.0) and got["loss"].item() == pytest.approx(3.0)
    means.reset()
    means.update({"loss": torch.tensor(7.0)}, pairs=3)
    assert means.compute()["loss"].item() == pytest.approx(7.0)  # a new epoch starts from zero
