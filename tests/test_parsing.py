"""Step-level parsing metrics on hand-made attention maps with known answers: a perfect parser, all
queries collapsed, fixed chunks, bimodal and random maps, recurring labels, more steps than queries,
clips of several frames, and the undefined cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from tpt_aqa.data.labels import step_runs
from tpt_aqa.scoring.metrics import UndefinedMetricWarning
from tpt_aqa.scoring.step_metrics import (
    METRICS,
    attention_centres,
    explained_variance,
    pair_transitions,
    parse_video,
    parsing_metrics,
)


def _labels(*lengths: int, ids: tuple[int, ...] | None = None) -> np.ndarray:
    ids = tuple(range(len(lengths))) if ids is None else ids
    return np.repeat(ids, lengths)


def _one(attn: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The metrics of a single video: adaptivity (across videos) is undefined and says so."""
    with pytest.warns(UndefinedMetricWarning, match="at least two videos, got 1"):
        return parsing_metrics(attn[None], labels[None])


def _following(labels: np.ndarray) -> np.ndarray:
    """Query s spreads its attention evenly over the clips of step s ``(T, S)``."""
    starts, ends, _ = step_runs(labels)
    attn = np.zeros((len(labels), len(starts)))
    for s, (a, b) in enumerate(zip(starts, ends, strict=True)):
        attn[a:b, s] = 1.0 / (b - a)
    return attn


VARIED = [(3, 4, 5), (3, 5, 4), (5, 3, 4), (4, 4, 4), (1, 4, 7), (5, 4, 3)]  # T = 12 clips; no
# transition halves a third of the video (frame ties would let a small jitter change the matching)


def test_step_runs_splits_recurring_labels():
    starts, ends, ids = step_runs(np.array([7, 7, 1, 1, 1, 2, 1, 1, 4]))  # A B C B D
    assert starts.tolist() == [0, 2, 5, 6, 8]
    assert ends.tolist() == [2, 5, 6, 8, 9]
    assert ids.tolist() == [7, 1, 2, 1, 4]


def test_attention_centres_in_frames():
    attn = np.zeros((4, 2))
    attn[[0, 1], 0] = 0.5
    attn[[2, 3], 1] = [0.25, 0.75]
    # clip centres at 1, 4, 7, 10 for 3 frames per clip
    np.testing.assert_allclose(attention_centres(attn, 3), [2.5, 0.25 * 7 + 0.75 * 10])


def test_perfect_parser_scores_perfectly():
    labels = _labels(3, 4, 5)
    attn = _following(labels)
    p = parse_video(attn, labels)
    assert p.in_order and p.accuracy == 1.0 and p.min_iou == 1.0
    assert p.transition_costs.tolist() == [0.0, 0.0]
    np.testing.assert_allclose(p.centres, [1.0, 4.5, 9.0])  # = the step centres
    np.testing.assert_allclose(p.matched_centres, p.centres)
    # which query index takes which step does not matter
    q = parse_video(attn[:, [2, 0, 1]], labels)
    assert q.in_order and q.accuracy == 1.0 and q.min_iou == 1.0


def test_collapsed_queries_score_badly():
    # every query puts all its attention on clip 0: one run of query 0, no implied transition
    labels = _labels(3, 4, 5)  # T = 12, true transitions at 3 and 7
    attn = np.zeros((12, 3))
    attn[0] = 1.0
    p = parse_video(attn, labels)
    assert not p.in_order  # all three overlap step 0 most: one step, not three
    # the in-order matching can give query 0 (all 12 frames) one step; the largest (5 frames) wins
    assert p.accuracy == pytest.approx(5 / 12)
    assert p.min_iou == 0.0  # steps 0 and 1 get no frame
    # both transitions missed: distances to the nearer end, min(3, 9) and min(7, 5)
    assert p.transition_costs.tolist() == [3.0, 5.0] and np.isnan(p.partners).all()
    out = _one(attn, labels)
    assert out["parse_order"] == 0.0 and out["parse_boundary"] == 4.0
    assert out["parse_missed"] == 1.0 and out["parse_aiou50"] == 0.0


