"""Speed benchmark: ``python -m tpt_aqa.benchmark`` (``make bench``).

Prints a table and writes JSON with:

* feature mode at MTL-AQA scale (1,059 training pairs, T=20, C=1024, D=512, K=5, global batch 24;
  353 test videos × 10 exemplars): one training epoch and one evaluation, through Lightning;
* end to end through I3D: training pairs/s in fp32 (contiguous) and with bf16 autocast +
  ``channels_last_3d``, and evaluation videos/s (encoding) in both;
* frame loading: decode + center crop of 103 JPEG frames of 224², frames/s on one core, PIL and
  simplejpeg;
* peak memory (process RSS on CPU, allocated memory on CUDA);
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
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir

from tpt_aqa.config import CONF_DIR, build_datamodule, build_module
from tpt_aqa.data.batch import PairBatch, Videos
from tpt_aqa.data.video import benchmark_frame_loading, make_benchmark_folder
from tpt_aqa.evaluation import count_encoder_passes, naive_predictions


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=unused", *overrides])


def _timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def feature_mode(device: str) -> dict[str, float]:
    """One epoch + one evaluation on cached features at MTL-AQA scale."""
    cfg = _compose(
        "dataset.num_train=1059",
        "dataset.num_test=353",
        "dataset.feature_dim=1024",
        "dataset.batch_size=24",
        "dataset.val_fraction=0",
        "callbacks=none",
        "logger=none",
    )
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit = time.perf_counter() - start
    start = time.perf_counter()
    trainer.test(module, datamodule=dm, verbose=False)
    evaluation = time.perf_counter() - start
    return {
        "train_pairs": 1059,
        "epoch_s": fit,
        "train_pairs_per_s": 1059 / fit,
        "eval_videos": 353,
        "eval_s": evaluation,
        "eval_videos_per_s": 353 / evaluation,
        "epoch_plus_eval_s": fit + evaluation,
    }


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
    device: str, pairs: int, clips: int, clip_len: int, size: int, repeats: int
) -> dict[str, Any]:
    """Training steps and evaluation encoding through I3D, fp32 vs bf16 + channels_last_3d."""
    batch = _video_batch(pairs, clips, clip_len, size, device)
    out: dict[str, Any] = {}
    for name, bf16 in (("fp32", False), ("bf16_channels_last", True)):
        cfg = _compose(
            "model/encoder=i3d",
            f"model.encoder.channels_last={str(bf16).lower()}",
            f"model.num_queries={min(5, clips)}",
        )
        torch.manual_seed(0)
        module = build_module(cfg).to(device)
        module.score_groups.fit(torch.rand(100).numpy() * 10, cap=10.0)
        optimizer = module.configure_optimizers()
        autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()
        module.train()

        def step(module=module, optimizer=optimizer, autocast=autocast) -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = module.compute_losses(batch)["loss"]
            loss.backward()
            optimizer.step()
            if device == "cuda":
                torch.cuda.synchronize()

        step_s = _timed(step, repeats)
        module.eval()

        @torch.no_grad()
        def encode(module=module, autocast=autocast) -> None:
            with autocast:
                module.model.encode(batch.query.video)
            if device == "cuda":
                torch.cuda.synchronize()

        encode_s = _timed(encode, repeats)
        out[name] = {
            "train_step_s": step_s,
            "train_pairs_per_s": pairs / step_s,
            "eval_videos_per_s": pairs / encode_s,
        }
    out["train_speedup"] = (
        out["bf16_channels_last"]["train_pairs_per_s"] / out["fp32"]["train_pairs_per_s"]
    )
    out["eval_speedup"] = (
        out["bf16_channels_last"]["eval_videos_per_s"] / out["fp32"]["eval_videos_per_s"]
    )
    return out


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


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
    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    test_rows = dm.table.rows("test")
    exemplars = dm.eval_exemplars["test"]  # (N, M)
    with count_encoder_passes(module) as cached:
        start = time.perf_counter()
        trainer.test(module, datamodule=dm, verbose=False)  # fits the score groups in setup
        _sync(device)
        cached_s = time.perf_counter() - start
    want = module.last_predictions
    n = len(test_rows) if naive_videos is None else min(naive_videos, len(test_rows))
    module.to(device)  # Lightning's teardown moved it back to the CPU
    with count_encoder_passes(module) as naive:
        start = time.perf_counter()
        got = naive_predictions(module, dm, "test", limit=n)
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
    fps = {k: ("n/a" if v is None else f"{v:,.0f}") for k, v in j.items()}
    clip = f"{s['pairs']} pair(s) × {s['clips']} clips × {s['clip_len']}×{s['size']}²"
    lines = [
        f"tpt_aqa benchmark — {report['device']} — torch {report['torch']}, {report['threads']} threads",
        "",
        "feature mode, MTL-AQA scale (1,059 pairs, T=20, C=1024, D=512, K=5, batch 24; 353 × 10 eval)",
        f"  one epoch          {f['epoch_s']:8.2f} s   ({f['train_pairs_per_s']:,.0f} pairs/s)",
        f"  one evaluation     {f['eval_s']:8.2f} s   ({f['eval_videos_per_s']:,.0f} videos/s)",
        f"  epoch + evaluation {f['epoch_plus_eval_s']:8.2f} s",
        "",
        f"end to end through I3D ({clip} per step)",
        "                     train pairs/s   eval videos/s",
        f"  fp32 contiguous    {e['fp32']['train_pairs_per_s']:13.3f}   {e['fp32']['eval_videos_per_s']:13.3f}",
        f"  bf16 + cl_3d       {e['bf16_channels_last']['train_pairs_per_s']:13.3f}   "
        f"{e['bf16_channels_last']['eval_videos_per_s']:13.3f}",
        f"  speed-up           {e['train_speedup']:12.2f}×   {e['eval_speedup']:12.2f}×",
        "",
        "frame loading (decode + crop, 103 frames of 224², one core)",
        f"  PIL                {fps['pil']:>10} frames/s",
        f"  simplejpeg         {fps['simplejpeg']:>10} frames/s",
        "",
        f"peak memory          {report['peak_memory_mb']:,.0f} MiB",
    ]
    if "eval_compare" in report:
        lines += ["", *_render_eval_compare(report["eval_compare"])]
    return "\n".join(lines)


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
    parser.add_argument("--pairs", type=int, default=2, help="training pairs per end-to-end step")
    parser.add_argument("--clips", type=int, default=4, help="clips per video end to end (T)")
    parser.add_argument("--clip-len", type=int, default=8, help="frames per clip (L)")
    parser.add_argument("--size", type=int, default=160, help="frame size end to end (pixels)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
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
        "feature_mode": feature_mode(device),
        "end_to_end": end_to_end(
            device, args.pairs, args.clips, args.clip_len, args.size, args.repeats
        ),
        "frame_loading": frame_loading(max(args.repeats, 3)),
    }
    if args.eval_compare:
        report["eval_compare"] = eval_compare(device, args.eval_size, args.eval_naive_videos)
    report["peak_memory_mb"] = peak_memory_mb(device)
    print(render(report))
    out = args.out or Path("outputs/benchmark") / f"{datetime.now():%Y-%m-%d_%H-%M-%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {out}")
    return report


if __name__ == "__main__":
    main()
