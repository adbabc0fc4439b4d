"""Score groups (docs/method.md §5): Δ list, equal-count edges, encode/decode, state, errors; and
the score stage's vote over exemplars (§7)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data.labels import pair_deltas
from tpt_aqa.scoring.groups import ScoreGroups, check_cap, positive_edges
from tpt_aqa.scoring.stage import relative_scores, vote

# Δ list of n = 9 (already sorted): ⌊i/8·(n − 1)⌋ = i, so the positive edges are sorted[0..8],
# with the first forced to 0 and the last to the cap.
DELTAS9 = np.array([6.0, 0.5, 2.0, 12.0, 1.0, 4.0, 1.5, 8.0, 3.0])  # unsorted on purpose
EDGES9 = [0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 30.0]
LEFT9 = [-30.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.5, -1.0, 0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0]
RIGHT9 = [-8.0, -6.0, -4.0, -3.0, -2.0, -1.5, -1.0, 0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 30.0]


@pytest.fixture
def groups() -> ScoreGroups:
    return ScoreGroups(num_groups=16).fit(DELTAS9, cap=30.0)


# --------------------------------------------------------------------------- Δ list and edges


def test_pair_deltas_only_within_groups():
    # Group 0 scores (1, 4, 2): |1 − 4| = 3, |1 − 2| = 1, |4 − 2| = 2.
    # Group 7 scores (10, 13.5): 3.5. Group 3 has one sample: no pair. No cross-group pair such as
    # |1 − 10| = 9 appears.
    scores = np.array([1.0, 10.0, 4.0, 2.0, 13.5, 50.0])
    groups = np.array([0, 7, 0, 0, 7, 3])
    got = pair_deltas(scores, groups)
    assert sorted(got.tolist()) == [1.0, 2.0, 3.0, 3.5]


def test_pair_deltas_with_string_groups_and_ties():
    scores = np.array([2.0, 2.0, 5.0, 9.0])
    groups = np.array(["a", "a", "b", "a"])
    # Group a (2, 2, 9): 0, 7, 7. Group b: none.
    assert sorted(pair_deltas(scores, groups).tolist()) == [0.0, 7.0, 7.0]


def test_positive_edges_n9():
    np.testing.assert_array_equal(positive_edges(DELTAS9, 16, cap=30.0), EDGES9)


def test_positive_edges_with_floors():
    # n = 11, sorted Δ = 1..11; indices ⌊i/8·10⌋ for i = 0..8: 0, 1, 2, 3, 5, 6, 7, 8, 10 →
    # values 1, 2, 3, 4, 6, 7, 8, 9, 11; first forced to 0, last to the cap 20.
    deltas = np.array([11.0, 3, 7, 1, 9, 5, 2, 10, 4, 8, 6])
    np.testing.assert_array_equal(
        positive_edges(deltas, 16, cap=20.0), [0.0, 2, 3, 4, 6, 7, 8, 9, 20]
    )
    # A cap below an interior edge clips it: 9 → 8.5.
    np.testing.assert_array_equal(
        positive_edges(deltas, 16, cap=8.5), [0.0, 2, 3, 4, 6, 7, 8, 8.5, 8.5]
    )


def test_positive_edges_other_group_count():
    # G = 4: half = 2, n = 5 sorted (1, 2, 3, 4, 5): indices ⌊0⌋, ⌊1/2·4⌋ = 2, ⌊4⌋ → 0, 3, cap.
    np.testing.assert_array_equal(positive_edges(np.array([5.0, 1, 4, 2, 3]), 4, 10.0), [0, 3, 10])


def test_positive_edges_needs_pairs():
    with pytest.raises(ValueError):
        positive_edges(np.zeros(0), 16, 30.0)


def test_fit_sets_mirrored_edges(groups):
    assert bool(groups.fitted)
    np.testing.assert_array_equal(groups.left.numpy(), LEFT9)
    np.testing.assert_array_equal(groups.right.numpy(), RIGHT9)


# --------------------------------------------------------------------------- encode / decode


@pytest.mark.parametrize(
    ("delta", "label", "offset"),
    [
        (0.0, 8, 0.0),  # [0, 1): l ≤ Δ < r
        (0.5, 8, 0.5),
        (1.0, 9, 0.0),  # a right edge belongs to the next positive group
        (7.0, 14, 0.5),  # [6, 8)
        (29.0, 15, 21 / 22),  # [8, 30): (29 − 8)/22
        (-0.25, 7, 0.75),  # (−1, 0]: (−0.25 + 1)/1
        (-1.0, 6, 1.0),  # l < Δ ≤ r: −1 belongs to (−1.5, −1]
        (-7.0, 1, 0.5),  # (−8, −6]
        (30.0, 15, 1.0),  # Δ = cap: the outermost group, not group 0
        (-30.0, 0, 0.0),  # Δ = −cap: group 0
        (45.0, 15, 1.0),  # beyond the cap: clamped
        (-45.0, 0, 0.0),
    ],
)
def test_encode_hand_cases(groups, delta, label, offset):
    lab, off = groups.encode(torch.tensor([delta], dtype=torch.float64))
    assert lab.dtype == torch.int64
    assert lab.tolist() == [label]
    assert off.item() == pytest.approx(offset)


def test_cap_lands_in_outermost_groups_not_group_zero():
    sg = ScoreGroups(num_groups=8).fit(np.arange(1.0, 20.0), cap=100.0)
    labels, offsets = sg.encode(torch.tensor([100.0, -100.0, 99.999, -99.999]))
    assert labels.tolist() == [7, 0, 7, 0]
    torch.testing.assert_close(offsets[:2], torch.tensor([1.0, 0.0]))


def test_zero_lands_in_first_positive_group_or_the_next_when_collapsed():
    # Ties: n = 9 with two zeros → edges 0, 0, 1, 2, … → group 8 is [0, 0]: Δ = 0 goes to group 9.
    collapsed = ScoreGroups(16).fit(np.array([0.0, 0, 1, 2, 3, 4, 5, 6, 7]), cap=30.0)
    assert collapsed.left[8].item() == collapsed.right[8].item() == 0.0
    labels, offsets = collapsed.encode(torch.tensor([0.0, 0.5, -0.5]))
    # 0 → group 9 = [0, 1) offset 0; 0.5 → group 9 offset 0.5; −0.5 → group 6 = (−1, 0] (group 7 is
    # the mirrored [0, 0]) offset 0.5.
    assert labels.tolist() == [9, 9, 6]
    torch.testing.assert_close(offsets, torch.tensor([0.0, 0.5, 0.5]))
    plain = ScoreGroups(16).fit(DELTAS9, cap=30.0)
    assert plain.encode(torch.tensor([0.0]))[0].tolist() == [8]


@pytest.mark.parametrize(
    ("deltas", "cap"),
    [
        (DELTAS9, 30.0),
        (np.array([0.0, 0, 0, 1, 2, 3, 4, 5, 6]), 30.0),  # collapsed groups
        (np.random.default_rng(1).exponential(3.0, size=500), 10.0),  # interior edges clipped
    ],
)
def test_encode_decode_round_trip(deltas, cap):
    sg = ScoreGroups(16).fit(deltas, cap=cap)
    rng = np.random.default_rng(0)
    delta = torch.as_tensor(rng.uniform(-cap, cap, size=2000), dtype=torch.float64)
    delta = torch.cat([delta, torch.tensor([0.0, 1.0, -1.0, 2.0, -2.0], dtype=torch.float64)])
    labels, offsets = sg.encode(delta)
    assert bool(((offsets >= 0) & (offsets <= 1)).all())
    assert bool((sg.left[labels] <= delta).all())
    assert bool((delta <= sg.right[labels]).all())
    logits = torch.nn.functional.one_hot(labels, 16).float()  # argmax at the label
    pred_off = offsets[:, None].expand(-1, 16)
    decoded = sg.decode(logits, pred_off)
    assert decoded.dtype == torch.float32
    assert float((decoded.double() - delta).abs().max()) < 1e-6


def test_decode_uses_argmax_group_and_its_offset(groups):
    logits = torch.tensor([[0.0] * 16, [0.0] * 16])
    logits[0, 14] = 5.0  # group 14 = [6, 8)
    logits[1, 1] = 5.0  # group 1 = (−8, −6]
    offsets = torch.full((2, 16), 0.9)
    offsets[0, 14] = 0.25  # 6 + 2·0.25 = 6.5
    offsets[1, 1] = 0.75  # −8 + 2·0.75 = −6.5
    torch.testing.assert_close(groups.decode(logits, offsets), torch.tensor([6.5, -6.5]))


def test_decode_zero_width_group_adds_the_offset():
    sg = ScoreGroups(16).fit(np.array([0.0, 0, 1, 2, 3, 4, 5, 6, 7]), cap=30.0)
    logits = torch.zeros(1, 16)
    logits[0, 8] = 1.0  # group 8 = [0, 0]: Δ̂ = l + offset
    assert sg.decode(logits, torch.full((1, 16), 0.3)).item() == pytest.approx(0.3)


# --------------------------------------------------------------------------- state and errors


def test_edges_survive_state_dict_round_trip(groups):
    state = groups.state_dict()
    assert {"left", "right", "fitted"} <= set(state)
    fresh = ScoreGroups(16)
    assert not bool(fresh.fitted)
    fresh.load_state_dict(state)
    assert bool(fresh.fitted)
    np.testing.assert_array_equal(fresh.left.numpy(), LEFT9)
    np.testing.assert_array_equal(fresh.right.numpy(), RIGHT9)
    delta = torch.tensor([0.3, -2.5, 7.0, 29.0])
    for a, b in zip(fresh.encode(delta), groups.encode(delta), strict=True):
        torch.testing.assert_close(a, b)


def test_edges_survive_inside_a_parent_module(groups):
    parent = torch.nn.Module()
    parent.groups = groups
    fresh_parent = torch.nn.Module()
    fresh_parent.groups = ScoreGroups(16)
    fresh_parent.load_state_dict(parent.state_dict())
    assert bool(fresh_parent.groups.fitted)
    np.testing.assert_array_equal(fresh_parent.groups.right.numpy(), RIGHT9)


def test_use_before_fit_raises():
    sg = ScoreGroups(16)
    with pytest.raises(RuntimeError, match="fit"):
        sg.encode(torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match="fit"):
        sg.decode(torch.zeros(1, 16), torch.zeros(1, 16))


@pytest.mark.parametrize("g", [0, 1, 3, 6, 12, 24])
def test_num_groups_must_be_power_of_two(g):
    with pytest.raises(ValueError):
        ScoreGroups(num_groups=g)


@pytest.mark.parametrize("g", [2, 4, 8, 32])
def test_powers_of_two_are_accepted(g):
    sg = ScoreGroups(num_groups=g).fit(DELTAS9, cap=30.0)
    assert sg.left.shape == sg.right.shape == (g,)
    assert sg.left[g // 2].item() == 0.0
    assert sg.right[g - 1].item() == 30.0


def test_cap_must_be_positive_and_the_error_suggests_a_working_value():
    with pytest.raises(
        ConfigError, match=r"dataset.delta_cap=0.0: .* > 0; pass dataset.delta_cap=12"
    ):
        ScoreGroups(16).fit(DELTAS9, cap=0.0)


def test_cap_after_fit_is_the_outermost_edge():
    assert ScoreGroups(16).fit(DELTAS9, cap=30.0).cap == 30.0
    with pytest.raises(RuntimeError, match="fit"):
        _ = ScoreGroups(16).cap


# ------------------------------------------------------------------ pairs beyond the cap


# MTL-AQA w/o DD in miniature: a failed dive scored 0, two finals above the cap of 100 (102.6, as in
# the real training split), and ordinary finals. Pairs: 6 scores → 15 within-group Δ.
FINALS = np.array([0.0, 102.6, 102.6, 60.0, 75.5, 88.0])


def test_pairs_beyond_the_cap_are_clamped_and_counted(caplog):
    deltas = pair_deltas(FINALS, np.zeros(6, dtype=np.int64))
    # Beyond 100: 0 vs 102.6 twice → 2 of 15 pairs.
    assert check_cap(deltas, 100.0) == 2
    with caplog.at_level(logging.INFO, logger="tpt_aqa.scoring.groups"):
        sg = ScoreGroups(16).fit(deltas, cap=100.0)
    assert "2 of 15 within-group training pairs differ by more than dataset.delta_cap=100" in (
        caplog.text
    )
    assert sg.cap == 100.0
    labels, offsets = sg.encode(torch.tensor([102.6, -102.6, 100.0]))
    assert labels.tolist() == [15, 0, 15]  # the outermost groups, never group 0 for +Δ
    torch.testing.assert_close(offsets, torch.tensor([1.0, 0.0, 1.0]))


def test_a_cap_below_most_pairs_is_refused_with_a_value_that_works():
    deltas = pair_deltas(FINALS, np.zeros(6, dtype=np.int64))
    # Pairs beyond 30: 102.6 (×2), 60, 75.5, 88, 42.6 (×2) → 7 of 15, not most: clamped. Beyond
    # 10: all but 102.6 − 102.6 → 14 of 15: a cap of another scale, refused; the fix covers the
    # largest difference.
    assert check_cap(deltas, 30.0) == 7
    with pytest.raises(ConfigError, match=r"14 of 15 pairs exceed it.*pass dataset.delta_cap=103"):
        ScoreGroups(16).fit(deltas, cap=10.0)
    assert check_cap(deltas, 103) == 0  # the suggested value is accepted without clamping


# --------------------------------------------------------------------------- the score stage's vote


def test_vote_is_the_mean_over_exemplars_then_the_scale():
    """Two videos × M = 3 exemplar slots, the second video's last slot padded."""
    target = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 7.0]])  # exemplar scores (B, M)
    delta = torch.tensor([[0.5, -0.5, 1.0], [1.0, 2.0, float("nan")]])  # Δ̂ (B, M)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    scale = torch.tensor([2.0, 3.0])
    # video 0: (1.5 + 1.5 + 4) / 3 × 2 = 14/3; video 1: (11 + 22) / 2 × 3 = 49.5, the padded slot
    # (even a NaN Δ̂ there) counting for nothing
    got = vote(target, delta, scale, mask)
    assert got.tolist() == pytest.approx([14 / 3, 49.5], abs=1e-6)
    # without a mask every slot counts; one number scales every video
    assert vote(target[:1], delta[:1], 2.0).tolist() == pytest.approx([14 / 3], abs=1e-6)


class _Differ:
    """A stand-in model whose pair stage reads out (sum of the second's parts − the first's)."""

    def compare_each(self, exemplars, queries):
        diff = (queries[:, None] - exemplars).sum((2, 3))  # (B, M)
        return torch.zeros(*diff.shape, 2), diff[..., None].expand(-1, -1, 2)


class _Offset0:
    def decode(self, logits, offsets):
        return offsets[:, 0].float()


def test_relative_scores_pair_every_exemplar_slot_with_its_own_video():
    query = torch.tensor([1.0, 100.0])[:, None, None].expand(2, 2, 3)  # (B, K, D): sums 6, 600
    exemplars = torch.arange(6.0).view(2, 3, 1, 1).expand(2, 3, 2, 3)  # (B, M, K, D): sums 6·value
    got = relative_scores(_Differ(), _Offset0(), query, exemplars)  # Δ̂ = s_query − s_exemplar
    assert got.tolist() == [[6.0, 0.0, -6.0], [582.0, 576.0, 570.0]]
