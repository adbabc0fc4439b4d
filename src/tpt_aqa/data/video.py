"""Reading the frames of a video: JPEG frame folders and video files (docs/method.md §8–9).

All readers return the requested frames only, as uint8 RGB ``(F, 3, H, W)`` torch tensors in the
order of the requested indices (repeats allowed; each distinct frame is decoded once). The tensor is
a view of channels-last ``(F, H, W, 3)`` memory, the decoders' native layout: no copy is made to
reorder it, and ``tpt_aqa.data.transforms`` resizes that layout on torch's fast path. Call
``.contiguous()`` if an owner of the result needs the standard layout; ``frames_to_clips`` and
``load_clips`` return contiguous clips.

Frame ``i`` of a folder is its ``i``-th JPEG file in natural name order (``img_2.jpg`` before
``img_10.jpg``; the same as plain name order for zero-padded names), or the file
``pattern.format(start + i)`` when a pattern such as ``img_{:05d}.jpg`` is given. Frame ``i`` of a
video file is the ``i``-th frame its decoder outputs.

Where the release crashed deep in a loader (or, for short folders, quietly trained on fewer
frames), every failure here is a ``VideoReadError`` naming the file or folder, what was expected
and what was found. ``on_missing="repeat_last"`` is an explicit, warned fallback for sources a few
frames too short; nothing is ever padded with zeros.
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

from tpt_aqa.data.clips import unique_frames
from tpt_aqa.data.transforms import VideoTransform, frames_to_clips
from tpt_aqa.errors import UserError

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


# --------------------------------------------------------------------------------------------------
# Frame folders


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
    """JPEG file names of a frame folder in frame order (listed once per folder and cached).

    Args:
        folder: the frame folder.

    Returns:
        File names (``.jpg`` / ``.jpeg``, any case) in natural name order.

    Raises:
        VideoReadError: when the folder does not exist.
    """
    return _names(Path(folder))[0]


@lru_cache(maxsize=4096)
def _pattern_count(folder: str, mtime_ns: int, pattern: str, start: int) -> int:
    names = _folder_names(folder, mtime_ns)[1]
    n = 0
    while pattern.format(start + n) in names:
        n += 1
    return n


def _count_folder(folder: Path, pattern: str | None, start: int) -> int:
    jpegs, _ = _names(folder)
    if pattern is None:
        return len(jpegs)
    return _pattern_count(str(folder), folder.stat().st_mtime_ns, pattern, start)


def _as_indices(indices: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(
            f"expected a non-empty 1-D sequence of frame indices, got shape {idx.shape}"
        )
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


def _check_options(decoder: str, on_missing: str) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
    if decoder == "simplejpeg" and simplejpeg is None:
        raise ImportError(
            "decoder='simplejpeg' but simplejpeg is not installed: `pip install -e '.[fast]'` "
            "(or simplejpeg==1.9.0), or use decoder='auto' to fall back to PIL"
        )


def _frame_buffer(
    out: np.ndarray | None, count: int, size: tuple[int, int], path: Path, first: Path
) -> np.ndarray:
    """The output array, allocated from the first frame's size; later frames must match it."""
    if out is None:
        return np.empty((count, *size, 3), np.uint8)
    if tuple(out.shape[1:3]) != size:
        raise VideoReadError(
            f"frame {path} is {size[0]}×{size[1]} (height × width) but {first} is "
            f"{out.shape[1]}×{out.shape[2]}; all frames of a video must have one size. {FIX_HINT}"
        )
    return out


def _decode_jpegs(paths: list[Path], decoder: str, strict: bool) -> np.ndarray:
    """Decode JPEG files into one ``(F, H, W, 3)`` array, each straight into its slot.

    With ``strict=False`` a file simplejpeg rejects is retried with PIL, which tolerates some
    recoverable defects that libjpeg-turbo's strict mode reports as errors.
    """
    out: np.ndarray | None = None
    for i, path in enumerate(paths):
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
                    out = _frame_buffer(out, len(paths), (height, width), path, paths[0])
                    simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out[i])
                    continue
                except VideoReadError:
                    raise
                except ValueError:
                    if strict:
                        raise
            with Image.open(io.BytesIO(data)) as image:
                out = _frame_buffer(out, len(paths), (image.height, image.width), path, paths[0])
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


