"""Bring-your-own features (``dataset=features``): a folder of per-video clip features and a CSV.

Layout::

    root/
      annotations.csv        id,score,split[,group][,scale][,class]
      {id}.npy               float32 or float16 (float64 is cast), shape (T, C), the same T and C
                             for every video

Columns: ``score`` is on the training scale; the reported score is ``score × scale`` (``scale``
defaults to 1; MTL-AQA w/ DD stores final/difficulty with scale = difficulty). ``split`` is ``train``,
``val`` or ``test`` (without ``val`` rows a validation split is carved from ``train``). Exemplars are
drawn from the same ``group`` (default: one group). ``class`` enables per-class metrics.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpt_aqa.core.atomic import atomic_write_text
from tpt_aqa.core.cache import check_manifest
from tpt_aqa.core.errors import UserError
from tpt_aqa.data.base import SPLITS, AQADataModule, SampleTable, plain

REQUIRED = ("id", "score", "split")
log = logging.getLogger(__name__)


class FeatureDataError(UserError, ValueError):
    """A problem in a features folder, naming the file and row."""


def _index(names: list[str]) -> tuple[list[str], np.ndarray]:
    """Sorted unique names and each entry's position among them."""
    uniq, pos = np.unique(names, return_inverse=True)
    return uniq.tolist(), pos.astype(np.int64)


def read_feature_file(
    path: Path,
    num_clips: int | None = None,
    feature_dim: int | None = None,
    clips_fix: str = "",
    width_fix: str = "",
) -> tuple[np.ndarray, bool]:
    """One checked ``(T, C)`` float32/float16 clip-feature file, as training and prediction take it,
    and whether it was cast from float64; ``num_clips``/``feature_dim`` (``None``: any) are
    expected, and ``clips_fix``/``width_fix`` end the messages for a wrong T or C."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise FeatureDataError(f"{path}: not a readable .npy array ({err})") from None
    cast = arr.dtype == np.float64
    if cast:
        arr = arr.astype(np.float32)
    if arr.dtype not in (np.float32, np.float16) or arr.ndim != 2:
        raise FeatureDataError(
            f"{path}: expected a float32 or float16 array of shape (T, C), got {arr.dtype} {arr.shape}"
        )
    if feature_dim is not None and arr.shape[1] != feature_dim:
        raise FeatureDataError(f"{path}: has C={arr.shape[1]} channels, {width_fix}")
    if num_clips is not None and arr.shape[0] != num_clips:
        raise FeatureDataError(f"{path}: has T={arr.shape[0]} clips, {clips_fix}")
    if not np.isfinite(arr).all():
        raise FeatureDataError(
            f"{path}: contains NaN or infinite values; extract its features again"
        )
    return arr, cast


def read_annotations(path: Path) -> list[dict[str, str]]:
    """The checked rows of the annotation CSV (errors name the file and line)."""
    if not path.is_file():
        raise FeatureDataError(
            f"annotation table {path} not found: set dataset.annotations (a CSV with columns "
            f"{', '.join(REQUIRED)}[, group, scale, class])"
        )
    with open(path, newline="", encoding="utf-8-sig") as f:  # spreadsheets write a BOM
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise FeatureDataError(f"{path}: missing column(s) {missing}; found {columns}")
        rows, seen = [], set()
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            where = f"{path}, line {line} (id {row['id']!r})"
            if not row["id"]:
                raise FeatureDataError(f"{path}, line {line}: empty id")
            if row["id"] in seen:
                raise FeatureDataError(f"{where}: duplicated id")
            seen.add(row["id"])
            if row["split"] not in SPLITS:
                raise FeatureDataError(
                    f"{where}: unknown split {row['split']!r}, expected one of {SPLITS}"
                )
            for col in ("score", "scale") if row.get("scale") else ("score",):
                try:
                    finite = math.isfinite(float(row[col]))
                except ValueError:
                    finite = False
                if not finite:
                    raise FeatureDataError(f"{where}: {col} {row[col]!r} is not a finite number")
            rows.append(row)
    if not rows:
        raise FeatureDataError(f"{path}: no samples")
    return rows


class FeaturesDataModule(AQADataModule):
    """Clip features from ``{id}.npy`` files plus an annotation CSV (see the module docstring).

    Args: the keys of ``conf/dataset/features.yaml``, documented there.
    """

    def __init__(
        self,
        root: str,
        annotations: str = "annotations.csv",
        feature_dim: int = 1024,
        num_clips: int | None = None,
        expect: dict[str, Any] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        self.annotations = (
            Path(annotations) if Path(annotations).is_absolute() else self.root / annotations
        )
        self.feature_dim = feature_dim
        self._num_clips = num_clips
        self.expect = dict(plain(expect)) if expect else None
        self._features: list[torch.Tensor] = []

    @property
    def num_clips(self) -> int:
        if self._num_clips is None:
            self.setup()
        return int(self._num_clips)

    def build_table(self) -> SampleTable:
        if not self.root.is_dir():
            raise FeatureDataError(
                f"dataset.root={self.root} is not a folder: point it at the folder of {{id}}.npy files"
            )
        if self.expect:
            check_manifest(self.root, self.expect)
        rows = read_annotations(self.annotations)
        features = []
        cast_files = 0
        for row in rows:
            path = self.root / f"{row['id']}.npy"
            if not path.is_file():
                raise FeatureDataError(
                    f"{path} not found (listed in {self.annotations}); extract its features or drop the row"
                )
            arr, cast = read_feature_file(
                path,
                num_clips=self._num_clips,
                feature_dim=self.feature_dim,
                clips_fix=f"expected {self._num_clips} like the other videos (or dataset.num_clips)",
                width_fix=f"dataset.feature_dim={self.feature_dim}; set dataset.feature_dim to "
                "the features' width",
            )
            if self._num_clips is None:
                self._num_clips = arr.shape[0]
            cast_files += cast
            features.append(torch.from_numpy(arr))
        if cast_files:
            log.info(
                "%d of %d feature files in %s are float64: cast to float32",
                cast_files,
                len(rows),
                self.root,
            )
        self._features = features
        classes, class_id = _index([r.get("class") or "all" for r in rows])
        groups, group = _index([r.get("group") or "all" for r in rows])
        return SampleTable(
            ids=[r["id"] for r in rows],
            target=np.array([float(r["score"]) for r in rows]),
            scale=np.array([float(r["scale"]) if r.get("scale") else 1.0 for r in rows]),
            group=group,
            class_id=class_id,
            split=np.array([r["split"] for r in rows]),
            class_names=classes,
            group_names=groups,
        )

    refuse_lone_groups = True

    def group_fix(self) -> str:
        return (
            f"merge groups in the group column of {self.annotations} (empty cells make one "
            "group) or add training rows to them"
        )

    def load_video(self, row: int, view: str) -> torch.Tensor:
        return self._features[row].float()


COLUMNS = ("id", "score", "split", "group", "scale", "class")


def write_rows(path: Path, rows: list[tuple]) -> None:
    """An annotation CSV of the features format (``COLUMNS``), written atomically."""
    buf = io.StringIO()
    csv.writer(buf).writerows([COLUMNS, *rows])
    atomic_write_text(path, buf.getvalue())


def write_annotations(path: Path, dm) -> None:
    """``annotations.csv`` of the features format for every video of a datamodule's table."""
    t = dm.table
    group, cls = [t.group_names[g] for g in t.group], [t.class_names[c] for c in t.class_id]
    target, scale = [repr(float(v)) for v in t.target], [repr(float(v)) for v in t.scale]
    write_rows(path, list(zip(t.ids, target, dm.source_split, group, scale, cls, strict=True)))