def test_order_fails_when_centres_and_steps_disagree():
    labels = _labels(2, 2, 2)
    attn = np.zeros((6, 3))
    attn[[0, 5], 0] = [0.45, 0.55]  # bimodal: centre 2.75, most mass on step 2
    attn[3, 1] = 1.0  # centre 3, step 1
    attn[1, 2] = 1.0  # centre 1, step 0
    # in centre order the most-overlapped steps read 0, 2, 1
    assert not parse_video(attn, labels).in_order
    attn[[0, 5], 0] = [0.55, 0.45]  # now step 0 most: 0, 0, 1 covers two of three steps
    assert not parse_video(attn, labels).in_order


def test_recurring_label_is_two_steps():
    labels = _labels(2, 2, 2, 2, 2, ids=(0, 1, 2, 1, 3))  # A B C B D
    p = parse_video(_following(labels), labels)
    assert p.in_order and p.accuracy == 1.0 and p.min_iou == 1.0
    assert p.transitions.tolist() == [2, 4, 6, 8] and p.transition_costs.sum() == 0
    # one query for both B steps (clips 2-3 and 6-7): its runs cut at every true transition, but
    # the in-order matching gives it one B step only, so the other B step has no query
    merged = np.zeros((10, 4))
    merged[0:2, 0] = merged[4:6, 2] = merged[8:10, 3] = 0.5
    merged[[2, 3, 6, 7], 1] = 0.25
    q = parse_video(merged, labels)
    assert q.transition_costs.sum() == 0 and q.accuracy == pytest.approx(0.8)
    assert q.min_iou == 0.0
    assert q.in_order  # centres 0.5, 4.5, 4.5, 8.5 over steps 0, 1 (first B), 2, 4: four of five


def test_more_steps_than_queries():
    labels = _labels(2, 2, 2, 2, 2, ids=(0, 1, 2, 1, 3))  # five steps, four queries
    attn = np.zeros((10, 4))
    attn[0:2, 0] = attn[2:4, 1] = attn[4:6, 2] = 0.5
    attn[6:10, 3] = 0.25  # the last query covers the last two steps
    p = parse_video(attn, labels)
    assert p.in_order  # four queries on four distinct steps, in order
    assert p.accuracy == pytest.approx(0.8)  # the last query's 4 frames count for one step
    assert p.min_iou == 0.0  # one step has no query
    # implied transitions at 2, 4, 6: the true one at 8 is missed, 2 frames from the end
    assert p.transition_costs.tolist() == [0, 0, 0, 2]
    out = _one(attn, labels)
    assert out["parse_missed"] == 0.25 and out["parse_boundary"] == 0.5


def test_more_queries_than_steps_share_steps():
    labels = _labels(4, 4)
    attn = np.zeros((8, 4))
    for k in range(4):
        attn[2 * k : 2 * k + 2, k] = 0.5  # two queries per step
    p = parse_video(attn, labels)
    assert p.in_order and p.accuracy == 1.0 and p.min_iou == 1.0
    # queries sharing a step do not cut it: one implied transition, at the true 4
    assert p.implied.tolist() == [4] and p.transition_costs.tolist() == [0.0]


def test_frames_per_clip():
    labels = _labels(5, 7)  # 12 frames = 4 clips × 3, true transition at frame 5 (inside clip 1)
    attn = np.zeros((4, 2))
    attn[[0, 1], 0] = attn[[2, 3], 1] = 0.5
    p = parse_video(attn, labels, frames_per_clip=3)
    assert p.transition_costs.tolist() == [1.0]  # implied at frame 6
    assert p.accuracy == pytest.approx(11 / 12)  # frame 5 goes with query 0
    assert p.min_iou == pytest.approx(5 / 6)  # step 0: 5 of 6 predicted frames; step 1: 6/7
    np.testing.assert_allclose(p.centres, [2.5, 8.5])
    out = _one(torch.from_numpy(attn), torch.from_numpy(labels))
    assert out["parse_aiou50"] == 1.0 and out["parse_aiou75"] == 1.0  # 5/6 ≥ 0.75
    assert out["parse_boundary"] == 1.0


