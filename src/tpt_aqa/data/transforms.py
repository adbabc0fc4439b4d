"""Spatial transforms of whole videos and the gathering of frames into clips (docs/method.md §9).

Frames are uint8 RGB ``(F, 3, H, W)`` to the end (the I3D encoder normalises). Training draws one
crop position and one flip per video, applied to all its frames so the motion is untouched;
evaluation takes the center crop. torchvision does not import beside the CPU build of torch this
project pins, so these are a few lines of torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import get_worker_info


class CropParams(NamedTuple):
    """The random draw for one video: where to crop and whether to flip."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def check_frames(frames: torch.Tensor) -> None:
    """Raise a ``ValueError`` unless ``frames`` are uint8 ``(F, 3, H, W)``."""
    if not isinstance(frames, torch.Tensor):
        raise ValueError(
            f"expected frames as a uint8 torch tensor (F, 3, H, W), got {type(frames).__name__}"
        )
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(
            f"expected uint8 frames (F, 3, H, W), got {frames.dtype} {tuple(frames.shape)}"
        )


@dataclass
class VideoTransform:
    """Resize (bilinear, antialiased when shrinking), then crop and maybe flip, one draw per video.

    Randomness, in order of precedence: a ``generator`` passed to the call; else, with ``seed``, a
    generator of this object seeded from ``seed`` and the DataLoader worker's seed (workers and
    epochs do not repeat each other's crops); else torch's global RNG.

    Args:
        resize: ``(height, width)`` every frame is resized to first; ``None`` keeps the frames.
        reference_resize_quirk: swap ``resize`` as the release did (height 455 × width 256),
            distorting the aspect ratio; for reproduction only.
        crop_size: side of the square crop; ``None`` keeps the whole (resized) frame.
        train: a random crop, flipped with p = 0.5 when ``flip``; else the center crop, no flip.
    """

    resize: tuple[int, int] | None = (256, 455)
    reference_resize_quirk: bool = False
    crop_size: int | None = 224
    train: bool = False
    flip: bool = True
    antialias: bool = True
    seed: int | None = None
    _generator: torch.Generator | None = field(default=None, init=False, repr=False, compare=False)
    _generator_key: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.resize is not None:
            self.resize = tuple(int(s) for s in self.resize)  # Hydra hands over a ListConfig
            if len(self.resize) != 2 or min(self.resize) < 1:
                raise ValueError(f"resize must be (height, width) or None, got {self.resize!r}")
        if self.crop_size is not None and self.crop_size < 1:
            raise ValueError(f"crop_size must be positive or None, got {self.crop_size!r}")

    def settings(self) -> dict:
        """What determines the output (public fields, seed left out), JSON-ready: recorded in
        feature-cache manifests."""
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()
            if k != "seed" and not k.startswith("_")
        }

    @property
    def resize_size(self) -> tuple[int, int] | None:
        """The ``(height, width)`` frames are actually resized to (after the quirk)."""
        if self.resize is None:
            return None
        h, w = self.resize
        return (w, h) if self.reference_resize_quirk else (h, w)

    def _rng(self, generator: torch.Generator | None) -> torch.Generator | None:
        if generator is not None or self.seed is None:
            return generator
        # A copy of this object lands in every DataLoader worker (again each epoch unless workers
        # persist); mixing in the worker seed, which the DataLoader draws afresh per worker and
        # epoch, keeps workers from replaying the same crops.
        worker = get_worker_info()
        key = None if worker is None else worker.seed
        if self._generator is None or self._generator_key != key:
            entropy = [self.seed] if key is None else [self.seed, key]
            state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
            self._generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
            self._generator_key = key
        return self._generator

    def draw(self, height: int, width: int, generator: torch.Generator | None = None) -> CropParams:
        """The crop and flip of one video whose resized frames are ``height × width``."""
        size = self.crop_size
        if size is None:
            return CropParams(0, 0, height, width, False)
        if height < size or width < size:
            raise ValueError(
                f"frames of {height}×{width} (height × width) are smaller than the {size}² crop; "
                "set the transform's resize to at least the crop size, or lower crop_size"
            )
        if not self.train:  # the center crop, offsets rounded down
            return CropParams((height - size) // 2, (width - size) // 2, size, size, False)
        rng = self._rng(generator)
        top = int(torch.randint(0, height - size + 1, (1,), generator=rng))
        left = int(torch.randint(0, width - size + 1, (1,), generator=rng))
        flip = bool(torch.rand((), generator=rng) < 0.5)
        return CropParams(top, left, size, size, flip and self.flip)

    def __call__(
        self, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """All frames ``(F, 3, H, W)`` of one video with a single draw: ``(F, 3, crop, crop)``,
        maybe a view of ``frames``."""
        check_frames(frames)
        size = self.resize_size
        if size is not None and tuple(frames.shape[-2:]) != size:
            # uint8 in and out, never a float copy: torch's fast path for channels-last memory
            frames = F.interpolate(
                frames, size=size, mode="bilinear", align_corners=False, antialias=self.antialias
            )
        top, left, height, width, flip = self.draw(frames.shape[-2], frames.shape[-1], generator)
        out = frames[..., top : top + height, left : left + width]
        return out.flip(-1) if flip else out


def frames_to_clips(frames: torch.Tensor, index: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Clips ``(T, 3, L, H, W)`` of frames ``(F, 3, H, W)`` at positions ``index`` ``(T, L)``; a frame
    of several (overlapping) clips is copied, not re-read."""
    index = torch.as_tensor(np.asarray(index), dtype=torch.long)
    if index.ndim != 2:
        raise ValueError(f"expected a clip index matrix (T, L), got shape {tuple(index.shape)}")
    num = frames.shape[0]
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num):
        raise ValueError(
            f"clip frame indices span [{int(index.min())}, {int(index.max())}] but only {num} "
            "frames were given; pass positions into the decoded frames "
            "(tpt_aqa.data.clips.unique_frames maps video frame numbers to them)"
        )
    num_clips, clip_len = index.shape
    # One transposing copy of the distinct frames (decoders give channels-last memory), then
    # plain row copies straight into each clip: about 3× faster than indexing and transposing all
    # T × L frames.
    planes = frames.transpose(0, 1).contiguous()  # (3, F, H, W)
    clips = frames.new_empty((num_clips, 3, clip_len, *frames.shape[2:]))  # (T, 3, L, H, W)
    for t in range(num_clips):
        torch.index_select(planes, 1, index[t], out=clips[t])
    return clips
