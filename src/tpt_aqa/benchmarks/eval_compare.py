"""Encode-once evaluation against the reference's pair-by-pair path
(``tpt_aqa.training.pairwise_eval``) through a random-init I3D at MTL-AQA size: backbone passes,
wall-clock and the largest prediction difference.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import numpy as np
import torch

from tpt_aqa.benchmarks.measure import compose_train, quiet_trainer, sync
from tpt_aqa.config import build_datamodule, build_module
from tpt_aqa.training.pairwise_eval import count_encoder_passes, naive_predictions


def eval_compare(device: str, size: int, naive_videos: int | None) -> dict[str, Any]:
    """Evaluation through I3D at MTL-AQA size, encode once vs the reference's pair by pair."""
    cfg = compose_train(
        "experiment=synthetic_video_tpt",
        "dataset.num_train=1059",
        "dataset.num_test=353",
        "dataset.val_fraction=0",
        f"dataset.size={size + 4}",
        f"dataset.train_transform.crop_size={size}",
        f"dataset.test_transform.crop_size={size}",
        "callbacks=none",
        "logger=none",
    )
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = quiet_trainer(device)
    test_rows = dm.table.rows("test")
    exemplars = dm.eval_exemplars["test"]  # (N, M)
    with count_encoder_passes(module) as cached:
        start = time.perf_counter()
        trainer.test(module, datamodule=dm, verbose=False)  # fits the score groups in setup
        sync(device)
        cached_s = time.perf_counter() - start
    want = module.last_records["test"]
    n = len(test_rows) if naive_videos is None else min(naive_videos, len(test_rows))
    module.to(device)  # Lightning's teardown moved it back to the CPU
    with count_encoder_passes(module) as naive:
        start = time.perf_counter()
        got = naive_predictions(module, dm, "test", limit=n)
        sync(device)
        naive_s = time.perf_counter() - start
    same = torch.searchsorted(want["index"], got["index"])  # both sorted by table row
    naive_full_s = naive_s / n * len(test_rows)
    naive_full_passes = 2 * int((exemplars >= 0).sum())
    return {
        "test_videos": len(test_rows),
        "train_videos": len(dm.table.rows("train")),
        "exemplars_per_video": dm.num_exemplars,
        "distinct_exemplars": len(np.unique(exemplars[exemplars >= 0])),
        "size": size,
        "clips": dm.num_clips,
        "clip_len": dm.sampler.clip_len,
        "cached_passes": cached.videos,
        "cached_s": cached_s,
        "naive_videos_timed": n,
        "naive_passes_timed": naive.videos,
        "naive_s_timed": naive_s,
        "naive_passes": naive_full_passes if n < len(test_rows) else naive.videos,
        "naive_s": naive_full_s,
        "naive_s_extrapolated": n < len(test_rows),
        "pass_ratio": naive_full_passes / cached.videos,
        "time_ratio": naive_full_s / cached_s,
        "max_abs_pred_diff": float((want["pred"][same] - got["pred"]).abs().max()),
        "targets_agree": bool(torch.equal(want["target"][same], got["target"])),
    }
