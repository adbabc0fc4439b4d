"""AQA-7 (``dataset=aqa7``): six Olympic actions, scores normalised per class to 0–100, which are
the training targets and the reported scale; exemplar group = class. Layout, ranges and clips:
docs/method.md §8. The paper trains one model per class; several classes at once report per-class
ρ / R-ℓ2 and their Fisher-z / arithmetic means (the release crashes in all-class mode).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data.base import SampleTable, check_count, plain
from tpt_aqa.data.video import PREPARE_COMMAND, count_frames, list_frames
from tpt_aqa.data.video_base import VideoDataModule

# Class names in the order of their ids 1–6 in the split files, and their raw score ranges.
AQA7_CLASSES: tuple[str, ...] = (
    "diving",
    "gym_vault",
    "ski_big_air",
    "snowboard_big_air",
    "sync_diving_3m",
    "sync_diving_10m",
)

AQA7_SCORE_RANGES: dict[str, tuple[float, float]] = {
    "diving": (21.6, 102.6),
    "gym_vault": (12.3, 16.87),
    "ski_big_air": (8.0, 50.0),
    "snowboard_big_air": (8.0, 50.0),
    "sync_diving_3m": (46.2, 104.88),
    "sync_diving_10m": (49.8, 99.36),
}


class AQA7DataError(ConfigError):
    """A problem in the AQA-7 split files or class selection, naming the file and the fix."""


def _score_range(
    class_name: str, ranges: Mapping[str, Sequence[float]] | None
) -> tuple[float, float]:
    ranges = AQA7_SCORE_RANGES if ranges is None else ranges
    if class_name not in ranges:
        raise AQA7DataError(
            f"no score range for AQA-7 class {class_name!r}: add dataset.score_ranges.{class_name}="
            f"[lo,hi] (known: {sorted(ranges)})"
        )
    lo, hi = (float(v) for v in ranges[class_name])
    if not hi > lo:
        raise AQA7DataError(
            f"dataset.score_ranges.{class_name}=[{lo}, {hi}]: the upper end must exceed the lower"
        )
    return lo, hi


def normalise(
    class_name: str, score: float | np.ndarray, ranges: Mapping[str, Sequence[float]] | None = None
) -> float | np.ndarray:
    """Raw AQA-7 score(s) of a class on its 0–100 scale, ``(s - lo) / (hi - lo) * 100``, with
    ``ranges`` (``AQA7_SCORE_RANGES`` for ``None``)."""
    lo, hi = _score_range(class_name, ranges)
    return (score - lo) / (hi - lo) * 100.0


def resolve_classes(classes: Any) -> list[int]:
    """The sorted class ids (1–6) of ``classes``: ``None``/``"all"``, a name (``"diving"``) or an id
    (``1``, ``"1"``), or a list of them. Raises ``AQA7DataError`` listing the valid ones."""
    classes = plain(classes)
    if classes is None or (isinstance(classes, str) and classes.strip().lower() == "all"):
        return list(range(1, len(AQA7_CLASSES) + 1))
    items = list(classes) if isinstance(classes, (list, tuple)) else [classes]
    if not items:
        raise AQA7DataError("dataset.classes is empty: name at least one class, or use 'all'")
    ids = []
    for item in items:
        key = str(item).strip().lower()
        if key.isdigit() and 1 <= int(key) <= len(AQA7_CLASSES):
            ids.append(int(key))
        elif key in AQA7_CLASSES:
            ids.append(AQA7_CLASSES.index(key) + 1)
        else:
            valid = ", ".join(f"{i}={n}" for i, n in enumerate(AQA7_CLASSES, start=1))
            raise AQA7DataError(
                f"dataset.classes: unknown AQA-7 class {item!r}; use names or ids ({valid}), a list "
                "of them (dataset.classes=[diving,gym_vault]) or all"
            )
    return sorted(set(ids))


def read_split_list(path: Path, variable: str, key: str) -> np.ndarray:
    """The rows ``[class, sample_no, score]`` ``(N, 3)`` of matrix ``variable`` (config key ``key``)
    of a split ``.mat`` file. Raises ``AQA7DataError`` naming the file and the fix."""
    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError as err:  # MATLAB v7.3 files are HDF5, which loadmat cannot read
        raise AQA7DataError(
            f"{path} is a MATLAB v7.3 (HDF5) file ({err}); re-save it with save(..., '-v7')"
        ) from err
    except Exception as err:  # scipy raises several types for a file that is not a .mat
        raise AQA7DataError(
            f"{path} is not a readable MATLAB file ({type(err).__name__}: {err})"
        ) from err
    found = sorted(k for k in mat if not k.startswith("__"))
    if variable not in mat:
        raise AQA7DataError(
            f"{path} has no variable {variable!r}; it holds {found}: set dataset.{key} to one of them"
        )
    rows = np.asarray(mat[variable])
    if rows.ndim != 2 or rows.shape[1] != 3 or not np.issubdtype(rows.dtype, np.number):
        raise AQA7DataError(
            f"{path}: variable {variable!r} is {rows.dtype} of shape {rows.shape}; expected a "
            "numeric matrix with one row [class, sample_no, score] per video"
        )
    rows = rows.astype(np.float64)
    bad = ~np.isfinite(rows).all(1) | (rows[:, :2] != np.round(rows[:, :2])).any(1)
    bad |= (rows[:, 0] < 1) | (rows[:, 0] > len(AQA7_CLASSES)) | (rows[:, 1] < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AQA7DataError(
            f"{path}: row {i} of {variable!r} is {rows[i].tolist()}; expected [class id 1–"
            f"{len(AQA7_CLASSES)}, sample number (integer), score] ({int(bad.sum())} bad rows)"
        )
    return rows


class AQA7DataModule(VideoDataModule):
    """AQA-7 from its split ``.mat`` files and per-video JPEG frame folders (``dataset=aqa7``).

    Args: the keys of ``conf/dataset/aqa7.yaml``, documented there; a video is its first
    ``sampler.frames_needed`` frames.
    """

    title = "AQA-7"
    config_name = "aqa7"
    holds = "Split_4/ and frames/"

    def __init__(
        self,
        root: str,
        classes: str | int | Sequence[str | int] | None = "all",
        score_ranges: Mapping[str, Sequence[float]] | None = None,
        split_dir: str = "Split_4",
        train_list: str = "split_4_train_list.mat",
        test_list: str = "split_4_test_list.mat",
        train_variable: str = "consolidated_train_list",
        test_variable: str = "consolidated_test_list",
        frames_dir: str = "frames",
        folder_pattern: str = "{class_name}-out/{sample_no:03d}",
        frame_pattern: str = "img_{:05d}.jpg",
        frame_start: int = 1,
        decoder: str = "auto",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("delta_cap", 100.0)
        super().__init__(root=root, **kwargs)
        self.class_ids = resolve_classes(classes)
        self.score_ranges = {
            name: _score_range(name, plain(score_ranges))
            for name in (AQA7_CLASSES[i - 1] for i in self.class_ids)
        }
        self.split_files = {
            "train": (self.root / split_dir / train_list, train_variable),
            "test": (self.root / split_dir / test_list, test_variable),
        }
        self.frames_root = self.root / frames_dir
        self.folder_pattern = folder_pattern
        self.frame_pattern = frame_pattern
        self.frame_start = check_count("frame_start", frame_start)
        self.decoder = decoder
        self.frames_needed = self.sampler.frames_needed
        # per table row, set by build_table
        self.sample_no: np.ndarray | None = None
        self._class_of_row: tuple[str, ...] | None = None

    # ---- the table -----------------------------------------------------------------------------
    def group_option(self) -> dict[str, Any]:
        return {"option": "class", "values": list(self.table.group_names)}

    def raw_score_ranges(self) -> dict[str, list[float]]:
        return {name: list(self.score_ranges[name]) for name in self.table.group_names}

    def build_table(self) -> SampleTable:
        selected = [AQA7_CLASSES[i - 1] for i in self.class_ids]
        position = {cid: k for k, cid in enumerate(self.class_ids)}  # class id 1–6 → table class
        found = []  # (id, target, class, split, sample number, class name) of each video
        seen: dict[str, str] = {}
        for name, (path, variable) in self.split_files.items():
            rows = read_split_list(self._split_path(path), variable, f"{name}_variable")
            for cls, no, score in rows:
                cls, no = int(cls), int(no)
                if cls not in position:
                    continue
                class_name = AQA7_CLASSES[cls - 1]
                vid = f"{class_name}_{no:03d}"
                if vid in seen:
                    raise AQA7DataError(
                        f"{path}: {class_name} sample {no} is listed twice (also in the "
                        f"{seen[vid]} list); fix the split files"
                    )
                seen[vid] = name
                score = normalise(class_name, float(score), self.score_ranges)
                found.append((vid, score, position[cls], name, no, class_name))
        if not found:
            files = ", ".join(str(p) for p, _ in self.split_files.values())
            raise AQA7DataError(
                f"the AQA-7 split files ({files}) list no video of the selected classes "
                f"{selected}; check dataset.classes"
            )
        ids, target, class_id, split, sample_no, self._class_of_row = zip(*found, strict=True)
        class_id = np.asarray(class_id, dtype=np.int64)
        self.sample_no = np.asarray(sample_no, dtype=np.int64)
        return SampleTable(
            ids=list(ids),
            target=np.asarray(target, dtype=np.float64),
            scale=np.ones(len(ids)),
            group=class_id.copy(),  # exemplars come from the query's own class
            class_id=class_id,
            split=np.asarray(split, dtype="<U5"),
            class_names=selected,
            group_names=list(selected),
        )

    def class_name_of(self, row: int) -> str:
        """AQA-7 class name of a table row."""
        assert self._class_of_row is not None, "call setup() first"
        return self._class_of_row[row]

    def _split_path(self, path: Path) -> Path:
        if path.is_file():
            return path
        self.check_root()
        # a file of that name within two folder levels of root, for the hint
        patterns = (path.name, f"*/{path.name}", f"*/*/{path.name}")
        found = sorted({p for pattern in patterns for p in self.root.glob(pattern)} - {path})
        hint = (
            f"; a file of that name is at {found[0]}: set dataset.split_dir="
            f"{found[0].parent.relative_to(self.root).as_posix() or '.'}"
            if found
            else "; it ships with AQA-7 as Split_4/" + path.name
        )
        raise FileNotFoundError(
            f"AQA-7 split file {path} not found (dataset.split_dir / dataset.train_list / "
            f"dataset.test_list){hint}; check the layout with {self.verify_command()}"
        )

    # ---- frames --------------------------------------------------------------------------------
    def source(self, row: int) -> Path:
        sub = self.folder_pattern.format(
            class_name=self.class_name_of(row), sample_no=int(self.sample_no[row])
        )
        return self.frames_root / sub

    def source_keys(self) -> str:
        return "dataset.frames_dir / dataset.folder_pattern"

    def sources_folder(self) -> tuple[Path, str]:
        return self.frames_root, "frames_dir"

    def reader_options(self) -> dict[str, Any]:
        return {"pattern": self.frame_pattern, "start": self.frame_start, "decoder": self.decoder}

    def clip_index(self, row: int, view: str = "test", generator=None) -> np.ndarray:
        # The first frames_needed frames, no jitter: one index matrix serves every video and view.
        return self.sampler.indices(self.frames_needed)  # (T, L)

    def clip_settings(self) -> dict[str, Any]:
        # Frame numbering (frame_start, pattern) only names files; the first frame is the same
        # picture either way, so it is left out and a cache survives renaming.
        return {"offset": 0, "frames": self.frames_needed}

    def short_advice(self, row: int) -> str:
        """Which numbering a folder follows when the configured one finds too few frames."""
        folder, start, pattern = self.source(row), self.frame_start, self.frame_pattern
        names = set(list_frames(folder))
        first = pattern.format(start)
        if first not in names:
            other = 1 - start if start in (0, 1) else 1
            if pattern.format(other) in names:
                return (
                    f"first frame {folder / first} is missing; its numbering starts at {other}: "
                    f"try dataset.frame_start={other}"
                )
            seen = f" such as {min(names)}" if names else ""
            return (
                f"first frame {folder / first} is missing; it holds {len(names)} JPEG files"
                f"{seen}; set dataset.frame_pattern / dataset.frame_start to match, or "
                f"re-extract the frames with {PREPARE_COMMAND}"
            )
        for other in (o for o in (0, 1) if o != start):
            if count_frames(folder, pattern, other) >= self.frames_needed:
                return f"its numbering may start at {other}: try dataset.frame_start={other}"
        return f"counted from {first}: re-extract its frames with {PREPARE_COMMAND}"