def test_pair_transitions_in_order_missed_and_spurious():
    partner, cost, extra = pair_transitions(np.array([3, 7]), np.array([2, 8, 9]), 12)
    assert partner.tolist() == [2, 8] and cost.tolist() == [1, 1]
    assert extra.tolist() == [2]  # 9 is spurious, 2 frames from the true 7
    # one implied for three true: it pairs with the middle one; the others cost their end distance
    partner, cost, extra = pair_transitions(np.array([2, 5, 9]), np.array([6]), 10)
    assert np.isnan(partner[[0, 2]]).all() and partner[1] == 6
    assert cost.tolist() == [2, 1, 1] and len(extra) == 0
    partner, cost, extra = pair_transitions(np.array([4]), np.array([], dtype=np.int64), 10)
    assert np.isnan(partner).all() and cost.tolist() == [4]
    _, cost, extra = pair_transitions(np.array([], dtype=np.int64), np.array([3, 8]), 10)
    assert len(cost) == 0 and extra.tolist() == [3, 2]  # no true transition: nearer end


def test_flickering_parse_pays_for_its_extra_cuts():
    labels = _labels(6, 6)
    attn = np.zeros((12, 2))
    attn[[0, 1, 2, 4, 5], 0] = 0.2  # clip 3 flickers to query 1
    attn[[3, 6, 7, 8, 9, 10, 11], 1] = 1 / 7
    p = parse_video(attn, labels)
    # predicted steps 0 0 0 1 0 0 1 1 1 1 1 1: implied 3, 4, 6; the true 6 pairs exactly and the
    # spurious 3 and 4 cost 3 and 2
    assert p.implied.tolist() == [3, 4, 6] and p.extra_costs.tolist() == [3, 2]
    out = _one(attn, labels)
    assert out["parse_boundary"] == 5.0 and out["parse_extra"] == 2.0


def test_perfect_parser_adapts_to_every_video():
    labels = np.stack([_labels(*lengths) for lengths in VARIED])
    attn = np.stack([_following(lab) for lab in labels])
    out = parsing_metrics(attn, labels)
    assert out["parse_order"] == 1.0 and out["parse_acc"] == 1.0 and out["parse_boundary"] == 0
    assert out["parse_aiou50"] == out["parse_aiou75"] == 1.0 and out["parse_missed"] == 0
    assert out["parse_adapt"] == pytest.approx(1.0) and out[
        "parse_adapt_boundary"
    ] == pytest.approx(1.0)


# Five steps over T = 20 clips (per-clip labels, so frames are clips). Across the six videos the
# true step centres have Σ_v (c − mean_v c)² = 2, 53/6, 16/3, 17/6, 2 per step (21 in all), the
# true transitions 8, 34/3, 10/3, 8 per transition (92/3 in all).
FIVE = [
    (4, 4, 4, 4, 4),
    (2, 4, 6, 4, 4),
    (6, 4, 2, 4, 4),
    (4, 4, 4, 2, 6),
    (4, 4, 4, 6, 2),
    (4, 2, 4, 6, 4),
]


def _five() -> np.ndarray:
    return np.stack([_labels(*lengths) for lengths in FIVE])


def _chunks(num_clips: int = 20, num_queries: int = 5) -> np.ndarray:
    """Query k spreads its attention evenly over the k-th equal chunk of the clips ``(T, K)``."""
    width = num_clips // num_queries
    attn = np.zeros((num_clips, num_queries))
    for k in range(num_queries):
        attn[k * width : (k + 1) * width, k] = 1.0 / width
    return attn


def _adapt(attn: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)  # none of these cases is undefined
        out = parsing_metrics(attn, labels)
    return out["parse_adapt"], out["parse_adapt_boundary"]


def test_adaptivity_perfect_parser_reads_one():
    labels = _five()
    assert _adapt(np.stack([_following(lab) for lab in labels]), labels) == (1.0, 1.0)


