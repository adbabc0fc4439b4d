"""How the benchmarks measure: timed medians, model FLOPs, a per-op profile, the device's
peak TFLOP/s (a GPU table, or a CPU's own matmul rate) for the MFU, and peak memory; the
configuration and training step the studies share.
"""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir

from tpt_aqa.config import CONF_DIR
from tpt_aqa.data.batch import PairBatch


def compose_train(*overrides: str):
    """The training configuration with ``overrides``, writing nowhere (the studies build from it)."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=unused", *overrides])


def timed(fn, repeats: int, summary=statistics.median) -> float:
    """Seconds of one call of ``fn`` after a warm-up call: the median of ``repeats`` (or another
    ``summary`` of them)."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
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


def cpu_matmul_tflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Measured TFLOP/s of an n×n matmul on this CPU with the current thread count: the fastest of
    ``repeats`` (a peak; the median moved by 2× between two runs on a shared 2-core machine)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    return 2 * n**3 / timed(lambda: torch.mm(a, b), repeats, summary=min) / 1e12


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
    peaks = {
        "bf16": cpu_matmul_tflops(torch.bfloat16),
        "fp32": cpu_matmul_tflops(torch.float32),
    }
    return peaks, "measured 2048² matmul on this CPU"


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
