"""A tiny rendered-video synthetic benchmark (``dataset=synthetic_video``) for the end-to-end path.

The same idea as ``dataset=synthetic`` (ordered phases of random duration, one quality per phase,
unequally weighted in the score), rendered as small RGB frames so the whole video path runs on a
CPU: frames → clip sampling → spatial transforms → I3D → TPT. Each phase has its own background
colour (what a query can find); a square moving across the frame shows the phase's quality as its
brightness. Frames are generated in memory, deterministically from ``data_seed``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from tpt_aqa.data.base import SampleTable
from tpt_aqa.data.synthetic import Generated, GeneratorSettings, SyntheticDataModule
from tpt_aqa.data.video_base import VideoDataModule


@dataclass(frozen=True, kw_only=True)
class RenderSettings(GeneratorSettings):
    """``dataset=synthetic_video``: ``num_frames`` frames of ``size`` × ``size`` pixels, plus
    ``pixel_noise``."""

    num_frames: int = 40
    size: int = 40
    pixel_noise: float = 8.0

    def __post_init__(self) -> None:
        self.check(self.num_frames, "frames")


def render(s: RenderSettings) -> Generated:
    """Render the benchmark (see the module docstring); train rows first, then test rows."""
    rng = np.random.default_rng(s.seed)
    n = s.num_train + s.num_test
    colours = rng.uniform(30, 160, size=(s.num_phases, 3))  # background colour per phase
    qualities = rng.uniform(0, 1, size=(n, s.num_phases))
    spare = s.num_frames - s.num_phases * s.min_phase_len
    phases = np.empty((n, s.num_frames), dtype=np.int64)
    for i in range(n):
        cuts = np.sort(rng.integers(0, spare + 1, size=s.num_phases - 1))
        lengths = np.diff(np.concatenate([[0], cuts, [spare]])) + s.min_phase_len
        phases[i] = np.repeat(np.arange(s.num_phases), lengths)
    frames = np.empty((n, s.num_frames, s.size, s.size, 3), dtype=np.float32)
    frames[:] = colours[phases][:, :, None, None, :]
    side = s.size // 3
    xs = np.linspace(0, s.size - side, s.num_frames).astype(int)  # the square moves left to right
    top = (s.size - side) // 2
    q_frame = np.take_along_axis(qualities, phases, axis=1)  # (N, F)
    for f in range(s.num_frames):
        frames[:, f, top : top + side, xs[f] : xs[f] + side, :] = (60 + 195 * q_frame[:, f])[
            :, None, None, None
        ]
    frames += s.pixel_noise * rng.standard_normal(frames.shape, dtype=np.float32)
    raw, difficulty_id = s.judge(rng, qualities)
    return Generated(s, np.clip(frames, 0, 255).astype(np.uint8), phases, raw, difficulty_id)


class SyntheticVideoDataModule(VideoDataModule):
    """Rendered synthetic videos through the shared clip sampler and transforms (``dataset=synthetic_video``).

    Args:
        **kwargs: ``RenderSettings`` (``data_seed`` as its ``seed``), then ``VideoDataModule``'s.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.settings = RenderSettings.pop_from(kwargs)
        super().__init__(**kwargs)

    def clip_settings(self) -> dict:
        settings = asdict(self.settings)  # with lists, as the manifest's JSON holds them
        return {"render": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}

    # The frames are made in memory: nothing to find on disk, and every video has num_frames.
    def missing(self, row: int) -> None:
        return None

    def frame_count(self, row: int) -> int:
        return self.settings.num_frames

    def read(self, row: int, frames: np.ndarray) -> torch.Tensor:
        return self._frames[row][torch.as_tensor(frames)]  # (F, 3, H, W)

    def build_table(self) -> SampleTable:
        v = self.data = render(self.settings)
        self._frames = torch.from_numpy(v.videos).permute(0, 1, 4, 2, 3)  # (N, F, 3, H, W)
        # a clip's phase is the phase of its middle frame
        index = self.sampler.indices(self.settings.num_frames)  # (T, L), every video's
        self._clip_phases = torch.from_numpy(v.phases[:, index[:, index.shape[1] // 2]])
        return v.table("synthetic_video", 4)

    group_option = SyntheticDataModule.group_option

    def clip_labels(self, row: int) -> torch.Tensor:
        return self._clip_phases[row]  # (T,)
