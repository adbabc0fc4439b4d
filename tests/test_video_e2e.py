"""The video path end to end: rendered videos → clips → I3D → TPT, and the feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tpt_aqa import extract_features, verify
from tpt_aqa import train as train_entry
from tpt_aqa.config import ConfigError, build_module
from tpt_aqa.core.cache import CacheMismatchError

from .conftest import TINY_MODEL, compose_cfg

VIDEO_DATA = [
    "dataset=synthetic_video",
    "model/encoder=i3d",
    "dataset.num_train=12",
    "dataset.num_test=4",
    "dataset.val_fraction=0.25",
]
VIDEO = [*VIDEO_DATA, "model.num_queries=3"]


def test_synthetic_video_clips(tmp_path):
    dm = instantiate(compose_cfg(tmp_path, *TINY_MODEL, *VIDEO).dataset)
    dm.setup()
    clips = dm.load_video(0, "test")
    assert clips.shape == (5, 3, 8, 32, 32) and clips.dtype == torch.uint8
    assert torch.equal(clips, dm.load_video(0, "exemplar"))  # center crop: deterministic
    torch.manual_seed(0)
    draws = {dm.load_video(0, "train").float().sum().item() for _ in range(6)}
    assert len(draws) > 1  # random crop / flip per draw
    # clip t spans frames 8t..8t+7 and carries the phase of its middle frame
    assert torch.equal(dm.clip_labels(0), torch.as_tensor(dm.data.phases[0, 4::8]))


@pytest.mark.parametrize(
    "extra", [[], ["trainer.precision=bf16-mixed", "model.encoder.channels_last=true"]]
)
def test_end_to_end_fast_dev_run(tmp_path, extra):
    cfg = compose_cfg(tmp_path, *TINY_MODEL, *VIDEO, "debug=fast_dev_run", *extra)
    results = train_entry.run(cfg)
    # bf16 too: its non-finite predictions came from a wrong CPU weight gradient (Unit3D pads
    # explicitly where it would occur; tests/test_speed.py)
    assert -1 <= results["test/srcc"] <= 1
    assert results["test/rl2"] > 0 and 0 <= results["test/parse_acc"] <= 1


def test_end_to_end_optimizer_groups(tmp_path):
    module = build_module(compose_cfg(tmp_path, *TINY_MODEL, *VIDEO))
    optim = module.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in optim.param_groups}
    assert lrs == {"backbone": 1e-4, "body": 1e-4, "heads": 1e-3}
    in_optim = {id(p) for g in optim.param_groups for p in g["params"]}
    logits = module.model.encoder.unused_parameters()
    assert logits and not any(id(p) in in_optim for p in logits)
    backbone = [p for g in optim.param_groups if g["name"] == "backbone" for p in g["params"]]
    assert len(backbone) == sum(1 for p in module.model.encoder.parameters()) - len(logits)


def extract(tmp_path, out, *overrides):
    cfg = compose_cfg(
        tmp_path, *VIDEO_DATA, f"out_dir={out}", "dtype=float32", *overrides, config="extract"
    )
    return extract_features.run(cfg), cfg


def test_extract_features_resume_and_manifest(tmp_path, capsys):
    out = tmp_path / "cache"
    extract(tmp_path, out)
    assert "16 extracted, 0 already there" in capsys.readouterr().out
    files = sorted(out.glob("*.npy"))
    assert len(files) == 16 and (out / "manifest.json").is_file()
    first = np.load(files[0])
    assert first.shape == (5, 1024) and first.dtype == np.float32
    files[3].unlink()
    mtime = files[0].stat().st_mtime_ns
    extract(tmp_path, out)
    assert "1 extracted, 15 already there" in capsys.readouterr().out
    assert files[0].stat().st_mtime_ns == mtime  # resumed: finished videos untouched
    assert np.array_equal(np.load(files[0]), first)  # random init seeded: same features
    with pytest.raises(ConfigError, match=r"encoder\.normalization"):
        extract(tmp_path, out, "model.encoder.normalization=minus_one_one")
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no partial files


def test_cached_features_match_the_encoder_and_train(tmp_path):
    out = tmp_path / "cache"
    _, cfg = extract(tmp_path, out)
    dm = instantiate(cfg.dataset)
    dm.setup()
    torch.manual_seed(cfg.seed)
    encoder = instantiate(cfg.model.encoder).eval()
    with torch.no_grad():
        want = encoder(dm.load_video(5, "test")[None])[0].numpy()
    assert np.allclose(np.load(out / f"{dm.table.ids[5]}.npy"), want, atol=1e-5)
    train_cfg = compose_cfg(
        tmp_path,
        *TINY_MODEL,
        "experiment=features_tpt",
        f"dataset.root={out}",
        "dataset.delta_cap=10",
        "model.num_queries=3",
        "debug=fast_dev_run",
        "dataset.expect={view: test, encoder.normalization: imagenet}",
    )
    assert "test/srcc" in train_entry.run(train_cfg)
    train_cfg.dataset.expect = {"view": "exemplar"}
    with pytest.raises(CacheMismatchError, match="view: cache has 'test', requested 'exemplar'"):
        train_entry.run(train_cfg)


def test_benchmark_datamodule_on_its_feature_cache(tmp_path):
    """A video datamodule with features_root trains on the cache and checks its manifest."""
    out = tmp_path / "cache"
    extract(tmp_path, out)
    cfg = compose_cfg(
        tmp_path,
        *TINY_MODEL,
        *VIDEO,
        "model/encoder=precomputed",
        f"dataset.features_root={out}",
        "debug=fast_dev_run",
    )
    assert "test/srcc" in train_entry.run(cfg)
    cfg.dataset.sampler.stride = 7
    with pytest.raises(
        CacheMismatchError, match=r"video\.sampler\.stride: cache has 8, requested 7"
    ):
        train_entry.run(cfg)
    cfg.dataset.sampler.stride = 8
    next(out.glob("*.npy")).unlink()
    with pytest.raises(CacheMismatchError, match="lacks 1 of 16 videos"):
        train_entry.run(cfg)


def test_verify_reads_video_datamodules_only(tmp_path, capsys):
    cfg = compose_cfg(tmp_path, "dataset=synthetic_video", "dataset.num_train=8", config="verify")
    assert verify.run(cfg) == []  # rendered in memory: every frame is there and decodes
    assert "dataset is ready" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="reads no video files to verify: it takes clip features"):
        verify.run(compose_cfg(tmp_path, "dataset=synthetic", config="verify"))
