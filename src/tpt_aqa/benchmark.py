"""Speed benchmark: ``python -m tpt_aqa.benchmark`` (``make bench``).

Prints a table and writes JSON with:

* feature mode at MTL-AQA scale (1,059 training pairs, T=20, C=1024, D=512, K=5, global batch 24;
  353 test videos × 10 exemplars): training epochs through Lightning alternating with the same
  steps in a bare loop (the loop's own overhead is the difference; medians of 3), one evaluation,
  the epoch's model FLOPs, TFLOP/s and MFU; at the defaults and with ``speed=fast`` (bf16 + fused
  Adam);
* end to end through I3D: training pairs/s in fp32 (contiguous) and with bf16 autocast +
  ``channels_last_3d``, and evaluation videos/s (encoding) in both;
* frame loading: decode + center crop of 103 JPEG frames of 224², frames/s on one core, PIL and
  simplejpeg;
* model FLOPs of one end-to-end training step (forward + backward, counted by
  ``torch.utils.flop_counter``, 2 FLOP per multiply-add) and the achieved TFLOP/s, with the model
  FLOPs utilisation (MFU) against the device's peak: a table of common GPUs for bf16/TF32/fp32
  (``--peak-tflops`` overrides it); on a CPU the peak is the measured rate of a large matmul in the
  same dtype, so the CPU MFU says how close the step is to what this CPU's matmuls reach;
* a per-op time breakdown of one training step (``torch.profiler``, top 15 ops by self time),
  written beside the JSON as ``<name>.profile.txt``;
* peak memory (process RSS on CPU, allocated memory on CUDA; on CUDA also the peak of one
  end-to-end step alone);
* with ``--eval-compare``: evaluation through a random-init I3D at MTL-AQA size (353 rendered test
  videos × 10 exemplars from 1,059 training videos, ``dataset=synthetic_video`` at
  ``--eval-size`` pixels), encode once (``AQAModule`` through ``trainer.test``) vs the reference's
  pair by pair (``tpt_aqa.evaluation.naive_predictions``): backbone passes of each path (counted
  with a hook on the encoder; they do not depend on the machine), wall-clock of each (one run,
  noisy on a shared CPU) and their ratios, and the largest prediction difference.
  ``--eval-naive-videos N`` times the naive path on the first N test videos only and scales its
  time per video to all 353 (the table says so).

Timings are wall-clock medians after a warm-up, except the ``--eval-compare`` section, which times
one run of each path; nothing here is asserted (tests never time).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir

from tpt_aqa.cli import at_least
from tpt_aqa.config import CONF_DIR, build_datamodule, build_module
from tpt_aqa.data.batch import PairBatch, Videos
from tpt_aqa.data.transforms import VideoTransform
from tpt_aqa.data.video import Decoder, Source, read_frame_folder, write_frame_folder
from tpt_aqa.errors import ConfigError
from tpt_aqa.evaluation import count_encoder_passes, naive_predictions
from tpt_aqa.report import stage
from tpt_aqa.runtime import resolve_device


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=unused", *overrides])


# Long work is never silent: a stage's progress is printed at least this often (the stage lines
# come from ``report.stage``; these indented lines say how far it got).
PROGRESS_EVERY_S = 10.0


_last_line = [time.perf_counter()]  # when the last progress line was printed


def note(text: str) -> None:
    """One indented progress line under the current stage."""
    print(f"    {text}", flush=True)
    _last_line[0] = time.perf_counter()


@contextmanager
def timed_stage(text: str) -> Iterator[None]:
    """A stage line, then, while the stage runs, a line whenever ``PROGRESS_EVERY_S`` pass without
    one (a single long call, such as one training step or one FLOP count, cannot tick itself)."""
    stage(text)
    _last_line[0] = start = time.perf_counter()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(min(1.0, PROGRESS_EVERY_S)):
            if time.perf_counter() - _last_line[0] >= PROGRESS_EVERY_S:
                note(f"still running, {time.perf_counter() - start:.0f} s into this stage")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class Ticker:
    """Counts units of long work (steps, calls) and prints how far it got, at most every
    ``PROGRESS_EVERY_S`` seconds, so a stage longer than that is visibly moving."""

    def __init__(self, what: str, total: int | None = None) -> None:
        self.what, self.total, self.done = what, total, 0
        self.start = self.last = time.perf_counter()

    def tick(self, count: int = 1) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            of = f" of {self.total}" if self.total else ""
            note(f"{self.what}: {self.done}{of} after {now - self.start:.0f} s")


class _Ticks(L.Callback):
    """Progress of a quiet trainer's fits and tests (its bar is off: it would be timed too)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.num_training_batches
        self.ticker = Ticker(f"epoch {trainer.current_epoch + 1}, steps", int(total))

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.ticker.tick()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.max_epochs and trainer.max_epochs > 1:  # one-epoch fits are noted by the caller
            note(
                f"epoch {trainer.current_epoch + 1} of {trainer.max_epochs}: "
                f"{time.perf_counter() - self.ticker.start:.1f} s"
            )

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ticker = Ticker("evaluation, batches", int(sum(trainer.num_test_batches)))

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.ticker.tick()


