"""Spatial transforms of whole videos and the gathering of frames into clips (docs/method.md §9).

Frames travel as uint8 ``(F, 3, H, W)`` torch tensors (RGB; the readers in
``tpt_aqa.data.video`` return them as views of channels-last memory, which bilinear resizing of
uint8 takes its fast path on). Values stay uint8 to the end: the I3D encoder normalises.

Training draws one random crop position and one horizontal flip per video and applies them to every
frame of it, so the motion between frames is untouched; evaluation takes the center crop. Frames
are first resized to a fixed ``(height, width)``. The release resized to height 455 × width 256, a
swapped tuple that distorts the aspect ratio; ``reference_resize_quirk=True`` reproduces that, the
default is the intended height 256 × width 455. JIGSAWS takes a center crop of the raw frames with
no resize and no flip: ``VideoTransform(resize=None, train=False)`` for every view.

torchvision does not import beside the CPU build of torch this project pins; these are a few lines
of torch instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import get_worker_info


@dataclass(frozen=True)
class CropParams:
    """The random draw for one video: where to crop and whether to flip.

    Attributes:
        top: first row of the crop.
        left: first column of the crop.
        height: crop height.
        width: crop width.
        flip: mirror horizontally.
    """

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


def resize_frames(
    frames: torch.Tensor, size: tuple[int, int], antialias: bool = True
) -> torch.Tensor:
    """Bilinear resize of uint8 frames to an exact size.

    Args:
        frames: uint8 ``(F, 3, H, W)``.
        size: ``(height, width)`` of the output.
        antialias: low-pass filter when shrinking (as PIL does), so downscaled frames do not alias.

    Returns:
        uint8 ``(F, 3, height, width)``; ``frames`` itself when it already has that size.
    """
    check_frames(frames)
    if tuple(frames.shape[-2:]) == tuple(size):
        return frames
    # uint8 in, uint8 out: torch resizes uint8 directly (rounding), with a fast path for
    # channels-last memory, and never materialises a float copy of the video.
    return F.interpolate(
        frames, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias
    )


def center_crop_params(height: int, width: int, crop_size: int) -> CropParams:
    """The center crop of a ``height × width`` frame: offsets rounded down, no flip."""
    return CropParams(
        (height - crop_size) // 2, (width - crop_size) // 2, crop_size, crop_size, False
    )


def apply_crop(frames: torch.Tensor, params: CropParams) -> torch.Tensor:
    """Crop (and maybe flip) every frame alike.

    Args:
        frames: uint8 ``(F, 3, H, W)``.
        params: the crop and flip.

    Returns:
        uint8 ``(F, 3, params.height, params.width)``; a view of ``frames`` unless flipped.
    """
    out = frames[
        ..., params.top : params.top + params.height, params.left : params.left + params.width
    ]
    return out.flip(-1) if params.flip else out


@dataclass
class VideoTransform:
    """Resize, then crop and maybe flip, with one random draw per video.

    Views: ``train=True`` takes a random ``crop_size`` square and flips with p = 0.5 (when
    ``flip``); ``train=False`` takes the center crop and never flips (test queries, exemplars).

    Randomness, in order of precedence: a ``generator`` passed to the call; else, with ``seed``
    set, a generator owned by this object (seeded from ``seed`` and, inside a DataLoader worker,
    the worker's seed, so workers and epochs do not repeat each other's crops, and runs under
    ``lightning.seed_everything(workers=True)`` reproduce); else torch's global RNG, which the
    DataLoader seeds per worker.

    Args:
        resize: ``(height, width)`` every frame is resized to first; ``None`` keeps the frames.
        reference_resize_quirk: swap ``resize`` to ``(width, height)`` as the release did (height
            455 × width 256 with the default), distorting the aspect ratio. For reproduction only.
        crop_size: side of the square crop; ``None`` keeps the whole (resized) frame.
        train: random crop and flip (training) instead of the center crop (evaluation).
        flip: allow the horizontal flip in training.
        antialias: antialias when the resize shrinks.
        seed: seed of this object's own generator (see above); ``None`` uses torch's global RNG.
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
        """The crop and flip for one video whose (resized) frames are ``height × width``.

        Args:
            height: frame height after resizing.
            width: frame width after resizing.
            generator: source of randomness for this draw (see the class docstring).

        Returns:
            The crop parameters; deterministic (center, no flip) when not training.

        Raises:
            ValueError: when the frames are smaller than the crop.
        """
        size = self.crop_size
        if size is None:
            return CropParams(0, 0, height, width, False)
        if height < size or width < size:
            raise ValueError(
                f"frames of {height}×{width} (height × width) are smaller than the {size}² crop; "
                "set the transform's resize to at least the crop size, or lower crop_size"
            )
        if not self.train:
            return center_crop_params(height, width, size)
        rng = self._rng(generator)
        top = int(torch.randint(0, height - size + 1, (1,), generator=rng))
        left = int(torch.randint(0, width - size + 1, (1,), generator=rng))
        flip = bool(torch.rand((), generator=rng) < 0.5)
        return CropParams(top, left, size, size, flip and self.flip)

    def __call__(
        self, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Transform all frames of one video with a single draw.

        Args:
            frames: uint8 ``(F, 3, H, W)``.
            generator: source of randomness for this video (see the class docstring).

        Returns:
            uint8 ``(F, 3, crop, crop)``; may be a view of ``frames`` (center crop, no resize).
        """
        check_frames(frames)
        if self.resize_size is not None:
            frames = resize_frames(frames, self.resize_size, self.antialias)
        params = self.draw(frames.shape[-2], frames.shape[-1], generator)
        return apply_crop(frames, params)


def frames_to_clips(frames: torch.Tensor, index: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Gather frames into clips; a frame used by several (overlapping) clips is copied, not re-read.

    Args:
        frames: ``(F, 3, H, W)`` (any dtype, usually uint8).
        index: position in ``frames`` of every clip frame ``(T, L)``.

    Returns:
        Clips ``(T, 3, L, H, W)``, contiguous, same dtype as ``frames``.

    Raises:
        ValueError: when an index falls outside ``[0, F)`` or ``index`` is not 2-D.
    """
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
