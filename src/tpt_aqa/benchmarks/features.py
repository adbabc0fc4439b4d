"""Feature mode at MTL-AQA scale: training epochs through Lightning against the same steps in a
bare loop, one evaluation, FLOPs and MFU; and the two evaluation protocols' backbone passes and
test ρ (``eval_exemplars``, docs/method.md §7).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L

from tpt_aqa.benchmarks.measure import (
    arithmetic,
    compose_train,
    count_flops,
    quiet_trainer,
    train_step,
)
from tpt_aqa.config import build_datamodule, build_module
from tpt_aqa.training.pairwise_eval import count_encoder_passes


def feature_mode(
    device: str,
    overrides: tuple[str, ...] = (),
    peaks: dict[str, float] | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    """Training epochs and one evaluation on cached features at MTL-AQA scale, and the same epoch's
    steps (forward, backward, Adam over the same batches) in a bare loop without the trainer, so
    that ``epoch_s - bare_epoch_s`` is the training loop's own overhead (hooks, logging, checks).
    Epochs through the trainer and bare epochs alternate ``repeats`` times; the medians are
    reported, since one epoch varies by 10-20 % from run to run on a shared 2-core machine.

    Args:
        overrides: more config overrides (``speed=fast``, a switch).
        peaks: the device's peak TFLOP/s per precision (``device_peaks``), for the epoch's MFU.
        repeats: epochs of each kind.
    """
    dm, module, new_trainer = _feature_run(device, overrides)
    bf16 = str(module.config["trainer"]["precision"]).startswith("bf16")
    step = train_step(module, None, device, bf16)
    fits, bares = [], []
    for _ in range(repeats):
        trainer = new_trainer()
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        fits.append(time.perf_counter() - start)
        start = time.perf_counter()
        for batch in dm.train_dataloader():
            step(batch)
        bares.append(time.perf_counter() - start)
    start = time.perf_counter()
    trainer.test(module, datamodule=dm, verbose=False)
    evaluation = time.perf_counter() - start
    first = next(iter(dm.train_dataloader()))
    flops_per_pair = count_flops(lambda: step(first)) / len(first.query)
    fit, bare = statistics.median(fits), statistics.median(bares)
    pairs, videos = len(dm.table.rows("train")), len(dm.table.rows("test"))
    achieved = flops_per_pair * pairs / fit / 1e12
    peak = (peaks or {}).get(arithmetic(device, bf16))
    return {
        "train_pairs": pairs,
        "epoch_s": fit,
        "epochs_s": fits,
        "train_pairs_per_s": pairs / fit,
        "eval_videos": videos,
        "eval_s": evaluation,
        "eval_videos_per_s": videos / evaluation,
        "epoch_plus_eval_s": fit + evaluation,
        "precision": str(trainer.precision),
        "bare_epoch_s": bare,
        "bare_epochs_s": bares,
        "loop_overhead": (fit - bare) / fit,
        "flops_per_pair": flops_per_pair,
        "achieved_tflops": achieved,
        "peak_tflops": peak,
        "mfu": achieved / peak if peak else None,
    }


def _feature_run(device: str, overrides: tuple[str, ...] = (), epochs: int = 1):
    """Datamodule, module and a factory of fresh trainers (``epochs`` each, no validation, at the
    configuration's ``trainer.precision``) of the synthetic features at MTL-AQA scale (1,059
    training pairs' videos, 353 test videos, C = 1024, batch 24)."""
    cfg = compose_train(
        "dataset.num_train=1059",
        "dataset.num_test=353",
        "dataset.feature_dim=1024",
        "global_batch_size=24",
        "dataset.val_fraction=0",
        "callbacks=none",
        "logger=none",
        *overrides,
    )
    L.seed_everything(0, verbose=False)

    def new_trainer() -> L.Trainer:
        return quiet_trainer(
            device, max_epochs=epochs, limit_val_batches=0, precision=cfg.trainer.precision
        )

    return build_datamodule(cfg), build_module(cfg), new_trainer


def exemplar_protocols(device: str, epochs: int, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Both evaluation protocols (``eval_exemplars``) on one model trained ``epochs`` epochs on the
    features at MTL-AQA scale: backbone passes per evaluation and test ρ / R-ℓ2 of each."""
    dm, module, new_trainer = _feature_run(device, overrides=overrides, epochs=epochs)
    trainer = new_trainer()
    trainer.fit(module, datamodule=dm)
    out: dict[str, Any] = {
        "epochs": epochs,
        "test_videos": len(dm.table.rows("test")),
        "groups": len(dm.table.group_names),
        "exemplars_per_video": dm.num_exemplars,
    }
    for protocol in ("per_video", "per_group"):
        module.eval_exemplars = protocol
        with count_encoder_passes(module) as count:
            trainer.test(module, datamodule=dm, verbose=False)
        metrics = module.last_metrics["test"]
        out[protocol] = {"passes": count.videos, "srcc": metrics["srcc"], "rl2": metrics["rl2"]}
    return out