def read_frame_folder(
    folder: Source,
    indices: Sequence[int] | np.ndarray | torch.Tensor,
    pattern: str | None = None,
    start: int = 0,
    decoder: Decoder = "auto",
    on_missing: OnMissing = "error",
) -> torch.Tensor:
    """Decode the requested frames of a folder of JPEGs.

    Args:
        folder: the frame folder.
        indices: frame indices ``(F,)``, any order, repeats allowed.
        pattern: file name of frame ``i`` as ``pattern.format(start + i)``, e.g. ``img_{:05d}.jpg``
            (AQA-7) or ``{:08d}.jpg`` (MTL-AQA whole-video folders). ``None``: the folder's JPEG
            files in natural name order.
        start: the number in the name of frame 0, with ``pattern`` (1 for ``img_00001.jpg``).
        decoder: ``"simplejpeg"``, ``"pil"``, or ``"auto"``: simplejpeg when installed, with PIL
            retrying any file simplejpeg's strict mode rejects; PIL otherwise.
        on_missing: ``"error"``, or ``"repeat_last"`` to use the last available frame for indices
            past the end of a too-short folder (with a ``RuntimeWarning``). A fallback for folders a
            few frames short; it hides truncated extractions, so prefer fixing the data.

    Returns:
        uint8 RGB frames ``(F, 3, H, W)``, a view of channels-last memory.

    Raises:
        VideoReadError: missing folder, too few frames, missing, unreadable or corrupt JPEG, or
            frames of different sizes; the message names the file or folder.
    """
    _check_options(decoder, on_missing)
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
    strict = decoder != "auto"
    if decoder == "auto":
        decoder = "pil" if simplejpeg is None else "simplejpeg"
    frames = _decode_jpegs(paths, decoder, strict)  # (U, H, W, 3)
    if len(wanted) != len(idx) or not np.array_equal(wanted, idx):
        frames = frames[inverse.reshape(-1)]  # (F, H, W, 3)
    return torch.from_numpy(frames).permute(0, 3, 1, 2)  # (F, 3, H, W)


# --------------------------------------------------------------------------------------------------
# Video files


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


def _numbered(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Every frame from the start, numbered in decoder output order."""
    yield from enumerate(container.decode(stream))


def _numbered_after_seek(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, target: int
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Frames from the keyframe at or before frame ``target``, numbered from their timestamps.

    Numbers come from ``(pts - pts of frame 0) × time_base × frame rate``. That is the decoder
    output number only for a constant frame rate, so this raises ``_SeekUnreliable`` before
    yielding a doubtful number: no constant rate, a missing or fractional timestamp, a gap, a seek
    that landed past ``target``, or no frame at all.
    """
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
    """Convert the wanted frames to RGB as they pass, stopping after the last one.

    Args:
        numbered: ``(frame number, frame)`` in order.
        wanted: sorted distinct frame numbers ``(U,)``.
        path: the video, for messages.

    Returns:
        ``(out, total, last)``: the wanted frames ``(U, H, W, 3)`` (``None`` if none was reached;
        slots past the end stay unfilled), and, when the video ended before the last wanted
        frame, its number of frames and its last frame ``(H, W, 3)`` (else ``None, None``).
    """
    slot = {int(w): k for k, w in enumerate(wanted)}
    last_wanted = int(wanted[-1])
    out: np.ndarray | None = None
    last_i, last_frame = -1, None
    for i, frame in numbered:
        last_i, last_frame = i, frame
        k = slot.get(i)
        if k is not None:
            rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3)
            if out is None:
                out = np.empty((len(wanted), *rgb.shape), np.uint8)
            elif out.shape[1:] != rgb.shape:
                raise VideoReadError(
                    f"frame {i} of {path} is {rgb.shape[0]}×{rgb.shape[1]} but earlier frames "
                    f"are {out.shape[1]}×{out.shape[2]} (height × width); re-encode it at one size"
                )
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
        return _scan(_numbered(container, stream), wanted, path)


