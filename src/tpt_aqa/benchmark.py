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
  pair by pair (``tpt_aqa.training.pairwise_eval.naive_predictions``): backbone passes of each path (counted
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
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from tpt_aqa.benchmarks.end_to_end import checkpointed_memory, end_to_end, switch_study
from tpt_aqa.benchmarks.eval_compare import eval_compare
from tpt_aqa.benchmarks.features import exemplar_protocols, feature_mode
from tpt_aqa.benchmarks.frames import frame_loading
from tpt_aqa.benchmarks.measure import device_peaks, peak_memory_mb
from tpt_aqa.benchmarks.table import render
from tpt_aqa.core.report import stage
from tpt_aqa.core.startup import setup

setup()  # resolver, warning filters, Lightning's tips (core.startup): before Hydra composes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--pairs", type=int, default=2, help="training pairs per end-to-end step")
    parser.add_argument("--clips", type=int, default=4, help="clips per video end to end (T)")
    parser.add_argument("--clip-len", type=int, default=8, help="frames per clip (L)")
    parser.add_argument("--size", type=int, default=160, help="frame size end to end (pixels)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak TFLOP/s for the MFU (default: the GPU table; measured on a CPU)",
    )
    parser.add_argument(
        "--eval-compare",
        action="store_true",
        help="also compare encode-once evaluation with the reference's pair by pair, through I3D",
    )
    parser.add_argument(
        "--eval-size", type=int, default=16, help="frame size (pixels) of --eval-compare"
    )
    parser.add_argument(
        "--eval-naive-videos",
        type=int,
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
        type=int,
        nargs=4,
        metavar=("PAIRS", "CLIPS", "LEN", "SIZE"),
        default=None,
        help="also the peak memory of one bf16 step with activation checkpointing at this size "
        "(the paper's per-GPU batch: 3 20 8 224)",
    )
    parser.add_argument(
        "--protocols",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="also train EPOCHS epochs on the features at MTL-AQA scale and evaluate with both "
        "eval_exemplars protocols (backbone passes, test ρ)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default outputs/benchmark/<time>.json)"
    )
    args = parser.parse_args(argv)
    if args.eval_naive_videos is not None and args.eval_naive_videos < 1:
        parser.error(f"--eval-naive-videos must be >= 1, got {args.eval_naive_videos}")
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
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
    stage("peak throughput of this device")
    peaks, report["peak_source"] = device_peaks(device, args.peak_tflops)
    stage("feature mode at MTL-AQA scale: epoch, evaluation and bare loop, default and speed=fast")
    report["feature_mode"] = feature_mode(device, peaks=peaks)
    report["feature_mode_fast"] = feature_mode(device, ("speed=fast",), peaks=peaks)
    stage("end to end through I3D: fp32 and bf16 steps, FLOPs, profile")
    e2e = end_to_end(device, args.pairs, args.clips, args.clip_len, args.size, args.repeats, peaks)
    profile_text = e2e.pop("profile_table")
    report["end_to_end"] = e2e
    stage("frame loading")
    report["frame_loading"] = frame_loading(max(args.repeats, 3))
    if args.eval_compare:
        stage("evaluation through I3D: encode once vs pair by pair")
        report["eval_compare"] = eval_compare(device, args.eval_size, args.eval_naive_videos)
    if args.switches:
        stage("speed switches one at a time, end to end")
        report["switches"] = switch_study(
            device, args.pairs, args.clips, args.clip_len, args.size, args.repeats
        )
    if args.memory:
        stage("peak memory with activation checkpointing + bf16")
        report["checkpointed_memory"] = checkpointed_memory(device, *args.memory)
    if args.protocols:
        stage("evaluation protocols: per-video vs per-group exemplar lists")
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
