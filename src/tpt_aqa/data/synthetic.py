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

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpt_aqa.core.atomic import atomic_write
from tpt_aqa.data.base import AQADataModule, SampleTable
from tpt_aqa.data.features import write_rows
from tpt_aqa.data.samplers import difficulty_name, difficulty_option


@dataclass(frozen=True, kw_only=True)
class GeneratorSettings:
    """What the generated benchmarks share (the module docstring): ``num_train`` then ``num_test``
    videos of ``num_phases`` ordered phases of at least ``min_phase_len`` clips or frames, judged
    with ``phase_weights`` and ``judge_noise``, each of a drawn difficulty; all drawn from ``seed``
    (``dataset.data_seed``)."""

    num_train: int = 600
    num_test: int = 200
    num_phases: int = 5
    min_phase_len: int = 2
    phase_weights: tuple[float, ...] = (0.5, 2.0, 1.0, 3.0, 0.5)
    difficulties: tuple[float, ...] = (2.0, 2.6, 3.2)
    judge_noise: float = 0.1
    seed: int = 0

    @classmethod
    def pop_from(cls, kwargs: dict[str, Any]) -> GeneratorSettings:
        """The settings among a datamodule's ``kwargs`` (``data_seed`` as ``seed``), popped from
        them; lists become tuples."""
        names = {f.name for f in fields(cls)} - {"seed"}
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        for k, v in given.items():
            if isinstance(v, Sequence) and not isinstance(v, str):
                given[k] = tuple(v)
        return cls(seed=kwargs.pop("data_seed", 0), **given)

    def check(self, length: int, unit: str) -> None:
        """A weight per phase, and phases of ``min_phase_len`` fit in ``length`` clips or frames.

        Raises:
            ValueError: naming the keys.
        """
        if len(self.phase_weights) != self.num_phases:
            raise ValueError(
                f"dataset.phase_weights has {len(self.phase_weights)} values for "
                f"dataset.num_phases={self.num_phases}"
            )
        if self.num_phases * self.min_phase_len > length:
            raise ValueError(
                f"{self.num_phases} phases of at least {self.min_phase_len} {unit} do not fit in "
                f"{length} {unit}"
            )

    def judge(
        self, rng: np.random.Generator, qualities: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The judges' raw scores s = 10·Σ_p w_p q_p / Σ_p w_p + noise of videos whose phase qualities
        are ``qualities`` ``(N, P)``, and a uniformly drawn difficulty id of each ``(N,)``; with negative
        weights s = 10·(Σ_p w_p q_p − Σ_{w_p<0} w_p) / Σ_p |w_p| + noise, still within [0, 10]."""
        weights = np.asarray(self.phase_weights, dtype=np.float64)
        noise = self.judge_noise * rng.standard_normal(len(qualities))
        # a negative weight (``dataset=synthetic_hard``) shifts the range back to [0, 10]: with all
        # weights positive the shift is 0 and Σ|w| = Σw, the default's formula exactly
        low = np.minimum(weights, 0.0).sum()
        raw = 10 * (qualities @ weights - low) / np.abs(weights).sum() + noise
        return raw, rng.integers(0, len(self.difficulties), size=len(qualities))


@dataclass(frozen=True, kw_only=True)
class FeatureSettings(GeneratorSettings):
    """``dataset=synthetic``: ``num_clips`` clips of ``feature_dim`` features, the quality at
    ``signal`` strength along its direction, plus ``noise``.

    The hard variant's knobs (``dataset=synthetic_hard``; the defaults leave the benchmark as it
    was): phase lengths drawn with Dirichlet concentration ``phase_concentration`` (lower: lengths
    vary more from video to video), phase signatures at ``phase_signal`` strength, and a per-video
    ``nuisance`` offset (Gaussian, orthogonal to the quality direction, ``nuisance`` in norm on
    average) shared by all clips of a video."""

    num_clips: int = 20
    feature_dim: int = 64
    signal: float = 1.0
    noise: float = 0.5
    phase_concentration: float = 2.0
    phase_signal: float = 1.0
    nuisance: float = 0.0

    def __post_init__(self) -> None:
        self.check(self.num_clips, "clips")
        if not self.phase_concentration > 0:
            raise ValueError(
                f"dataset.phase_concentration={self.phase_concentration}: the Dirichlet "
                "concentration of the phase lengths must be > 0"
            )
        if self.nuisance < 0:
            raise ValueError(f"dataset.nuisance={self.nuisance}: must be >= 0")


@dataclass
class Generated:
    """A generated benchmark, train rows first, then test rows."""

    settings: GeneratorSettings
    videos: np.ndarray  # (N, T, C) float32 clip features, or (N, F, H, W, 3) uint8 frames
    phases: np.ndarray  # (N, T) or (N, F) int64: the true phase of every clip or frame
    raw: np.ndarray  # (N,) score on the training scale
    difficulty_id: np.ndarray  # (N,)

    def table(self, name: str = "synthetic", digits: int = 5) -> SampleTable:
        """Its table: one class, exemplar groups of equal difficulty."""
        s = self.settings
        return SampleTable(
            ids=[f"{name}_{i:0{digits}d}" for i in range(len(self.raw))],
            target=self.raw,
            scale=np.asarray(s.difficulties)[self.difficulty_id],
            group=self.difficulty_id,
            class_id=np.zeros(len(self.raw), dtype=np.int64),
            split=np.array(["train"] * s.num_train + ["test"] * s.num_test),
            class_names=[name],
            group_names=[difficulty_name(x) for x in s.difficulties],
        )


def phase_lengths(rng: np.random.Generator, s: FeatureSettings) -> np.ndarray:
    """Random phase durations (in clips) summing to T, each at least ``min_phase_len``."""
    spare = s.num_clips - s.num_phases * s.min_phase_len
    share = rng.dirichlet(np.full(s.num_phases, float(s.phase_concentration)))
    extra = np.floor(share * spare).astype(int)
    extra[rng.permutation(s.num_phases)[: spare - extra.sum()]] += 1
    return extra + s.min_phase_len


def generate(s: FeatureSettings) -> Generated:
    """Generate the benchmark deterministically from ``s.seed`` (see the module docstring)."""
    rng = np.random.default_rng(s.seed)
    n = s.num_train + s.num_test
    signatures = rng.standard_normal((s.num_phases, s.feature_dim))
    signatures /= np.linalg.norm(signatures, axis=1, keepdims=True)
    direction = rng.standard_normal(s.feature_dim)
    direction -= signatures.T @ np.linalg.lstsq(signatures.T, direction, rcond=None)[0]
    direction /= np.linalg.norm(direction)

    qualities = rng.uniform(0, 1, size=(n, s.num_phases))
    phases = np.stack([np.repeat(np.arange(s.num_phases), phase_lengths(rng, s)) for _ in range(n)])
    q_clip = np.take_along_axis(qualities, phases, axis=1)  # (N, T)
    features = (
        s.phase_signal * signatures[phases]
        + s.signal * (q_clip - 0.5)[..., None] * direction
        + s.noise / np.sqrt(s.feature_dim) * rng.standard_normal((n, s.num_clips, s.feature_dim))
    )
    raw, difficulty_id = s.judge(rng, qualities)
    if s.nuisance > 0:  # drawn last: the default's stream (nuisance 0) is unchanged
        offset = rng.standard_normal((n, s.feature_dim))
        offset -= np.outer(offset @ direction, direction)  # no quality along it
        features += s.nuisance / np.sqrt(s.feature_dim) * offset[:, None, :]
    return Generated(s, features.astype(np.float32), phases.astype(np.int64), raw, difficulty_id)


def export_features(data: Generated, out_dir: str | Path) -> Path:
    """Write the benchmark in the ``dataset=features`` format (``{id}.npy`` + ``annotations.csv``);
    the annotation table's path."""
    out, table = Path(out_dir), data.table()
    rows = []
    for i, vid in enumerate(table.ids):
        atomic_write(out / f"{vid}.npy", lambda f, x=data.videos[i]: np.save(f, x))
        group, scale = table.group_names[table.group[i]], f"{table.scale[i]:g}"
        rows.append((vid, f"{data.raw[i]:.6f}", table.split[i], group, scale, "synthetic"))
    write_rows(out / "annotations.csv", rows)
    return out / "annotations.csv"


class SyntheticDataModule(AQADataModule):
    """The embedded default benchmark (``dataset=synthetic``); see the module docstring.

    Args:
        **kwargs: ``FeatureSettings`` (``data_seed`` as its ``seed``), then ``AQADataModule``'s.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.settings = FeatureSettings.pop_from(kwargs)
        super().__init__(**kwargs)
        self.data: Generated | None = None

    @property
    def num_clips(self) -> int:
        return self.settings.num_clips

    def build_table(self) -> SampleTable:
        d = self.data = generate(self.settings)
        self._features = torch.from_numpy(d.videos)
        self._phases = torch.from_numpy(d.phases)
        return d.table()

    def load_video(self, row: int, view: str) -> torch.Tensor:
        return self._features[row]

    def group_option(self) -> dict:
        return difficulty_option(self.table.group_names)

    def clip_labels(self, row: int) -> torch.Tensor:
        return self._phases[row]
