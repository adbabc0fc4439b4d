"""JIGSAWS surgical skill assessment (``dataset=jigsaws``): one benchmark per task and fold, the
GRS total (sum of six sub-scores, 6–30) trained and reported as is, one exemplar group per task.
Annotation forms, folds, videos and clips: docs/method.md §8; the fold runner is
``python -m tpt_aqa.run_jigsaws_folds``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data.base import SampleTable, check_choice
from tpt_aqa.data.safe_pickle import UnsafePickleError, safe_load
from tpt_aqa.data.video import ON_MISSING
from tpt_aqa.data.video_base import VideoDataModule

TASKS = ("Suturing", "Needle_Passing", "Knot_Tying")
NUM_FOLDS = 4
NUM_SUBSCORES = 6
SUBSCORE_RANGE = (1.0, 5.0)
ANNOTATION_FORMATS = ("auto", "meta", "pickle")
SOURCES = ("video", "frames")
META_FOLD_RULES = ("surgeon", "seeded")
# A trial name ends in the surgeon letter and the repetition number: Knot_Tying_B001.
TRIAL_RE = re.compile(r"_(?P<surgeon>[A-Za-z])(?P<rep>\d+)$")


class JIGSAWSDataError(ConfigError):
    """A problem in the JIGSAWS data or its configuration; the message names the file and the fix."""


def resolve_task(task: str) -> str:
    """The canonical task name, matched without regard to case (``suturing`` → ``Suturing``)."""
    for name in TASKS:
        if str(task).lower() == name.lower():
            return name
    raise JIGSAWSDataError(
        f"dataset.task={task!r} is not a JIGSAWS task: use one of {', '.join(TASKS)}"
    )


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _check_subscores(values: np.ndarray, where: str) -> None:
    lo, hi = SUBSCORE_RANGE
    if not np.all(np.isfinite(values)) or values.min() < lo or values.max() > hi:
        raise JIGSAWSDataError(
            f"{where}: GRS sub-scores {values.tolist()} are not all in [{lo:g}, {hi:g}]; "
            "check that the file is a JIGSAWS annotation file"
        )


def parse_meta_file(path: str | Path) -> dict[str, np.ndarray]:
    """The sub-scores ``(6,)`` per trial name, in file order, of a ``meta_file_{Task}.txt`` (format:
    docs/method.md §8; blank and ``#`` lines skipped; mismatched totals in one ``UserWarning``)."""
    path = Path(path)
    if not path.is_file():
        raise JIGSAWSDataError(f"meta file {path} not found")
    scores: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    mismatched: list[str] = []
    for number, raw in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        tokens = raw.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        where = f"{path}, line {number}"
        name, numbers = tokens[0], [float(t) for t in tokens[1:] if _is_number(t)]
        if _is_number(name) or len(numbers) < NUM_SUBSCORES + 1:
            raise JIGSAWSDataError(
                f"{where}: expected a trial name followed by the GRS total and six sub-scores "
                f"('Knot_Tying_B001 N 13 2 2 2 2 2 3'), found {raw.strip()!r}"
            )
        if name in scores:
            raise JIGSAWSDataError(
                f"{where}: trial {name} is listed again (first on line {first_line[name]})"
            )
        total, sub = numbers[-NUM_SUBSCORES - 1], np.asarray(numbers[-NUM_SUBSCORES:])
        _check_subscores(sub, f"{where} ({name})")
        if not np.isclose(total, sub.sum()):
            mismatched.append(f"line {number} ({name}: total {total:g}, sum {sub.sum():g})")
        scores[name], first_line[name] = sub, number
    if not scores:
        raise JIGSAWSDataError(f"meta file {path} lists no trials")
    if mismatched:
        warnings.warn(
            f"{path}: the GRS total differs from the sum of the six sub-scores on "
            f"{'; '.join(mismatched)}; using the sum, which defines the score",
            UserWarning,
            stacklevel=2,
        )
    return scores


def _load_pickle(path: Path, what: str, kind: type, expected: str) -> Any:
    if not path.is_file():
        raise JIGSAWSDataError(f"{what} {path} not found")
    try:
        value = safe_load(path)
    except UnsafePickleError as err:
        raise JIGSAWSDataError(str(err)) from err
    if not isinstance(value, kind):
        raise JIGSAWSDataError(f"{path}: expected {expected}, found {type(value).__name__}")
    return value


def read_pickle_annotations(
    splits_path: str | Path, labels_path: str | Path, task: str
) -> tuple[list[list[str]], dict[str, np.ndarray]]:
    """The task's four folds of trial names and their sub-scores ``(6,)`` from ``splits.pkl`` (task,
    matched without regard to case → folds) and ``label.pkl`` (trial → sub-scores)."""
    splits_path, labels_path = Path(splits_path), Path(labels_path)
    splits = _load_pickle(splits_path, "split file", dict, "a dict task → four folds")
    key = next((k for k in splits if str(k).lower() == task.lower()), None)
    if key is None:
        raise JIGSAWSDataError(
            f"{splits_path} has no folds for task {task}: its keys are "
            f"{sorted(map(str, splits))}; choose one with dataset.task"
        )
    where = f"{splits_path}[{key!r}]"
    folds_raw = splits[key]
    if not isinstance(folds_raw, list | tuple) or len(folds_raw) != NUM_FOLDS:
        found = len(folds_raw) if isinstance(folds_raw, list | tuple) else type(folds_raw).__name__
        raise JIGSAWSDataError(f"{where}: expected a list of {NUM_FOLDS} folds, found {found}")
    seen: dict[str, int] = {}  # trial → its fold
    for f, fold in enumerate(folds_raw):
        if isinstance(fold, str) or not isinstance(fold, list | tuple | np.ndarray):
            found = type(fold).__name__
            raise JIGSAWSDataError(f"{where}[{f}]: expected a list of trial names, found {found}")
        for name in map(str, fold):
            if name in seen:
                raise JIGSAWSDataError(
                    f"{splits_path}: trial {name} is in fold {seen[name]} and fold {f} of {task}"
                )
            seen[name] = f
    labels = _load_pickle(labels_path, "label file", dict, "a dict trial name → six GRS sub-scores")
    labels = {str(k): v for k, v in labels.items()}
    scores = {}
    for name, f in seen.items():
        if name not in labels:
            raise JIGSAWSDataError(
                f"{labels_path} has no sub-scores for trial {name} (fold {f} of {task} in "
                f"{splits_path}); the two files must come from the same preparation"
            )
        try:
            sub = np.asarray(labels[name], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            sub = np.zeros(0)
        if sub.size != NUM_SUBSCORES:
            raise JIGSAWSDataError(
                f"{labels_path}[{name!r}]: expected {NUM_SUBSCORES} GRS sub-scores, found "
                f"{labels[name]!r}"
            )
        _check_subscores(sub, f"{labels_path}[{name!r}]")
        scores[name] = sub
    folds = [[str(name) for name in fold] for fold in folds_raw]
    return folds, scores


def surgeon_of(trial: str) -> str:
    """The surgeon letter of a trial name (``Knot_Tying_B001`` → ``B``)."""
    match = TRIAL_RE.search(trial)
    if match is None:
        raise JIGSAWSDataError(
            f"trial name {trial!r} does not end in a surgeon letter and a repetition number "
            "(like Knot_Tying_B001), so folds cannot be built by surgeon; set "
            "dataset.meta_folds=seeded"
        )
    return match["surgeon"].upper()


def surgeon_folds(trials: Sequence[str], num_folds: int = NUM_FOLDS) -> list[list[str]]:
    """Sorted trial names per fold, by surgeon: surgeons sorted by letter, surgeon ``i`` → fold
    ``i % num_folds``."""
    surgeons = {t: surgeon_of(t) for t in trials}
    letters = sorted(set(surgeons.values()))
    if len(letters) < num_folds:
        raise JIGSAWSDataError(
            f"{len(letters)} surgeons ({', '.join(letters)}) cannot fill {num_folds} folds by "
            "surgeon; set dataset.meta_folds=seeded"
        )
    fold_of = {s: i % num_folds for i, s in enumerate(letters)}
    return [sorted(t for t in trials if fold_of[surgeons[t]] == f) for f in range(num_folds)]


def seeded_folds(trials: Sequence[str], seed: int, num_folds: int = NUM_FOLDS) -> list[list[str]]:
    """Sorted trial names per fold: the sorted trials permuted with ``seed`` (``dataset.fold_seed``,
    not the training seed, so folds stay across seeds) and dealt to folds in turn."""
    names = sorted(trials)
    order = np.random.default_rng([seed, num_folds]).permutation(len(names))
    return [sorted(names[i] for i in order[f::num_folds]) for f in range(num_folds)]


class JIGSAWSDataModule(VideoDataModule):
    """One JIGSAWS task and fold (``dataset=jigsaws``).

    Args: the keys of ``conf/dataset/jigsaws.yaml``, documented there.
    """

    config_name = "jigsaws"
    noun = "trial"

    def __init__(
        self,
        root: str,
        task: str = "Suturing",
        fold: int = 0,
        annotation_format: str = "auto",
        meta_template: str = "{task}/meta_file_{task}.txt",
        splits_file: str = "splits.pkl",
        labels_file: str = "label.pkl",
        meta_folds: str = "surgeon",
        fold_seed: int = 0,
        source: str = "video",
        video_template: str = "{task}/video/{trial}_capture1.avi",
        frames_root: str | None = None,
        frames_template: str = "{trial}_capture1",
        exact_frame_count: bool = False,
        on_missing: str = "error",
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.task = resolve_task(task)
        self.title = self.task  # each task is its own benchmark
        if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < NUM_FOLDS:
            raise JIGSAWSDataError(
                f"dataset.fold={fold!r} is out of range: JIGSAWS has {NUM_FOLDS} folds, "
                f"use 0–{NUM_FOLDS - 1}"
            )
        check_choice(
            "dataset.annotation_format", annotation_format, ANNOTATION_FORMATS, JIGSAWSDataError
        )
        check_choice("dataset.meta_folds", meta_folds, META_FOLD_RULES, JIGSAWSDataError)
        check_choice("dataset.source", source, SOURCES, JIGSAWSDataError)
        check_choice("dataset.on_missing", on_missing, ON_MISSING, JIGSAWSDataError)
        self.fold = int(fold)
        self.annotation_format = annotation_format
        self.meta_path = self.root / meta_template.format(task=self.task)  # this task's meta file
        self.pickle_paths = self.root / splits_file, self.root / labels_file
        self.meta_folds = meta_folds
        self.fold_seed = fold_seed
        self.video_template = video_template
        self.frames_root = Path(frames_root) if frames_root else self.root / "frames"
        self.frames_template = frames_template
        self.exact_frame_count = exact_frame_count
        self.on_missing = on_missing
        self.reads_files = source == "video"
        self.subscores: np.ndarray | None = None  # (N, 6), set by build_table
        self.format_used: str | None = None  # "meta" or "pickle", set by build_table

    # ---- annotations ---------------------------------------------------------------------------
    def _format(self) -> str:
        """The annotation form to read, checking that its files exist."""
        splits, labels = self.pickle_paths
        if self.annotation_format == "auto":
            if splits.is_file() and labels.is_file():
                return "pickle"
            if self.meta_path.is_file():
                return "meta"
            raise JIGSAWSDataError(
                f"no JIGSAWS annotations for {self.task} under dataset.root={self.root}: expected "
                f"{self.meta_path} (the original distribution) or both {splits} and {labels} "
                "(the prepared form); fix dataset.root, or the file names with "
                "dataset.meta_template / dataset.splits_file / dataset.labels_file"
            )
        files = {"meta": [(self.meta_path, "meta_template")]}
        files["pickle"] = [(splits, "splits_file"), (labels, "labels_file")]
        for path, key in files[self.annotation_format]:
            if not path.is_file():
                raise JIGSAWSDataError(
                    f"{path} not found (dataset.annotation_format={self.annotation_format}): fix "
                    f"dataset.root or dataset.{key}, or use dataset.annotation_format=auto"
                )
        return self.annotation_format

    def read_folds(self) -> tuple[list[list[str]], dict[str, np.ndarray]]:
        """The task's four folds and every trial's six sub-scores, from the configured form."""
        self.format_used = self._format()
        if self.format_used == "pickle":
            return read_pickle_annotations(*self.pickle_paths, self.task)
        scores = parse_meta_file(self.meta_path)
        if self.meta_folds == "surgeon":
            return surgeon_folds(list(scores)), scores
        return seeded_folds(list(scores), self.fold_seed), scores

    def build_table(self) -> SampleTable:
        if not self.root.is_dir():
            raise JIGSAWSDataError(
                f"dataset.root={self.root} is not a folder: point it at the JIGSAWS folder holding "
                f"{'/, '.join(TASKS)}/ (or splits.pkl and label.pkl)"
            )
        folds, scores = self.read_folds()
        fold_of = {name: f for f, names in enumerate(folds) for name in names}
        ids = sorted(fold_of)
        if not folds[self.fold]:
            raise JIGSAWSDataError(f"fold {self.fold} of {self.task} has no trials")
        self.subscores = np.stack([scores[name] for name in ids])  # (N, 6)
        n = len(ids)
        return SampleTable(
            ids=ids,
            target=self.subscores.sum(1),  # GRS total, 6–30
            scale=np.ones(n),
            group=np.zeros(n, dtype=np.int64),
            class_id=np.zeros(n, dtype=np.int64),
            split=np.array(["test" if fold_of[i] == self.fold else "train" for i in ids]),
            class_names=[self.task],
            group_names=[self.task],
        )

    # ---- videos --------------------------------------------------------------------------------
    def source(self, row: int) -> Path:
        """A trial's video file (``source: video``) or frame folder (``source: frames``)."""
        trial = self.table.ids[row]
        if self.reads_files:
            return self.root / self.video_template.format(task=self.task, trial=trial)
        return self.frames_root / self.frames_template.format(task=self.task, trial=trial)

    def source_keys(self) -> str:
        if self.reads_files:
            return f"dataset.video_template={self.video_template!r}"
        return f"dataset.frames_root / dataset.frames_template={self.frames_template!r}"

    def reader_options(self) -> dict[str, Any]:
        return {"on_missing": self.on_missing}

    def verify_command(self) -> str:
        return f"{super().verify_command()} dataset.task={self.task}"

    def clip_settings(self) -> dict[str, Any]:
        frame_count = "files"
        if self.reads_files:
            frame_count = "decoded" if self.exact_frame_count else "container"
        return {
            "source": "video" if self.reads_files else "frames",
            "frame_count": frame_count,
            "on_missing": self.on_missing,
        }

    def read_advice(self) -> str:
        if self.reads_files and not self.exact_frame_count:
            return " If the container over-counts its frames, set dataset.exact_frame_count=true."
        return ""
