"""Speed switches give the plain path's results (issue 13): BatchNorm folding, torch.compile with
its fallback, the Adam implementations; losses and gradients compared over a few steps.

Tolerances: fp32 paths that only reorder arithmetic agree to 1e-5 (relative and absolute; through
I3D, relative to the largest output); bf16 autocast paths to 2e-2, about four bf16 roundings (bf16
keeps 8 significant bits, 2^-8 ≈ 4e-3), and a compiled bf16 first step's whole gradient to 1e-1
of its norm.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch import nn

from tpt_aqa.core.errors import ConfigError
from tpt_aqa.models import TPT, GroupHeads, PairStage, PrecomputedEncoder, TemporalParsingDecoder
from tpt_aqa.models.i3d import I3DEncoder, Unit3D
from tpt_aqa.models.speed import CompiledWithFallback, compile_with_fallback, fold_batch_norm
from tpt_aqa.scoring.losses import TPTCriterion
from tpt_aqa.training.runtime import adam

from .test_i3d import model_rgb_state

FP32 = {"atol": 1e-5, "rtol": 1e-5}
BF16 = {"atol": 2e-2, "rtol": 2e-2}


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    """Largest difference at most ``tol`` × the largest magnitude: deep networks (57 convolutions
    in I3D) carry values of every size, and a near-zero one only has absolute accuracy."""
    scale = want.abs().max()
    assert (got - want).abs().max() <= tol * scale, float((got - want).abs().max() / scale)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- BatchNorm folding


def random_bn(channels: int, eps: float = 1e-3) -> nn.BatchNorm3d:
    bn = nn.BatchNorm3d(channels, eps=eps)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.2)
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.2, 2.0)
    return bn.eval()


def test_folded_conv_equals_conv_then_batch_norm():
    conv = nn.Conv3d(4, 6, 3, padding=1, bias=False)
    bn = random_bn(6)
    x = torch.randn(2, 4, 3, 5, 5)
    weight, bias = fold_batch_norm(conv.weight, bn)
    torch.testing.assert_close(
        nn.functional.conv3d(x, weight, bias, padding=1), bn(conv(x)), **FP32
    )
    # hand-computed for one channel: γ/√(σ²+ε) scales the weight, β − μ·γ/√(σ²+ε) is the bias
    scale = bn.weight[2] / torch.sqrt(bn.running_var[2] + bn.eps)
    torch.testing.assert_close(weight[2], conv.weight[2] * scale)
    torch.testing.assert_close(bias[2], bn.bias[2] - bn.running_mean[2] * scale)


def test_folding_refuses_a_batch_norm_in_training_mode():
    with pytest.raises(RuntimeError, match="eval mode"):
        fold_batch_norm(torch.randn(6, 4, 1, 1, 1), random_bn(6).train())


def i3d_pair(**kwargs) -> tuple[I3DEncoder, I3DEncoder]:
    """Two I3D encoders with the same random weights and BN statistics (γ random too), one
    folding its BatchNorms."""
    state = model_rgb_state(seed=1)
    gen = torch.Generator().manual_seed(2)
    for key in state:
        if key.endswith("batch3d.weight"):
            state[key] = 0.5 + torch.rand(state[key].shape, generator=gen)
    encoders = []
    for fold in (False, True):
        enc = I3DEncoder(fold_bn=fold, **kwargs)
        enc.backbone.load_state_dict(state, strict=True)
        encoders.append(enc)
    return encoders[0], encoders[1]


def test_folded_i3d_equals_plain_in_eval_fp32():
    plain, folded = i3d_pair()
    x = torch.rand(2, 2, 3, 8, 32, 32)
    with torch.no_grad():
        want = plain.eval()(x)
        got = folded.eval()(x)
    assert_close_to_scale(got, want, 1e-5)
    units = [m for m in folded.modules() if isinstance(m, Unit3D)]
    assert units and all(u.fold_bn for u in units)


def test_folded_i3d_equals_plain_in_eval_bf16_channels_last():
    plain, folded = i3d_pair(channels_last=True)
    x = torch.rand(2, 2, 3, 8, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = plain.eval()(x).float()
        got = folded.eval()(x).float()
    assert_close_to_scale(got, want, 2e-2)


def test_folding_leaves_training_untouched():
    # In training the BatchNorms run apart even with frozen statistics: bit for bit the plain path.
    plain, folded = i3d_pair()
    x = torch.rand(2, 2, 3, 8, 32, 32)
    target = torch.randn(2, 2, plain.out_dim)
    outs = []
    for enc in (plain, folded):
        out = enc.train()(x)
        (out * target).mean().backward()
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    grads = dict(plain.named_parameters())
    for name, p in folded.named_parameters():
        if p.grad is not None:
            assert torch.equal(p.grad, grads[name].grad), name


def test_folding_follows_the_weights_as_they_train():
    # evaluation after an optimizer step sees the new weights (nothing folded is cached)
    plain, folded = i3d_pair()
    x = torch.rand(1, 2, 3, 8, 32, 32)
    for enc in (plain, folded):
        with torch.no_grad():
            enc.backbone.conv3d_2c_3x3.batch3d.weight.mul_(1.5)
            enc.backbone.mixed_4c.branch_1[1].conv3d.weight.mul_(0.5)
    with torch.no_grad():
        assert_close_to_scale(folded.eval()(x), plain.eval()(x), 1e-5)


# --------------------------------------------------------------------------- compile fallback


def test_compile_failure_at_compile_time_warns_once_and_runs_eager(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    layer = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    want = layer(x)
    with pytest.warns(UserWarning, match=r"torch.compile failed for model.compile_encoder"):
        compile_with_fallback(layer, "model.compile_encoder")
    assert isinstance(layer.forward, CompiledWithFallback) and not layer.forward.active
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        torch.testing.assert_close(layer(x), want)
    assert list(layer.state_dict()) == ["weight", "bias"]  # keys unchanged (no _orig_mod.)


def test_compile_failure_at_first_call_warns_once_and_stays_eager(monkeypatch):
    calls = []

    def lazily_broken(fn, **kwargs):
        def compiled(*args, **kw):
            calls.append(1)
            raise RuntimeError("inductor failed")

        return compiled

    monkeypatch.setattr(torch, "compile", lazily_broken)
    fn = compile_with_fallback(lambda x: x * 2, "model.compile_decoder")
    assert fn.active
    with pytest.warns(UserWarning, match="model.compile_decoder") as record:
        outs = [fn(torch.ones(2)) for _ in range(3)]
    assert len([w for w in record if "torch.compile failed" in str(w.message)]) == 1
    assert len(calls) == 1 and not fn.active  # the compiled function is not tried again
    assert all(torch.equal(o, torch.full((2,), 2.0)) for o in outs)


def test_an_error_of_the_input_propagates_and_keeps_compilation(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # "compiled" = the eager function
    layer = compile_with_fallback(nn.Linear(4, 3), "model.compile_encoder")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
            layer(torch.randn(2, 5))
    assert layer.forward.active


# --------------------------------------------------------------------------- training steps


C, D, K, G, T, B = 16, 32, 3, 8, 6, 4


def make_tpt(**kwargs) -> TPT:
    """A small TPT without dropout, so that steps are deterministic."""
    return TPT(
        encoder=PrecomputedEncoder(C),
        parser=functools.partial(
            TemporalParsingDecoder, num_layers=2, ffn_dim=32, num_heads=4, dropout=0.0
        ),
        pair_stage=functools.partial(PairStage, dropout=0.0),
        heads=functools.partial(GroupHeads, hidden_dim=16),
        d_model=D,
        num_queries=K,
        num_groups=G,
        **kwargs,
    )


def train_steps(model: TPT, optimizer: torch.optim.Optimizer, steps: int = 3):
    """Losses and gradients of a few training steps on fixed data."""
    criterion = TPTCriterion()
    gen = torch.Generator().manual_seed(3)
    history = []
    for _ in range(steps):
        query, exemplar = torch.randn(B, T, C, generator=gen), torch.randn(B, T, C, generator=gen)
        labels = torch.randint(0, G, (2 * B,), generator=gen)
        offsets = torch.rand(2 * B, generator=gen)
        optimizer.zero_grad(set_to_none=True)
        losses = criterion(model(query, exemplar), labels, offsets)
        losses["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        history.append(({k: v.detach() for k, v in losses.items()}, grads))
        optimizer.step()
    return history


def assert_same_steps(got, want, tol) -> None:
    for (losses, grads), (ref_losses, ref_grads) in zip(got, want, strict=True):
        for name in ref_losses:
            torch.testing.assert_close(losses[name], ref_losses[name], **tol)
        assert grads.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(grads[name], ref_grads[name], **tol, msg=name)


def paired_models(**kwargs) -> tuple[TPT, TPT]:
    torch.manual_seed(0)
    plain = make_tpt()
    torch.manual_seed(0)
    other = make_tpt(**kwargs)
    other.load_state_dict(plain.state_dict())
    return plain, other


def test_compiled_tpt_trains_like_the_plain_one(monkeypatch):
    # Dynamo traces the graphs and AOT autograd splits forward from backward, as with the default
    # backend; only Inductor's code generation (the slow test below) is left out.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    plain, compiled = paired_models(compile_encoder=True, compile_decoder=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = train_steps(compiled, torch.optim.Adam(compiled.parameters(), lr=1e-3))
    assert not [w for w in record if "torch.compile failed" in str(w.message)]
    want = train_steps(plain, torch.optim.Adam(plain.parameters(), lr=1e-3))
    assert compiled.compare.active and compiled.parser.forward.active
    assert_same_steps(got, want, FP32)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    # evaluation's pair path (each query against its M exemplars) is compiled too
    k, d = plain.num_queries, plain.parser.out_dim
    exemplars, queries = torch.randn(2, 3, k, d), torch.randn(2, k, d)
    with torch.no_grad():
        for got_t, want_t in zip(
            compiled.eval().compare_each(exemplars, queries),
            plain.eval().compare_each(exemplars, queries),
            strict=True,
        ):
            torch.testing.assert_close(got_t, want_t, **FP32)
    assert compiled.compare_each.active


@pytest.mark.parametrize("implementation", ["fused", "foreach"])
def test_adam_implementations_update_like_the_for_loop(implementation):
    # The same gradients (of magnitude 1, so that rounding cannot flip the sign of Adam's first
    # steps as it can for gradients near zero) give the same parameters after three steps.
    plain, other = paired_models()
    reference = adam(plain.parameters(), implementation="for_loop", lr=1e-3, weight_decay=0.01)
    optimizer = adam(other.parameters(), implementation=implementation, lr=1e-3, weight_decay=0.01)
    assert optimizer.defaults["foreach" if implementation == "foreach" else "fused"]
    start = {name: p.detach().clone() for name, p in other.named_parameters()}
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        for p, ref in zip(other.parameters(), plain.parameters(), strict=True):
            ref.grad = torch.randn(ref.shape, generator=gen)
            p.grad = ref.grad.clone()
        reference.step()
        optimizer.step()
    for (name, p), ref in zip(other.named_parameters(), plain.parameters(), strict=True):
        assert not torch.equal(p, start[name])  # it moved
        torch.testing.assert_close(p, ref, atol=1e-6, rtol=1e-6, msg=name)


def test_auto_adam_is_pytorchs_default_the_published_numbers_used():
    params = [nn.Parameter(torch.zeros(2))]
    auto = adam(params, implementation="auto", lr=1e-3)
    assert auto.defaults["fused"] is None and auto.defaults["foreach"] is None  # torch decides
    assert adam(params, implementation="fused", lr=1e-3).defaults["fused"] is True


def test_unknown_adam_implementation_names_the_key():
    with pytest.raises(ConfigError, match=r"optim.optimizer.implementation='fast'"):
        adam([nn.Parameter(torch.zeros(1))], implementation="fast")


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_inductor_compiled_tpt_trains_like_the_plain_one(bf16):
    plain, compiled = paired_models(compile_encoder=True, compile_decoder=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with warnings.catch_warnings(record=True) as record, autocast:
        warnings.simplefilter("always")
        got = train_steps(compiled, torch.optim.Adam(compiled.parameters(), lr=1e-3))
    assert not [w for w in record if "torch.compile failed" in str(w.message)]
    with autocast:
        want = train_steps(plain, torch.optim.Adam(plain.parameters(), lr=1e-3))
    assert compiled.compare.active
    if not bf16:
        assert_same_steps(got, want, FP32)
        return
    # In bf16 single gradients are too noisy to compare one by one (the temperature's, a sum over
    # every attention logit, differs from fp32 by 30 % in eager bf16 alone), and after one Adam
    # step the two runs part (Adam turns gradient noise near zero into ±lr steps): the first
    # step's loss agrees to 2e-2 and its whole gradient to 1e-1 of its norm (5.3 % measured).
    for (losses, grads), (ref_losses, ref_grads) in zip(got[:1], want[:1], strict=True):
        torch.testing.assert_close(losses["loss"], ref_losses["loss"], **BF16)
        flat = torch.cat([grads[n].flatten() for n in ref_grads])
        ref = torch.cat([ref_grads[n].flatten() for n in ref_grads])
        assert (flat - ref).norm() <= 1e-1 * ref.norm()


# --------------------------------------------------------------------------- bf16 on the CPU


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("depth", [2, 4])
def test_bf16_unit_gradients_match_fp32(depth, channels_last):
    # Depth 2 < kernel 3: the case where the CPU's bf16 weight gradient is wrong unless the input
    # is padded explicitly (I3D's Mixed_4 units at L = 8); depth 4 is the ordinary case.
    unit = Unit3D(32, 64, kernel_size=3)
    nn.init.kaiming_normal_(unit.conv3d.weight, nonlinearity="relu")
    x = torch.randn(6, 32, depth, 7, 7)
    grad_out = torch.randn(6, 64, depth, 7, 7)
    if channels_last:
        unit.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    unit.batch3d.eval()
    with torch.no_grad():
        unit.batch3d.bias.fill_(100.0)  # every output positive: the ReLU passes all gradients
    grads = []
    for bf16 in (False, True):
        unit.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = unit(x.bfloat16().float())  # both see the same bf16-representable input
        out.float().backward(grad_out)
        grads.append(unit.conv3d.weight.grad.clone())
    assert torch.isfinite(grads[1]).all()
    assert_close_to_scale(grads[1], grads[0], 2e-2)