def _timed(fn, repeats: int, summary=statistics.median, what: str = "timed calls") -> float:
    """Seconds of one call of ``fn`` after a warm-up call: the median of ``repeats`` (or another
    ``summary`` of them); progress is printed when the calls are slow."""
    ticker = Ticker(what, repeats + 1)
    fn()  # warm-up
    ticker.tick()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        ticker.tick()
    return summary(times)


# Dense peak TFLOP/s (no sparsity) of common GPUs, from the vendors' datasheets: bf16 tensor cores
# with fp32 accumulation, TF32 tensor cores, and plain fp32. Matched against the CUDA device name in
# order, so the more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("RTX 4090", {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    ("RTX 3090", {"bf16": 71.0, "tf32": 35.6, "fp32": 35.6}),
)


def gpu_peak_tflops(name: str, precision: str) -> float | None:
    """Datasheet peak of the GPU called ``name`` for ``precision`` (bf16, tf32, fp32), if known."""
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peaks[precision]
    return None


def cpu_matmul_tflops(
    dtype: torch.dtype, n: int = 2048, repeats: int = 5, budget_s: float = 5.0
) -> tuple[float, int]:
    """Measured TFLOP/s of a square matmul on this CPU with the current thread count: the fastest
    of ``repeats`` (a peak; the median moved by 2× between two runs on a shared 2-core machine).

    The side grows from 256 by doubling up to ``n`` while the timed calls of the next size would
    take under ``budget_s``: where a dtype is emulated (bf16 without AVX512-BF16 or AMX runs at
    about 1/50 of fp32) a 2048² product takes over a minute, and six of them were minutes of
    silence.

    Returns:
        The TFLOP/s and the side measured.
    """
    side = 256
    while True:
        a, b = torch.randn(side, side).to(dtype), torch.randn(side, side).to(dtype)
        start = time.perf_counter()
        torch.mm(a, b)
        one = time.perf_counter() - start
        if side >= n or 8 * one * (repeats + 1) > budget_s:  # the next side costs 8×
            break
        side *= 2
    rate = 2 * side**3 / _timed(lambda: torch.mm(a, b), repeats, summary=min) / 1e12
    return rate, side


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (forward and backward if it runs both), 2 per multiply-add."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def profile_table(fn, device: str, rows: int = 15) -> tuple[str, list[dict[str, Any]]]:
    """Top ``rows`` ops of one call of ``fn`` by self time: a printable table and JSON records."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:rows]
    records = [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_ms": e.self_cpu_time_total / 1e3,
            "self_device_ms": getattr(e, "self_device_time_total", 0) / 1e3,
        }
        for e in events
    ]
    return prof.key_averages().table(sort_by=key, row_limit=rows), records


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
    step = _train_step(module, None, device, bf16)
    fits, bares = [], []
    label = " ".join(overrides) or "default"
    for i in range(repeats):
        trainer = new_trainer()
        start = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        fits.append(time.perf_counter() - start)
        loader = dm.train_dataloader()
        ticker = Ticker("bare epoch, steps", len(loader))
        start = time.perf_counter()
        for batch in loader:
            step(batch)
            ticker.tick()
        bares.append(time.perf_counter() - start)
        note(f"{label}, epoch {i + 1} of {repeats}: {fits[-1]:.1f} s, bare loop {bares[-1]:.1f} s")
    start = time.perf_counter()
    trainer.test(module, datamodule=dm, verbose=False)
    evaluation = time.perf_counter() - start
    note(f"{label}, evaluation: {evaluation:.1f} s")
    first = next(iter(dm.train_dataloader()))
    flops_per_pair = count_flops(lambda: step(first)) / len(first.query)
    fit, bare = statistics.median(fits), statistics.median(bares)
    pairs, videos = len(dm.table.rows("train")), len(dm.table.rows("test"))
    achieved = flops_per_pair * pairs / fit / 1e12
    peak = (peaks or {}).get(_arithmetic(device, bf16))
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
    cfg = _compose(
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
        return _quiet_trainer(
            device, max_epochs=epochs, limit_val_batches=0, precision=cfg.trainer.precision
        )

    return build_datamodule(cfg), build_module(cfg), new_trainer


def _quiet_trainer(device: str, **kwargs: Any) -> L.Trainer:
    """A one-device trainer that logs, saves and prints nothing: only what is timed runs."""
    return L.Trainer(
        accelerator=device,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_Ticks()],
        **kwargs,
    )


def exemplar_protocols(device: str, epochs: int, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Both evaluation protocols (``eval_exemplars``) on one model trained ``epochs`` epochs on the
    features at MTL-AQA scale: backbone passes per evaluation and test ρ / R-ℓ2 of each."""
    dm, module, new_trainer = _feature_run(device, overrides=overrides, epochs=epochs)
    trainer = new_trainer()
    trainer.fit(module, datamodule=dm)  # _Ticks prints the steps of long epochs
    note(f"trained {epochs} epochs; evaluating with both protocols")
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


