"""Checkpoints written before the library was grouped by stage still evaluate and predict.

``tests/data/flat_layout.ckpt`` was trained with the flat layout (``tpt_aqa.losses``,
``tpt_aqa.runtime``, ``tpt_aqa.faults`` …; tests/data/README.md says how), so its stored
configuration names modules that no longer exist; ``core.checkpoints.MOVED_MODULES`` maps them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tpt_aqa import eval as eval_entry
from tpt_aqa import predict as predict_entry
from tpt_aqa.core.checkpoints import MOVED_MODULES, current_target, stored_config
from tpt_aqa.training.runtime import load_checkpoint

from .conftest import compose_cfg

FIXTURE = Path(__file__).resolve().parent / "data" / "flat_layout.ckpt"


def targets(config) -> list[str]:
    """Every ``_target_`` in a nested configuration."""
    if isinstance(config, dict):
        found = [v for k, v in config.items() if k == "_target_"]
        return found + [t for v in config.values() for t in targets(v)]
    if isinstance(config, list):
        return [t for v in config for t in targets(v)]
    return []


def resolves(target: str) -> bool:
    module, _, name = target.rpartition(".")
    try:
        return hasattr(importlib.import_module(module), name)
    except ModuleNotFoundError:
        return False


def test_the_fixture_names_the_old_modules():
    raw = torch.load(FIXTURE, map_location="cpu", weights_only=True)["tpt_aqa"]["config"]
    old = set(targets(raw))
    assert {
        "tpt_aqa.losses.TPTCriterion",
        "tpt_aqa.runtime.adam",
        "tpt_aqa.faults.AtomicCheckpointIO",
    } <= old
    assert not all(resolves(t) for t in old)  # without the table, the config cannot be rebuilt


def test_every_stored_target_resolves_after_the_table():
    ckpt = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    new = targets(stored_config(ckpt))
    assert "tpt_aqa.scoring.losses.TPTCriterion" in new
    assert "tpt_aqa.training.runtime.adam" in new
    assert "tpt_aqa.training.faults.AtomicCheckpointIO" in new
    assert all(resolves(t) for t in new), [t for t in new if not resolves(t)]
    _, cfg = load_checkpoint(FIXTURE)
    assert cfg.criterion._target_ == "tpt_aqa.scoring.losses.TPTCriterion"


def test_moved_modules_name_modules_that_moved():
    for old, new in MOVED_MODULES.items():
        assert importlib.import_module(new).__name__ == new
        # gone, or the name of a package folder now (tpt_aqa.scoring)
        spec = importlib.util.find_spec(old)
        assert spec is None or spec.submodule_search_locations is not None, old
    # current targets, and targets outside the moved modules, stay as they are
    assert current_target("tpt_aqa.scoring.losses.TPTCriterion") == (
        "tpt_aqa.scoring.losses.TPTCriterion"
    )
    assert current_target("tpt_aqa.models.TPT") == "tpt_aqa.models.TPT"
    assert current_target("tpt_aqa.report.ProgressBar") == "tpt_aqa.core.report.ProgressBar"
    assert current_target("tpt_aqa.scoring.ScoreGroups") == "tpt_aqa.scoring.groups.ScoreGroups"


def test_eval_reproduces_the_old_checkpoints_test_metrics(tmp_path):
    """The metrics ``tpt_aqa.eval`` printed for this checkpoint with the flat layout."""
    cfg = compose_cfg(tmp_path, f"ckpt_path={FIXTURE}", "logger=none", config="eval")
    metrics = eval_entry.run(cfg)
    assert metrics["test/srcc"] == pytest.approx(0.559440553188324, abs=1e-6)
    assert metrics["test/rl2"] == pytest.approx(5.093152046203613, rel=1e-5)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["test/srcc"] == pytest.approx(metrics["test/srcc"])


def test_predict_scores_a_video_as_before(tmp_path):
    """The score ``tpt_aqa.predict`` gave this feature video with the flat layout."""
    video = tmp_path / "video.npy"
    np.save(video, np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32))
    cfg = compose_cfg(
        tmp_path,
        f"ckpt_path={FIXTURE}",
        f"input={video}",
        "difficulty=2.6",
        "figure=false",
        f"output_dir={tmp_path / 'out'}",
        config="predict",
    )
    (pred,) = predict_entry.run(cfg)
    assert pred.group == "dd2.6" and pred.scale == pytest.approx(2.6)
    assert pred.score == pytest.approx(16.597468068599703, rel=1e-5)
    assert pred.spread == pytest.approx(2.1629504334639686, rel=1e-4)
    assert (tmp_path / "out" / "video.json").is_file()
