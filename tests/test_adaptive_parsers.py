"""The unsupervised parsers that follow each video (tpt_aqa.models.adaptive, model/parser=…)."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from torch import nn

from tpt_aqa import train as train_entry
from tpt_aqa.config import build_module
from tpt_aqa.models import (
    TPT,
    GroupHeads,
    MonotoneAlignParser,
    PairStage,
    PrecomputedEncoder,
    SlotCompetitionParser,
    SoftBoundaryParser,
)
from tpt_aqa.models.adaptive import (
    boundary_membership,
    competition,
    monotone_alignment,
    moving_average,
)
from tpt_aqa.scoring.losses import TPTCriterion

from .conftest import TINY, compose_cfg, run_module

B, T, C, D, K = 3, 12, 8, 16, 4
PARSERS = {
    "boundary": SoftBoundaryParser,
    "slots": SlotCompetitionParser,
    "align": MonotoneAlignParser,
    "align_refine": functools.partial(MonotoneAlignParser, refine=2),
}
CONFIGS = ["boundary", "slots", "align"]


@pytest.fixture
def clips() -> torch.Tensor:
    return torch.randn(B, T, C, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- every design
@pytest.mark.parametrize("name", PARSERS)
def test_shapes_and_attention_columns_sum_to_one(name, clips):
    torch.manual_seed(0)
    parser = PARSERS[name](C, D, num_queries=K)
    parts, attn = parser(clips)
    assert parts.shape == (B, K, D) and parser.out_dim == D
    y = {"slots": 3, "align_refine": 3}.get(name, 1)  # slots: 3 iterations by default
    assert attn.shape == (B, y, T, K)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(2), torch.ones(B, y, K))


@pytest.mark.parametrize("name", PARSERS)
def test_gradient_reaches_every_parameter_and_the_clips(name, clips):
    torch.manual_seed(0)
    parser = PARSERS[name](C, D, num_queries=K)
    x = clips.clone().requires_grad_(True)
    parts, attn = parser(x)
    # parts through a fixed random readout, plus the maps' centres (what the rank loss reads)
    readout = torch.randn(K, D, generator=torch.Generator().manual_seed(1))
    centres = (attn * torch.arange(T, dtype=attn.dtype)[:, None]).sum(2)
    ((parts * readout).sum() + centres.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in parser.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"


@pytest.mark.parametrize("name", PARSERS)
def test_refuses_release_decoder_options_naming_the_key(name):
    with pytest.raises(ValueError, match=r"model\.parser\.pe_memory.*ablation=pe_memory"):
        PARSERS[name](C, D, num_queries=K, pe_memory=True)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_refuses_a_decoder_ablation(tmp_path, name):
    cfg = compose_cfg(tmp_path, *TINY, f"model/parser={name}", "ablation=pe_memory")
    with pytest.raises(Exception, match=r"model\.parser\.pe_memory"):
        build_module(cfg)


@pytest.mark.parametrize("name", CONFIGS)
def test_fast_dev_run(tiny_cfg, name):
    results = train_entry.run(tiny_cfg("debug=fast_dev_run", f"model/parser={name}"))
    assert -1 <= results["test/srcc"] <= 1 and results["test/rl2"] > 0
    assert 0 <= results["test/parse_acc"] <= 1 and 0 <= results["test/parse_order"] <= 1


def make_tpt(parser) -> TPT:
    return TPT(
        encoder=PrecomputedEncoder(C),
        parser=parser,
        pair_stage=lambda in_dim, d_model: PairStage(in_dim, d_model, dropout=0.0),
        heads=lambda in_dim, num_groups: GroupHeads(in_dim, num_groups, hidden_dim=8),
        d_model=D,
        num_queries=K,
        num_groups=4,
    )


def test_attention_losses_switch_keeps_maps_for_evaluation(clips):
    torch.manual_seed(0)
    quiet = make_tpt(SoftBoundaryParser)  # attention_losses=False by default
    out = quiet(clips, clips.flip(0))
    assert out.attn_query is None and out.attn_exemplar is None
    assert quiet.encode(clips).attn.shape == (B, 1, T, K)  # the parse metrics still see them
    labels, offsets = torch.zeros(2 * B, dtype=torch.long), torch.full((2 * B,), 0.5)
    losses = TPTCriterion()(out, labels, offsets)
    assert losses["loss_rank"] == 0 and losses["loss_sparsity"] == 0
    loud = make_tpt(lambda **kw: SoftBoundaryParser(**kw, attention_losses=True))
    out = loud(clips, clips.flip(0))
    assert out.attn_query.shape == (B, 1, T, K)
    assert TPTCriterion()(out, labels, offsets)["loss_rank"] > 0


# --------------------------------------------------------------------------- boundary
def test_boundary_membership_hand_computed():
    # K = 2, τ = 1: one cut at ½; P = 0 → (σ(½), σ(−½)), P = 1 → (σ(−½), σ(½))
    m = boundary_membership(torch.tensor([[0.0, 1.0]]), 2, 1.0)
    s = 1 / (1 + math.exp(-0.5))
    torch.testing.assert_close(m, torch.tensor([[[s, 1 - s], [1 - s, s]]]))
    # K = 3, P = 1 (the middle of segment 2), τ = 1: (1 − σ(½), σ(½) − σ(−½), σ(−½))
    m = boundary_membership(torch.tensor([[1.0]]), 3, 1.0)
    torch.testing.assert_close(m, torch.tensor([[[1 - s, 2 * s - 1, 1 - s]]]))


def test_boundary_equal_scores_cut_equal_chunks():
    parser = SoftBoundaryParser(C, D, num_queries=2, temperature=0.01)
    for p in parser.edge.parameters():
        nn.init.zeros_(p)  # every edge scores softplus(0): the progress rises evenly
    x = torch.randn(1, 10, C)
    torch.testing.assert_close(parser.progress(x), torch.arange(10.0)[None] / 9)
    _, attn = parser(x)
    assert attn[0, 0].argmax(1).tolist() == [0] * 5 + [1] * 5


class _Edges(nn.Module):
    """Stand-in edge network: a large score on the given edges, a tiny one elsewhere."""

    def __init__(self, edges: list[list[int]], num_edges: int) -> None:
        super().__init__()
        raw = torch.full((len(edges), 1, num_edges), -20.0)
        for i, cut in enumerate(edges):
            raw[i, 0, [e - 1 for e in cut]] = 20.0  # edge e lies between clips e−1 and e
        self.raw = raw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.raw


def test_boundary_cuts_each_video_where_its_edges_score():
    parser = SoftBoundaryParser(C, D, num_queries=3, temperature=0.05)
    parser.edge = _Edges([[2, 9], [6, 8]], num_edges=T - 1)
    _, attn = parser(torch.randn(2, T, C))
    segments = attn[:, 0].argmax(2).tolist()
    assert segments[0] == [0] * 2 + [1] * 7 + [2] * 3
    assert segments[1] == [0] * 6 + [1] * 2 + [2] * 4


def test_boundary_segments_are_ordered_and_progress_monotone(clips):
    torch.manual_seed(0)
    parser = SoftBoundaryParser(C, D, num_queries=K)
    progress = parser.progress(clips * 5)
    assert (progress.diff(dim=1) >= 0).all()
    torch.testing.assert_close(progress[:, 0], torch.zeros(B))
    torch.testing.assert_close(progress[:, -1], torch.full((B,), K - 1.0))
    member = boundary_membership(progress, K, parser.temperature)
    torch.testing.assert_close(member.sum(2), torch.ones(B, T))
    assert (member.argmax(2).diff(dim=1) >= 0).all()


# --------------------------------------------------------------------------- slots
def test_competition_hand_computed():
    # clip 1 fits query 2 three times better; clip 2 is a tie: shares (¼, ¾) and (½, ½)
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    attn = competition(logits)
    expected = torch.tensor([[[0.25 / 0.75, 0.75 / 1.25], [0.5 / 0.75, 0.5 / 1.25]]])
    torch.testing.assert_close(attn, expected, atol=1e-5, rtol=0)


def test_competition_is_over_queries_not_clips():
    # a clip every query fits equally is shared; one that fits query 1 only is query 1's alone
    logits = torch.tensor([[[30.0, -30.0], [0.0, 0.0], [0.0, 0.0]]])
    attn = competition(logits)
    assert attn[0, 0, 1] < 1e-5  # query 2 lost clip 1 to query 1
    torch.testing.assert_close(attn[0, 1:, 1], torch.full((2,), 0.5), atol=1e-5, rtol=0)


def test_slots_smoothing_lets_neighbours_vote():
    # one clip favours query 2 (logit 3) between neighbours that do not: width 3 outvotes it
    logits = torch.tensor([[[0.0, 0.0], [0.0, 3.0], [0.0, 0.0], [0.0, 0.0]]])
    smoothed = moving_average(logits, 3)
    torch.testing.assert_close(smoothed[0, :, 1], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert moving_average(logits, 1) is logits
    with pytest.raises(ValueError, match=r"model\.parser\.smooth"):
        SlotCompetitionParser(C, D, num_queries=2, smooth=2)


# --------------------------------------------------------------------------- align
def brute_force_alignment(scores: torch.Tensor, stay: torch.Tensor) -> torch.Tensor:
    """The posterior by enumerating every left-to-right alignment of one video ``(T,K)``."""
    t_len, k_len = scores.shape
    post, total = torch.zeros(t_len, k_len, dtype=torch.float64), 0.0
    for moves in itertools.product((0, 1), repeat=t_len - 1):
        if sum(moves) != k_len - 1:
            continue
        path = [0, *itertools.accumulate(moves)]
        weight = sum(float(scores[t, k]) for t, k in enumerate(path))
        weight += sum(float(stay[path[t]]) for t in range(1, t_len) if moves[t - 1] == 0)
        w = math.exp(weight)
        total += w
        for t, k in enumerate(path):
            post[t, k] += w
    return post / total


def test_alignment_hand_computed():
    # T = 3, K = 2: alignments (1,1,2) and (1,2,2); clip 2 fits segment 1 three times better
    scores = torch.zeros(1, 3, 2)
    scores[0, 1, 0] = math.log(3.0)
    post = monotone_alignment(scores, torch.zeros(2))
    torch.testing.assert_close(post[0], torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.0, 1.0]]))
    # K = T: one alignment, the identity
    post = monotone_alignment(torch.randn(2, 4, 4), torch.randn(4))
    torch.testing.assert_close(post, torch.eye(4).expand(2, 4, 4))


def test_alignment_matches_enumeration():
    g = torch.Generator().manual_seed(3)
    scores, stay = torch.randn(2, 7, 3, generator=g) * 2, torch.randn(3, generator=g)
    post = monotone_alignment(scores.double(), stay.double())
    for i in range(2):
        torch.testing.assert_close(post[i], brute_force_alignment(scores[i], stay))


def test_alignment_is_ordered_and_covers_every_segment():
    scores = torch.randn(4, 15, 5, generator=torch.Generator().manual_seed(1)) * 10
    post = monotone_alignment(scores, torch.zeros(5))  # float32: sums hold to ~1e-5
    torch.testing.assert_close(post.sum(2), torch.ones(4, 15), atol=1e-4, rtol=0)
    expected_segment = (post * torch.arange(5.0)).sum(2)  # non-decreasing along every video
    assert (expected_segment.diff(dim=1) >= -1e-4).all()
    ones = torch.ones(4)
    torch.testing.assert_close(post[:, 0, 0], ones, atol=1e-4, rtol=0)  # first clip: segment 1
    torch.testing.assert_close(post[:, -1, -1], ones, atol=1e-4, rtol=0)  # last: segment K
    assert (post.sum(1) >= 1 - 1e-4).all()  # every segment holds at least one clip


def test_alignment_follows_content_not_position():
    # two videos, 3 segments; each clip's content says its segment, boundaries differ per video
    truth = [[0] * 2 + [1] * 7 + [2] * 3, [0] * 6 + [1] * 2 + [2] * 4]
    scores = torch.full((2, T, 3), -2.0)
    for i, seg in enumerate(truth):
        scores[i, torch.arange(T), torch.tensor(seg)] = 2.0
    post = monotone_alignment(scores, torch.zeros(3))
    assert post.argmax(2).tolist() == truth


def test_alignment_is_finite_with_extreme_scores_and_refuses_k_above_t():
    scores = (torch.randn(2, 6, 3) * 1e3).requires_grad_(True)
    post = monotone_alignment(scores, torch.zeros(3))
    post[..., 1].sum().backward()
    assert torch.isfinite(post).all() and torch.isfinite(scores.grad).all()
    with pytest.raises(ValueError, match="does not exist"):
        monotone_alignment(torch.zeros(1, 2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"model\.num_queries=5"):
        MonotoneAlignParser(C, D, num_queries=5)(torch.randn(1, 4, C))


def test_align_refinement_finds_each_videos_change_without_query_help():
    # queries that fit nothing (zero) and identity keys: only the video's own content can cut it
    parser = MonotoneAlignParser(4, 4, num_queries=2, context=0, refine=3, center=False)
    with torch.no_grad():
        nn.init.zeros_(parser.query_embed)
        parser.key.weight.copy_(torch.eye(4)[:, :, None])
        nn.init.zeros_(parser.key.bias)
        parser.log_spread.fill_(math.log(0.05))
    x = torch.zeros(2, T, 4)
    x[0, :3, 0] = x[0, 3:, 1] = 1.0  # video 1 changes at clip 3, video 2 at clip 8
    x[1, :8, 2] = x[1, 8:, 3] = 1.0
    _, attn = parser(x)
    assert attn.shape == (2, 4, T, 2)
    first = attn[:, 0].argmax(2)  # uniform over alignments: the middle, whatever the video
    assert first[0].tolist() == first[1].tolist()
    last = attn[:, -1].argmax(2).tolist()
    assert last == [[0] * 3 + [1] * (T - 3), [0] * 8 + [1] * (T - 8)]


def test_slots_temperature_sharpens_the_competition(clips):
    torch.manual_seed(0)
    warm = SlotCompetitionParser(C, D, num_queries=K, iterations=1, temperature=1.0)
    cold = SlotCompetitionParser(C, D, num_queries=K, iterations=1, temperature=0.05)
    cold.load_state_dict(warm.state_dict())

    def entropy(attn: torch.Tensor) -> torch.Tensor:
        return -(attn * attn.log()).sum(2).mean()  # per query column over the clips

    _, a_warm = warm(clips * 10)
    _, a_cold = cold(clips * 10)
    assert entropy(a_cold) < entropy(a_warm) - 0.1
    with pytest.raises(ValueError, match=r"model\.parser\.temperature"):
        SlotCompetitionParser(C, D, num_queries=K, temperature=0.0)


def test_an_ablation_that_swaps_the_parser_refuses_another_parser():
    conflict = train_entry.parser_ablation_conflict
    assert conflict({"ablation": "adaptive_pool", "model/parser": "adaptive_pool"}) is None
    assert conflict({"ablation": "baseline_pool", "model/parser": "mean_pool"}) is None
    assert conflict({"ablation": "no_rank_loss", "model/parser": "align"}) is None
    assert conflict({"ablation": None, "model/parser": "slots"}) is None
    problem = conflict({"ablation": "baseline_pool", "model/parser": "align"})
    assert "ablation=baseline_pool replaces the parser with model/parser=mean_pool" in problem
    assert "drop model/parser=align" in problem


def test_cli_refuses_a_parser_with_a_parser_ablation(tmp_path):
    proc = run_module(
        "train", "model/parser=slots", "ablation=temporal_conv", f"hydra.run.dir={tmp_path}"
    )
    assert proc.returncode != 0
    assert "ablation=temporal_conv replaces the parser" in proc.stderr + proc.stdout
