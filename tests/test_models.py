"""Unit tests of the model stages (docs/method.md §2–3): shapes, attention maths, gradients, variants."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from tpt_aqa.models import (
    TPT,
    AdaptivePoolParser,
    GroupHeads,
    MeanPoolParser,
    PairStage,
    Parsed,
    PrecomputedEncoder,
    TemporalParsingDecoder,
    TPTOutput,
)
from tpt_aqa.scoring.losses import TPTCriterion

B, T, C, D, K, G, Y = 3, 6, 16, 32, 3, 8, 2


def make_decoder(**kwargs) -> TemporalParsingDecoder:
    args = dict(in_dim=C, d_model=D, num_queries=K, num_layers=Y, ffn_dim=32, num_heads=4)
    args.update(kwargs)
    return TemporalParsingDecoder(**args)


def make_tpt(parser=None, **kwargs) -> TPT:
    if parser is None:
        parser = functools.partial(TemporalParsingDecoder, num_layers=Y, ffn_dim=32, num_heads=4)
    return TPT(
        encoder=PrecomputedEncoder(C),
        parser=parser,
        pair_stage=functools.partial(PairStage),
        heads=functools.partial(GroupHeads, hidden_dim=16),
        d_model=D,
        num_queries=K,
        num_groups=G,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def clips() -> torch.Tensor:
    return torch.randn(B, T, C)


# --------------------------------------------------------------------------- encoder


def test_precomputed_encoder_passes_features_through_as_float(clips):
    enc = PrecomputedEncoder(C)
    out = enc(clips.double())
    assert out.dtype == torch.float32
    assert out.shape == (B, T, C)
    torch.testing.assert_close(out, clips)


@pytest.mark.parametrize("shape", [(B, T, C + 1), (B, T, C - 1), (B, C), (B, T, 1, C)])
def test_precomputed_encoder_rejects_wrong_input(shape):
    with pytest.raises(ValueError, match="out_dim"):
        PrecomputedEncoder(C)(torch.randn(*shape))


def test_precomputed_encoder_rejects_non_positive_width():
    with pytest.raises(ValueError):
        PrecomputedEncoder(0)


def test_tpt_encode_rejects_wrong_feature_width():
    model = make_tpt()
    with pytest.raises(ValueError):
        model.encode(torch.randn(B, T, C + 4))


# --------------------------------------------------------------------------- decoder


def test_decoder_shapes(clips):
    parts, attn = make_decoder()(clips)
    assert parts.shape == (B, K, D)
    assert attn.shape == (B, Y, T, K)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"self_attn_layers": "all"}, {"detr_order": True}, {"pe_memory": True, "pe_query": True}],
)
def test_decoder_attention_sums_to_one_over_clips(clips, kwargs):
    dec = make_decoder(num_layers=3, **kwargs).train()
    with torch.no_grad():
        _, attn = dec(clips)
    assert attn.shape == (B, 3, T, K)
    assert bool((attn >= 0).all())
    torch.testing.assert_close(attn.sum(dim=2), torch.ones(B, 3, K))
    # Not trivially uniform: queries look at different clips.
    assert float(attn.std(dim=2).min()) > 0


def test_self_attention_only_in_first_layer_by_default():
    dec = make_decoder(num_layers=3)
    assert isinstance(dec.layers[0].self_attn, nn.MultiheadAttention)
    assert dec.layers[1].self_attn is None
    assert dec.layers[2].self_attn is None
    assert not any(".self_attn." in n for n, _ in dec.layers[1:].named_parameters())


def test_self_attention_all_and_none():
    dec_all = make_decoder(num_layers=3, self_attn_layers="all")
    assert all(isinstance(layer.self_attn, nn.MultiheadAttention) for layer in dec_all.layers)
    assert dec_all.layers[0].self_attn.num_heads == 4
    dec_none = make_decoder(num_layers=3, self_attn_layers="none")
    assert all(layer.self_attn is None for layer in dec_none.layers)


def test_decoder_rejects_bad_switches():
    with pytest.raises(ValueError):
        make_decoder(self_attn_layers="last")
    with pytest.raises(ValueError):
        make_decoder(scale="log")
    with pytest.raises(ValueError):
        make_decoder(num_queries=0)
    with pytest.raises(ValueError):
        make_decoder(num_layers=0)


def test_temperature_is_a_learnable_scalar_per_layer_initialised_to_0_07():
    dec = make_decoder(num_layers=3)
    temps = [layer.temperature for layer in dec.layers]
    names = {n for n, _ in dec.named_parameters()}
    for i, tau in enumerate(temps):
        assert isinstance(tau, nn.Parameter)
        assert tau.requires_grad
        assert tau.shape == ()
        assert tau.item() == pytest.approx(0.07)
        assert f"layers.{i}.temperature" in names
    assert len({id(tau) for tau in temps}) == 3  # one per layer, not shared
    assert make_decoder(temperature_init=0.5).layers[0].temperature.item() == 0.5


def test_query_embeddings_are_xavier_initialised_parameters():
    dec = make_decoder()
    assert isinstance(dec.query_embed, nn.Parameter)
    assert dec.query_embed.shape == (K, D)
    # Xavier-uniform init of every parameter with more than one dimension.
    bound = math.sqrt(6.0 / (K + D))
    assert dec.query_embed.abs().max().item() <= bound
    assert dec.query_embed.abs().max().item() > bound / 2


@pytest.mark.parametrize(("scale", "divisor"), [("dim", D), ("sqrt_dim", math.sqrt(D))])
def test_first_layer_attention_formula(clips, scale, divisor):
    """The state starts at p = 0, so layer 0's map is softmax_T(key(x) · query(q) / divisor / τ)."""
    dec = make_decoder(scale=scale).eval()
    with torch.no_grad():
        dec.layers[0].temperature.fill_(0.05)
        layer = dec.layers[0]
        key = layer.key_proj(clips)  # (B, T, D)
        query = layer.query_proj(dec.query_embed)  # (K, D)
        expected = (torch.einsum("btd,kd->btk", key, query) / divisor / 0.05).softmax(dim=1)
        _, attn = dec(clips)
    torch.testing.assert_close(attn[:, 0], expected, atol=1e-6, rtol=1e-5)


