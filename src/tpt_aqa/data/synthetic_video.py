"""A tiny rendered-video synthetic benchmark (``dataset=synthetic_video``) for the end-to-end path.

The same idea as ``dataset=synthetic`` (ordered phases of random duration, one quality per phase,
unequally weighted in the score), rendered as small RGB frames so the whole video path runs on a
CPU: frames → clip sampling → spatial transforms → I3D → TPT. Each phase has its own background
colour (what a query can find); a square moving across the frame shows the phase's quality as its
brightness. Frames are generated in memory, deterministically from ``data_seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tpt_aqa.data.base import SampleTable
from tpt_aqa.data.synthetic import (
    SyntheticDataModule,
    check_phases,
    generator_args,
    judge,
    synthetic_table,
)
from tpt_aqa.data.video_base import VideoDataModule


@dataclass
class RenderedVideos:
    """Rendered frames and their annotations."""

    frames: np.ndarray  # (N, F, H, W, 3) uint8
    frame_phases: np.ndarray  # (N, F) int64
    raw: np.ndarray  # (N,)
    difficulty_id: np.ndarray  # (N,)
    split: np.ndarray  # (N,)


def render(
    num_train: int = 48,
    num_test: int = 16,
    num_frames: int = 40,
    size: int = 40,
    num_phases: int = 5,
    min_phase_len: int = 4,
    phase_weights: tuple[float, ...] = (0.5, 2.0, 1.0, 3.0, 0.5),
    difficulties: tuple[float, ...] = (2.0, 3.0),
    pixel_noise: float = 8.0,
    judge_noise: float = 0.1,
    seed: int = 0,
) -> RenderedVideos:
    """Render the benchmark (see the module docstring); train rows first, then test rows."""
    check_phases(num_phases, phase_weights, min_phase_len, num_frames, "frames")
    rng = np.random.default_rng(seed)
    n = num_train + num_test
    colours = rng.uniform(30, 160, size=(num_phases, 3))  # background colour per phase
    qualities = rng.uniform(0, 1, size=(n, num_phases))
    spare = num_frames - num_phases * min_phase_len
    phases = np.empty((n, num_frames), dtype=np.int64)
    for i in range(n):
        cuts = np.sort(rng.integers(0, spare + 1, size=num_phases - 1))
        lengths = np.diff(np.concatenate([[0], cuts, [spare]])) + min_phase_len
        phases[i] = np.repeat(np.arange(num_phases), lengths)
    frames = np.empty((n, num_frames, size, size, 3), dtype=np.float32)
    frames[:] = colours[phases][:, :, None, None, :]
    side = size // 3
    xs = np.linspace(0, size - side, num_frames).astype(int)  # the square moves left to right
    top = (size - side) // 2
    q_frame = np.take_along_axis(qualities, phases, axis=1)  # (N, F)
    for f in range(num_frames):
        frames[:, f, top : top + side, xs[f] : xs[f] + side, :] = (60 + 195 * q_frame[:, f])[
            :, None, None, None
        ]
    frames += pixel_noise * rng.standard_normal(frames.shape, dtype=np.float32)
    raw, difficulty_id = judge(rng, qualities, phase_weights, judge_noise, len(difficulties))
    return RenderedVideos(
        frames=np.clip(frames, 0, 255).astype(np.uint8),
        frame_phases=phases,
        raw=raw,
        difficulty_id=difficulty_id,
        split=np.array(["train"] * num_train + ["test"] * num_test),
    )


class SyntheticVideoDataModule(VideoDataModule):
    """Rendered synthetic videos through the shared clip sampler and transforms (``dataset=synthetic_video``).

    Args:
        **kwargs: ``render``'s arguments (``data_seed`` as its ``seed``), then ``VideoDataModule``'s.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.gen_kwargs = generator_args(render, kwargs)
        super().__init__(**kwargs)

    def clip_settings(self) -> dict:
        return {
            "render": {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.gen_kwargs.items()
            }
        }

    # The frames are made in memory: nothing to find on disk, and every video has num_frames.
    def missing(self, row: int) -> None:
        return None

    def frame_count(self, row: int) -> int:
        return self.gen_kwargs["num_frames"]

    def read(self, row: int, frames: np.ndarray) -> torch.Tensor:
        return self._frames[row][torch.as_tensor(frames)]  # (F, 3, H, W)

    def build_table(self) -> SampleTable:
        v = self.videos = render(**self.gen_kwargs)
        self._frames = torch.from_numpy(v.frames).permute(0, 1, 4, 2, 3)  # (N, F, 3, H, W)
        # a clip's phase is the phase of its middle frame
        index = self.sampler.indices(self.gen_kwargs["num_frames"])  # (T, L), every video's
        self._clip_phases = torch.from_numpy(v.frame_phases[:, index[:, index.shape[1] // 2]])
        difficulties = self.gen_kwargs["difficulties"]
        return synthetic_table("synthetic_video", v.raw, difficulties, v.difficulty_id, v.split, 4)

    group_option = SyntheticDataModule.group_option

    def clip_labels(self, row: int) -> torch.Tensor:
        return self._clip_phases[row]  # (T,)
