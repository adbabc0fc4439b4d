"""How the benchmarks measure: timed medians, model FLOPs, a per-op profile, the device's
peak TFLOP/s (a GPU table, or a CPU's own matmul rate) for the MFU, and peak memory; the
configuration and training step the studies share.
"""

from __future__ import annotations

import resource
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir

from tpt_aqa.config import CONF_DIR
from tpt_aqa.core.report import stage
from tpt_aqa.data.batch import PairBatch


def compose_train(*overrides: str):
    """The training configuration with ``overrides``, writing nowhere (the studies build from it)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=unused", *overrides])


# Long work is never silent: a stage's progress is printed at least this often (the stage lines
# come from ``core.report.stage``; these indented lines say how far it got).
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
    ``PROGRESS_EVERY_S`` seconds."""

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


def timed(fn, repeats: int, summary=statistics.median, what: str = "timed calls") -> float:
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
    rate = 2 * side**3 / timed(lambda: torch.mm(a, b), repeats, summary=min) / 1e12
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
        sync(device)
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


def quiet_trainer(device: str, **kwargs: Any) -> L.Trainer:
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


def train_step(module, batch: PairBatch | None, device: str, bf16: bool = True):
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
        sync(device)

    return step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def arithmetic(device: str, bf16: bool) -> str:
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


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