def test_temperature_sharpens_attention(clips):
    dec = make_decoder().eval()
    with torch.no_grad():
        _, soft = dec(clips)
        for layer in dec.layers:
            layer.temperature.fill_(0.001)
        _, sharp = dec(clips)
    assert float(sharp[:, 0].max(dim=1).values.mean()) > float(soft[:, 0].max(dim=1).values.mean())


def _variant_output(base: TemporalParsingDecoder, clips: torch.Tensor, **kwargs):
    """The variant decoder with the base decoder's weights where they exist, in eval mode."""
    torch.manual_seed(1)
    variant = make_decoder(**kwargs)
    missing, unexpected = variant.load_state_dict(base.state_dict(), strict=False)
    variant.eval()
    with torch.no_grad():
        parts, attn = variant(clips)
    return parts, attn, missing, unexpected


@pytest.mark.parametrize(
    ("kwargs", "same_params"),
    [
        ({"self_attn_layers": "all"}, False),
        ({"self_attn_layers": "none"}, False),
        ({"detr_order": True}, True),
        ({"scale": "sqrt_dim"}, True),
        ({"pe_memory": True}, True),
        ({"pe_query": True}, True),
        ({"pe_memory": True, "pe_query": True}, True),
    ],
)
def test_paper_variants_run_and_change_the_output(clips, kwargs, same_params):
    base = make_decoder().eval()
    with torch.no_grad():
        ref_parts, _ = base(clips)
    parts, attn, missing, unexpected = _variant_output(base, clips, **kwargs)
    assert parts.shape == (B, K, D)
    assert attn.shape == (B, Y, T, K)
    assert bool(torch.isfinite(parts).all())
    torch.testing.assert_close(attn.sum(2), torch.ones(B, Y, K))
    if same_params:
        # Same weights, so any difference comes from the switch alone.
        assert not missing
        assert not unexpected
    assert float((parts - ref_parts).abs().max()) > 1e-3


