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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data.base import SampleTable, check_choice
from tpt_aqa.data.finediving_annotations import (  # noqa: F401 (re-exported)
    ANNOTATION_FILE,
    COARSE_FILE,
    RELEASE,
    SPLIT_FILES,
    Dive,
    DiveKey,
    inconsistent_dives,
    load_release_pickle,
    parse_record,
    read_annotations,
    read_coarse_spans,
    read_split,
    safe_load,
)
from tpt_aqa.data.mtl_aqa import diving_delta_cap, diving_table
from tpt_aqa.data.samplers import difficulty_groups, difficulty_option
from tpt_aqa.data.video import list_frames
from tpt_aqa.data.video_base import VideoDataModule

log = logging.getLogger(__name__)

FRAMES_DIR = "FINADiving_MTL_256s"
NUM_FRAMES = 96  # the authors' frame_length
EXEMPLAR_GROUPS = ("dive_number", "difficulty", "none")
RELEASE_SPLIT = {"train": 2251, "test": 749}  # dives in the release's split files


def frame_folder(root: str | Path, key: DiveKey, frames_root: str | Path | None = None) -> Path:
    """``{video_name}/{instance}`` under ``frames_root``, by default ``{root}/FINADiving_MTL_256s``."""
    return Path(frames_root or Path(root) / FRAMES_DIR) / key[0] / str(key[1])


