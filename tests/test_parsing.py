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


def test_fixed_chunks_do_not_adapt():
    """Queries at fixed positions (thirds of the video, barely jittered) over steps of varying
    length: adaptivity ≈ 0; without the jitter the centres are constant and r is undefined."""
    labels = np.stack([_labels(*lengths) for lengths in VARIED])
    chunks = np.zeros((12, 3))
    for k in range(3):
        chunks[4 * k : 4 * k + 4, k] = 0.25
    fixed = np.repeat(chunks[None], len(VARIED), axis=0)
    with pytest.warns(UndefinedMetricWarning) as record:
        out = parsing_metrics(fixed, labels)
    messages = " ".join(str(w.message) for w in record)
    assert "query 1's attention centre sits at frame 1.5 in all 6 videos" in messages
    assert math.isnan(out["parse_adapt"]) and math.isnan(out["parse_adapt_boundary"])
    assert out["parse_acc"] < 1

    # jitter: move ε_v of each query's mass onto its chunk's last clip (centre + 1.5·ε_v), with ε
    # orthogonal to the centres of every query's split-level step, so r is 0 by construction
    parses = [parse_video(fixed[v], labels[v]) for v in range(6)]
    split = [np.bincount([p.matched[k] for p in parses]).argmax() for k in range(3)]
    steps = np.array([[p.step_centres[split[k]] for k in range(3)] for p in parses])  # (6, 3)
    z = np.linalg.svd(np.column_stack([np.ones(6), steps]).T)[2][-1]  # ⟂ constant and steps
    eps = 0.01 * (1 + z / np.abs(z).max())
    jittered = fixed * (1 - eps)[:, None, None]
    for k in range(3):
        jittered[:, 4 * k + 3, k] += eps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # the cuts are still fixed
        out = parsing_metrics(jittered, labels)
    assert abs(out["parse_adapt"]) < 1e-6
    # the same jitter, made to follow the steps, reads as adaptive
    follow = fixed * 0.99
    for k in range(3):
        follow[:, 4 * k + 3, k] += 0.01 * (steps[:, k] - steps[:, k].min()) / 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        assert parsing_metrics(follow, labels)["parse_adapt"] > 0.99


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