def _render_protocols(p: dict[str, Any]) -> list[str]:
    n, m = p["test_videos"], p["exemplars_per_video"]
    lines = [
        f"evaluation protocols after {p['epochs']} epochs (features at MTL-AQA scale, "
        f"{n} test videos, {p['groups']} groups, M = {m}; the release encodes 2M = {2 * m} per video)",
        "  eval_exemplars   passes   per video   fewer than 2M   test ρ    R-ℓ2",
    ]
    for name in ("per_video", "per_group"):
        r = p[name]
        lines.append(
            f"  {name:<15}{r['passes']:8,}   {r['passes'] / n:9.2f}   {2 * m * n / r['passes']:12.1f}×"
            f"   {r['srcc']:.4f}   {r['rl2']:.4f}"
        )
    return lines


def _video_batch(pairs: int, clips: int, clip_len: int, size: int, device: str) -> PairBatch:
    gen = torch.Generator().manual_seed(0)

    def videos(offset: int) -> Videos:
        return Videos(
            video=torch.randint(
                0, 256, (pairs, clips, 3, clip_len, size, size), dtype=torch.uint8, generator=gen
            ),
            target=torch.rand(pairs, generator=gen) * 10,
            scale=torch.ones(pairs),
            group=torch.zeros(pairs, dtype=torch.long),
            class_id=torch.zeros(pairs, dtype=torch.long),
            index=torch.arange(pairs) + offset,
            clip_labels=torch.full((pairs, clips), -1),
        )

    batch = PairBatch(query=videos(0), exemplar=videos(pairs))
    return batch if device == "cpu" else L.pytorch.utilities.move_data_to_device(batch, device)


