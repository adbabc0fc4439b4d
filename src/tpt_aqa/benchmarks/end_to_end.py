"""End to end through I3D: training steps in fp32 and bf16 + ``channels_last_3d`` (FLOPs, MFU,
profile), evaluation encoding, each speed switch alone, and the peak memory of one step with
activation checkpointing.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import lightning as L
import torch

from tpt_aqa.benchmarks.measure import (
    arithmetic,
    compose_train,
    count_flops,
    peak_memory_mb,
    profile_table,
    sync,
    timed,
    train_step,
)
from tpt_aqa.config import build_module
from tpt_aqa.data.batch import PairBatch, Videos


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
        step = train_step(module, batch, device, bf16)
        step_s = timed(step, repeats)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step()
            step_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        flops = count_flops(step)
        precision = arithmetic(device, bf16)
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

        encode_s = timed(encode, repeats)
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
    cfg = compose_train("model/encoder=i3d", f"model.num_queries={min(5, clips)}", *overrides)
    torch.manual_seed(0)
    module = build_module(cfg).to(device)
    module.score_groups.fit(torch.rand(100).numpy() * 10, cap=10.0)
    return module


def switch_study(
    device: str, pairs: int, clips: int, clip_len: int, size: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Training pairs/s and evaluation videos/s of each speed switch alone (``SWITCHES``), bf16 +
    ``channels_last_3d``; the first timed call includes no compilation (``timed`` warms up)."""
    batch = _video_batch(pairs, clips, clip_len, size, device)
    out = {}
    for name, overrides in SWITCHES.items():
        torch.backends.cudnn.benchmark = name == "cudnn_benchmark"
        module = _e2e_module(device, clips, "model.encoder.channels_last=true", *overrides)
        step_s = timed(train_step(module, batch, device), repeats)
        module.eval()

        @torch.no_grad()
        def encode(module=module) -> None:
            with torch.autocast(device, dtype=torch.bfloat16):
                module.model.encode(batch.query.video)
            sync(device)

        out[name] = {
            "train_pairs_per_s": pairs / step_s,
            "eval_videos_per_s": pairs / timed(encode, repeats),
        }
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
    step = train_step(module, batch, device)
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
