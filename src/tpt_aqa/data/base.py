"""The datamodule contract shared by every benchmark (docs/method.md §6–7): a benchmark gives its
samples (a ``SampleTable``) and how to load one video (``load_video``); the validation carve,
exemplars, pairs, batches and loaders are common (videos on disk: ``video_base``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data.batch import collate_eval, collate_pairs, collate_videos
from tpt_aqa.data.labels import pair_deltas
from tpt_aqa.data.samplers import (
    STREAM_EVAL_EXEMPLARS,
    STREAM_VAL_CARVE,
    ExemplarPairSampler,
    choose_eval_exemplars,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
VIEWS = ("train", "test", "exemplar")


@dataclass
class SampleTable:
    """All samples of a benchmark, one row each: the fields of ``batch.Videos`` but the video, and
    the split (``"train"``, ``"val"`` or ``"test"``) and the names of the class and group ids."""

    ids: list[str]
    target: np.ndarray
    scale: np.ndarray
    group: np.ndarray
    class_id: np.ndarray
    split: np.ndarray
    class_names: list[str] = field(default_factory=lambda: ["all"])
    group_names: list[str] = field(default_factory=lambda: ["all"])

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


def carve_validation(table: SampleTable, fraction: float, seed: int) -> None:
    """Move a seeded random ``fraction`` in [0, 1) of the training rows to ``"val"``, in place: at
    least two (ρ needs two), never a group's last training row (its exemplars)."""
    if fraction <= 0:
        return
    train = table.rows("train")
    wanted = max(2, int(np.ceil(fraction * len(train))))  # ρ needs at least two videos
    left = {
        g: int(n) for g, n in zip(*np.unique(table.group[train], return_counts=True), strict=True)
    }
    moved = 0
    for row in np.random.default_rng([seed, STREAM_VAL_CARVE]).permutation(train):
        if moved == wanted:
            break
        if left[table.group[row]] > 1:
            table.split[row] = "val"
            left[table.group[row]] -= 1
            moved += 1


class _Rows(Dataset):
    """One video per item, from a list of table rows, seen as ``view`` sees them; with the fixed
    ``exemplars`` rows ``(N, M)`` of evaluated videos, each with its exemplar rows and scores."""

    def __init__(
        self, dm: AQADataModule, rows: np.ndarray, view: str, exemplars: np.ndarray | None = None
    ) -> None:
        self.dm, self.rows, self.view, self.exemplars = dm, rows, view, exemplars

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any] | tuple:  # (sample, rows (M,), scores (M,))
        sample = self.dm.sample(int(self.rows[i]), self.view)
        if self.exemplars is None:
            return sample
        ex = torch.as_tensor(self.exemplars[i])
        targets = torch.as_tensor(self.dm.table.target, dtype=torch.float32)[ex.clamp_min(0)]
        return sample, ex, targets * (ex >= 0)


class _Pairs(Dataset):
    """Indexed by ``(query_row, exemplar_row)`` pairs from ``ExemplarPairSampler``."""

    def __init__(self, dm: AQADataModule, num_rows: int) -> None:
        self.dm, self.num_rows = dm, num_rows

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, pair: tuple[int, int]) -> tuple[dict[str, Any], dict[str, Any]]:
        q, e = pair
        return self.dm.sample(q, "train"), self.dm.sample(e, "train")


def check_choice(key: str, value: Any, allowed: tuple, error: type = ConfigError) -> None:
    """``key``'s ``value`` is one of ``allowed``, or ``error`` names the key and the choices."""
    if value not in allowed:
        raise error(f"{key}={value!r}: use one of {', '.join(allowed)}")


def check_count(key: str, value: Any) -> int:
    """``dataset.<key>`` as a non-negative integer, or a ``ConfigError`` naming it."""
    if int(value) != value or value < 0:
        raise ConfigError(f"dataset.{key}={value!r}: must be a non-negative integer")
    return int(value)