def test_switches_that_only_touch_later_steps_keep_first_layer_attention(clips):
    """DETR order and extra self-attention leave layer 0's map alone (p = 0 before CA there)."""
    base = make_decoder().eval()
    with torch.no_grad():
        _, ref_attn = base(clips)
    _, attn_all, _, _ = _variant_output(base, clips, self_attn_layers="all")
    torch.testing.assert_close(attn_all[:, 0], ref_attn[:, 0])
    # pe_memory changes the keys, so layer 0 already differs.
    _, attn_pe, _, _ = _variant_output(base, clips, pe_memory=True)
    assert float((attn_pe[:, 0] - ref_attn[:, 0]).abs().max()) > 1e-4


def test_detr_order_differs_from_release_order(clips):
    base = make_decoder().eval()
    with torch.no_grad():
        ref_parts, ref_attn = base(clips)
    parts, attn, _, _ = _variant_output(base, clips, detr_order=True)
    # DETR order runs layer 0's self-attention before its cross-attention, on p = 0 (with PyTorch's
    # zero-initialised attention biases that leaves p = 0), and moves it out of the path between
    # layer 0's FFN and layer 1: the second layer's map and the parts differ.
    assert float((attn[:, 1] - ref_attn[:, 1]).abs().max()) > 1e-4
    assert float((parts - ref_parts).abs().max()) > 1e-3


def test_decoder_batched_equals_per_sample_in_eval(clips):
    dec = make_decoder(self_attn_layers="all", pe_memory=True, pe_query=True).eval()
    with torch.no_grad():
        parts, attn = dec(clips)
        for i in range(B):
            p_i, a_i = dec(clips[i : i + 1])
            torch.testing.assert_close(p_i[0], parts[i], atol=1e-5, rtol=0)
            torch.testing.assert_close(a_i[0], attn[i], atol=1e-5, rtol=0)


def test_decoder_dropout_only_active_in_train(clips):
    dec = make_decoder(dropout=0.5)
    dec.eval()
    with torch.no_grad():
        a, _ = dec(clips)
        b, _ = dec(clips)
    torch.testing.assert_close(a, b)
    dec.train()
    with torch.no_grad():
        c, _ = dec(clips)
    assert float((c - a).abs().max()) > 1e-4


# --------------------------------------------------------------------------- pooling parsers


def test_mean_pool_parser(clips):
    parser = MeanPoolParser(C, D)
    parts, attn = parser(clips)
    assert parts.shape == (B, 1, D)
    assert attn is None
    assert parser.out_dim == D
    torch.testing.assert_close(parts[:, 0], parser.proj(clips.mean(dim=1)))


@pytest.mark.parametrize("k", [0, 2, 5])
def test_mean_pool_parser_needs_one_query(k):
    with pytest.raises(ValueError, match="num_queries"):
        MeanPoolParser(C, D, num_queries=k)


def test_adaptive_pool_parser(clips):
    parser = AdaptivePoolParser(C, D, num_queries=K)
    parts, attn = parser(clips)
    assert parts.shape == (B, K, D)
    assert attn is None
    # T = 6 clips into K = 3 parts: clips (0, 1), (2, 3), (4, 5).
    for k in range(K):
        expected = parser.proj(clips[:, 2 * k : 2 * k + 2].mean(dim=1))
        torch.testing.assert_close(parts[:, k], expected)


# --------------------------------------------------------------------------- pair stage and heads


def test_pair_stage_shapes_and_order():
    stage = PairStage(in_dim=D, d_model=24).eval()
    a, b = torch.randn(B, K, D), torch.randn(B, K, D)
    with torch.no_grad():
        out = stage(a, b)
        expected = stage.mlp(torch.cat([a, b], dim=-1)).mean(dim=1)
        swapped = stage(b, a)
    assert out.shape == (B, 24)
    assert stage.out_dim == 24
    torch.testing.assert_close(out, expected)
    assert float((swapped - out).abs().max()) > 1e-4  # f(a, b) != f(b, a)


def test_pair_stage_rejects_mismatched_parts():
    stage = PairStage(in_dim=D, d_model=D)
    with pytest.raises(ValueError):
        stage(torch.randn(B, K, D), torch.randn(B, K + 1, D))


