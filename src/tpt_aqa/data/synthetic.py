"""Embedded synthetic AQA benchmark: procedurally generated clip features, no files needed.

Every video is a sequence of P temporally ordered phases with random durations (like approach, take
off, flight, entry of a dive). Each phase is performed with its own quality q_p ∈ [0, 1]; the judges'
raw score weights the phases unequally, s = 10·Σ_p w_p q_p / Σ_p w_p, plus judge noise, and the
reported score is s × difficulty (like MTL-AQA w/ DD; exemplars share the difficulty).

A clip of phase p carries that phase's signature (so a query can find it) plus q_p along a quality
direction shared by all phases, plus noise. Averaging the clips over time mixes the phase qualities
with their random durations, so holistic pooling cannot recover s exactly, while attending to each
phase separately can: the benchmark rewards temporal parsing, as real AQA should. The true phase of
every clip is kept, so a run reports how well the queries' attention follows the phases.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpt_aqa.atomic import atomic_write
from tpt_aqa.data.base import AQADataModule, SampleTable
from tpt_aqa.data.features import write_rows
from tpt_aqa.data.samplers import difficulty_name


@dataclass
class SyntheticData:
    """Generated features and annotations."""

    features: np.ndarray  # (N, T, C) float32
    phases: np.ndarray  # (N, T) int64
    qualities: np.ndarray  # (N, P)
    raw: np.ndarray  # (N,) score on the training scale
    difficulty: np.ndarray  # (N,)
    difficulty_id: np.ndarray  # (N,)
    split: np.ndarray  # (N,) "train"/"test"


def phase_lengths(
    rng: np.random.Generator, num_clips: int, num_phases: int, min_len: int
) -> np.ndarray:
    """Random phase durations (in clips) summing to T, each at least ``min_len``."""
    spare = num_clips - num_phases * min_len
    share = rng.dirichlet(np.full(num_phases, 2.0))
    extra = np.floor(share * spare).astype(int)
    extra[rng.permutation(num_phases)[: spare - extra.sum()]] += 1
    return extra + min_len


def check_phases(
    num_phases: int, phase_weights: tuple[float, ...], min_len: int, length: int, unit: str
) -> None:
    """A weight per phase, and phases of ``min_len`` fit in ``length`` clips or frames.

    Raises:
        ValueError: naming the keys.
    """
    if len(phase_weights) != num_phases:
        raise ValueError(
            f"dataset.phase_weights has {len(phase_weights)} values for dataset.num_phases={num_phases}"
        )
    if num_phases * min_len > length:
        raise ValueError(
            f"{num_phases} phases of at least {min_len} {unit} do not fit in {length} {unit}"
        )


def judge(
    rng: np.random.Generator,
    qualities: np.ndarray,
    phase_weights: tuple[float, ...],
    judge_noise: float,
    num_difficulties: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The judges' raw scores s = 10·Σ_p w_p q_p / Σ_p w_p + noise of videos whose phase qualities
    are ``qualities`` ``(N, P)``, and a uniformly drawn difficulty id of each ``(N,)``."""
    weights = np.asarray(phase_weights, dtype=np.float64)
    raw = 10 * qualities @ weights / weights.sum() + judge_noise * rng.standard_normal(
        len(qualities)
    )
    return raw, rng.integers(0, num_difficulties, size=len(qualities))