def test_adaptivity_exactly_fixed_attention_reads_zero_not_nan():
    """Chunking time: every query at the same clips in every video explains none of the steps'
    movement; exactly 0 (the constant parse's offset takes the mean), with no warning."""
    labels = _five()
    fixed = np.repeat(_chunks()[None], 6, axis=0)
    assert _adapt(fixed, labels) == (0.0, 0.0)
    # on the three-step videos as well, where the old per-query r was undefined (NaN)
    three = np.stack([_labels(*lengths) for lengths in VARIED])
    assert _adapt(np.repeat(_chunks(12, 3)[None], 6, axis=0), three) == (0.0, 0.0)


def test_adaptivity_constant_input_reads_zero():
    """Constant input: every query attends evenly to every clip (all centres at 9.5), every clip
    goes to query 0, so neither the positions nor the cuts move."""
    assert _adapt(np.full((6, 20, 5), 1 / 20), _five()) == (0.0, 0.0)


def test_adaptivity_chunking_with_jitter_reads_zero():
    """The released decoder's chunking: centres at nearly fixed clips, moving a little but not
    with the steps. The jitter only adds residual (1 − residual/total < 0), clipped to 0."""
    labels = _five()
    rng = np.random.default_rng(0)
    fixed = np.repeat(_chunks()[None], 6, axis=0)
    eps = 0.05 * rng.uniform(size=(6, 1, 5))
    jittered = fixed * (1 - eps)
    jittered[:, 19] += eps[:, 0]  # ε of each query's mass on the last clip: its centre moves
    adapt, boundary = _adapt(jittered, labels)
    assert adapt == 0.0 and boundary == 0.0


def test_adaptivity_one_tracker_among_fixed_reads_its_share():
    """Query 0 follows step 1; queries 1–4 stay on chunks 2–4 of 20 clips. Step 1's share of
    the variance is 2 / 21. Its cut never moves (clips 0–3 go to query 0 in every video: where
    step 1 is shorter nobody else attends to them, where longer query 1 takes clips 4–5), so the
    transitions read 0."""
    labels = _five()
    attn = np.repeat(_chunks()[None], 6, axis=0)
    attn[:, :, 0] = [_following(lab)[:, 0] for lab in labels]
    adapt, boundary = _adapt(attn, labels)
    assert adapt == pytest.approx(2 / 21, abs=1e-12) and boundary == 0.0
    # the old per-query Fisher-z mean read 0.994 here (r = 1 of the tracker dominated)


def test_adaptivity_collapse_reads_the_one_step_share():
    """All five queries follow step 3: it is explained, the four steps no query takes are not:
    (16/3) / 21 = 16/63. The cuts: every clip goes to query 0 (ties), so none moves."""
    labels = _five()
    attn = np.stack([np.repeat(_following(lab)[:, 2:3], 5, axis=1) for lab in labels])
    adapt, boundary = _adapt(attn, labels)
    assert adapt == pytest.approx(16 / 63, abs=1e-12) and boundary == 0.0


def test_adaptivity_three_step_split_keeps_the_uncut_transitions():
    """K = 3 on five steps: queries follow steps 1 and 2, the third spreads evenly over steps
    3–5. Its attention mass, summed over the videos, is largest on step 4 (2.114 against 1.914
    on step 3 and 1.971 on step 5), so the split-level steps are 1, 2, 4.
    Steps: 1 and 2 explained; step 3 (no query, constant) leaves 16/3; step 4 is read at the
    centre of steps 3–5, (start of step 3 + 19)/2, residual Σ(d − mean d)² = 4 with
    d = c4 − p = 0, 1, −1, −1, 1, 0; step 5 leaves 2: 1 − (16/3 + 4 + 2)/21 = 29/63.
    Transitions: the cuts into steps 2 and 3 are exact; the cut into step 4 falls at step 3's
    start (d = t3 − t2 = 4, 6, 2, 4, 4, 4: residual 8); no clip's step is ≥ 5, so the cut into
    step 5 sits at the video's end in every video and counts as unexplained (its 8; the old
    Fisher-z mean left such transitions out): 1 − (8 + 8)/(92/3) = 11/23."""
    labels = _five()
    attn = np.zeros((6, 20, 3))
    for v, lab in enumerate(labels):
        attn[v, :, :2] = _following(lab)[:, :2]
        late = lab >= 2
        attn[v, late, 2] = 1 / late.sum()
    adapt, boundary = _adapt(attn, labels)
    assert adapt == pytest.approx(29 / 63, abs=1e-12)
    assert boundary == pytest.approx(11 / 23, abs=1e-12)