def end_to_end(
    device: str,
    pairs: int,
    clips: int,
    clip_len: int,
    size: int,
    repeats: int,
    peak_tflops: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Training steps and evaluation encoding through I3D, fp32 vs bf16 + channels_last_3d.

    Args:
        peak_tflops: the device's peak per precision (``bf16``, ``tf32``, ``fp32``), for the MFU;
            ``None`` leaves the MFU out.
    """
    batch = _video_batch(pairs, clips, clip_len, size, device)
    out: dict[str, Any] = {}
    for name, bf16 in (("fp32", False), ("bf16_channels_last", True)):
        module = _e2e_module(device, clips, f"model.encoder.channels_last={str(bf16).lower()}")
        autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()
        step = _train_step(module, batch, device, bf16)
        step_s = _timed(step, repeats, what=f"{name} training steps")
        note(f"{name}: training step {step_s:.2f} s")
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step()
            step_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        flops = count_flops(step)
        precision = _arithmetic(device, bf16)
        peak = peak_tflops.get(precision) if peak_tflops else None
        if name == "bf16_channels_last":
            out["profile_table"], out["profile"] = profile_table(step, device)
        module.eval()

        @torch.no_grad()
        def encode(module=module, autocast=autocast) -> None:
            with autocast:
                module.model.encode(batch.query.video)
            if device == "cuda":
                torch.cuda.synchronize()

        encode_s = _timed(encode, repeats, what=f"{name} encodings")
        note(f"{name}: encoding {encode_s:.2f} s")
        achieved = flops / step_s / 1e12
        out[name] = {
            "train_step_s": step_s,
            "train_pairs_per_s": pairs / step_s,
            "eval_videos_per_s": pairs / encode_s,
            "step_flops": flops,
            "flops_per_pair": flops / pairs,
            "achieved_tflops": achieved,
            "precision": precision,
            "peak_tflops": peak,
            "mfu": achieved / peak if peak else None,
        }
        if device == "cuda":
            out[name]["step_peak_memory_mb"] = step_peak_mb
    out["train_speedup"] = (
        out["bf16_channels_last"]["train_pairs_per_s"] / out["fp32"]["train_pairs_per_s"]
    )
    out["eval_speedup"] = (
        out["bf16_channels_last"]["eval_videos_per_s"] / out["fp32"]["eval_videos_per_s"]
    )
    return out


# Speed switches measured one at a time on top of bf16 + channels_last_3d (``--switches``): the
# config overrides of each; ``cudnn_benchmark`` sets ``trainer.benchmark``'s flag directly.
SWITCHES: dict[str, tuple[str, ...]] = {
    "plain": (),
    "compile": ("model.compile_encoder=true", "model.compile_decoder=true"),
    "adam_for_loop": ("optim.optimizer.implementation=for_loop",),
    "adam_foreach": ("optim.optimizer.implementation=foreach",),
    "fold_bn_eval": ("model.encoder.fold_bn=true",),
    "cudnn_benchmark": (),
}


def _e2e_module(device: str, clips: int, *overrides: str):
    """The TPT module through I3D on ``device``, score groups fitted to random scores."""
    cfg = _compose("model/encoder=i3d", f"model.num_queries={min(5, clips)}", *overrides)
    torch.manual_seed(0)
    module = build_module(cfg).to(device)
    module.score_groups.fit(torch.rand(100).numpy() * 10, cap=10.0)
    return module


def _train_step(module, batch: PairBatch | None, device: str, bf16: bool = True):
    """One training step (forward, backward, Adam) as a function to time: on ``batch``, or on the
    batch it is called with."""
    optimizer = module.configure_optimizers()
    module.train()

    def step(b: PairBatch | None = batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = module.compute_losses(b)["loss"]
        loss.backward()
        optimizer.step()
        _sync(device)

    return step


def switch_study(
    device: str, pairs: int, clips: int, clip_len: int, size: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Training pairs/s and evaluation videos/s of each speed switch alone (``SWITCHES``), bf16 +
    ``channels_last_3d``; the first timed call includes no compilation (``_timed`` warms up)."""
    batch = _video_batch(pairs, clips, clip_len, size, device)
    out = {}
    for name, overrides in SWITCHES.items():
        torch.backends.cudnn.benchmark = name == "cudnn_benchmark"
        module = _e2e_module(device, clips, "model.encoder.channels_last=true", *overrides)
        step_s = _timed(_train_step(module, batch, device), repeats, what=f"{name} steps")
        module.eval()

        @torch.no_grad()
        def encode(module=module) -> None:
            with torch.autocast(device, dtype=torch.bfloat16):
                module.model.encode(batch.query.video)
            _sync(device)

        out[name] = {
            "train_pairs_per_s": pairs / step_s,
            "eval_videos_per_s": pairs / _timed(encode, repeats, what=f"{name} encodings"),
        }
        note(f"switch {name}: {out[name]['train_pairs_per_s']:.3f} training pairs/s")
    torch.backends.cudnn.benchmark = False
    return out


def checkpointed_memory(device: str, pairs: int, clips: int, clip_len: int, size: int):
    """Peak memory of one bf16 training step with activation checkpointing (``--memory``).

    On CUDA the step's own peak of allocated memory; on the CPU the process's peak RSS so far
    (an upper bound: the CPU cannot reset it).
    """
    batch = _video_batch(pairs, clips, clip_len, size, device)
    module = _e2e_module(
        device, clips, "model.encoder.channels_last=true", "model.encoder.checkpointing=true"
    )
    step = _train_step(module, batch, device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()
    return {
        "pairs": pairs,
        "clips": clips,
        "clip_len": clip_len,
        "size": size,
        "peak_memory_mb": peak_memory_mb(device),
        "measure": "CUDA max allocated, this step" if device == "cuda" else "process peak RSS",
    }


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _arithmetic(device: str, bf16: bool) -> str:
    """The peak-table key of a step's arithmetic: ``bf16``, ``tf32`` or ``fp32``."""
    return "bf16" if bf16 else ("tf32" if _tf32_on(device) else "fp32")


def _tf32_on(device: str) -> bool:
    """Whether fp32 convolutions and matmuls run on TF32 tensor cores (PyTorch's cuDNN default)."""
    return device == "cuda" and torch.backends.cudnn.allow_tf32


def device_peaks(device: str, override: float | None) -> tuple[dict[str, float] | None, str]:
    """Peak TFLOP/s per precision for the MFU, and where they come from."""
    if override is not None:
        return {p: override for p in ("bf16", "tf32", "fp32")}, f"--peak-tflops {override:g}"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peaks = {p: gpu_peak_tflops(name, p) for p in ("bf16", "tf32", "fp32")}
        if peaks["fp32"] is None:
            return None, f"{name} is not in the peak table: pass --peak-tflops"
        return peaks, f"{name} datasheet (dense)"
    peaks, sides = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[name], sides[name] = cpu_matmul_tflops(dtype)
        note(f"{name} {sides[name]}² matmul: {peaks[name]:.3f} TFLOP/s")
    measured = ", ".join(f"{name} {side}²" for name, side in sides.items())
    return peaks, f"measured matmul on this CPU ({measured})"


def eval_compare(device: str, size: int, naive_videos: int | None) -> dict[str, Any]:
    """Evaluation through I3D at MTL-AQA size, encode once vs the reference's pair by pair."""
    cfg = _compose(
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
    trainer = _quiet_trainer(device)
    test_rows = dm.table.rows("test")
    exemplars = dm.eval_exemplars["test"]  # (N, M)
    with count_encoder_passes(module) as cached:
        start = time.perf_counter()
        trainer.test(module, datamodule=dm, verbose=False)  # fits the score groups in setup
        _sync(device)
        cached_s = time.perf_counter() - start
    note(f"encode once: {cached_s:.1f} s; now pair by pair on {naive_videos or 'all'} videos")
    want = module.last_records["test"]
    n = len(test_rows) if naive_videos is None else min(naive_videos, len(test_rows))
    module.to(device)  # Lightning's teardown moved it back to the CPU
    with count_encoder_passes(module) as naive:
        start = time.perf_counter()
        ticker = Ticker("pair by pair, videos", n)
        got = naive_predictions(module, dm, "test", limit=n, progress=ticker.tick)
        _sync(device)
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


def textured_frames(num_frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Synthetic frames with smooth structure and fine noise, so JPEG files get a realistic size.

    Pure noise would make decoding much slower than on real frames, flat colour much faster.

    Returns:
        uint8 RGB ``(F, 3, height, width)``.
    """
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (num_frames, 3, 8, 8)).astype(np.float32))
    smooth = torch.nn.functional.interpolate(
        coarse, size=(height, width), mode="bicubic", align_corners=False
    )
    noise = torch.from_numpy(rng.normal(0, 6, (num_frames, 3, height, width)).astype(np.float32))
    return (smooth + noise).clamp(0, 255).round().to(torch.uint8)


def make_benchmark_folder(
    folder: Source, num_frames: int = 103, size: int = 224, quality: int = 90, seed: int = 0
) -> Path:
    """Write ``num_frames`` textured ``size × size`` JPEG frames for ``benchmark_frame_loading``."""
    write_frame_folder(folder, textured_frames(num_frames, size, size, seed), quality=quality)
    return Path(folder)


def benchmark_frame_loading(
    folder: Source,
    num_frames: int = 103,
    decoder: Decoder = "auto",
    repeats: int = 5,
    crop_size: int = 224,
) -> float:
    """Frames per second of decoding + center-crop transform on one thread.

    Each repeat reads frames ``0 … num_frames - 1`` of the folder, center-crops them to
    ``crop_size`` (no resize) and makes the result contiguous, as clip gathering does. One warm-up
    run (folder listing, page cache) is not timed; the median repeat is reported. torch runs on a
    single thread during the measurement and is restored afterwards.

    Args:
        folder: a frame folder with at least ``num_frames`` JPEGs (``make_benchmark_folder``).
        num_frames: frames per repeat (103: one MTL-AQA / AQA-7 video).
        decoder: JPEG decoder (see ``read_frame_folder``).
        repeats: timed repeats.
        crop_size: center crop side.

    Returns:
        Decoded and transformed frames per second.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    transform = VideoTransform(resize=None, crop_size=crop_size, train=False)
    indices = np.arange(num_frames)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for run in range(repeats + 1):
            begin = time.perf_counter()
            transform(read_frame_folder(folder, indices, decoder=decoder)).contiguous()
            if run:
                times.append(time.perf_counter() - begin)
    finally:
        torch.set_num_threads(threads)
    return num_frames / statistics.median(times)


def frame_loading(repeats: int) -> dict[str, float | None]:
    """Decode + center crop of 103 frames of 224² JPEGs, frames/s on one core."""
    result: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_benchmark_folder(Path(tmp) / "frames", num_frames=103, size=224)
        for decoder in ("pil", "simplejpeg"):
            try:
                result[decoder] = benchmark_frame_loading(
                    folder, num_frames=103, decoder=decoder, repeats=repeats
                )
                note(f"{decoder}: {result[decoder]:,.0f} frames/s")
            except ImportError:
                result[decoder] = None  # simplejpeg not installed: pip install -e '.[fast]'
    return result


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    f, e, j = report["feature_mode"], report["end_to_end"], report["frame_loading"]
    fb = report["feature_mode_fast"]
    fps = {k: ("n/a" if v is None else f"{v:,.0f}") for k, v in j.items()}
    clip = f"{s['pairs']} pair(s) × {s['clips']} clips × {s['clip_len']}×{s['size']}²"
    lines = [
        f"tpt_aqa benchmark — {report['device']} — torch {report['torch']}, {report['threads']} threads",
        "",
        "feature mode, MTL-AQA scale (1,059 pairs, T=20, C=1024, D=512, K=5, batch 24; 353 × 10 eval)",
        "                     epoch   pairs/s   bare loop   overhead   eval   videos/s   "
        "epoch+eval   TFLOP/s    MFU",
        *(_feature_row(label, r) for label, r in (("default", f), ("speed=fast", fb))),
        f"  speed=fast         {f['epoch_plus_eval_s'] / fb['epoch_plus_eval_s']:.2f}× "
        f"(model FLOPs per pair: {f['flops_per_pair'] / 1e9:.2f} GFLOP, forward + backward)",
        "",
        f"end to end through I3D ({clip} per step)",
        "                     train pairs/s   eval videos/s",
        f"  fp32 contiguous    {e['fp32']['train_pairs_per_s']:13.3f}   {e['fp32']['eval_videos_per_s']:13.3f}",
        f"  bf16 + cl_3d       {e['bf16_channels_last']['train_pairs_per_s']:13.3f}   "
        f"{e['bf16_channels_last']['eval_videos_per_s']:13.3f}",
        f"  speed-up           {e['train_speedup']:12.2f}×   {e['eval_speedup']:12.2f}×",
        "",
        f"model FLOPs of one training step (forward + backward; peak: {report['peak_source']})",
        "                     GFLOP/step   GFLOP/pair   TFLOP/s    peak    MFU",
        *(_flops_row(label, e[key]) for label, key in _E2E_ROWS),
        "",
        "frame loading (decode + crop, 103 frames of 224², one core)",
        f"  PIL                {fps['pil']:>10} frames/s",
        f"  simplejpeg         {fps['simplejpeg']:>10} frames/s",
        "",
        f"peak memory          {report['peak_memory_mb']:,.0f} MiB",
    ]
    if "switches" in report:
        lines += ["", f"speed switches alone, bf16 + cl_3d ({clip} per step)"]
        lines.append("                     train pairs/s   eval videos/s")
        for name, r in report["switches"].items():
            lines.append(
                f"  {name:<18} {r['train_pairs_per_s']:13.3f}   {r['eval_videos_per_s']:13.3f}"
            )
    if "checkpointed_memory" in report:
        m = report["checkpointed_memory"]
        lines += [
            "",
            f"activation checkpointing + bf16, {m['pairs']} pairs × {m['clips']} clips × "
            f"{m['clip_len']}×{m['size']}²: peak {m['peak_memory_mb']:,.0f} MiB ({m['measure']})",
        ]
    if "eval_compare" in report:
        lines += ["", *_render_eval_compare(report["eval_compare"])]
    if "exemplar_protocols" in report:
        lines += ["", *_render_protocols(report["exemplar_protocols"])]
    return "\n".join(lines)


_E2E_ROWS = (("fp32 contiguous", "fp32"), ("bf16 + cl_3d", "bf16_channels_last"))


def _feature_row(label: str, r: dict[str, Any]) -> str:
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.0f} %"
    return (
        f"  {label:<12} {r['epoch_s']:8.2f} s {r['train_pairs_per_s']:7,.0f}   "
        f"{r['bare_epoch_s']:7.2f} s   {100 * r['loop_overhead']:6.0f} %  {r['eval_s']:5.2f} s "
        f"{r['eval_videos_per_s']:8,.0f}   {r['epoch_plus_eval_s']:8.2f} s   "
        f"{r['achieved_tflops']:7.3f}   {mfu:>5}"
    )


def _flops_row(label: str, r: dict[str, Any]) -> str:
    peak = "n/a" if r["peak_tflops"] is None else f"{r['peak_tflops']:.3g}"
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
    return (
        f"  {label:<18} {r['step_flops'] / 1e9:10.1f}   {r['flops_per_pair'] / 1e9:10.1f}   "
        f"{r['achieved_tflops']:7.3f}   {peak:>5} {r['precision']:>4}   {mfu}"
    )


def _render_eval_compare(c: dict[str, Any]) -> list[str]:
    clip = f"{c['clips']} clips × {c['clip_len']}×{c['size']}²"
    naive_note = (
        f"  naive time: {c['naive_videos_timed']} of {c['test_videos']} test videos timed "
        f"({c['naive_s_timed']:.2f} s, {c['naive_passes_timed']:,} passes), scaled per video"
        if c["naive_s_extrapolated"]
        else f"  naive time: all {c['test_videos']} test videos timed"
    )
    return [
        f"evaluation through I3D (random init, {clip}): {c['test_videos']} test videos × "
        f"{c['exemplars_per_video']} exemplars from {c['train_videos']:,} training videos",
        "                     backbone passes   wall-clock",
        f"  encode once        {c['cached_passes']:15,}   {c['cached_s']:8.2f} s   "
        f"({c['test_videos']} videos + {c['distinct_exemplars']} distinct exemplars)",
        f"  naive (reference)  {c['naive_passes']:15,}   {c['naive_s']:8.2f} s   "
        "(2 per (video, exemplar) pair)",
        f"  ratio              {c['pass_ratio']:14.1f}×   {c['time_ratio']:7.1f}×",
        f"  passes per test video: {c['cached_passes'] / c['test_videos']:.2f} encode once "
        f"(1 + its share of the exemplar bank) vs {c['naive_passes'] / c['test_videos']:.0f} naive",
        naive_note,
        f"  max |Δ prediction| {c['max_abs_pred_diff']:.2e}"
        + ("" if c["targets_agree"] else "   (targets differ!)"),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    count = at_least(1)  # every size and count: an integer >= 1, else a usage error naming it
    parser.add_argument("--pairs", type=count, default=2, help="training pairs per end-to-end step")
    parser.add_argument("--clips", type=count, default=4, help="clips per video end to end (T)")
    parser.add_argument("--clip-len", type=count, default=8, help="frames per clip (L)")
    parser.add_argument("--size", type=count, default=160, help="frame size end to end (pixels)")
    parser.add_argument("--repeats", type=count, default=5, help="timed repeats (median)")
    parser.add_argument(
        "--peak-tflops",
        type=at_least(1e-6, float),
        default=None,
        help="the device's peak TFLOP/s for the MFU (default: the GPU table; measured on a CPU)",
    )
    parser.add_argument(
        "--eval-compare",
        action="store_true",
        help="also compare encode-once evaluation with the reference's pair by pair, through I3D",
    )
    parser.add_argument(
        "--eval-size", type=count, default=16, help="frame size (pixels) of --eval-compare"
    )
    parser.add_argument(
        "--eval-naive-videos",
        type=count,
        default=None,
        help="time the naive path on this many test videos and scale (default: all 353)",
    )
    parser.add_argument(
        "--switches",
        action="store_true",
        help="also time each speed switch alone end to end (bf16 + channels_last_3d)",
    )
    parser.add_argument(
        "--memory",
        type=count,
        nargs=4,
        metavar=("PAIRS", "CLIPS", "LEN", "SIZE"),
        default=None,
        help="also the peak memory of one bf16 step with activation checkpointing at this size "
        "(the paper's per-GPU batch: 3 20 8 224)",
    )
    parser.add_argument(
        "--protocols",
        type=count,
        default=None,
        metavar="EPOCHS",
        help="also train EPOCHS epochs on the features at MTL-AQA scale and evaluate with both "
        "eval_exemplars protocols (backbone passes, test ρ)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default outputs/benchmark/<time>.json)"
    )
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device, "--device").type
    except ConfigError as err:
        parser.error(str(err))
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": {
            "pairs": args.pairs,
            "clips": args.clips,
            "clip_len": args.clip_len,
            "size": args.size,
        },
    }
    with timed_stage("peak throughput of this device"):
        peaks, report["peak_source"] = device_peaks(device, args.peak_tflops)
    with timed_stage(
        "feature mode at MTL-AQA scale: epoch, evaluation and bare loop, default and speed=fast"
    ):
        report["feature_mode"] = feature_mode(device, peaks=peaks)
        report["feature_mode_fast"] = feature_mode(device, ("speed=fast",), peaks=peaks)
    with timed_stage("end to end through I3D: fp32 and bf16 steps, FLOPs, profile"):
        e2e = end_to_end(
            device, args.pairs, args.clips, args.clip_len, args.size, args.repeats, peaks
        )
    profile_text = e2e.pop("profile_table")
    report["end_to_end"] = e2e
    with timed_stage("frame loading"):
        report["frame_loading"] = frame_loading(max(args.repeats, 3))
    if args.eval_compare:
        with timed_stage("evaluation through I3D: encode once vs pair by pair"):
            report["eval_compare"] = eval_compare(device, args.eval_size, args.eval_naive_videos)
    if args.switches:
        with timed_stage("speed switches one at a time, end to end"):
            report["switches"] = switch_study(
                device, args.pairs, args.clips, args.clip_len, args.size, args.repeats
            )
    if args.memory:
        with timed_stage("peak memory with activation checkpointing + bf16"):
            report["checkpointed_memory"] = checkpointed_memory(device, *args.memory)
    if args.protocols:
        with timed_stage("evaluation protocols: per-video vs per-group exemplar lists"):
            report["exemplar_protocols"] = exemplar_protocols(device, args.protocols)
    report["peak_memory_mb"] = peak_memory_mb(device)
    print(render(report))
    out = args.out or Path("outputs/benchmark") / f"{datetime.now():%Y-%m-%d_%H-%M-%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    profile_path = out.with_suffix(".profile.txt")
    profile_path.write_text(profile_text + "\n")
    print(f"\nwritten to {out} (per-op profile of one bf16 step: {profile_path})")
    return report


if __name__ == "__main__":
    main()
