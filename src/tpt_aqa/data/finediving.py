"""FineDiving (``dataset=finediving``; Xu et al., CVPR 2022): dives with every step annotated frame
by frame (files, sampling, groups and scores: docs/method.md §8).

A step is a maximal run of equal ``frames_labels`` (``tpt_aqa.data.labels.step_runs``); the annotated
``steps_transit_frames`` are only checked against the runs, and the dives where they disagree are
counted in one warning. The authors' 96 frames at ``linspace(first, last, 96)`` of a dive's file
numbers are cut into 12 consecutive clips of 8 (``dataset.sampler``): T = 12 ≥ K = 5 queries and
≥ the 3–5 steps, and no overlap, so every sampled frame's label belongs to one clip; those labels
feed the ``parse_*`` metrics, so a feature cache needs the frame folders' names too.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data.base import SampleTable, check_choice
from tpt_aqa.data.labels import step_runs
from tpt_aqa.data.mtl_aqa import diving_delta_cap, diving_table
from tpt_aqa.data.safe_pickle import load_keys, safe_load
from tpt_aqa.data.samplers import difficulty_groups, difficulty_option
from tpt_aqa.data.video import list_frames
from tpt_aqa.data.video_base import VideoDataModule

log = logging.getLogger(__name__)

ANNOTATION_FILE = "Annotations/fine-grained_annotation_aqa.pkl"
SPLIT_FILES = {"train": "Annotations/train_split.pkl", "test": "Annotations/test_split.pkl"}
FRAMES_DIR = "FINADiving_MTL_256s"
NUM_FRAMES = 96  # the authors' frame_length
EXEMPLAR_GROUPS = ("dive_number", "difficulty", "none")

DiveKey = tuple[str, int]


@dataclass(frozen=True)
class Dive:
    """One annotated dive.

    Attributes:
        key: ``(video_name, instance)``.
        dive_number: the dive's code, e.g. ``'407c'`` (the authors' exemplar group).
        final_score: the judges' final score (0 for a failed dive).
        difficulty: degree of difficulty.
        transitions: ``steps_transit_frames`` as annotated ``(2–4,)``.
        frame_labels: sub-action id of every frame of the dive ``(n,)``.
    """

    key: DiveKey
    dive_number: str
    final_score: float
    difficulty: float
    transitions: np.ndarray
    frame_labels: np.ndarray

    def step_ends(self) -> np.ndarray:
        """Exclusive end of every step, derived from ``frame_labels`` ``(S,)``."""
        return step_runs(self.frame_labels)[1]

    def transition_problem(self) -> str | None:
        """Why ``transitions`` cannot be trusted, or ``None`` when they match the label runs."""
        t, n = self.transitions, len(self.frame_labels)
        if (t == -1).any():
            return "has a transition of -1"
        if (t < 0).any() or (t >= n).any():
            return f"has transitions {t.tolist()} outside the dive's {n} frames"
        if (np.diff(t) <= 0).any():
            return f"has transitions out of order, {t.tolist()}"
        expected = self.step_ends()[:-1] - 1  # last frame of every step but the last
        if not np.array_equal(t, expected):
            return (
                f"has transitions {t.tolist()}, but its label runs end steps at {expected.tolist()}"
            )
        return None


def _where(path: Path, key: Any) -> str:
    return f"{path}: the record of {key!r}"


def _as_key(key: Any, path: Path) -> DiveKey:
    if (
        not isinstance(key, tuple)
        or len(key) != 2
        or not isinstance(key[0], str)
        or not isinstance(key[1], numbers.Integral)
        or isinstance(key[1], bool)
    ):
        raise ConfigError(
            f"{path}: expected keys (video_name: str, instance: int), found {key!r}; "
            f"use the FineDiving release's {ANNOTATION_FILE} and split files"
        )
    return key[0], int(key[1])


def _int_array(value: Any, what: str, path: Path, key: DiveKey) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(
            f"{_where(path, key)} has {what} of dtype {array.dtype} and shape {array.shape}; "
            "expected a non-empty 1-D integer array"
        )
    return array.astype(np.int64)


def _number(value: Any, what: str, path: Path, key: DiveKey) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{_where(path, key)} has {what} {value!r}; expected a finite number")
    return float(value)


def parse_record(key: Any, record: Any, path: Path) -> Dive:
    """One value of the fine-grained annotation dict as a ``Dive``.

    Raises:
        ConfigError: naming the file and key, when the record is not
            ``[dive_number, final_score, difficulty, steps_transit_frames, frames_labels]``.
    """
    key = _as_key(key, path)
    if not isinstance(record, list | tuple) or len(record) != 5:
        raise ConfigError(
            f"{_where(path, key)} is {type(record).__name__} of length "
            f"{len(record) if isinstance(record, list | tuple) else '-'}; expected a list "
            "[dive_number, final_score, difficulty, steps_transit_frames, frames_labels]"
        )
    number, score, difficulty, transitions, labels = record
    if not isinstance(number, str) or not number:
        raise ConfigError(f"{_where(path, key)} has dive number {number!r}; expected e.g. '407c'")
    dive = Dive(
        key=key,
        dive_number=number,
        final_score=_number(score, "final score", path, key),
        difficulty=_number(difficulty, "difficulty", path, key),
        transitions=_int_array(transitions, "steps_transit_frames", path, key),
        frame_labels=_int_array(labels, "frames_labels", path, key),
    )
    if dive.difficulty <= 0:
        raise ConfigError(f"{_where(path, key)} has difficulty {dive.difficulty}; expected > 0")
    return dive


def read_annotations(root: str | Path) -> dict[DiveKey, Dive]:
    """The fine-grained annotation dict under ``root``.

    Raises:
        FileNotFoundError: the file is missing (naming it and ``dataset.root``).
        ConfigError: the file is not a dict of records (``parse_record``).
    """
    path = Path(root) / ANNOTATION_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"FineDiving annotation file {path} not found: set dataset.root to the folder holding "
            "Annotations/ and FINADiving_MTL_256s/ of the release"
        )
    data = safe_load(path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a dict keyed by (video_name, instance), found {type(data).__name__}"
        )
    dives = (parse_record(k, v, path) for k, v in data.items())
    return {d.key: d for d in dives}


def read_split(root: str | Path, split: str, dives: dict[DiveKey, Dive]) -> list[DiveKey]:
    """The keys of ``split`` (``train`` or ``test``), in file order.

    Raises:
        FileNotFoundError: the split file is missing.
        ConfigError: it is not a list of keys, lists one twice, or lists a dive the annotation
            file does not have.
    """
    path = Path(root) / SPLIT_FILES[split]
    if not path.is_file():
        raise FileNotFoundError(
            f"FineDiving split file {path} not found: set dataset.root to the release's folder"
        )
    keys = load_keys(path, _as_key, "(video_name, instance) keys")
    unknown = [k for k in keys if k not in dives]
    if unknown:
        raise ConfigError(
            f"{path} lists {len(unknown)} dives that {ANNOTATION_FILE} does not annotate, e.g. "
            f"{unknown[:3]}; use the split and annotation files of one release"
        )
    return keys


def inconsistent_dives(dives: Iterable[Dive]) -> dict[DiveKey, str]:
    """The dives whose ``steps_transit_frames`` disagree with their labels, and why (for one
    warning with the count; their steps come from the labels either way)."""
    problems = ((d.key, d.transition_problem()) for d in dives)
    return {key: why for key, why in problems if why is not None}


def frame_folder(root: str | Path, key: DiveKey) -> Path:
    """``FINADiving_MTL_256s/{video_name}/{instance}`` under ``root``."""
    return Path(root) / FRAMES_DIR / key[0] / str(key[1])


def frame_numbers(folder: Path) -> np.ndarray:
    """The absolute frame numbers of a dive's JPEG files, ascending ``(n,)`` (the folder's listing is
    cached per process and renewed when the folder changes).

    Raises:
        FileNotFoundError: the folder is missing or holds no ``.jpg``.
        ConfigError: a file name is not a frame number, or numbers are missing in between.
    """
    if not folder.is_dir():
        raise FileNotFoundError(
            f"FineDiving frame folder {folder} not found: extract the release's "
            f"{FRAMES_DIR} under dataset.root"
        )
    names = [Path(name).stem for name in list_frames(folder)]  # every JPEG, the reader's listing
    if not names:
        raise FileNotFoundError(f"FineDiving frame folder {folder} holds no .jpg frames")
    bad = [n for n in names if not n.isdigit()]
    if bad:
        raise ConfigError(
            f"{folder}: frame files must be named by frame number ({{frame:05d}}.jpg), found "
            f"{sorted(bad)[:3]}"
        )
    numbers_ = np.sort(np.array([int(n) for n in names], dtype=np.int64))
    if numbers_[-1] - numbers_[0] + 1 != len(numbers_):
        raise ConfigError(
            f"{folder}: frames {numbers_[0]}–{numbers_[-1]} should be {numbers_[-1] - numbers_[0] + 1} "
            f"files, found {len(numbers_)} (the folder must hold every frame of the dive)"
        )
    return numbers_


def sample_frames(first: int, last: int, num: int = NUM_FRAMES) -> np.ndarray:
    """The authors' sampling: ``linspace(first, last, num)`` truncated to integers ``(num,)``."""
    return np.linspace(first, last, num).astype(np.int64)


