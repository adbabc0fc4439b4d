"""Reading the frames of a video: JPEG frame folders and video files (docs/method.md §8–9).

Readers return the requested frames only, as uint8 RGB ``(F, 3, H, W)`` in the requested order
(repeats allowed; each distinct frame decoded once), a view of the decoders' channels-last memory
(the transforms' fast path). Frame ``i`` of a folder is its ``i``-th JPEG in natural name order
(``img_2`` before ``img_10``), or ``pattern.format(start + i)`` with a pattern; of a video file,
the ``i``-th decoded frame. Every failure is a ``VideoReadError`` naming the file, what was
expected and found; ``on_missing="repeat_last"`` is an explicit, warned fallback for sources a few
frames short, and nothing is ever padded with zeros.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch
from PIL import Image

from tpt_aqa.core.errors import UserError
from tpt_aqa.data.base import check_choice
from tpt_aqa.data.clips import unique_frames
from tpt_aqa.data.transforms import VideoTransform, frames_to_clips

try:  # optional: about twice as fast as PIL (`pip install -e '.[fast]'`)
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

DECODERS = ("auto", "pil", "simplejpeg")
ON_MISSING = ("error", "repeat_last")
JPEG_SUFFIXES = (".jpg", ".jpeg")
PREPARE_COMMAND = "python -m tpt_aqa.prepare_frames"
FIX_HINT = (
    f"Check the dataset's frames path, re-run {PREPARE_COMMAND} for the videos named here, "
    "and list every problem with python -m tpt_aqa.verify dataset=<name> dataset.root=..."
)


def without_dataset_hint(err: VideoReadError) -> str:
    """The message of ``err`` without ``FIX_HINT``, the advice about a dataset's frame folders and
    tools, which does not apply to a single video a user gives (``tpt_aqa.predict``)."""
    return " ".join(str(err).replace(FIX_HINT, "").split())


# Below this first needed frame, decoding from the start costs about what a seek saves.
SEEK_MIN_FRAME = 16

Source = str | os.PathLike
Decoder = Literal["auto", "pil", "simplejpeg"]
OnMissing = Literal["error", "repeat_last"]


class VideoReadError(UserError, ValueError):
    """A video or frame folder could not be read as requested."""


def _natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


@lru_cache(maxsize=4096)
def _folder_names(folder: str, mtime_ns: int) -> tuple[tuple[str, ...], frozenset[str]]:
    # Keyed by the folder's mtime, so adding or removing frames invalidates the entry.
    names = os.listdir(folder)
    jpegs = sorted((n for n in names if n.lower().endswith(JPEG_SUFFIXES)), key=_natural_key)
    return tuple(jpegs), frozenset(names)


def _names(folder: Path) -> tuple[tuple[str, ...], frozenset[str]]:
    try:
        mtime = folder.stat().st_mtime_ns
    except FileNotFoundError:
        raise VideoReadError(f"frame folder {folder} does not exist. {FIX_HINT}") from None
    if not folder.is_dir():
        raise VideoReadError(f"{folder} is not a folder of JPEG frames. {FIX_HINT}")
    return _folder_names(str(folder), mtime)


def list_frames(folder: Source) -> tuple[str, ...]:
    """JPEG file names (``.jpg``/``.jpeg``, any case) of a frame folder in frame order, listed once
    per folder and cached."""
    return _names(Path(folder))[0]


@lru_cache(maxsize=4096)
def _pattern_count(folder: str, mtime_ns: int, pattern: str, start: int) -> int:
    names = _folder_names(folder, mtime_ns)[1]
    n = 0
    while pattern.format(start + n) in names:
        n += 1
    return n


def _count_folder(folder: Path, pattern: str | None, start: int) -> int:
    if pattern is None:
        return len(_names(folder)[0])
    return _pattern_count(str(folder), folder.stat().st_mtime_ns, pattern, start)


def _as_indices(indices: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of frame indices, got {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"frame indices must be integers, got dtype {idx.dtype}")
    if idx.min() < 0:
        raise ValueError(f"frame indices must be non-negative, got {int(idx.min())}")
    return idx.astype(np.int64)


def _fit_to_length(
    idx: np.ndarray, available: int, on_missing: str, what: str, source: Path
) -> np.ndarray:
    """Apply ``on_missing`` to indices beyond the ``available`` frames."""
    needed = int(idx.max()) + 1
    if needed <= available:
        return idx
    if on_missing == "repeat_last" and available > 0:
        warnings.warn(
            f"{source} has {available} {what}, {needed} needed; repeating its last frame "
            f"(on_missing='repeat_last')",
            RuntimeWarning,
            stacklevel=3,
        )
        return np.minimum(idx, available - 1)
    raise VideoReadError(
        f"{source} has {available} {what}, but frame index {needed - 1} was requested "
        f"({needed} frames needed). {FIX_HINT} (on_missing='repeat_last' repeats the last frame "
        "instead.)"
    )


def _frame_buffer(
    out: np.ndarray | None, count: int, size: tuple[int, ...], frame: str, first: str
) -> np.ndarray:
    """The output array ``(count, H, W, 3)``, allocated from the first frame's size; later frames
    must match it."""
    if out is None:
        return np.empty((count, *size[:2], 3), np.uint8)
    if tuple(out.shape[1:3]) != tuple(size[:2]):
        raise VideoReadError(
            f"{frame} is {size[0]}×{size[1]} (height × width) but {first} is "
            f"{out.shape[1]}×{out.shape[2]}; all frames of a video must have one size. {FIX_HINT}"
        )
    return out


def _decode_jpegs(paths: list[Path], decoder: str, strict: bool) -> np.ndarray:
    """Decode JPEG files into one ``(F, H, W, 3)`` array, each straight into its slot; without
    ``strict``, PIL retries a file simplejpeg's strict mode rejects (recoverable defects)."""
    out: np.ndarray | None = None
    first = f"frame {paths[0]}"
    for i, path in enumerate(paths):
        name = f"frame {path}"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise VideoReadError(f"frame file {path} is missing. {FIX_HINT}") from None
        except OSError as err:
            raise VideoReadError(f"cannot read frame file {path}: {err}") from err
        try:
            if decoder == "simplejpeg":
                try:
                    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
                    out = _frame_buffer(out, len(paths), (height, width), name, first)
                    simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out[i])
                    continue
                except VideoReadError:
                    raise
                except ValueError:
                    if strict:
                        raise
            with Image.open(io.BytesIO(data)) as image:
                out = _frame_buffer(out, len(paths), (image.height, image.width), name, first)
                out[i] = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except VideoReadError:
            raise
        # Decoders fed arbitrary bytes fail in many ways (OSError, ValueError, SyntaxError, …);
        # all of them mean the same thing to the user: this file is not a usable JPEG.
        except Exception as err:
            raise VideoReadError(
                f"frame {path} is not a readable JPEG ({type(err).__name__}: {err}). {FIX_HINT}"
            ) from err
    assert out is not None  # paths is never empty
    return out