def _numbers_text(numbers: Iterable[int], shown: int = 4) -> str:
    """Frame numbers as ``00995–01002`` runs, the first ``shown`` runs and a count of the rest."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    text = [f"{a:05d}" if a == b else f"{a:05d}–{b:05d}" for a, b in runs[:shown]]
    more = f" and {len(runs) - shown} more runs" if len(runs) > shown else ""
    return ", ".join(text) + more


def frame_numbers(folder: Path) -> np.ndarray:
    """The absolute frame numbers of a dive's JPEG files, ascending ``(n,)`` (the folder's listing is
    cached per process and renewed when the folder changes).

    Raises:
        FileNotFoundError: the folder is missing or holds no ``.jpg``.
        ConfigError: a file name is not a frame number, or numbers are missing in between (named).
    """
    if not folder.is_dir():
        raise FileNotFoundError(
            f"FineDiving frame folder {folder} not found: extract the release's "
            f"{FRAMES_DIR} under dataset.root (or set dataset.frames_root)"
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
        inside = sorted(
            set(range(int(numbers_[0]), int(numbers_[-1]) + 1)) - set(numbers_.tolist())
        )
        raise ConfigError(
            f"{folder}: frames {numbers_[0]}–{numbers_[-1]} should be {numbers_[-1] - numbers_[0] + 1} "
            f"files, found {len(numbers_)} (missing inside: {_numbers_text(inside)}); the folder "
            "must hold every frame of the dive"
        )
    return numbers_


def check_dive_frames(
    dive: Dive, numbers: np.ndarray, folder: Path, span: tuple[int, int] | None = None
) -> None:
    """A dive's folder holds exactly the frames its ``frames_labels`` label: as many files as labels
    (``frame_numbers`` has checked they are consecutive), so that frame ``first + i`` has label
    ``i``. A folder short at its start would shift every step label.

    Args:
        span: the dive's ``(start_frame, end_frame)`` in the coarse annotation, if known: it says
            whether the missing frames are at the start or the end.

    Raises:
        ConfigError: naming the folder, the counts, and which frames are missing or extra.
    """
    n, found = len(dive.frame_labels), len(numbers)
    if found == n:
        return
    first, last = int(numbers[0]), int(numbers[-1])
    head = (
        f"FineDiving frame folder {folder} holds {found} frames ({first:05d}–{last:05d}), but "
        f"{ANNOTATION_FILE} labels {n} for dive {dive_id(dive.key)}"
    )
    fix = (
        f"re-extract the dive's frames from the release's {FRAMES_DIR} (the step labels are "
        "placed by position in the folder, so a folder that starts late shifts every step)"
    )
    if found > n:
        raise ConfigError(
            f"{head}: {found - n} frames too many, or frames and annotations of two releases; {fix}"
        )
    if span is not None and span[1] - span[0] + 1 == n:
        start, end = span
        parts = []
        if first > start:
            parts.append(f"at the start: {_numbers_text(range(start, min(first, end + 1)))}")
        if last < end:
            parts.append(f"at the end: {_numbers_text(range(max(last + 1, start), end + 1))}")
        if parts:
            raise ConfigError(
                f"{head}: {n - found} missing ({'; '.join(parts)}; {COARSE_FILE} places the dive "
                f"at {start:05d}–{end:05d}); {fix}"
            )
    raise ConfigError(
        f"{head}: {n - found} frames are missing at its start or its end (with {COARSE_FILE} "
        f"beside it this message would say which); {fix}"
    )


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
        frames_root: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(root=root, delta_cap=diving_delta_cap(use_dd, delta_cap), **kwargs)
        # the authors keep the annotations and the frames apart: null means {root}/FINADiving_MTL_256s
        self.frames_root = Path(frames_root) if frames_root else self.root / FRAMES_DIR
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
        # the split files' train/test of every row and their sizes, as read (group_fix tries the
        # other groupings on them)
        self._built_split: np.ndarray | None = None
        self._split_sizes: dict[str, int] | None = None
        self._spans: dict[DiveKey, tuple[int, int]] | None = None  # coarse start/end, when read

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
        self._split_sizes = {"train": len(train), "test": len(test)}
        split = np.array(["train"] * len(train) + ["test"] * len(test))
        ids = [dive_id(k) for k in keys]
        self._built_split = split.copy()  # as the files say, before the validation carve
        return diving_table(ids, final, difficulty, self.use_dd, group, group_names, split)

    def _groups_of(self, grouping: str) -> np.ndarray:
        """Every table row's exemplar group under ``grouping`` ``(N,)``."""
        if grouping == "dive_number":
            numbers = [self.dives[k].dive_number for k in self.keys]
            return np.unique(numbers, return_inverse=True)[1]
        if grouping == "difficulty":
            return difficulty_groups(np.array([self.dives[k].difficulty for k in self.keys]))[0]
        return np.zeros(len(self.keys), dtype=np.int64)

    def _grouping_works(self, grouping: str) -> bool:
        """Whether ``grouping`` gives every test dive of the split files a training dive of its
        group (the validation carve keeps one training dive per group)."""
        group = self._groups_of(grouping)
        train = self._built_split == "train"
        return bool(np.isin(group[~train], group[train]).all())

    def group_fix(self) -> str:
        """The other groupings that work on these splits (tried, not assumed: on the release's
        split a test dive of difficulty 1.5 has no training dive of that difficulty), and the
        release's split files only when others are in use."""
        others = [g for g in EXEMPLAR_GROUPS if g != self.exemplar_groups]
        if self._built_split is not None:
            others = [g for g in others if self._grouping_works(g)]
        fixes = []
        if others:
            fixes.append(
                f"pool dive numbers with dataset.exemplar_groups={' or '.join(others)}"
                if self.exemplar_groups == "dive_number"
                else f"use dataset.exemplar_groups={' or '.join(others)}"
            )
        sizes = self._split_sizes
        if sizes is not None and sizes != RELEASE_SPLIT:
            fixes.append(
                f"use the release's split files ({RELEASE_SPLIT['train']:,} training and "
                f"{RELEASE_SPLIT['test']:,} test dives; these list {sizes['train']:,} and "
                f"{sizes['test']:,})"
            )
        return ", or ".join(fixes) if fixes else "add training dives to these groups"

    def group_option(self) -> dict[str, Any]:
        if self.exemplar_groups != "difficulty":
            return super().group_option()  # a dive number names its group (group=407c)
        return difficulty_option(self.table.group_names)

    # ---- frames --------------------------------------------------------------------------------
    def source(self, row: int) -> Path:
        return frame_folder(self.root, self.keys[row], self.frames_root)

    def sources_folder(self) -> tuple[Path, str]:
        return self.frames_root, "frames_root"

    def source_keys(self) -> str:
        return "dataset.frames_root"

    def fix(self) -> str:
        return (
            f"extract the release's {FRAMES_DIR} under dataset.root or point dataset.frames_root "
            "at it (one folder of JPEGs per dive, named by frame number; with a feature cache "
            "only the names are read)"
        )

    def verify_command(self) -> str:
        frames = (
            f" dataset.frames_root={self.frames_root}"
            if self.frames_root != self.root / FRAMES_DIR
            else ""
        )
        return f"{super().verify_command()}{frames}"

    def check_files(self) -> None:
        """``VideoDataModule.check_files``, and every dive's folder holds exactly its labelled
        frames (a listing per folder, no decoding), so that a short folder stops the run at
        setup rather than when an epoch reaches it.

        Raises:
            ConfigError: how many dives are wrong, the first few problems and the verify command.
        """
        super().check_files()
        if not self.setup_checks:
            return
        problems = []
        for row in range(len(self.table)):
            try:
                self.dive_numbers(row)
            except (FileNotFoundError, ConfigError) as err:
                problems.append(str(err))
        if problems:
            shown = " | ".join(problems[:3])
            raise ConfigError(
                f"{len(problems)} of {len(self.table)} FineDiving dives have frame folders that do "
                f"not match their labels: {shown}{' | …' if len(problems) > 3 else ''}; list every "
                f"problem with {self.verify_command()}"
            )

    def dive_numbers(self, row: int) -> np.ndarray:
        """A dive's frame numbers, checked against its labels (``check_dive_frames``).

        Raises:
            FileNotFoundError: the folder is missing or empty.
            ConfigError: misnamed files, gaps, or more or fewer frames than labels.
        """
        key = self.keys[row]
        folder = self.source(row)
        numbers_ = frame_numbers(folder)
        if len(numbers_) != len(self.dives[key].frame_labels) and self._spans is None:
            self._spans = read_coarse_spans(self.root)  # read once, for the message only
        check_dive_frames(self.dives[key], numbers_, folder, (self._spans or {}).get(key))
        return numbers_

    def sampled_frames(self, row: int) -> tuple[int, np.ndarray]:
        """The first frame number of a dive's folder and the numbers of its ``T·L`` sampled frames
        (the authors' ``linspace(first, last, T·L)``).

        Raises:
            ValueError: the folder is empty, misnamed, has gaps, or holds more or fewer frames
                than the dive's labels, naming it and what is missing.
        """
        try:
            numbers_ = self.dive_numbers(row)
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

    def check_sample(self, row: int, decode: str = "all") -> list[str]:
        """``VideoDataModule.check_sample``, and the labels cover the sampled frames."""
        problems = super().check_sample(row, decode)
        if not problems:
            try:
                self.clip_labels(row)
            except ConfigError as err:
                problems.append(f"{self.sample_name(row)}: {err}")
        return problems
