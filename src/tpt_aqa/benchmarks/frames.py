"""Frame loading: decode + center crop of JPEG frame folders, frames/s on one core, and the
textured frames that give JPEG files a realistic size (tests write frame folders with them too).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tpt_aqa.data.transforms import VideoTransform
from tpt_aqa.data.video import Decoder, Source, read_frame_folder, write_frame_folder


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
            except ImportError:
                result[decoder] = None  # simplejpeg not installed: pip install -e '.[fast]'
    return result
