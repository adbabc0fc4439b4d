"""Tests of the I3D encoder (docs/method.md §9).

Checkpoint layouts, loader errors, padding, BN freezing, memory-saving paths and input handling;
all on CPU with small clips, except one 224² shape check.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tpt_aqa.models.i3d import I3DEncoder, InceptionI3d, MaxPool3dSame, Unit3D
from tpt_aqa.models.i3d_weights import I3DWeightsError, load_i3d_weights

# The channel table of docs/method.md §9, written out independently of the model:
# name → (in, branch_0, branch_1 reduce, branch_1, branch_2 reduce, branch_2, branch_3).
MIXED = {
    "3b": (192, 64, 96, 128, 16, 32, 32),
    "3c": (256, 128, 128, 192, 32, 96, 64),
    "4b": (480, 192, 96, 208, 16, 48, 64),
    "4c": (512, 160, 112, 224, 24, 64, 64),
    "4d": (512, 128, 128, 256, 24, 64, 64),
    "4e": (512, 112, 144, 288, 32, 64, 64),
    "4f": (528, 256, 160, 320, 32, 128, 128),
    "5b": (832, 256, 160, 320, 32, 128, 128),
    "5c": (832, 384, 192, 384, 48, 128, 128),
}
KINETICS = 400
MIXED_5C_WIDTH = 1024
CLIP = (8, 32, 32)  # L, H, W of the small test clips


def _unit(state: dict, name: str, cin: int, cout: int, k: int, gen: torch.Generator) -> None:
    """One Unit3D of the model_rgb.pth layout with He-scaled weights and plausible BN statistics."""
    std = math.sqrt(2.0 / (cin * k**3))
    state[f"{name}.conv3d.weight"] = torch.randn(cout, cin, k, k, k, generator=gen) * std
    state[f"{name}.batch3d.weight"] = torch.ones(cout)  # the real file has every γ = 1
    state[f"{name}.batch3d.bias"] = 0.1 * torch.randn(cout, generator=gen)
    state[f"{name}.batch3d.running_mean"] = 0.1 * torch.randn(cout, generator=gen)
    state[f"{name}.batch3d.running_var"] = 0.5 + torch.rand(cout, generator=gen)


def model_rgb_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the documented model_rgb.pth layout (no num_batches_tracked)."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    _unit(state, "conv3d_1a_7x7", 3, 64, 7, gen)
    _unit(state, "conv3d_2b_1x1", 64, 64, 1, gen)
    _unit(state, "conv3d_2c_3x3", 64, 192, 3, gen)
    for block, (cin, b0, b1a, b1b, b2a, b2b, b3) in MIXED.items():
        name = f"mixed_{block}"
        _unit(state, f"{name}.branch_0", cin, b0, 1, gen)
        _unit(state, f"{name}.branch_1.0", cin, b1a, 1, gen)
        _unit(state, f"{name}.branch_1.1", b1a, b1b, 3, gen)
        _unit(state, f"{name}.branch_2.0", cin, b2a, 1, gen)
        _unit(state, f"{name}.branch_2.1", b2a, b2b, 3, gen)
        _unit(state, f"{name}.branch_3.1", cin, b3, 1, gen)
    state["conv3d_0c_1x1.conv3d.weight"] = 0.01 * torch.randn(
        KINETICS, MIXED_5C_WIDTH, 1, 1, 1, generator=gen
    )
    state["conv3d_0c_1x1.conv3d.bias"] = torch.zeros(KINETICS)
    return state


def to_rgb_imagenet(key: str) -> str:
    """Rename a model_rgb.pth key to the rgb_imagenet.pt layout."""
    branches = {
        "branch_0": "b0",
        "branch_1.0": "b1a",
        "branch_1.1": "b1b",
        "branch_2.0": "b2a",
        "branch_2.1": "b2b",
        "branch_3.1": "b3b",
    }
    if key.startswith("conv3d_0c_1x1."):
        return key.replace("conv3d_0c_1x1.", "logits.")
    key = key.replace(".batch3d.", ".bn.")
    if key.startswith("conv3d_"):
        return "C" + key[1:]
    head, rest = key.split(".", 1)
    for ours, theirs in branches.items():
        if rest.startswith(ours + "."):
            rest = theirs + rest[len(ours) :]
    return f"Mixed_{head.removeprefix('mixed_')}.{rest}"


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return model_rgb_state()


@pytest.fixture(scope="module")
def weights_file(state, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("i3d") / "model_rgb.pth"
    torch.save(state, path)
    return str(path)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def encoder(state: dict[str, torch.Tensor], **kwargs) -> I3DEncoder:
    enc = I3DEncoder(**kwargs)
    enc.backbone.load_state_dict(state, strict=True)
    return enc


def videos(b: int = 2, t: int = 2, size: tuple[int, int, int] = CLIP) -> torch.Tensor:
    return torch.rand(b, t, 3, *size)  # (B, T, 3, L, H, W) in [0, 1]


# --------------------------------------------------------------------------- checkpoint layouts


def test_state_dict_is_model_rgb_layout(state):
    model = InceptionI3d()
    ours = {k: v.shape for k, v in model.state_dict().items()}
    counters = {k for k in ours if k.endswith(".num_batches_tracked")}
    assert {k: ours[k] for k in ours.keys() - counters} == {k: v.shape for k, v in state.items()}
    assert len(counters) == sum(k.endswith(".batch3d.running_mean") for k in state)

    model.load_state_dict(state, strict=True)  # a file without num_batches_tracked
    with_counters = {**state, **{k: torch.tensor(7) for k in counters}}
    model.load_state_dict(with_counters, strict=True)  # ... and one with it
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_load_i3d_weights_file(state, weights_file, tmp_path):
    model = InceptionI3d()
    assert load_i3d_weights(model, weights_file) == "model_rgb.pth"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())

    counters = {k: torch.tensor(3) for k in model.state_dict() if k.endswith("num_batches_tracked")}
    torch.save({**state, **counters}, tmp_path / "with_counters.pth")
    load_i3d_weights(model, tmp_path / "with_counters.pth")
    assert int(model.conv3d_1a_7x7.batch3d.num_batches_tracked) == 3


def test_rgb_imagenet_layout_gives_identical_output(state, weights_file, tmp_path):
    path = tmp_path / "rgb_imagenet.pt"
    torch.save({to_rgb_imagenet(k): v for k, v in state.items()}, path)
    assert "Mixed_4c.b1a.bn.running_var" in torch.load(path, weights_only=True)

    direct, mapped = InceptionI3d().eval(), InceptionI3d().eval()
    load_i3d_weights(direct, weights_file)
    assert load_i3d_weights(mapped, path) == "rgb_imagenet.pt"
    x = torch.randn(2, 3, *CLIP)
    with torch.no_grad():
        assert torch.equal(direct(x), mapped(x))


def test_ddp_module_prefix_is_stripped(state, tmp_path):
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)
    model = InceptionI3d()
    load_i3d_weights(model, path)
    assert torch.equal(
        model.mixed_5c.branch_3[1].conv3d.weight, state["mixed_5c.branch_3.1.conv3d.weight"]
    )


def test_mismatch_error_lists_keys(state, tmp_path):
    broken = dict(state)
    del broken["mixed_4d.branch_2.1.conv3d.weight"]
    broken["mixed_4d.branch_9.conv3d.weight"] = torch.zeros(1)
    broken["conv3d_2b_1x1.batch3d.bias"] = torch.zeros(65)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError) as info:
        load_i3d_weights(InceptionI3d(), path)
    message = str(info.value)
    assert isinstance(info.value, I3DWeightsError)
    for needle in (
        str(path),
        "model_rgb.pth",
        "mixed_4d.branch_2.1.conv3d.weight",
        "mixed_4d.branch_9.conv3d.weight",
        "conv3d_2b_1x1.batch3d.bias (65,)",
        "model.encoder.weights",
    ):
        assert needle in message

    imagenet = {to_rgb_imagenet(k): v for k, v in state.items() if "Mixed_3c" not in k}
    imagenet.pop("Mixed_3c.b0.conv3d.weight")
    torch.save(imagenet, path)
    with pytest.raises(I3DWeightsError, match=r"rgb_imagenet\.pt.*\n.*mixed_3c\.b"):
        load_i3d_weights(InceptionI3d(), path)


def test_missing_file_names_path_and_config_key(tmp_path):
    path = tmp_path / "nowhere" / "model_rgb.pth"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*model\.encoder\.weights"):
        I3DEncoder(weights=str(path))


# --------------------------------------------------------------------------- network


@pytest.mark.parametrize(("size", "kernel", "stride"), [(7, 7, 2), (8, 7, 2), (9, 3, 2), (4, 2, 2)])
def test_same_padding_gives_ceil_output(size, kernel, stride):
    x = torch.randn(1, 2, size, size + 1, size + 2)
    expected = tuple(math.ceil(n / stride) for n in x.shape[2:])
    assert Unit3D(2, 3, kernel, stride).eval()(x).shape[2:] == expected
    assert MaxPool3dSame(kernel, stride)(x).shape[2:] == expected


def test_same_padding_puts_extra_at_the_end_and_pools_over_minus_inf():
    # Size 8, kernel 3, stride 2: TF pads 0 before and 1 after, so window i covers 2i .. 2i+2.
    x = -torch.arange(1.0, 9.0).view(1, 1, 1, 1, 8) - 100
    out = MaxPool3dSame((1, 1, 3), (1, 1, 2))(x).flatten()
    assert torch.equal(out, x.flatten()[[0, 2, 4, 6]])  # a zero pad would have won the last max

    unit = Unit3D(1, 1, (1, 1, 3), (1, 1, 2)).eval()
    nn.init.ones_(unit.conv3d.weight)
    y = unit(torch.ones(1, 1, 1, 1, 8)).flatten()
    assert torch.allclose(y, torch.tensor([3.0, 3.0, 3.0, 2.0]), atol=1e-4)  # BN eval ≈ identity


def test_mixed_5c_of_a_224_clip_is_1024x1x7x7():
    with torch.no_grad():
        out = InceptionI3d().eval()(torch.randn(1, 3, 8, 224, 224))
    assert out.shape == (1, MIXED_5C_WIDTH, 1, 7, 7)


def test_encoder_output_is_mean_of_mixed_5c(state):
    enc = encoder(state).eval()
    x = videos(b=2, t=3, size=(8, 64, 64))
    with torch.no_grad():
        out = enc(x)
        normed = (x.flatten(0, 1) - enc.mean) / enc.std  # (B*T, 3, L, H, W)
        maps = enc.backbone(normed)
    assert enc.out_dim == MIXED_5C_WIDTH
    assert out.shape == (2, 3, MIXED_5C_WIDTH)
    assert maps.shape == (6, MIXED_5C_WIDTH, 1, 2, 2)
    assert torch.allclose(out, maps.mean(dim=(2, 3, 4)).view(2, 3, -1), atol=1e-6)


def test_clips_are_encoded_independently_and_in_chunks(state):
    whole, chunked = encoder(state).eval(), encoder(state, clip_chunk=3).eval()
    x = videos(b=2, t=4)
    with torch.no_grad():
        out = whole(x)
        # Batch size changes the conv algorithm, so equal only up to float rounding.
        torch.testing.assert_close(chunked(x), out, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(whole(x[1:, 2:3]), out[1:, 2:3], atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- training behaviour


@pytest.mark.parametrize("freeze_bn_stats", [True, False])
def test_bn_statistics_freeze(state, freeze_bn_stats):
    enc = encoder(state, freeze_bn_stats=freeze_bn_stats).train()
    bns = [m for m in enc.modules() if isinstance(m, nn.BatchNorm3d)]
    assert enc.training and all(m.training != freeze_bn_stats for m in bns)
    stats = {k: v.clone() for k, v in enc.state_dict().items() if "running" in k}
    gamma = bns[5].weight.detach().clone()

    optim = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=0.1)
    enc(videos()).square().mean().backward()
    optim.step()

    after = enc.state_dict()
    assert all(torch.equal(after[k], v) for k, v in stats.items()) == freeze_bn_stats
    assert not torch.equal(bns[5].weight, gamma)  # affine parameters train either way
    enc.eval()
    enc.train()
    assert all(m.training != freeze_bn_stats for m in bns)


def test_freeze_backbone_leaves_nothing_trainable(state):
    enc = encoder(state, freeze_backbone=True).train()
    assert not any(p.requires_grad for p in enc.parameters())
    assert not enc(videos()).requires_grad


def test_every_used_parameter_gets_a_gradient_and_logits_are_unused(state):
    enc = encoder(state).train()
    logits = enc.backbone.conv3d_0c_1x1.conv3d
    unused = enc.unused_parameters()
    assert len(unused) == 2
    assert {id(p) for p in unused} == {id(logits.weight), id(logits.bias)}
    # DDP reduces every parameter that requires grad, so the unused ones must not.
    assert not any(p.requires_grad for p in unused)

    enc(videos()).sum().backward()
    used = [(n, p) for n, p in enc.named_parameters() if not n.startswith("backbone.conv3d_0c")]
    assert all(p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0 for _, p in used)


# --------------------------------------------------------------------------- inputs


def test_uint8_input_equals_float_over_255(state):
    enc = encoder(state).eval()
    raw = torch.randint(0, 256, (1, 2, 3, *CLIP), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(enc(raw), enc(raw.float() / 255), atol=1e-5)


def test_normalizations(state):
    x = videos()
    imagenet = encoder(state, normalization="imagenet").eval()
    minus_one_one = encoder(state, normalization="minus_one_one").eval()
    with torch.no_grad():
        a, b = imagenet(x), minus_one_one(x)
        direct = minus_one_one.backbone(x.flatten(0, 1) * 2 - 1).mean(dim=(2, 3, 4))
    assert not torch.allclose(a, b, atol=1e-3)
    assert torch.allclose(b, direct.view_as(b), atol=1e-5)
    with pytest.raises(ValueError, match=r"model\.encoder\.normalization.*'kinetics'"):
        I3DEncoder(normalization="kinetics")


def test_rejects_feature_input(state):
    with pytest.raises(ValueError, match=r"\(B, T, 3, L, H, W\)"):
        I3DEncoder()(torch.randn(2, 5, MIXED_5C_WIDTH))


# --------------------------------------------------------------------------- memory-saving paths


@pytest.mark.parametrize(
    "variant",
    [
        {"channels_last": True},
        {"checkpointing": True},
        {"channels_last": True, "checkpointing": True},
    ],
)
def test_memory_variants_match_plain(state, variant):
    plain = encoder(state).train()
    other = encoder(state, **variant).train()
    if variant.get("channels_last"):
        weight = other.backbone.conv3d_2c_3x3.conv3d.weight
        assert weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = videos(size=(8, 64, 64))
    target = torch.randn(2, 2, MIXED_5C_WIDTH)
    outs = []
    for enc in (plain, other):
        out = enc(x)
        (out * target).mean().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)
    grads = dict(plain.named_parameters())
    for name, p in other.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-4, rtol=1e-3)


def test_checkpointing_counts_a_batch_into_bn_statistics_once(state):
    plain = encoder(state, freeze_bn_stats=False).train()
    recomputed = encoder(state, freeze_bn_stats=False, checkpointing=True).train()
    x = videos(size=(8, 64, 64))
    for enc in (plain, recomputed):
        enc(x).square().mean().backward()
    ref = plain.state_dict()
    assert int(ref["backbone.mixed_4c.branch_1.1.batch3d.num_batches_tracked"]) == 1
    for name, buf in recomputed.state_dict().items():
        torch.testing.assert_close(buf, ref[name], atol=1e-6, rtol=1e-6)