def sampled_labels(dive: Dive, frames: np.ndarray, first: int) -> np.ndarray:
    """The sub-action label of every sampled frame ``(num,)`` (per-frame labels for the parsing
    metrics), frame ``f`` being position ``f − first`` of the dive.

    Raises:
        ConfigError: a sampled frame lies beyond the dive's labels.
    """
    positions = np.asarray(frames, dtype=np.int64) - first
    if positions.min() < 0 or positions.max() >= len(dive.frame_labels):
        raise ConfigError(
            f"dive {dive.key}: its folder spans {positions.max() + 1} frames from {first}, but "
            f"{ANNOTATION_FILE} labels {len(dive.frame_labels)}; the frames and annotations "
            "must come from one release"
        )
    return dive.frame_labels[positions]


def dive_id(key: DiveKey) -> str:
    """Sample id of a dive, ``"{video_name}_{instance}"`` (a feature file's name)."""
    return f"{key[0]}_{key[1]}"


class FineDivingDataModule(VideoDataModule):
    """FineDiving dives (``dataset=finediving``); Args: the keys of its YAML, documented there."""

    # the step labels of the sampled frames need each dive's frame numbers, cache or not
    sources_with_features = True
    title, config_name, noun = "FineDiving", "finediving", "dive"
    holds = "Annotations/ and FINADiving_MTL_256s/"

    def __init__(
        self,
        root: str,
        exemplar_groups: str = "dive_number",
        use_dd: bool = True,
        delta_cap: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, delta_cap=diving_delta_cap(use_dd, delta_cap), **kwargs)
        check_choice("dataset.exemplar_groups", exemplar_groups, EXEMPLAR_GROUPS)
        if self.sampler.scheme != "linspace":
            raise ConfigError(
                f"dataset.sampler.scheme={self.sampler.scheme!r}: FineDiving spreads its frames "
                "over the whole dive, use scheme=linspace"
            )
        self.exemplar_groups = exemplar_groups
        self.use_dd = bool(use_dd)
        self.keys: list[DiveKey] = []
        self.dives: dict[DiveKey, Dive] = {}
        self.inconsistent: dict[DiveKey, str] = {}  # dives whose transitions disagree, and why

    # ---- the table -----------------------------------------------------------------------------
    def build_table(self) -> SampleTable:
        self.check_root()
        dives = read_annotations(self.root)
        train = read_split(self.root, "train", dives)
        test = read_split(self.root, "test", dives)
        if not train:
            raise ConfigError(f"{self.root / SPLIT_FILES['train']} lists no dives")
        shared = [k for k in test if k in set(train)]
        if shared:
            raise ConfigError(
                f"{len(shared)} dives are in both split files (e.g. {shared[:3]}); use the "
                "release's train_split.pkl and test_split.pkl"
            )
        keys = train + test
        self.inconsistent = inconsistent_dives(dives[k] for k in keys)
        if self.inconsistent:
            shown = list(self.inconsistent.items())[:3]
            log.warning(
                "FineDiving: %d of %d dives have steps_transit_frames that disagree with their "
                "frames_labels (e.g. %s); every dive's steps are taken from frames_labels",
                len(self.inconsistent),
                len(keys),
                "; ".join(f"{dive_id(k)} {why}" for k, why in shown),
            )
        final = np.array([dives[k].final_score for k in keys])
        difficulty = np.array([dives[k].difficulty for k in keys])
        if self.exemplar_groups == "dive_number":
            group_names = sorted({dives[k].dive_number for k in keys})
            group = np.searchsorted(group_names, [dives[k].dive_number for k in keys])
        elif self.exemplar_groups == "difficulty":
            group, group_names = difficulty_groups(difficulty)
        else:
            group, group_names = 0, ["all"]
        self.keys, self.dives = keys, dives
        split = np.array(["train"] * len(train) + ["test"] * len(test))
        ids = [dive_id(k) for k in keys]
        return diving_table(ids, final, difficulty, self.use_dd, group, group_names, split)

    def group_fix(self) -> str:
        return (
            "pool dive numbers with dataset.exemplar_groups=difficulty or none, or use the "
            "release's split files"
        )

    def group_option(self) -> dict[str, Any]:
        if self.exemplar_groups != "difficulty":
            return super().group_option()  # a dive number names its group (group=407c)
        return difficulty_option(self.table.group_names)

    # ---- frames --------------------------------------------------------------------------------
    def source(self, row: int) -> Path:
        return frame_folder(self.root, self.keys[row])

    def sources_folder(self) -> tuple[Path, str]:
        return self.root / FRAMES_DIR, "root"

    def fix(self) -> str:
        return (
            f"extract the release's {FRAMES_DIR} under dataset.root (one folder of JPEGs per dive, "
            "named by frame number; with a feature cache only the names are read)"
        )

    def sampled_frames(self, row: int) -> tuple[int, np.ndarray]:
        """The first frame number of a dive's folder and the numbers of its ``T·L`` sampled frames
        (the authors' ``linspace(first, last, T·L)``).

        Raises:
            ValueError: the folder is empty, misnamed or has gaps, naming it.
        """
        try:
            numbers_ = frame_numbers(self.source(row))
        except FileNotFoundError as err:
            raise ValueError(f"{err}; {self.fix()}") from None
        first = int(numbers_[0])
        return first, sample_frames(first, int(numbers_[-1]), self.sampler.frames_needed)

    def clip_index(
        self, row: int, view: str = "test", generator: torch.Generator | None = None
    ) -> np.ndarray:
        """Positions in its folder of a dive's clip frames ``(T, L)``, the same in every view."""
        first, frames = self.sampled_frames(row)
        return (frames - first).reshape(self.sampler.num_clips, self.sampler.clip_len)

    def clip_labels(self, row: int) -> torch.Tensor:
        """The sub-action label of every sampled frame ``(T·L,)``, in clip order."""
        first, frames = self.sampled_frames(row)
        return torch.from_numpy(sampled_labels(self.dives[self.keys[row]], frames, first))

    def clip_settings(self) -> dict[str, Any]:
        return {"frames": "linspace(first, last) of the file numbers"}

    def check_sample(self, row: int) -> list[str]:
        """``VideoDataModule.check_sample``, and the labels cover the sampled frames."""
        problems = super().check_sample(row)
        if not problems:
            try:
                self.clip_labels(row)
            except ConfigError as err:
                problems.append(f"{self.sample_name(row)}: {err}")
        return problems