def test_adaptivity_undefined_when_the_steps_never_move():
    labels = np.repeat(_labels(4, 4, 4, 4, 4)[None], 3, axis=0)
    attn = np.stack([_following(lab) for lab in labels])
    with pytest.warns(UndefinedMetricWarning, match="step centres sit at the same frames"):
        out = parsing_metrics(attn, labels)
    assert math.isnan(out["parse_adapt"]) and math.isnan(out["parse_adapt_boundary"])


def test_explained_variance_pins_its_reduction():
    """One sum over videos and columns, a free offset per column, no slope, clipped at 0."""
    true = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 16.0]])  # spreads 8 and 24: total 32
    # column 0 tracked with offset 5 (residual 0); column 1 at half the slope: residual
    # Σ(d − mean d)², d = 10 − 5, 10 − 5, 16 − 8 = 5, 5, 8 → mean 6 → 1 + 1 + 4 = 6
    parsed = np.array([[5.0, 5.0], [7.0, 5.0], [9.0, 8.0]])
    assert explained_variance(true, parsed, "x") == pytest.approx(1 - 6 / 32, abs=1e-15)
    parsed[:, 1] = [8.0, 8.0, 2.0]  # moving against the truth: residual > total, clipped
    assert explained_variance(true, parsed, "x") == 0.0
    true[1, 1] = np.nan  # a video without column 1: left out of that column only
    parsed[:, 1] = [0.0, 123.0, 6.0]  # column 1 now exact up to an offset 10 on videos 0 and 2
    assert explained_variance(true, parsed, "x") == 1.0


def test_random_maps_score_well_below_a_parser():
    rng = np.random.default_rng(0)
    labels = np.stack([_labels(*VARIED[v % 6]) for v in range(60)])
    attn = torch.softmax(torch.from_numpy(rng.standard_normal((60, 12, 3))), dim=1).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # its cuts may never move
        out = parsing_metrics(attn, labels)
    assert out["parse_acc"] < 0.6 and out["parse_aiou50"] < 0.1 and out["parse_order"] < 0.2
    assert out["parse_boundary"] > 3 and out["parse_extra"] > 2
    assert abs(out["parse_adapt"]) < 0.1
    assert not out["parse_adapt_boundary"] > 0.3  # NaN (cuts that never move) or small


def test_unknown_labels_and_bad_inputs():
    labels = np.stack([_labels(3, 4, 5), np.full(12, -1)])
    attn = np.stack([_following(labels[0])] * 2)
    with pytest.warns(UndefinedMetricWarning, match="at least two videos, got 1"):
        out = parsing_metrics(attn, labels)
    assert set(out) == set(METRICS) and out["parse_acc"] == 1.0  # the unlabelled video left out
    assert parsing_metrics(attn, np.full((2, 12), -1)) == {}
    half = labels.copy()
    half[1, :6] = 0
    with pytest.raises(ValueError, match=r"videos \[1\] have some frames labelled"):
        parsing_metrics(attn, half)
    with pytest.raises(ValueError, match="not a multiple of the 12 clips"):
        parsing_metrics(attn, np.zeros((2, 13), dtype=np.int64))
    with pytest.raises(ValueError, match=r"\(N, T, K\).*\(N, F\)"):
        parsing_metrics(attn[0], labels)


def test_single_video_and_non_finite_attention():
    labels = np.stack([_labels(*lengths) for lengths in VARIED[:2]])
    attn = np.stack([_following(lab) for lab in labels])
    attn[1, 0, 0] = np.nan
    with pytest.warns(UndefinedMetricWarning) as record:
        out = parsing_metrics(attn, labels)
    messages = [str(w.message) for w in record]
    assert any("1 videos with non-finite attention are left out" in m for m in messages)
    assert any("needs at least two videos, got 1" in m for m in messages)
    assert out["parse_acc"] == 1.0 and math.isnan(out["parse_adapt"])
