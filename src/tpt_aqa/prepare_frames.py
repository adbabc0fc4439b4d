#!/usr/bin/env python
"""Decode videos into JPEG frame folders, the layout the benchmark datamodules read.

Whole videos (one folder per video, frames numbered from --start):

    python -m tpt_aqa.prepare_frames videos/ frames/ --pattern "{:08d}.jpg"

MTL-AQA dives (one folder {video:02d}_{clip:02d}/ per annotated dive, cut from the whole videos
{video:02d}.mp4 by the annotation's start/end frame numbers, which count from --frame-number-start
like the dataset's frame_number_start; dives shorter than --min-frames are extended backwards from
their end frame, as the training window of 103 frames ending at end_frame is):

    python -m tpt_aqa.prepare_frames videos/ frames/ --mtl-annotations final_annotations_dict.pkl

A folder is written under a temporary name and renamed when complete, so an interrupted run
leaves no half-written folder, and running again resumes: finished folders are skipped. The summary
lists what was written, skipped and what failed (with the reason); the exit status is 1 on failures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import av
import numpy as np
from PIL import Image
from rich.progress import Progress

from tpt_aqa.data.safe_pickle import safe_load

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")


def decode_range(path: Path, first: int, last: int):
    """Yield ``(index, HxWx3 uint8)`` for frames ``first..last`` (inclusive) of a video."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            if index > last:
                break
            if index >= first:
                yield index, frame.to_ndarray(format="rgb24")


def write_folder(
    out: Path, frames, pattern: str, start: int, quality: int, size: tuple[int, int] | None
) -> int:
    """Write frames into ``out`` atomically (temporary folder, then rename); returns the count."""
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    count = 0
    try:
        for count, (_, rgb) in enumerate(frames, start=1):
            image = Image.fromarray(np.ascontiguousarray(rgb))
            if size is not None:
                image = image.resize((size[1], size[0]), Image.BILINEAR)
            image.save(tmp / pattern.format(start + count - 1), quality=quality)
        if count == 0:
            raise ValueError("no frame decoded in the requested range")
        tmp.rename(out)
    except BaseException:  # a failed or interrupted folder leaves nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count


def jobs_whole(videos: Path, out: Path) -> list[tuple[str, Path, int, int]]:
    """One job per video file of a folder, or the one file given."""
    files = (
        [videos]
        if videos.is_file()
        else sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    )
    return [(p.stem, p, 0, 10**9) for p in files]


def jobs_mtl(videos: Path, annotations: Path, suffix: str, min_frames: int, number_start: int):
    table = safe_load(annotations)
    jobs = []
    for key, ann in sorted(table.items()):
        video, clip = int(key[0]), int(key[1])
        # frame numbers → decoded frame indices
        start = int(ann["start_frame"]) - number_start
        end = int(ann["end_frame"]) - number_start
        first = max(0, min(start, end - min_frames + 1))
        jobs.append((f"{video:02d}_{clip:02d}", videos / f"{video:02d}{suffix}", first, end))
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("videos", type=Path, help="folder of video files, or one video file")
    parser.add_argument("out", type=Path, help="folder to write frame folders into")
    parser.add_argument(
        "--pattern", default="{:05d}.jpg", help="frame file name (default {:05d}.jpg)"
    )
    parser.add_argument(
        "--start", type=int, default=0, help="number of the first frame in its name"
    )
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), help="resize frames to H W"
    )
    parser.add_argument("--mtl-annotations", type=Path, help="MTL-AQA annotation pickle: cut dives")
    parser.add_argument("--suffix", default=".mp4", help="MTL-AQA video file suffix (default .mp4)")
    parser.add_argument("--min-frames", type=int, default=109, help="MTL-AQA: shortest dive folder")
    parser.add_argument(
        "--frame-number-start",
        type=int,
        default=1,
        help="MTL-AQA: number of a video's first frame in the annotations (default 1, as ffmpeg)",
    )
    args = parser.parse_args(argv)
    if args.videos.is_file():
        if args.mtl_annotations or args.videos.suffix.lower() not in VIDEO_SUFFIXES:
            parser.error(
                f"{args.videos} is a file, not a folder of videos"
                + ("" if args.mtl_annotations else f" nor a video ({', '.join(VIDEO_SUFFIXES)})")
            )
    elif not args.videos.is_dir():
        parser.error(f"{args.videos} is not a folder of videos")
    if args.mtl_annotations:
        jobs = jobs_mtl(
            args.videos, args.mtl_annotations, args.suffix, args.min_frames, args.frame_number_start
        )
    else:
        jobs = jobs_whole(args.videos, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    written, skipped, failed = 0, 0, []
    with Progress() as progress:
        task = progress.add_task("frames", total=len(jobs))
        for name, video, first, last in jobs:
            target = args.out / name
            if target.is_dir():
                skipped += 1
            elif not video.is_file():
                failed.append(f"{name}: video {video} not found")
            else:
                try:
                    frames = decode_range(video, first, last)
                    write_folder(target, frames, args.pattern, args.start, args.quality, args.size)
                    written += 1
                except av.error.FFmpegError as err:  # e.g. another file under a video's name
                    reason = getattr(err, "strerror", None) or err
                    failed.append(f"{name}: {video} is not a readable video ({reason})")
                except (ValueError, OSError) as err:
                    failed.append(f"{name}: {video}: {err}")
            progress.advance(task)
    for line in failed:
        print(line)
    print(f"{written} written, {skipped} already there, {len(failed)} failed, in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