def read_video_file(
    path: Source,
    indices: Sequence[int] | np.ndarray | torch.Tensor,
    on_missing: OnMissing = "error",
    seek: bool = True,
) -> torch.Tensor:
    """Decode the requested frames of a video file with PyAV.

    Decoding stops after the last requested frame. With ``seek`` and a constant frame rate it
    starts at the keyframe before the first requested frame instead of the first frame; where
    timestamps do not map to frame numbers it silently falls back to decoding from the start.

    Args:
        path: the video file.
        indices: frame numbers ``(F,)`` in decoder output order, any order, repeats allowed.
        on_missing: ``"error"``, or ``"repeat_last"`` to use the last frame for numbers past the
            end (with a ``RuntimeWarning``), e.g. when container metadata over-counts by a frame.
        seek: allow seeking (``False`` always decodes from the first frame).

    Returns:
        uint8 RGB frames ``(F, 3, H, W)``, a view of channels-last memory.

    Raises:
        VideoReadError: missing or unreadable file, no video stream, a decoding error, frames of
            different sizes, or too few frames; the message names the file.
    """
    _check_options("auto", on_missing)
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
    if len(wanted) != len(idx) or not np.array_equal(wanted, idx):
        out = out[inverse.reshape(-1)]  # (F, H, W, 3)
    return torch.from_numpy(out).permute(0, 3, 1, 2)  # (F, 3, H, W)


def _count_video(path: Path, exact: bool) -> int:
    container, stream = _open_video(path)
    with container:
        if stream.frames > 0 and not exact:
            return stream.frames
        try:
            return sum(1 for _ in container.decode(stream))
        except av.FFmpegError as err:
            raise VideoReadError(f"decoding {path} failed ({err}). {FIX_HINT}") from err


# --------------------------------------------------------------------------------------------------
# Either source


def count_frames(
    source: Source, pattern: str | None = None, start: int = 0, exact: bool = False
) -> int:
    """Number of frames of a frame folder or a video file.

    Args:
        source: a folder of JPEG frames or a video file.
        pattern: for folders, count the consecutive files ``pattern.format(start + i)`` from
            ``i = 0`` instead of all JPEG files (see ``read_frame_folder``).
        start: the number in the name of frame 0, with ``pattern``.
        exact: for video files, decode and count every frame instead of trusting the container's
            frame count (which some containers lack or get wrong); without metadata the count is
            decoded anyway.

    Returns:
        The number of frames.

    Raises:
        VideoReadError: when the source is missing or unreadable.
    """
    source = Path(source)
    if source.is_dir():
        return _count_folder(source, pattern, start)
    if not source.exists():
        raise VideoReadError(f"{source} is neither a frame folder nor a video file. {FIX_HINT}")
    return _count_video(source, exact)


def read_frames(
    source: Source, indices: Sequence[int] | np.ndarray | torch.Tensor, **options
) -> torch.Tensor:
    """``read_frame_folder`` for folders, ``read_video_file`` for files.

    Args:
        source: a folder of JPEG frames or a video file.
        indices: frame indices ``(F,)``.
        **options: keyword arguments of the reader the source calls for.

    Returns:
        uint8 RGB frames ``(F, 3, H, W)``.
    """
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
    """The clips of one video: read each needed frame once, transform, gather into clips.

    Typical use in a datamodule's ``load_video``::

        index = sampler.indices(count_frames(folder), offset)  # (T, L)
        return load_clips(folder, index, transforms[view])     # (T, 3, L, 224, 224)

    Args:
        source: a folder of JPEG frames or a video file.
        index: frame number of every clip frame ``(T, L)`` (``ClipSampler.indices``).
        transform: applied to all frames of the video with one random draw; ``None`` keeps them.
        generator: randomness for this video's transform draw (see ``VideoTransform``).
        **options: keyword arguments of the reader (``pattern``, ``decoder``, ``on_missing`` …).

    Returns:
        uint8 clips ``(T, 3, L, H, W)``, contiguous.
    """
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
    """Write frames as JPEG files (PIL), for preparation scripts, tests and benchmarks.

    Args:
        folder: created if missing.
        frames: uint8 RGB ``(F, 3, H, W)``.
        pattern: file name of frame ``i`` as ``pattern.format(start + i)``.
        start: number of the first frame in its name.
        quality: JPEG quality (1–95).

    Returns:
        The written paths, in frame order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hwc = frames.permute(0, 2, 3, 1).contiguous().numpy()  # (F, H, W, 3)
    paths = []
    for i, frame in enumerate(hwc):
        path = folder / pattern.format(start + i)
        Image.fromarray(frame).save(path, quality=quality)
        paths.append(path)
    return paths