def plain(value: Any) -> Any:
    """A Hydra ``DictConfig``/``ListConfig`` as plain dicts and lists; anything else as it is."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def auto_workers(cpus: int, devices: int, bound: bool = False) -> int:
    """Loader processes per device for ``num_workers: auto``: the ``cpus`` this process may run on,
    shared by the node's ``devices`` unless ``bound`` (a scheduler gave each process its own cores,
    as SLURM's ``--cpus-per-task``), less one for the main process."""
    return max(0, (cpus if bound else cpus // max(1, devices)) - 1)


class AQADataModule(L.LightningDataModule):
    """Shared datamodule: subclasses implement ``build_table`` and ``load_video``. Arguments: the
    common keys of ``conf/dataset/*.yaml``, documented there."""

    def __init__(
        self,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        num_exemplars: int = 10,
        val_fraction: float = 0.1,
        seed: int = 12,
        delta_cap: float = 30.0,
        num_workers: int | str = 0,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        test_every_epoch: bool = False,
    ) -> None:
        super().__init__()
        if num_workers != "auto" and (type(num_workers) is not int or num_workers < 0):
            raise ConfigError(
                f"dataset.num_workers={num_workers!r}: must be an integer >= 0 (0 loads in the "
                "main process) or auto (one per CPU core of the device, less one)"
            )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_exemplars = num_exemplars
        self.val_fraction = val_fraction
        self.seed = seed
        self.delta_cap = delta_cap
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.test_every_epoch = test_every_epoch
        self.table: SampleTable | None = None
        self.eval_exemplars: dict[str, np.ndarray] = {}

    # ---- what a benchmark provides -------------------------------------------------------------
    def build_table(self) -> SampleTable:  # the annotations as a table, once, in ``setup``
        raise NotImplementedError

    def load_video(self, row: int, view: str) -> torch.Tensor:
        """Features ``(T,C)`` or clips ``(T,3,L,H,W)`` of a row in ``view``: ``"train"``
        (augmented), ``"test"`` (evaluated query) or ``"exemplar"``."""
        raise NotImplementedError

    def check_files(self) -> None:
        """Check, once the table is set, the files its samples are read from (here: none)."""

    def clip_labels(self, row: int) -> torch.Tensor | None:
        """Known temporal phase of every clip ``(T,)``, or ``None`` (the default) when unknown."""
        return None

    @property
    def num_clips(self) -> int:  # T
        raise NotImplementedError

    # ---- what ``tpt_aqa.predict`` needs, stored in the checkpoint's exemplar bank ---------------
    def prediction_input(self) -> dict[str, Any]:
        """How ``tpt_aqa.predict`` reads a new input: here a ``(T,C)`` feature file."""
        return {"kind": "features", "num_clips": self.num_clips}

    def group_option(self) -> dict[str, Any]:
        """How a user names a new video's exemplar group: ``{"option": name or None, "values": […]}``
        with one value per group id (``None`` option: a single group, nothing to give)."""
        names = list(self.table.group_names)
        return {"option": None if len(names) == 1 else "group", "values": names}

    def raw_score_ranges(self) -> dict[str, list[float]] | None:
        """Raw ``[lo, hi]`` per group name when scores are normalised to 0–100 for training."""
        return None

    # ---- shared machinery ----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        table = self.build_table()
        unknown = set(np.unique(table.split)) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; use one of {SPLITS}")
        if len(table.rows("train")) == 0:
            raise ValueError("the data has no training samples (split 'train')")
        self.source_split = table.split.copy()  # as annotated, before the validation carve
        if "val" not in set(table.split):
            carve_validation(table, self.val_fraction, self.seed)
        if 0 < len(table.rows("val")) < 2:
            raise ConfigError(
                f"the validation split has {len(table.rows('val'))} video: Spearman's ρ needs at "
                "least 2; raise dataset.val_fraction, or set it to 0 to keep the last epoch"
            )
        self._check_training_groups(table)
        self._check_evaluated_groups(table)
        self.table = table
        self.check_files()
        pool = table.rows("train")
        for code, split in enumerate(("val", "test")):
            rows = table.rows(split)
            self.eval_exemplars[split] = choose_eval_exemplars(
                table.group[rows],
                pool,
                table.group[pool],
                self.num_exemplars,
                np.random.default_rng([self.seed, STREAM_EVAL_EXEMPLARS, code]),
            )

    # Whether a table where no exemplar group has two training videos is refused (the user's own
    # features and groups) or warned about (a benchmark's fixed splits, e.g. tiny test tables).
    refuse_lone_groups = False

    def group_fix(self) -> str:
        """How to give every exemplar group two training videos, for this benchmark's files."""
        return "merge exemplar groups or add training videos to them"

    def _check_training_groups(self, table: SampleTable) -> None:
        """Training pairs a video with another of its group: groups of one are warned about, or
        with ``refuse_lone_groups`` and no group of two a ``ConfigError``."""
        groups, counts = np.unique(table.group[table.rows("train")], return_counts=True)
        alone = [table.group_names[g] for g, n in zip(groups, counts, strict=True) if n < 2]
        if not alone:
            return
        names = ", ".join(alone[:5]) + (f" and {len(alone) - 5} more" if len(alone) > 5 else "")
        if self.refuse_lone_groups and len(alone) == len(groups):
            raise ConfigError(
                f"every exemplar group has a single training video ({names}): training compares "
                f"a video with another of its group, so there is nothing to learn; {self.group_fix()}"
            )
        log.warning(
            "exemplar groups %s have a single training video, compared only with itself in "
            "training; %s",
            names,
            self.group_fix(),
        )

    def _check_evaluated_groups(self, table: SampleTable) -> None:
        """Every evaluated sample's group has training samples, its exemplars (§7), or a
        ``ConfigError`` names them."""
        trained = np.unique(table.group[table.rows("train")])
        rows = np.flatnonzero((table.split != "train") & ~np.isin(table.group, trained))
        if len(rows):
            names = sorted({table.group_names[g] for g in table.group[rows]})
            raise ConfigError(
                f"{len(rows)} evaluated sample{'s' if len(rows) > 1 else ''} ({', '.join(table.ids[r] for r in rows[:3])}"
                f"{' …' if len(rows) > 3 else ''}) {'are' if len(rows) > 1 else 'is'} in exemplar groups ({', '.join(names)}) "
                f"that no training sample has, so they have no exemplars; {self.group_fix()}"
            )

    @property
    def class_names(self) -> list[str]:
        assert self.table is not None, "call setup() first"
        return self.table.class_names

    @property
    def has_test(self) -> bool:
        assert self.table is not None, "call setup() first"
        return len(self.table.rows("test")) > 0

    @property
    def has_val(self) -> bool:
        assert self.table is not None, "call setup() first"
        return len(self.table.rows("val")) > 0

    def train_deltas(self) -> np.ndarray:
        """Within-group |Δ| of all training pairs, to fit the score groups."""
        assert self.table is not None, "call setup() first"
        rows = self.table.rows("train")
        deltas = pair_deltas(self.table.target[rows], self.table.group[rows])
        if len(deltas) == 0:
            raise ConfigError(
                f"no exemplar group has two training samples ({len(rows)} training samples in "
                f"{len(np.unique(self.table.group[rows]))} groups), so there is no within-group "
                f"score difference to fit the score groups on; {self.group_fix()}, or lower "
                "dataset.val_fraction"
            )
        return deltas

    def sample(self, row: int, view: str) -> dict[str, Any]:  # the fields of ``Videos``
        t = self.table
        video = self.load_video(row, view)
        labels = self.clip_labels(row)
        if labels is None:
            labels = torch.full((video.shape[0],), -1, dtype=torch.long)
        return {
            "video": video,
            "target": float(t.target[row]),
            "scale": float(t.scale[row]),
            "group": int(t.group[row]),
            "class_id": int(t.class_id[row]),
            "index": row,
            "clip_labels": labels,
        }

    def _loader(self, dataset: Dataset, collate, **kwargs: Any) -> DataLoader:
        trainer = self.trainer
        workers = self.num_workers
        if workers == "auto":
            cpus = available_cpus()
            bound = cpus < (os.cpu_count() or cpus)  # not every core of the machine: its own
            workers = auto_workers(cpus, trainer.num_devices if trainer else 1, bound)
        cuda = (
            trainer.strategy.root_device.type == "cuda"
            if trainer is not None
            else torch.cuda.is_available()
        )
        return DataLoader(
            dataset,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=cuda if self.pin_memory is None else self.pin_memory,
            persistent_workers=workers > 0 and self.persistent_workers is not False,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        rows = self.table.rows("train")
        trainer = self.trainer
        sampler = ExemplarPairSampler(
            rows,
            self.table.group[rows],
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            seed=self.seed,
        )
        return self._loader(
            _Pairs(self, len(rows)), collate_pairs, batch_size=self.batch_size, sampler=sampler
        )

    def _eval_loader(self, split: str) -> DataLoader:
        ds = _Rows(self, self.table.rows(split), "test", self.eval_exemplars[split])
        return self._loader(ds, collate_eval, batch_size=self.eval_batch_size, shuffle=False)

    @property
    def val_splits(self) -> list[str]:
        """Splits evaluated at each validation, in dataloader order."""
        return (["val"] if self.has_val else []) + (["test"] if self.test_every_epoch else [])

    def val_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(split) for split in self.val_splits]

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def rows_dataloader(self, rows: np.ndarray, view: str) -> DataLoader:
        """The videos of some table rows as ``Videos`` batches, in order, seen as ``view`` sees them."""
        return self._loader(
            _Rows(self, rows, view), collate_videos, batch_size=self.eval_batch_size, shuffle=False
        )