def _in_order(
    frames: np.ndarray, wanted: np.ndarray, inverse: np.ndarray, idx: np.ndarray
) -> torch.Tensor:
    """The distinct ``wanted`` frames ``(U, H, W, 3)`` as the requested ``idx``, ``(F, 3, H, W)``."""
    if len(wanted) != len(idx) or not np.array_equal(wanted, idx):
        frames = frames[inverse.reshape(-1)]  # (F, H, W, 3)
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def read_frame_folder(
    folder: Source,
    indices: Sequence[int] | np.ndarray | torch.Tensor,
    pattern: str | None = None,
    start: int = 0,
    decoder: Decoder = "auto",
    on_missing: OnMissing = "error",
) -> torch.Tensor:
    """Frames ``indices`` ``(F,)`` of a folder of JPEGs, uint8 ``(F, 3, H, W)``.

    Args:
        pattern: file name of frame ``i`` as ``pattern.format(start + i)`` (``img_{:05d}.jpg``);
            ``None``: the JPEGs in natural name order.
        decoder: ``"simplejpeg"``, ``"pil"``, or ``"auto"``: simplejpeg when installed, PIL
            retrying what it rejects; PIL otherwise.
        on_missing: ``"error"``, or ``"repeat_last"`` (warned) for indices past the end.
    """
    check_choice("decoder", decoder, DECODERS)
    check_choice("on_missing", on_missing, ON_MISSING)
    if decoder == "simplejpeg" and simplejpeg is None:
        raise ImportError(
            "decoder='simplejpeg' but simplejpeg is not installed: `pip install -e '.[fast]'` "
            "(or simplejpeg==1.9.0), or use decoder='auto' to fall back to PIL"
        )
    folder = Path(folder)
    idx = _as_indices(indices)
    jpegs, names = _names(folder)
    if pattern is None:
        idx = _fit_to_length(idx, len(jpegs), on_missing, "JPEG frames", folder)
    elif pattern.format(start + int(idx.max())) not in names:
        available = _count_folder(folder, pattern, start)
        what = f"frames named like {pattern.format(start)!r} (pattern {pattern!r})"
        idx = _fit_to_length(idx, available, on_missing, what, folder)
    wanted, inverse = np.unique(idx, return_inverse=True)
    if pattern is None:
        paths = [folder / jpegs[i] for i in wanted]
    else:
        paths = [folder / pattern.format(start + int(i)) for i in wanted]
    auto = "pil" if simplejpeg is None else "simplejpeg"
    frames = _decode_jpegs(paths, auto if decoder == "auto" else decoder, decoder != "auto")
    return _in_order(frames, wanted, inverse, idx)


