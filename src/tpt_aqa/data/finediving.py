"""FineDiving's annotations and frame sampling (Xu et al., CVPR 2022): pure functions, no datamodule.

The release (``xujinglin/FineDiving``: README field table, ``datasets/FineDiving_Pair.py``,
``FineDiving_TSA.yaml``) lays out, under ``dataset.root``:

- ``Annotations/fine-grained_annotation_aqa.pkl``: a dict keyed by ``(video_name: str, instance:
  int)``; each value a list ``[dive_number (e.g. '407c'), final_score, difficulty,
  steps_transit_frames, frames_labels]``. ``frames_labels`` holds one sub-action id per frame of
  the dive; entry j of ``steps_transit_frames`` (2–4 entries) is the 0-based position, within the
  dive, of the last frame of step j. The arrays are numpy arrays pickled with the legacy
  ``numpy.core.multiarray`` reference, which ``safe_load`` accepts.
- ``Annotations/train_split.pkl``, ``test_split.pkl``: lists of keys.
- ``Annotations/FineDiving_coarse_annotation.pkl`` (optional): key → ``{action_type, start_frame,
  end_frame, dive_score, difficulty, judge_scores}``.
- ``Annotations/Sub_action_Types_Table.pkl``: sub-action id → name.
- ``FINADiving_MTL_256s/{video_name}/{instance}/{frame:05d}.jpg``: exactly the dive's frames,
  numbered by absolute frame in the source video.

A step is a maximal run of equal ``frames_labels`` (a sub-action can recur: A B C B D is five
steps), derived with ``tpt_aqa.parsing.step_runs``. ``steps_transit_frames`` is only checked
against those runs: a few real dives have a −1, transitions out of order or out of range, or ones
that disagree with the runs. ``inconsistent_dives`` counts them so the datamodule can warn once;
nothing here fails on them. The authors' protocol samples ``NUM_FRAMES`` = 96 frames at
``linspace(first, last, 96)`` of the folder's file numbers (truncated to integers), and the
sampled frames' labels are what the step-level parsing metrics take.
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tpt_aqa.data.safe_pickle import safe_load
from tpt_aqa.errors import ConfigError
from tpt_aqa.parsing import step_runs

ANNOTATION_FILE = "Annotations/fine-grained_annotation_aqa.pkl"
SPLIT_FILES = {"train": "Annotations/train_split.pkl", "test": "Annotations/test_split.pkl"}
COARSE_FILE = "Annotations/FineDiving_coarse_annotation.pkl"
SUB_ACTION_FILE = "Annotations/Sub_action_Types_Table.pkl"
FRAMES_DIR = "FINADiving_MTL_256s"
NUM_FRAMES = 96  # the authors' frame_length
COARSE_FIELDS = (
    "action_type",
    "start_frame",
    "end_frame",
    "dive_score",
    "difficulty",
    "judge_scores",
)

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
    data = safe_load(path)
    if not isinstance(data, list | tuple):
        raise ConfigError(
            f"{path}: expected a list of (video_name, instance) keys, found {type(data).__name__}"
        )
    keys = [_as_key(k, path) for k in data]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{path} lists some dives more than once; use the release's split file")
    unknown = [k for k in keys if k not in dives]
    if unknown:
        raise ConfigError(
            f"{path} lists {len(unknown)} dives that {ANNOTATION_FILE} does not annotate, e.g. "
            f"{unknown[:3]}; use the split and annotation files of one release"
        )
    return keys


def read_coarse(root: str | Path) -> dict[DiveKey, dict[str, Any]] | None:
    """The optional coarse annotation (key → ``COARSE_FIELDS``), ``None`` when absent.

    Raises:
        ConfigError: a record is not a dict with every field of ``COARSE_FIELDS``.
    """
    path = Path(root) / COARSE_FILE
    if not path.is_file():
        return None
    data = safe_load(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a dict keyed by (video_name, instance)")
    out = {}
    for key, record in data.items():
        key = _as_key(key, path)
        missing = [f for f in COARSE_FIELDS if not isinstance(record, dict) or f not in record]
        if missing:
            raise ConfigError(
                f"{_where(path, key)} lacks {missing}; expected {list(COARSE_FIELDS)}"
            )
        out[key] = record
    return out


def read_sub_action_names(root: str | Path) -> dict[int, str]:
    """Sub-action id → name.

    Raises:
        FileNotFoundError: the table is missing.
        ConfigError: it is not a dict of integer ids to names.
    """
    path = Path(root) / SUB_ACTION_FILE
    if not path.is_file():
        raise FileNotFoundError(f"FineDiving sub-action table {path} not found")
    data = safe_load(path)
    if not isinstance(data, dict) or not all(
        isinstance(k, numbers.Integral) and isinstance(v, str) for k, v in data.items()
    ):
        raise ConfigError(f"{path}: expected a dict of sub-action id (int) → name (str)")
    return {int(k): v for k, v in data.items()}


def inconsistent_dives(dives: Iterable[Dive]) -> dict[DiveKey, str]:
    """The dives whose ``steps_transit_frames`` disagree with their labels, and why (for one
    warning with the count; their steps come from the labels either way)."""
    problems = ((d.key, d.transition_problem()) for d in dives)
    return {key: why for key, why in problems if why is not None}


def exemplar_groups(
    dives: dict[DiveKey, Dive], train: list[DiveKey], test: list[DiveKey]
) -> tuple[dict[str, list[DiveKey]], list[DiveKey]]:
    """The authors' exemplar groups: training dives by dive number.

    Returns:
        ``groups`` (dive number → training keys, in split order; a group may hold a single dive)
        and the ``test`` keys whose dive number has no training dive (no exemplar to compare with).
    """
    groups: dict[str, list[DiveKey]] = defaultdict(list)
    for key in train:
        groups[dives[key].dive_number].append(key)
    orphans = [key for key in test if dives[key].dive_number not in groups]
    return dict(groups), orphans


def frame_folder(root: str | Path, key: DiveKey) -> Path:
    """``FINADiving_MTL_256s/{video_name}/{instance}`` under ``root``."""
    return Path(root) / FRAMES_DIR / key[0] / str(key[1])


def frame_numbers(folder: Path) -> np.ndarray:
    """The absolute frame numbers of a dive's JPEG files, ascending ``(n,)``.

    Raises:
        FileNotFoundError: the folder is missing or holds no ``.jpg``.
        ConfigError: a file name is not a frame number, or numbers are missing in between.
    """
    if not folder.is_dir():
        raise FileNotFoundError(
            f"FineDiving frame folder {folder} not found: extract the release's "
            f"{FRAMES_DIR} under dataset.root"
        )
    names = [p.stem for p in folder.glob("*.jpg")]
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


def frame_path(folder: Path, frame: int) -> Path:
    """The JPEG of absolute frame ``frame`` in a dive's folder."""
    return folder / f"{frame:05d}.jpg"


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
