"""MTL-AQA (``dataset=mtl_aqa``): 10 m platform dives, w/ or w/o DD, read from per-dive frame
folders or whole videos (files, score modes, windows: docs/method.md §8; groups §5; protocol §7).
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data.base import SampleTable, check_choice, check_count
from tpt_aqa.data.safe_pickle import load_keys, safe_load
from tpt_aqa.data.samplers import difficulty_groups, difficulty_option
from tpt_aqa.data.video_base import VideoDataModule

LAYOUTS = ("dive_folders", "video_folders", "videos")
# Names the annotation dict is distributed under, searched in this order, in these folders.
ANNOTATION_FILES = (
    "final_annotations_dict.pkl",
    "augmented_final_annotations_dict.pkl",
    "final_annotations_dict_with_dive_number.pkl",
)
ANNOTATION_FOLDERS = ("", "info")
# Largest |Δ| the score groups cover: raw scores are 0–29, final scores 0–104.5 (docs/method.md §8).
DELTA_CAP_WITH_DD = 30.0
DELTA_CAP_WITHOUT_DD = 100.0
SCORE_FIELDS = ("final_score", "difficulty")


def diving_table(
    ids: list[str],
    final: np.ndarray,
    difficulty: np.ndarray,
    use_dd: bool,
    group: Any,
    group_names: list[str],
    split: np.ndarray,
) -> SampleTable:
    """A diving benchmark's table: w/ DD trained on final / difficulty and reported × difficulty,
    w/o DD on the final score."""
    return SampleTable(
        ids=ids,
        target=final / difficulty if use_dd else final,
        scale=difficulty if use_dd else np.ones(len(ids)),
        group=np.broadcast_to(np.asarray(group, dtype=np.int64), (len(ids),)).copy(),
        class_id=np.zeros(len(ids), dtype=np.int64),
        split=split,
        class_names=["diving"],
        group_names=list(group_names),
    )


def diving_delta_cap(use_dd: bool, delta_cap: float | None) -> float:
    """``dataset.delta_cap``, or for ``null`` the cap of a diving benchmark's scores: raw (w/ DD)
    or final (w/o DD)."""
    if delta_cap is not None:
        return delta_cap
    return DELTA_CAP_WITH_DD if use_dd else DELTA_CAP_WITHOUT_DD


Layout = Literal["dive_folders", "video_folders", "videos"]
DiveKey = tuple[int, int]


def dive_id(key: DiveKey) -> str:
    """Sample id of a dive, ``"{video:02d}_{clip:02d}"`` (also its folder name)."""
    return f"{key[0]:02d}_{key[1]:02d}"


def _as_key(value: Any, path: Path) -> DiveKey:
    """A ``(video_no, clip_no)`` key from a pickle (tuple or list of two ints, numpy ints too)."""
    try:
        video, clip = value
        return operator.index(video), operator.index(clip)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{path}: expected dives as (video_no, clip_no) pairs of integers, found {value!r}; "
            "is this an MTL-AQA annotation or split file?"
        ) from None


def _field(record: dict, name: str, key: DiveKey, path: Path) -> Any:
    if name not in record:
        raise ConfigError(
            f"{path}: dive {key} has no {name!r} (its fields: {sorted(record)}); use the "
            "annotation file of the MTL-AQA release (dataset.annotation_file)"
        )
    return record[name]


def _frame_number(value: Any) -> int:
    """An annotated frame number as an int; integral floats (``1234.0``) are accepted too."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return int(value)
    return operator.index(value)


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]``, from torch's RNG (seeded per DataLoader worker)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def read_annotations(path: Path) -> dict[DiveKey, dict]:
    """The annotation dict of ``path``, keyed by ``(video_no, clip_no)`` tuples of Python ints;
    a ``ConfigError`` when it is not a dict of dicts keyed so."""
    data = safe_load(path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a dict keyed by (video_no, clip_no), found {type(data).__name__}; "
            "set dataset.annotation_file to the annotation dict of the MTL-AQA release"
        )
    out = {}
    for key, record in data.items():
        key = _as_key(key, path)
        if not isinstance(record, dict):
            raise ConfigError(
                f"{path}: the annotation of dive {key} is a {type(record).__name__}, not a dict"
            )
        out[key] = record
    return out