class _SeekUnreliable(Exception):
    """Timestamps after a seek do not map to frame numbers; decode from the start instead."""


def _open_video(path: Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    if not path.is_file():
        raise VideoReadError(f"video file {path} does not exist. {FIX_HINT}")
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise VideoReadError(f"{path} is not a readable video file ({err}). {FIX_HINT}") from err
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path} has no video stream. {FIX_HINT}")
    return container, container.streams.video[0]


def _numbered_after_seek(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, target: int
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Frames from the keyframe at or before frame ``target``, numbered ``(pts - pts of frame 0) ×
    time_base × rate``: the output number only at a constant rate, so ``_SeekUnreliable`` is raised
    before a doubtful number (no constant rate, a missing or fractional pts, a gap, a seek past
    ``target``, no frame)."""
    rate = stream.average_rate
    head = next(container.decode(stream), None)
    if head is None or head.pts is None or rate is None or rate != stream.base_rate:
        raise _SeekUnreliable
    frames_per_tick = stream.time_base * rate
    # Aim half a frame early so that rounding cannot land the seek past the target's keyframe.
    aim = head.pts + (Fraction(target) - Fraction(1, 2)) / frames_per_tick
    container.seek(int(aim), stream=stream, backward=True, any_frame=False)
    previous = None
    for frame in container.decode(stream):
        if frame.pts is None:
            raise _SeekUnreliable
        exact = (frame.pts - head.pts) * frames_per_tick
        i = round(exact)
        if abs(exact - i) > 0.1 or (i > target if previous is None else i != previous + 1):
            raise _SeekUnreliable
        previous = i
        yield i, frame
    if previous is None:
        raise _SeekUnreliable


def _scan(
    numbered: Iterator[tuple[int, av.VideoFrame]], wanted: np.ndarray, path: Path
) -> tuple[np.ndarray | None, int | None, np.ndarray | None]:
    """The sorted distinct ``wanted`` frames ``(U, H, W, 3)`` converted to RGB as ``numbered``
    passes (``None`` if none was reached), and, when the video ended before the last one, its
    frame count and last frame ``(H, W, 3)`` (else ``None, None``)."""
    slot = {int(w): k for k, w in enumerate(wanted)}
    last_wanted = int(wanted[-1])
    out: np.ndarray | None = None
    last_i, last_frame = -1, None
    for i, frame in numbered:
        last_i, last_frame = i, frame
        k = slot.get(i)
        if k is not None:
            rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3)
            first = f"frame {wanted[0]}"
            out = _frame_buffer(out, len(wanted), rgb.shape, f"frame {i} of {path}", first)
            out[k] = rgb
        if i >= last_wanted:
            return out, None, None
    last = None if last_frame is None else last_frame.to_ndarray(format="rgb24")
    return out, last_i + 1, last


def _decode_video(
    path: Path, wanted: np.ndarray, seek: bool
) -> tuple[np.ndarray | None, int | None, np.ndarray | None]:
    """``_scan`` of a video file, through a seek when that is possible and saves decoding."""
    if seek and wanted[0] >= SEEK_MIN_FRAME:
        container, stream = _open_video(path)
        with container:
            try:
                return _scan(_numbered_after_seek(container, stream, int(wanted[0])), wanted, path)
            except _SeekUnreliable:
                pass  # correct first: count every frame from the start, in a fresh container
    container, stream = _open_video(path)
    with container:
        return _scan(enumerate(container.decode(stream)), wanted, path)  # in output order


def read_video_file(
    path: Source,
    indices: Sequence[int] | np.ndarray | torch.Tensor,
    on_missing: OnMissing = "error",
    seek: bool = True,
) -> torch.Tensor:
    """Frames ``indices`` ``(F,)`` of a video file (PyAV), uint8 ``(F, 3, H, W)``. Decoding stops
    after the last one and, with ``seek`` at a constant frame rate, starts at the keyframe before
    the first (else from the start); ``on_missing`` as ``read_frame_folder``."""
    check_choice("on_missing", on_missing, ON_MISSING)
    path = Path(path)
    idx = _as_indices(indices)
    wanted, inverse = np.unique(idx, return_inverse=True)
    try:
        out, total, last = _decode_video(path, wanted, seek)
    except av.FFmpegError as err:
        raise VideoReadError(f"decoding {path} failed ({err}). {FIX_HINT}") from err
    if total is not None:
        _fit_to_length(idx, total, on_missing, "frames", path)  # raises unless repeat_last
        if out is None:
            out = np.empty((len(wanted), *last.shape), np.uint8)
        out[wanted >= total] = last
    return _in_order(out, wanted, inverse, idx)


def count_frames(
    source: Source, pattern: str | None = None, start: int = 0, exact: bool = False
) -> int:
    """Frames of a folder (its JPEGs, or with ``pattern`` the consecutive files from ``start``) or
    of a video file (its container's count, decoded when ``exact`` or when the container has none)."""
    source = Path(source)
    if source.is_dir():
        return _count_folder(source, pattern, start)
    if not source.exists():
        raise VideoReadError(f"{source} is neither a frame folder nor a video file. {FIX_HINT}")
    container, stream = _open_video(source)
    with container:
        if stream.frames > 0 and not exact:
            return stream.frames
        try:
            return sum(1 for _ in container.decode(stream))
        except av.FFmpegError as err:
            raise VideoReadError(f"decoding {source} failed ({err}). {FIX_HINT}") from err


def read_frames(
    source: Source, indices: Sequence[int] | np.ndarray | torch.Tensor, **options
) -> torch.Tensor:
    """``read_frame_folder`` for folders, ``read_video_file`` for files: ``(F, 3, H, W)``."""
    if Path(source).is_dir():
        return read_frame_folder(source, indices, **options)
    return read_video_file(source, indices, **options)


def load_clips(
    source: Source,
    index: np.ndarray,
    transform: VideoTransform | None = None,
    generator: torch.Generator | None = None,
    **options,
) -> torch.Tensor:
    """The clips ``(T, 3, L, H, W)`` of frames ``index`` ``(T, L)`` of one video: each needed frame
    read once, ``transform``-ed with one draw, gathered into clips."""
    frames_needed, local = unique_frames(index)  # (U,), (T, L)
    frames = read_frames(source, frames_needed, **options)  # (U, 3, H, W)
    if transform is not None:
        frames = transform(frames, generator)
    return frames_to_clips(frames, local)


def write_frame_folder(
    folder: Source,
    frames: torch.Tensor,
    pattern: str = "{:05d}.jpg",
    start: int = 0,
    quality: int = 95,
) -> list[Path]:
    """Write uint8 RGB frames ``(F, 3, H, W)`` as JPEGs ``pattern.format(start + i)`` in ``folder``
    (created if missing); the paths in frame order."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / pattern.format(start + i) for i in range(len(frames))]
    for path, frame in zip(paths, frames.permute(0, 2, 3, 1).contiguous().numpy(), strict=True):
        Image.fromarray(frame).save(path, quality=quality)  # frame (H, W, 3)
    return paths
