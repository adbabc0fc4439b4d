#!/usr/bin/env python
"""Train a small checkpoint on rendered synthetic videos, with videos to score, for the notebooks,
``tpt_aqa.predict`` demos and its timing.

    python -m tpt_aqa.make_demo_checkpoint OUT_DIR [--preset notebook|mtl_aqa_shape] [--epochs N]

OUT_DIR then holds
    checkpoint.ckpt   the selected checkpoint, with its exemplar bank (a copy)
    results.json      the run's test metrics and per-video predictions
    videos/<id>/      JPEG frame folders of a few test videos (--frame-size: written at that size)
    videos.json       per video: difficulty, true score, phase of every clip, the run's prediction

Presets:
    notebook       a frozen random-init I3D on 40-frame 40×40 videos, 5 clips of 8 frames, 30
                   epochs: 5–15 minutes on 2 CPU cores, since every epoch runs its videos through
                   the I3D (about 30 s an epoch measured beside another run); --epochs 5 for a
                   quick one (the notebooks' test runs --epochs 1).
    mtl_aqa_shape  the MTL-AQA input shapes: 103-frame videos, 20 clips of 8 frames at stride 5,
                   frames resized to 256×455 and center-cropped to 224²; one training step from a
                   random init (a timing demo, not a model): score its video with
                   python -m tpt_aqa.predict ckpt_path=OUT_DIR/checkpoint.ckpt \\
                       input=OUT_DIR/videos/<id> difficulty=<its difficulty>
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from tpt_aqa import train as train_entry
from tpt_aqa.config import CONF_DIR, build_datamodule
from tpt_aqa.core.atomic import atomic_write_text
from tpt_aqa.core.report import json_text, stage
from tpt_aqa.core.startup import setup
from tpt_aqa.data.video import write_frame_folder
from tpt_aqa.training.runtime import load_checkpoint

setup()  # resolver, warning filters, Lightning's tips (core.startup): before Hydra composes

PRESETS = {
    "notebook": [
        "experiment=synthetic_video_tpt",
        "dataset.num_train=48",
        "dataset.num_test=16",
        "model.num_queries=3",
        # a random-init I3D learns slowly on CPU: frozen, its features still separate the
        # rendered phases, and the decoder and heads train in seconds per epoch
        "model.encoder.freeze_backbone=true",
        "trainer.max_epochs=30",
    ],
    "mtl_aqa_shape": [
        "experiment=synthetic_video_tpt",
        "dataset.num_frames=103",
        "dataset.size=64",
        "dataset.num_train=6",
        "dataset.num_test=2",
        "dataset.val_fraction=0",
        "global_batch_size=1",
        "dataset.sampler.num_clips=20",
        "dataset.sampler.stride=5",
        "dataset.train_transform.resize=[256,455]",
        "dataset.train_transform.crop_size=224",
        "dataset.test_transform.resize=[256,455]",
        "dataset.test_transform.crop_size=224",
        "trainer.max_epochs=1",
        "+trainer.max_steps=1",
    ],
}

# MTL-AQA's frames are resized to 256×455 before the crop: write the demo video at that size
FRAME_SIZE = {"mtl_aqa_shape": [256, 455]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="notebook")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--videos", type=int, default=2, help="test videos to write as frames")
    parser.add_argument(
        "--frame-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="write the videos' frames at this size (default: the preset's; rendered size if none)",
    )
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides of the training run")
    args = parser.parse_intermixed_args(argv)  # overrides may follow options

    if args.frame_size is None:
        args.frame_size = FRAME_SIZE.get(args.preset)
    out = args.out_dir.resolve()
    # the training run's folder is this script's own: a second call starts it over (tpt_aqa.train
    # refuses to start in a folder that holds a finished run)
    shutil.rmtree(out / "run", ignore_errors=True)
    overrides = [
        *PRESETS[args.preset],
        "logger=none",
        f"hydra.run.dir={out / 'run'}",
        *args.overrides,
    ]
    if args.epochs is not None:
        overrides.append(f"trainer.max_epochs={args.epochs}")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    cfg.paths.output_dir = str(out / "run")
    start = time.perf_counter()
    stage(f"training the {args.preset} demo ({cfg.trainer.max_epochs} epochs; a bar shows each)")
    results = train_entry.run(cfg)
    stage(f"trained in {time.perf_counter() - start:.0f} s; writing {args.videos} test videos")

    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(results["checkpoint"], out / "checkpoint.ckpt")
    atomic_write_text(out / "results.json", json_text(results))
    _, run_cfg = load_checkpoint(out / "checkpoint.ckpt")
    dm = build_datamodule(run_cfg)
    predicted = dict(
        zip(results["predictions"]["ids"], results["predictions"]["pred"], strict=True)
    )
    videos = {}
    for row in dm.table.rows("test")[: args.videos]:
        vid = dm.table.ids[row]
        frames = dm._frames[row]  # (F, 3, size, size) uint8
        if args.frame_size:  # written larger, so reading decodes frames of a realistic size
            frames = torch.nn.functional.interpolate(
                frames.float(), size=tuple(args.frame_size), mode="bilinear", align_corners=False
            )
            frames = frames.round().clamp(0, 255).to(torch.uint8)
        write_frame_folder(out / "videos" / vid, frames, quality=95)
        videos[vid] = {
            "difficulty": float(dm.table.scale[row]),
            "score": float(dm.table.target[row] * dm.table.scale[row]),
            "prediction": predicted[vid],
            "clip_phases": dm.clip_labels(int(row)).tolist(),
        }
    atomic_write_text(out / "videos.json", json_text(videos))
    stage(
        f"done in {time.perf_counter() - start:.0f} s: checkpoint, results and {len(videos)} test "
        f"videos written to {out}"
    )


if __name__ == "__main__":
    main()