def generate(
    num_train: int = 600,
    num_test: int = 200,
    num_clips: int = 20,
    feature_dim: int = 64,
    num_phases: int = 5,
    min_phase_len: int = 2,
    phase_weights: tuple[float, ...] = (0.5, 2.0, 1.0, 3.0, 0.5),
    difficulties: tuple[float, ...] = (2.0, 2.6, 3.2),
    signal: float = 1.0,
    noise: float = 0.5,
    judge_noise: float = 0.1,
    seed: int = 0,
) -> SyntheticData:
    """Generate the benchmark deterministically from ``seed`` (see the module docstring).

    Returns:
        ``SyntheticData`` with train rows first, then test rows.
    """
    check_phases(num_phases, phase_weights, min_phase_len, num_clips, "clips")
    rng = np.random.default_rng(seed)
    n = num_train + num_test
    signatures = rng.standard_normal((num_phases, feature_dim))
    signatures /= np.linalg.norm(signatures, axis=1, keepdims=True)
    direction = rng.standard_normal(feature_dim)
    direction -= signatures.T @ np.linalg.lstsq(signatures.T, direction, rcond=None)[0]
    direction /= np.linalg.norm(direction)

    qualities = rng.uniform(0, 1, size=(n, num_phases))
    phases = np.stack(
        [
            np.repeat(
                np.arange(num_phases), phase_lengths(rng, num_clips, num_phases, min_phase_len)
            )
            for _ in range(n)
        ]
    )
    q_clip = np.take_along_axis(qualities, phases, axis=1)  # (N, T)
    features = (
        signatures[phases]
        + signal * (q_clip - 0.5)[..., None] * direction
        + noise / np.sqrt(feature_dim) * rng.standard_normal((n, num_clips, feature_dim))
    )
    raw, difficulty_id = judge(rng, qualities, phase_weights, judge_noise, len(difficulties))
    split = np.array(["train"] * num_train + ["test"] * num_test)
    return SyntheticData(
        features=features.astype(np.float32),
        phases=phases.astype(np.int64),
        qualities=qualities,
        raw=raw,
        difficulty=np.asarray(difficulties)[difficulty_id],
        difficulty_id=difficulty_id,
        split=split,
    )


def export_features(data: SyntheticData, out_dir: str | Path) -> Path:
    """Write the benchmark in the ``dataset=features`` format (``{id}.npy`` + ``annotations.csv``);
    the annotation table's path."""
    out = Path(out_dir)
    rows = []
    for i in range(len(data.raw)):
        vid = f"synthetic_{i:05d}"
        atomic_write(out / f"{vid}.npy", lambda f, x=data.features[i]: np.save(f, x))
        scale, group = f"{data.difficulty[i]:g}", difficulty_name(data.difficulty[i])
        rows.append((vid, f"{data.raw[i]:.6f}", data.split[i], group, scale, "synthetic"))
    write_rows(out / "annotations.csv", rows)
    return out / "annotations.csv"


def generator_args(fn, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop ``fn``'s arguments (``data_seed`` as its ``seed``) from a datamodule's ``kwargs``,
    completed with ``fn``'s defaults; lists become tuples."""
    names = set(inspect.signature(fn).parameters) - {"seed"}
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    given["seed"] = kwargs.pop("data_seed", 0)
    bound = inspect.signature(fn).bind(**given)
    bound.apply_defaults()
    return {
        k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
        for k, v in bound.arguments.items()
    }


def synthetic_table(
    name: str,
    raw: np.ndarray,
    difficulties: tuple[float, ...],
    difficulty_id,
    split: np.ndarray,
    digits: int,
) -> SampleTable:
    """The table of a generated benchmark: one class, exemplar groups of equal difficulty."""
    return SampleTable(
        ids=[f"{name}_{i:0{digits}d}" for i in range(len(raw))],
        target=raw,
        scale=np.asarray(difficulties)[difficulty_id],
        group=difficulty_id,
        class_id=np.zeros(len(raw), dtype=np.int64),
        split=split.copy(),
        class_names=[name],
        group_names=[difficulty_name(x) for x in difficulties],
    )


class SyntheticDataModule(AQADataModule):
    """The embedded default benchmark (``dataset=synthetic``); see the module docstring.

    Args:
        **kwargs: ``generate``'s arguments (``data_seed`` as its ``seed``), then ``AQADataModule``'s.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.gen_kwargs = generator_args(generate, kwargs)
        super().__init__(**kwargs)
        self.data: SyntheticData | None = None

    @property
    def num_clips(self) -> int:
        return self.gen_kwargs["num_clips"]

    def build_table(self) -> SampleTable:
        d = self.data = generate(**self.gen_kwargs)
        self._features = torch.from_numpy(d.features)
        self._phases = torch.from_numpy(d.phases)
        difficulties = self.gen_kwargs["difficulties"]
        return synthetic_table("synthetic", d.raw, difficulties, d.difficulty_id, d.split, 5)

    def load_video(self, row: int, view: str) -> torch.Tensor:
        return self._features[row]

    def group_option(self) -> dict:
        return {
            "option": "difficulty",
            "values": [float(x) for x in self.gen_kwargs["difficulties"]],
        }

    def clip_labels(self, row: int) -> torch.Tensor:
        return self._phases[row]