def test_pair_stage_forward_each_is_forward_on_the_broadcast_pairs():
    stage = PairStage(in_dim=D, d_model=24).eval()
    exemplars, queries = torch.randn(B, 4, K, D), torch.randn(B, 1, K, D)  # M = 4 per query
    with torch.no_grad():
        got = stage.forward_each(exemplars, queries)  # (B, 4, 24)
        pairs = stage(exemplars.flatten(0, 1), queries.expand(-1, 4, -1, -1).flatten(0, 1))
    assert got.shape == (B, 4, 24)
    torch.testing.assert_close(got.flatten(0, 1), pairs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="width 32"):
        stage.forward_each(exemplars[..., :-1], queries[..., :-1])


def test_group_heads_shapes_and_ranges():
    heads = GroupHeads(in_dim=D, num_groups=G, hidden_dim=16)
    with torch.no_grad():
        logits, offsets = heads(torch.randn(5, D) * 10)
    assert logits.shape == (5, G)
    assert offsets.shape == (5, G)
    assert bool(((offsets > 0) & (offsets < 1)).all())
    assert float(logits.min()) < 0  # raw logits, not squashed


# --------------------------------------------------------------------------- composer


def test_tpt_encode_compare_forward_shapes(clips):
    model = make_tpt()
    parsed = model.encode(clips)
    assert isinstance(parsed, Parsed)
    assert parsed.parts.shape == (B, K, D)
    assert parsed.attn.shape == (B, Y, T, K)
    logits, offsets = model.compare(parsed.parts, parsed.parts.flip(0))
    assert logits.shape == (B, G)
    assert offsets.shape == (B, G)
    out = model(clips, torch.randn(B, T, C))
    assert isinstance(out, TPTOutput)
    assert out.logits.shape == (2 * B, G)
    assert out.offsets.shape == (2 * B, G)
    assert out.attn_query.shape == (B, Y, T, K)
    assert out.attn_exemplar.shape == (B, Y, T, K)


def test_tpt_forward_stacks_both_pair_orders(clips):
    model = make_tpt().eval()
    exemplar = torch.randn(B, T, C)
    with torch.no_grad():
        out = model(clips, exemplar)
        q, e = model.encode(clips), model.encode(exemplar)
        fwd_logits, fwd_off = model.compare(e.parts, q.parts)  # s_query − s_exemplar
        bwd_logits, bwd_off = model.compare(q.parts, e.parts)  # s_exemplar − s_query
    torch.testing.assert_close(out.logits[:B], fwd_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits[B:], bwd_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.offsets[:B], fwd_off, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.offsets[B:], bwd_off, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.attn_query, q.attn, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.attn_exemplar, e.attn, atol=1e-5, rtol=0)
    assert float((out.logits[:B] - out.logits[B:]).abs().max()) > 1e-4


def test_tpt_batched_equals_per_sample_in_eval(clips):
    model = make_tpt().eval()
    exemplar = torch.randn(B, T, C)
    with torch.no_grad():
        out = model(clips, exemplar)
        for i in range(B):
            one = model(clips[i : i + 1], exemplar[i : i + 1])
            torch.testing.assert_close(one.logits[0], out.logits[i], atol=1e-5, rtol=0)
            torch.testing.assert_close(one.logits[1], out.logits[B + i], atol=1e-5, rtol=0)
            torch.testing.assert_close(one.offsets[0], out.offsets[i], atol=1e-5, rtol=0)
            torch.testing.assert_close(one.offsets[1], out.offsets[B + i], atol=1e-5, rtol=0)
            torch.testing.assert_close(one.attn_query[0], out.attn_query[i], atol=1e-5, rtol=0)


def test_tpt_with_pooling_parsers_has_no_attention(clips):
    with pytest.raises(ValueError):
        make_tpt(parser=MeanPoolParser)  # K = 3 queries: holistic pooling refuses
    model = TPT(
        encoder=PrecomputedEncoder(C),
        parser=MeanPoolParser,
        pair_stage=PairStage,
        heads=GroupHeads,
        d_model=D,
        num_queries=1,
        num_groups=G,
    )
    out = model(clips, torch.randn(B, T, C))
    assert out.logits.shape == (2 * B, G)
    assert out.attn_query is None
    assert out.attn_exemplar is None
    model = make_tpt(parser=AdaptivePoolParser)
    assert model.encode(clips).parts.shape == (B, K, D)


