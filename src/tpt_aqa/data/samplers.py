"""Exemplar groups and pairing (docs/method.md §5–7): one exemplar per training sample, M fixed
exemplars per evaluated one, each from the sample's exemplar group."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler

# Tags of the independent random streams drawn from one seed (numpy's SeedSequence mixes the tag
# with the seed, so each stream is its own and changing one use never shifts another).
STREAM_TRAIN_PAIRS = 7  # training exemplar per video, per epoch
STREAM_VAL_CARVE = 11  # which training videos form the validation split
STREAM_EVAL_EXEMPLARS = 23  # the fixed evaluation exemplars of each split
STREAM_BANK = 29  # the exemplars stored in a checkpoint's bank
STREAM_STEP_LABELS = 31  # the training videos that keep their step labels (step_label_fraction)

# Difficulties are one-decimal values: exemplar groups, and the difficulty a user gives for a new
# video, match at that precision, so float noise in annotation files (3.2000000000000002) is harmless.
DIFFICULTY_DECIMALS = 1


def difficulty_name(difficulty: float) -> str:
    """Name of the exemplar group of one difficulty: ``dd3.2``."""
    return f"dd{difficulty:g}"


def difficulty_option(group_names: list[str]) -> dict[str, Any]:
    """``group_option`` of groups named ``dd<difficulty>``: the difficulty is what a user knows."""
    return {"option": "difficulty", "values": [float(n[2:]) for n in group_names]}


def difficulty_groups(difficulty: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Exemplar groups of equal difficulty (docs/method.md §5): the group ``(N,)`` of every
    sample's difficulty ``(N,)`` and the group names, in order of difficulty."""
    rounded = np.round(difficulty, DIFFICULTY_DECIMALS)
    values = np.unique(rounded)
    return np.searchsorted(values, rounded), [difficulty_name(v) for v in values]


def draw_exemplars(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For every position of ``groups`` ``(N,)``, a uniformly drawn other position of the same
    group (itself when alone) ``(N,)``."""
    groups = np.asarray(groups)
    out = np.arange(len(groups))
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        s = len(members)
        if s < 2:
            continue
        r = rng.integers(0, s - 1, size=s)  # draw among the s - 1 others
        own = np.arange(s)
        out[members] = members[r + (r >= own)]  # skip over the sample itself
    return out


class ExemplarPairSampler(DistributedSampler):
    """Yields ``(query_row, exemplar_row)`` pairs, sharded over ranks like ``DistributedSampler``.

    Being a ``DistributedSampler``, Lightning leaves it in place under DDP and calls ``set_epoch`` on
    it every epoch, so pairs and order are a function of (seed, epoch) only, identical on every rank
    (the release never set the epoch). Exemplars are drawn from the query's exemplar group.

    Args:
        rows: table rows of the training samples ``(N,)``.
        groups: exemplar group of each row ``(N,)``.
    """

    def __init__(
        self,
        rows: np.ndarray,
        groups: np.ndarray,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        self.rows = np.asarray(rows)
        self.groups = np.asarray(groups)
        super().__init__(
            range(len(self.rows)), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed
        )

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch, STREAM_TRAIN_PAIRS])
        partner = draw_exemplars(self.groups, rng)
        for pos in super().__iter__():
            yield int(self.rows[pos]), int(self.rows[partner[pos]])


def choose_eval_exemplars(
    query_groups: np.ndarray,
    pool_rows: np.ndarray,
    pool_groups: np.ndarray,
    num_exemplars: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Fixed exemplar rows ``(N,M)`` for evaluation: M members (all of a smaller group, padded with
    -1) of each query's group ``query_groups`` ``(N,)`` among ``pool_rows`` ``(P,)`` of groups
    ``pool_groups`` ``(P,)``."""
    out = np.full((len(query_groups), num_exemplars), -1, dtype=np.int64)
    members = {g: pool_rows[pool_groups == g] for g in np.unique(pool_groups)}
    for i, g in enumerate(query_groups):
        m = members.get(g)
        if m is None or len(m) == 0:
            raise ValueError(
                f"evaluated sample {i} is in exemplar group {int(g)}, which has no training sample to "
                "compare with; add training samples of that group or regroup the annotations"
            )
        chosen = m if len(m) <= num_exemplars else rng.choice(m, size=num_exemplars, replace=False)
        out[i, : len(chosen)] = np.sort(chosen)
    return out
