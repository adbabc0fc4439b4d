"""Distributed evaluation scores every video exactly once and matches a single process."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tpt_aqa.config import build_datamodule, build_module

from .conftest import compose_cfg

TINY_EVAL = [
    "dataset.num_train=60",
    "dataset.num_test=25",  # odd over 2 ranks: the sampler pads one duplicate, which must go
    "dataset.feature_dim=16",
    "dataset.eval_batch_size=4",
    "model.d_model=32",
    "model.heads.hidden_dim=16",
    "logger=none",
    "callbacks=none",
]


def evaluate_on(tmp_path, devices: int) -> dict[str, float]:
    cfg = compose_cfg(tmp_path, *TINY_EVAL)
    dm = build_datamodule(cfg)
    torch.manual_seed(0)
    module = build_module(cfg)
    module.score_groups.fit(dm.train_deltas(), dm.delta_cap)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return trainer.test(module, datamodule=dm, verbose=False)[0]


@pytest.mark.slow
def test_two_process_evaluation_equals_single_process(tmp_path):
    single = evaluate_on(tmp_path / "one", devices=1)
    double = evaluate_on(tmp_path / "two", devices=2)
    assert set(single) == set(double)
    for key, value in single.items():
        assert double[key] == pytest.approx(value, abs=1e-6), key