def test_tpt_pool_parts_pools_before_pairing(clips):
    model = make_tpt(pool_parts=True).eval()
    with torch.no_grad():
        a, b = torch.randn(B, K, D), torch.randn(B, K, D)
        logits, _ = model.compare(a, b)
        shuffled, _ = model.compare(a.flip(1), b)  # part order no longer matters
        expected, _ = model.heads(model.pair_stage(a.mean(1, keepdim=True), b.mean(1, True)))
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(shuffled, logits)


@pytest.mark.parametrize("pool_parts", [False, True])
def test_compare_each_scores_every_exemplar_as_compare_does(pool_parts):
    """Evaluation's split first layer (``compare_each``) against ``compare`` on the expanded pairs:
    equal to fp32 rounding, and within bf16 rounding under autocast (each half of the split
    layer is rounded to bf16 before the sum)."""
    model = make_tpt(pool_parts=pool_parts).eval()
    torch.manual_seed(1)
    exemplars, queries = torch.randn(B, 5, K, D), torch.randn(B, K, D)  # M = 5
    flat_q = queries[:, None].expand(-1, 5, -1, -1).flatten(0, 1)
    with torch.no_grad():
        logits, offsets = model.compare_each(exemplars, queries)  # (B, M, G)
        ref_logits, ref_offsets = model.compare(exemplars.flatten(0, 1), flat_q)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf_logits, bf_offsets = model.compare_each(exemplars, queries)
    assert logits.shape == offsets.shape == (B, 5, G)
    torch.testing.assert_close(logits.flatten(0, 1), ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(offsets.flatten(0, 1), ref_offsets, atol=1e-5, rtol=0)
    scale = float(ref_logits.abs().max())
    torch.testing.assert_close(
        bf_logits.float().flatten(0, 1), ref_logits, atol=0.03 * scale, rtol=0
    )
    torch.testing.assert_close(bf_offsets.float().flatten(0, 1), ref_offsets, atol=0.01, rtol=0)


def test_every_trainable_parameter_gets_a_gradient(clips):
    model = make_tpt().train()
    out = model(clips, torch.randn(B, T, C))
    labels = torch.randint(0, G, (2 * B,))
    offsets = torch.rand(2 * B)
    losses = TPTCriterion(margin=0.5)(out, labels, offsets)
    losses["loss"].backward()
    # The key projection's bias adds key_bias · query_k to every clip's logit of query k, and the
    # softmax over clips cancels it: its gradient is zero up to rounding by construction (docs/method.md §3
    # asks for "all with bias"). Every other parameter must learn.
    dead = {f"parser.layers.{i}.key_proj.bias" for i in range(Y)}
    for name, p in model.named_parameters():
        assert p.requires_grad, name
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        if name in dead:
            assert float(p.grad.abs().max()) < 1e-5, name
        else:
            assert float(p.grad.abs().max()) > 1e-6, name
    assert {n for n, _ in model.named_parameters()} >= dead


def test_param_groups_cover_every_parameter_once():
    model = make_tpt()
    groups = dict(model.param_groups())
    assert set(groups) == {"body", "heads"}  # the precomputed encoder has no parameters
    seen = [id(p) for params in groups.values() for p in params]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups["heads"]} == {id(p) for p in model.heads.parameters()}


def test_temporal_conv_parser_makes_k_parts_of_consecutive_clips():
    from tpt_aqa.models import TemporalConvParser

    parser = TemporalConvParser(in_dim=4, d_model=6, num_queries=3, num_clips=10)
    assert parser.conv.kernel_size == (3,) and parser.conv.stride == (3,)
    memory = torch.randn(2, 10, 4)
    parts, attn = parser(memory)
    assert parts.shape == (2, 3, 6) and attn is None
    # part k sees clips 3k..3k+2 only: changing clip 9 (left out, 10 = 3·3 + 1) changes nothing
    changed = memory.clone()
    changed[:, 9] += 5
    assert torch.allclose(parser(changed)[0], parts)
    changed[:, 4] += 5  # clip 4 belongs to part 1
    diff = (parser(changed)[0] - parts).abs().sum(-1)
    assert diff[:, 1].min() > 0 and diff[:, 0].max() == 0 and diff[:, 2].max() == 0
    with pytest.raises(ValueError, match="built for 10 clips, got 8"):
        parser(torch.randn(1, 8, 4))
