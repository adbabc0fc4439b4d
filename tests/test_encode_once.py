"""Encode-once evaluation equals the reference's pair-by-pair evaluation, with far fewer passes;
per-group exemplar lists, encoded once per group."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from tpt_aqa.config import build_datamodule, build_module, validate_config
from tpt_aqa.core.errors import ConfigError
from tpt_aqa.scoring.stage import exemplar_lists, group_exemplars
from tpt_aqa.training.pairwise_eval import count_encoder_passes, naive_predictions

from .conftest import TINY_MODEL, compose_cfg, quiet_trainer

VIDEO = [
    "experiment=synthetic_video_tpt",
    "dataset.num_train=12",
    "dataset.num_test=4",
    "dataset.val_fraction=0.25",
    "model.num_queries=3",
]


def _check_cached_equals_naive(module, dm, trainer: L.Trainer) -> None:
    """Both paths predict the same, with the backbone passes the theory says."""
    with count_encoder_passes(module) as cached:
        trainer.test(module, datamodule=dm, verbose=False)
    with count_encoder_passes(module) as naive:
        got = naive_predictions(module, dm, "test")
    want = module.last_records["test"]
    assert torch.equal(got["index"], want["index"])
    assert torch.equal(got["index"], torch.as_tensor(dm.table.rows("test")))
    assert torch.allclose(got["target"], want["target"], rtol=0, atol=1e-5)
    assert torch.allclose(got["pred"], want["pred"], rtol=0, atol=1e-5)
    assert want["pred"].std() > 0  # not a constant the two paths could share by accident

    exemplars = dm.eval_exemplars["test"]  # (N, M), -1 padded
    real = exemplars >= 0
    distinct = len(np.unique(exemplars[real]))
    assert cached.videos == distinct + len(dm.table.rows("test"))
    assert naive.videos == 2 * int(real.sum())


def test_encode_once_matches_naive_on_features(tiny_cfg):
    cfg = tiny_cfg()
    L.seed_everything(0)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)  # trained a little: non-trivial deltas
    _check_cached_equals_naive(module, dm, trainer)
    assert dm.eval_exemplars["test"].min() >= 0  # every query has its M = 10 exemplars


def test_encode_once_matches_naive_through_i3d(tmp_path):
    cfg = compose_cfg(tmp_path, *TINY_MODEL, *VIDEO)
    L.seed_everything(0)
    dm = build_datamodule(cfg)
    module = build_module(cfg)  # random-init I3D; trainer.test fits the score groups
    _check_cached_equals_naive(module, dm, quiet_trainer())
    # 9 training videos in 2 groups: fewer than M = 10 per group, so the lists are padded and the
    # mask decides the mean
    assert (dm.eval_exemplars["test"] < 0).any()


def test_naive_predictions_subset_and_mode(tiny_cfg):
    cfg = tiny_cfg()
    L.seed_everything(0)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    with pytest.raises(ValueError, match="score groups are not fitted"):
        naive_predictions(module, dm)
    module.score_groups.fit(dm.train_deltas(), dm.delta_cap)
    module.train()
    full = naive_predictions(module, dm)
    with count_encoder_passes(module) as count:
        part = naive_predictions(module, dm, limit=5)
    assert module.training  # mode restored
    assert count.videos == 2 * int((dm.eval_exemplars["test"][:5] >= 0).sum())
    assert torch.equal(part["index"], full["index"][:5])
    assert torch.allclose(part["pred"], full["pred"][:5], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no exemplar lists for split 'train'"):
        naive_predictions(module, dm, "train")


def test_per_group_exemplars_encode_each_group_exemplar_once(tiny_cfg):
    """eval_exemplars=per_group: every test video is compared with its group's fixed M (the list
    the exemplar bank stores), each encoded once; pair by pair gives the same predictions; and the
    release's per-video protocol, given lists that happen to equal the fixed ones, predicts the
    same with the same backbone passes."""
    cfg = tiny_cfg("eval_exemplars=per_group")
    L.seed_everything(0)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    assert module.eval_exemplars == "per_group"
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    fixed = group_exemplars(dm.table, dm.num_exemplars, dm.seed)  # (G, M) table rows
    test_rows = dm.table.rows("test")
    lists = fixed[dm.table.group[test_rows]]
    assert np.array_equal(exemplar_lists(dm, "test", "per_group"), lists)
    assert not np.array_equal(lists, dm.eval_exemplars["test"])  # not the per-video lists
    with count_encoder_passes(module) as per_group:
        trainer.test(module, datamodule=dm, verbose=False)
    want = module.last_records["test"]
    groups = np.unique(dm.table.group[test_rows])
    assert per_group.videos == int((fixed[groups] >= 0).sum()) + len(test_rows)
    assert per_group.videos < len(np.unique(dm.eval_exemplars["test"])) + len(test_rows)
    got = naive_predictions(module, dm, "test")  # the same lists, pair by pair
    assert torch.equal(got["index"], want["index"])
    assert torch.allclose(got["pred"], want["pred"], rtol=0, atol=1e-5)

    dm.eval_exemplars["test"] = lists  # per-video lists that equal the fixed ones
    module.eval_exemplars = "per_video"
    with count_encoder_passes(module) as per_video:
        trainer.test(module, datamodule=dm, verbose=False)
    assert per_video.videos == per_group.videos
    assert torch.equal(module.last_records["test"]["pred"], want["pred"])


def test_unknown_protocol_is_a_config_error(tiny_cfg):
    with pytest.raises(ConfigError, match="eval_exemplars=per_clip: use eval_exemplars=per_video"):
        validate_config(tiny_cfg("eval_exemplars=per_clip"))
