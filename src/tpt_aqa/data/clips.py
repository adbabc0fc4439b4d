"""Temporal sampling: which frames of a video make up its T clips of L frames (docs/method.md §8).

Pure functions of integers returning frame indices ``(T, L)``. Unlike the release, a video too
short for the clips is an error naming the numbers, never a crash in a loader or a shorter clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from tpt_aqa.data.base import check_choice

SCHEMES = ("strided", "linspace")


def unique_frames(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct frames ``(U,)`` a clip index ``(T, L)`` needs, so each is decoded and
    transformed once, and every clip frame's position among them ``(T, L)``: ``frames[local] ==
    index``."""
    index = np.asarray(index)
    frames, local = np.unique(index, return_inverse=True)
    return frames.astype(np.int64), local.reshape(index.shape).astype(np.int64)


@dataclass
class ClipSampler:
    """A temporal sampling scheme, built by Hydra (``dataset.sampler``).

    Args:
        scheme: ``"strided"``: clip ``t`` is frames ``offset + t·stride + [0, L)`` (MTL-AQA, AQA-7:
            20 × 8 at stride 5 span 103 frames); ``"linspace"``: ``T·L`` frames at
            ``linspace(offset, n - 1, T·L)`` rounded down, cut into consecutive clips (JIGSAWS).
        num_clips: T.
        clip_len: L.
        stride: frames between clip starts; ``strided`` only.
        allow_repeats: let ``linspace`` repeat frames of videos shorter than T × L frames.
    """

    scheme: Literal["strided", "linspace"] = "strided"
    num_clips: int = 20
    clip_len: int = 8
    stride: int = 5
    allow_repeats: bool = False

    def __post_init__(self) -> None:
        check_choice("scheme", self.scheme, SCHEMES)
        for name in ("num_clips", "clip_len", "stride"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def frames_needed(self) -> int:
        """Frames the clips cover from their first frame: 103 for 20×8 at stride 5, 160 (T × L)
        for ``linspace``, whose clips can also be spread over more."""
        if self.scheme == "strided":
            return (self.num_clips - 1) * self.stride + self.clip_len
        return self.num_clips * self.clip_len

    def indices(self, num_video_frames: int, offset: int = 0) -> np.ndarray:
        """Frame indices ``(T, L)`` of the clips of a video of ``num_video_frames`` frames, from
        frame ``offset`` on.

        Raises:
            ValueError: when the video is too short, naming the frames needed and found.
        """
        if int(offset) != offset or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        needed = offset + self.frames_needed
        if self.scheme == "strided":
            if needed > num_video_frames:
                raise ValueError(
                    f"{self.num_clips} clips of {self.clip_len} frames at stride {self.stride} "
                    f"span {self.frames_needed} frames; starting at offset {offset} they need "
                    f"{needed} frames, but the video has {num_video_frames}. Use a longer video, "
                    "a smaller offset/jitter, or fewer clips."
                )
            starts = offset + self.stride * np.arange(self.num_clips, dtype=np.int64)  # (T,)
            return starts[:, None] + np.arange(self.clip_len, dtype=np.int64)  # (T, L)
        usable = num_video_frames - offset
        if usable < 1 or (needed > num_video_frames and not self.allow_repeats):
            raise ValueError(
                f"linspace sampling of {self.frames_needed} frames needs at least "
                f"{self.frames_needed} frames after offset {offset}, but the video has "
                f"{num_video_frames} ({max(usable, 0)} usable). Check the frame extraction, or "
                "set allow_repeats=True to repeat frames of short videos."
            )
        positions = np.linspace(offset, num_video_frames - 1, self.frames_needed)
        return np.floor(positions).astype(np.int64).reshape(self.num_clips, self.clip_len)