class MTLAQADataModule(VideoDataModule):
    """MTL-AQA dives through the shared clip sampler and transforms (``dataset=mtl_aqa``).

    Args: the keys of ``conf/dataset/mtl_aqa.yaml``, documented there.
    """

    title = "MTL-AQA"
    config_name = "mtl_aqa"
    noun = "dive"
    holds = "the annotation dict and train_split_0.pkl / test_split_0.pkl"

    def __init__(
        self,
        root: str,
        annotation_file: str | None = None,
        train_split: str = "train_split_0.pkl",
        test_split: str = "test_split_0.pkl",
        use_dd: bool = True,
        frames_layout: Layout = "dive_folders",
        frames_root: str | None = None,
        videos_root: str | None = None,
        video_ext: str = ".mp4",
        frame_pattern: str = "{:08d}.jpg",
        frame_number_start: int = 1,
        train_offset_max: int = 6,
        test_offset: int = 0,
        exemplar_offset: int = 3,
        train_end_jitter: int = 3,
        delta_cap: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(root=root, delta_cap=diving_delta_cap(use_dd, delta_cap), **kwargs)
        check_choice("dataset.frames_layout", frames_layout, LAYOUTS)
        self.annotation_file = annotation_file
        self.train_split = train_split
        self.test_split = test_split
        self.use_dd = bool(use_dd)
        self.frames_layout = frames_layout
        self.frames_root = Path(frames_root) if frames_root else self.root / "frames"
        self.videos_root = Path(videos_root) if videos_root else self.root / "videos"
        self.video_ext = video_ext
        self.frame_pattern = frame_pattern
        self.frame_number_start = int(frame_number_start)
        # window offset per view (dive folders); the training one is the largest random draw
        self.offsets = {
            "train": check_count("train_offset_max", train_offset_max),
            "test": check_count("test_offset", test_offset),
            "exemplar": check_count("exemplar_offset", exemplar_offset),
        }
        self.train_end_jitter = check_count("train_end_jitter", train_end_jitter)
        self.reads_files = frames_layout == "videos"
        # A user's dive is read like a dive folder: its clip window starts at the test offset
        # (dive folders) or at its first frame (whole videos, whose window the annotations place).
        self.prediction_start = self.offsets["test"] if frames_layout == "dive_folders" else 0
        self.dives: list[DiveKey] = []
        self.annotations: dict[DiveKey, dict] = {}

    # ---- files ---------------------------------------------------------------------------------
    def locate(self, name: str) -> Path | None:
        """An annotation or split file by name in ``ANNOTATION_FOLDERS`` (an absolute name replaces
        root), or ``None``."""
        paths = [self.root / folder / name for folder in ANNOTATION_FOLDERS]
        return next((path for path in paths if path.is_file()), None)

    def find(self, key: str, hint: str) -> Path:
        """The file ``dataset.<key>`` names, or a ``FileNotFoundError`` ending in ``hint``."""
        name = getattr(self, key)
        path = self.locate(name)
        if path is None:
            raise FileNotFoundError(
                f"MTL-AQA {key.replace('_', ' ')} {self.root / name} not found (nor in "
                f"{self.root / 'info'}): set dataset.{key} to its name under dataset.root or "
                f"dataset.root/info ({hint})"
            )
        return path

    def annotation_path(self) -> Path:
        """The annotation file: the configured one, else the first of ``ANNOTATION_FILES`` found."""
        names = ", ".join(ANNOTATION_FILES)
        if self.annotation_file:
            return self.find("annotation_file", f"or a path, or null to search {names}")
        found = [path for path in map(self.locate, ANNOTATION_FILES) if path]
        if not found:
            raise FileNotFoundError(
                f"no MTL-AQA annotation file in {self.root} or {self.root / 'info'}: looked for "
                f"{names}; point dataset.root at their folder, or set dataset.annotation_file"
            )
        return found[0]

    def read_split(self, key: str) -> list[DiveKey]:
        """The dives of the split file ``dataset.<key>``, in file order."""
        path = self.find(key, "the release ships train_split_0.pkl and test_split_0.pkl")
        return load_keys(path, _as_key, "(video_no, clip_no) pairs")

    def source(self, row: int) -> Path:
        """The frame folder or video file a dive's frames are read from."""
        video, clip = self.dives[row]
        if self.frames_layout == "dive_folders":
            return self.frames_root / dive_id((video, clip))
        if self.frames_layout == "video_folders":
            return self.frames_root / f"{video:02d}"
        return self.videos_root / f"{video:02d}{self.video_ext}"

    def source_keys(self) -> str:
        files = "videos_root / video_ext" if self.reads_files else "frames_layout / frames_root"
        return f"dataset.{files}"

    def sources_folder(self) -> tuple[Path, str]:
        key = "videos_root" if self.reads_files else "frames_root"
        return getattr(self, key), key

    # ---- the table -----------------------------------------------------------------------------
    def build_table(self) -> SampleTable:
        self.check_root()
        ann_path = self.annotation_path()
        annotations = read_annotations(ann_path)
        train = self.read_split("train_split")
        test = self.read_split("test_split")
        if not train:
            raise ConfigError(
                f"{self.root / self.train_split} lists no dives; set dataset.train_split to the "
                "release's train_split_0.pkl"
            )
        both = sorted(set(train) & set(test))
        if both:
            raise ConfigError(
                f"{len(both)} dives are in both {self.train_split} and {self.test_split} "
                f"(e.g. {both[:3]}); use the split files of one MTL-AQA release "
                "(dataset.train_split, dataset.test_split)"
            )
        dives = train + test
        missing = [k for k in dives if k not in annotations]
        if missing:
            raise ConfigError(
                f"the split files list {len(missing)} dives that {ann_path} lacks (e.g. "
                f"{missing[:3]}): use an annotation file and split files of the same MTL-AQA "
                "release (dataset.annotation_file, dataset.train_split, dataset.test_split)"
            )
        final, difficulty = np.array(
            [[float(_field(annotations[k], f, k, ann_path)) for k in dives] for f in SCORE_FIELDS]
        )
        ok = np.isfinite(final) & np.isfinite(difficulty) & (difficulty > 0)
        bad = [dives[i] for i in np.flatnonzero(~ok)]
        if bad:
            raise ConfigError(
                f"{ann_path}: dives {bad[:3]} have a difficulty that is not positive or a final "
                "score that is not a number; use the release's annotation file"
            )
        if self.frames_layout != "dive_folders":
            self._check_frame_numbers(dives, annotations, ann_path)
        split = np.array(["train"] * len(train) + ["test"] * len(test))
        group, group_names = difficulty_groups(difficulty) if self.use_dd else (0, ["all"])
        self.dives, self.annotations = dives, annotations
        return diving_table(
            [dive_id(k) for k in dives], final, difficulty, self.use_dd, group, group_names, split
        )

    def _check_frame_numbers(
        self, dives: list[DiveKey], annotations: dict[DiveKey, dict], path: Path
    ) -> None:
        """Whole-video layouts cut dives by their annotated frames: they must be integers in order."""
        for k in dives:
            start = _field(annotations[k], "start_frame", k, path)
            end = _field(annotations[k], "end_frame", k, path)
            try:
                start, end = _frame_number(start), _frame_number(end)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{path}: dive {k} has start_frame={start!r}, end_frame={end!r}; frame "
                    "numbers must be integers"
                ) from None
            if end < start:
                raise ConfigError(
                    f"{path}: dive {k} ends (end_frame={end}) before it starts "
                    f"(start_frame={start}); fix the annotation or use dataset.frames_layout="
                    "dive_folders with per-dive frame folders"
                )

    def group_fix(self) -> str:
        return "use the release's split files, or dataset.use_dd=false (one exemplar group)"

    # ---- frames --------------------------------------------------------------------------------
    @property
    def window(self) -> int:
        """Frames one dive spans (103 for 20 clips of 8 at stride 5)."""
        return self.sampler.frames_needed

    def reader_options(self) -> dict[str, Any]:
        if self.frames_layout == "video_folders":
            return {"pattern": self.frame_pattern, "start": self.frame_number_start}
        return {}

    def frame_span(self, row: int, view: str) -> tuple[int, int]:
        if self.frames_layout == "dive_folders":  # training draws its offset from 0 up
            return 0 if view == "train" else self.offsets[view], self.offsets[view] + self.window
        end = self._end_position(row)
        if end < self.window - 1:
            raise ValueError(
                f"it ends at frame {end + self.frame_number_start}, so its {self.window}-frame window would "
                f"start {self.window - 1 - end} frame(s) before the first frame (number "
                f"{self.frame_number_start}) of {self.source(row)}; check its end_frame in the "
                "annotation file and dataset.frame_number_start"
            )
        return end - self.window + 1, end + 1

    def clip_index(
        self, row: int, view: str = "test", generator: torch.Generator | None = None
    ) -> np.ndarray:
        """Clip frames of a dive ``(T, L)``: its window at the view's offset in a dive folder
        (random in training), or ending at its ``end_frame`` in a whole video (training moves
        that end by the jitter, inside the video)."""
        if self.frames_layout == "dive_folders":
            offset = self.offsets[view]
            if view == "train":
                offset = _randint(0, offset, generator)
            return self.sampler.indices(offset + self.window, offset)
        end = self._end_position(row)
        if view == "train" and self.train_end_jitter:
            n = self.frame_count(row)
            jittered = end + _randint(-self.train_end_jitter, self.train_end_jitter, generator)
            # Stay inside the video, but never move an annotated end that is itself outside it:
            # that is reported by the frame count check.
            jittered = min(jittered, max(end, n - 1))
            end = max(jittered, min(end, self.window - 1))
        return self.sampler.indices(end + 1, end - self.window + 1)

    def _end_position(self, row: int) -> int:
        """Position in its source of a dive's annotated ``end_frame``."""
        end = _frame_number(self.annotations[self.dives[row]]["end_frame"])
        return end - self.frame_number_start

    def group_option(self) -> dict[str, Any]:
        if not self.use_dd:
            return super().group_option()
        return difficulty_option(self.table.group_names)

    def clip_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"frames_layout": self.frames_layout}
        if self.frames_layout == "dive_folders":
            settings["test_offset"] = self.offsets["test"]
        else:
            settings["window_end"] = "end_frame"
            settings["frame_number_start"] = self.frame_number_start
        if self.frames_layout == "video_folders":
            settings["frame_pattern"] = self.frame_pattern
        return settings
