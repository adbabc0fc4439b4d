"""Distributed evaluation scores every video exactly once and matches a single process; the training
losses' epoch means cover every rank's pairs."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tpt_aqa.config import build_datamodule, build_module
from tpt_aqa.scoring.losses import LossMeans

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


def _rank_loss_means(rank: int, port: int, out) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    means = LossMeans()
    # rank 0: 3 pairs at loss 1, then 1 pair at loss 5; rank 1: 2 pairs at loss 4
    for loss, pairs in [(1.0, 3), (5.0, 1)] if rank == 0 else [(4.0, 2)]:
        means.update({"loss": torch.tensor(loss)}, pairs)
    out[rank] = means.compute()["loss"].item()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_loss_means_cover_every_ranks_pairs():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = torch.multiprocessing.Manager().dict()
    torch.multiprocessing.spawn(_rank_loss_means, args=(port, out), nprocs=2)
    # (3·1 + 1·5 + 2·4) / 6 pairs = 16 / 6 on both ranks (a mean of the ranks' means: 2.0 and 4.0)
    assert out[0] == pytest.approx(16 / 6) and out[1] == pytest.approx(16 / 6)
