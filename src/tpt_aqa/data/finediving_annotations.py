"""FineDiving's annotation files (``Annotations/*.pkl`` of the release; docs/method.md §8): the
fine-grained per-dive records, the split files and the coarse frame spans, read with the restricted
unpickler and checked record by record. The data module (``data/finediving.py``) builds on them."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data.labels import step_runs
from tpt_aqa.data.safe_pickle import UnreadablePickleError, load_keys, safe_load

log = logging.getLogger(__name__)

ANNOTATION_FILE = "Annotations/fine-grained_annotation_aqa.pkl"
SPLIT_FILES = {"train": "Annotations/train_split.pkl", "test": "Annotations/test_split.pkl"}
# start_frame / end_frame of every dive: only read to say which frames a short folder lacks
COARSE_FILE = "Annotations/FineDiving_coarse_annotation.pkl"
RELEASE = (
    "the FineDiving release (Xu et al., CVPR 2022; its Annotations/ folder, from the download "
    "links of the authors' repository)"
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
    data = load_release_pickle(path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a dict keyed by (video_name, instance), found {type(data).__name__}"
        )
    dives = (parse_record(k, v, path) for k, v in data.items())
    return {d.key: d for d in dives}


def load_release_pickle(path: Path) -> Any:
    """``safe_load`` of one of the release's pickles; one that is not a readable pickle (truncated,
    another file under the name) names the file expected and where it comes from.

    Raises:
        UnreadablePickleError: not a pickle, naming the file and where it comes from.
        UnsafePickleError: referencing anything but plain data.
    """
    try:
        return safe_load(path)
    except UnreadablePickleError as err:
        raise UnreadablePickleError(
            f"{err}; expected {path.relative_to(path.parent.parent)} of {RELEASE}: download it "
            "again and extract it under dataset.root"
        ) from None


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
    keys = load_keys(path, _as_key, "(video_name, instance) keys", load=load_release_pickle)
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


def read_coarse_spans(root: str | Path) -> dict[DiveKey, tuple[int, int]]:
    """``start_frame``/``end_frame`` of every dive in the release's coarse annotation, or ``{}``
    when the file is absent or not as expected (it only sharpens a message: which frames a short
    folder lacks)."""
    path = Path(root) / COARSE_FILE
    try:
        data = safe_load(path)
        return {
            (str(k[0]), int(k[1])): (int(v["start_frame"]), int(v["end_frame"]))
            for k, v in data.items()
        }
    except Exception:  # absent, unreadable or another layout: the message says less, that is all
        return {}
