"""Temporal sampling: which frames of a video make up its T clips of L frames (docs/method.md §8).

Two schemes cover the three benchmarks:

- ``strided``: MTL-AQA and AQA-7. A window of 103 frames is cut into 20 overlapping clips of 8
  frames whose starts are 5 frames apart (0, 5, …, 95). The window starts at ``offset``, which is
  how the release's temporal jitter (offset 0–6 in training) and whole-video folders (the 103 frames
  ending at ``end_frame``) are expressed.
- ``linspace``: JIGSAWS. 160 frames spread evenly over the whole video, cut into 20 consecutive,
  non-overlapping clips of 8.

Everything here is a pure function of integers returning frame indices ``(T, L)``; reading and
transforming the frames is ``tpt_aqa.data.video`` and ``tpt_aqa.data.transforms``. Unlike the
release, a video too short for the requested clips is an error naming the numbers, never a crash
deep inside a loader or a silently shorter clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SCHEMES = ("strided", "linspace")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def strided_clips(
    num_frames_total: int = 103,
    num_clips: int = 20,
    clip_len: int = 8,
    stride: int = 5,
    offset: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping clips at a fixed stride (the MTL-AQA / AQA-7 scheme).

    Clip ``t`` covers frames ``offset + t * stride + [0, clip_len)``. With the defaults the clips
    span exactly 103 frames: starts 0, 5, …, 95, the last clip ending at frame 102.

    Args:
        num_frames_total: frames available in the video (or frame folder).
        num_clips: T, the number of clips.
        clip_len: L, frames per clip.
        stride: frames between the starts of consecutive clips.
        offset: first frame of the first clip (temporal jitter, or where a dive starts inside a
            whole-video folder).

    Returns:
        ``(starts, index)``: first frame of every clip ``(T,)`` and the frame index of every clip
        frame ``(T, L)``, both int64.

    Raises:
        ValueError: when the clips do not fit into ``num_frames_total`` frames, or a parameter is
            not a positive integer (``offset`` may be 0).
    """
    _check_positive(num_clips=num_clips, clip_len=clip_len, stride=stride)
    if int(offset) != offset or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
    span = (num_clips - 1) * stride + clip_len
    needed = offset + span
    if needed > num_frames_total:
        raise ValueError(
            f"{num_clips} clips of {clip_len} frames at stride {stride} span {span} frames; "
            f"starting at offset {offset} they need {needed} frames, but the video has "
            f"{num_frames_total}. Use a longer video, a smaller offset/jitter, or fewer clips."
        )
    starts = offset + stride * np.arange(num_clips, dtype=np.int64)  # (T,)
    index = starts[:, None] + np.arange(clip_len, dtype=np.int64)[None, :]  # (T, L)
    return starts, index


def linspace_clips(
    num_video_frames: int,
    num_frames: int = 160,
    num_clips: int = 20,
    clip_len: int = 8,
    offset: int = 0,
    allow_repeats: bool = False,
) -> np.ndarray:
    """Frames spread evenly over the video, cut into consecutive clips (the JIGSAWS scheme).

    The sampled positions are ``linspace(offset, num_video_frames - 1, num_frames)`` rounded
    down to integers (truncation, as ``np.linspace(..., dtype=int)`` in the reference lineage),
    so the first and the last frame of the video are always sampled. Position ``i`` then becomes
    frame ``i % clip_len`` of clip ``i // clip_len``.

    Example: ``linspace_clips(10, num_frames=4, num_clips=2, clip_len=2)`` samples
    ``linspace(0, 9, 4) = [0, 3, 6, 9]`` → ``[[0, 3], [6, 9]]``.

    Args:
        num_video_frames: frames in the video.
        num_frames: frames sampled in total; must equal ``num_clips * clip_len``.
        num_clips: T, the number of clips.
        clip_len: L, frames per clip.
        offset: first usable frame; sampling covers ``[offset, num_video_frames - 1]``.
        allow_repeats: accept videos with fewer usable frames than ``num_frames`` (frames then
            repeat). Off by default because on JIGSAWS that means a truncated extraction.

    Returns:
        Frame index of every clip frame ``(T, L)``, int64, non-decreasing in reading order.

    Raises:
        ValueError: when the video has fewer usable frames than sampled (unless
            ``allow_repeats``), or the parameters are inconsistent.
    """
    _check_positive(num_frames=num_frames, num_clips=num_clips, clip_len=clip_len)
    if num_clips * clip_len != num_frames:
        raise ValueError(
            f"num_frames ({num_frames}) must equal num_clips × clip_len "
            f"({num_clips} × {clip_len} = {num_clips * clip_len})"
        )
    if int(offset) != offset or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
    usable = num_video_frames - offset
    if usable < 1 or (usable < num_frames and not allow_repeats):
        raise ValueError(
            f"linspace sampling of {num_frames} frames needs at least {num_frames} frames after "
            f"offset {offset}, but the video has {num_video_frames} "
            f"({max(usable, 0)} usable). Check the frame extraction, or set allow_repeats=True "
            "to repeat frames of short videos."
        )
    positions = np.linspace(offset, num_video_frames - 1, num_frames)
    index = np.floor(positions).astype(np.int64)
    return index.reshape(num_clips, clip_len)  # (T, L)


def unique_frames(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct frames a clip index matrix needs, so each is decoded and transformed once.

    Args:
        index: frame indices ``(T, L)``.

    Returns:
        ``(frames, local)``: the sorted distinct frame indices ``(U,)`` and, for every clip frame,
        its position in ``frames`` ``(T, L)``. ``frames[local] == index``.
    """
    index = np.asarray(index)
    frames, local = np.unique(index, return_inverse=True)
    return frames.astype(np.int64), local.reshape(index.shape).astype(np.int64)


@dataclass
class ClipSampler:
    """A temporal sampling scheme and its parameters, buildable from Hydra.

    Example configs (``_target_: tpt_aqa.data.clips.ClipSampler``)::

        # MTL-AQA / AQA-7
        scheme: strided
        num_clips: 20
        clip_len: 8
        stride: 5
        # JIGSAWS
        scheme: linspace
        num_clips: 20
        clip_len: 8

    Args:
        scheme: ``"strided"`` (overlapping clips at a fixed stride) or ``"linspace"`` (frames spread
            over the whole video, non-overlapping clips).
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
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        _check_positive(num_clips=self.num_clips, clip_len=self.clip_len, stride=self.stride)

    @property
    def frames_needed(self) -> int:
        """Frames the clips cover from their first frame: 103 for 20×8 at stride 5, 160 (T × L)
        for ``linspace``, whose clips can also be spread over more."""
        if self.scheme == "strided":
            return (self.num_clips - 1) * self.stride + self.clip_len
        return self.num_clips * self.clip_len

    def indices(self, num_video_frames: int, offset: int = 0) -> np.ndarray:
        """Frame indices of the clips of one video.

        Args:
            num_video_frames: frames in the video (``tpt_aqa.data.video.count_frames``).
            offset: first frame used (``strided``: the window start; ``linspace``: sampling starts
                there).

        Returns:
            Frame indices ``(T, L)``, int64.

        Raises:
            ValueError: when the video is too short, naming the frames needed and found.
        """
        if self.scheme == "strided":
            _, index = strided_clips(
                num_video_frames, self.num_clips, self.clip_len, self.stride, offset
            )
            return index
        return linspace_clips(
            num_video_frames,
            self.num_clips * self.clip_len,
            self.num_clips,
            self.clip_len,
            offset,
            self.allow_repeats,
        )
