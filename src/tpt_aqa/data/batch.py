"""Typed batches. Per-sample scalars (score, scale, exemplar group, class) travel with the videos, so
model and evaluation code never branch on the dataset."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch


class _Tensors:
    """Every tensor field, nested batches included, moved or pinned in one call. The DataLoader's
    ``pin_memory`` and Lightning's device transfer call these methods; a plain dataclass would not
    be pinned at all (the loader returns what it cannot walk unchanged) and would be deep-copied
    field by field on every transfer."""

    def _map(self, fn):
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(
            self, **{k: v._map(fn) if isinstance(v, _Tensors) else fn(v) for k, v in values.items()}
        )

    def to(self, device: torch.device | str):
        """On ``device``; asynchronous into CUDA (from pinned memory the copy overlaps compute)."""
        non_blocking = torch.device(device).type == "cuda"
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        return self._map(torch.Tensor.pin_memory)


@dataclass
class Videos(_Tensors):
    """A batch of videos and their annotations.

    Attributes:
        video: clip features ``(B,T,C)`` or clips ``(B,T,3,L,H,W)``.
        target: score on the training scale ``(B,)`` (e.g. MTL-AQA w/ DD: final score / difficulty).
        scale: multiplier from the training scale to the reported score ``(B,)`` (difficulty, or 1).
        group: exemplar group id ``(B,)``: exemplars are drawn from the same group.
        class_id: class id for per-class metrics ``(B,)``.
        index: row of the sample in the datamodule's table ``(B,)``.
        clip_labels: known temporal phase of every clip ``(B,T)``, ``-1`` where unknown.
    """

    video: torch.Tensor
    target: torch.Tensor
    scale: torch.Tensor
    group: torch.Tensor
    class_id: torch.Tensor
    index: torch.Tensor
    clip_labels: torch.Tensor

    def __len__(self) -> int:
        return self.index.shape[0]


@dataclass
class PairBatch(_Tensors):
    """Training batch: each query with one exemplar of its exemplar group."""

    query: Videos
    exemplar: Videos


@dataclass
class EvalBatch(_Tensors):
    """Evaluation batch: queries with their exemplars' table rows ``(B,M)`` (``-1``: padding) and
    scores on the training scale ``(B,M)`` (0 for padding)."""

    query: Videos
    exemplar_index: torch.Tensor
    exemplar_target: torch.Tensor

    def __len__(self) -> int:
        return len(self.query)


def collate_videos(samples: list[dict[str, Any]]) -> Videos:
    """Stack per-sample dicts into ``Videos``."""
    return Videos(
        video=torch.stack([s["video"] for s in samples]),
        target=torch.tensor([s["target"] for s in samples], dtype=torch.float32),
        scale=torch.tensor([s["scale"] for s in samples], dtype=torch.float32),
        group=torch.tensor([s["group"] for s in samples], dtype=torch.long),
        class_id=torch.tensor([s["class_id"] for s in samples], dtype=torch.long),
        index=torch.tensor([s["index"] for s in samples], dtype=torch.long),
        clip_labels=torch.stack([s["clip_labels"] for s in samples]),
    )


def collate_pairs(samples: list[tuple[dict[str, Any], dict[str, Any]]]) -> PairBatch:
    """Collate (query, exemplar) sample pairs."""
    return PairBatch(
        query=collate_videos([q for q, _ in samples]),
        exemplar=collate_videos([e for _, e in samples]),
    )


def collate_eval(samples: list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]]) -> EvalBatch:
    """Collate (query, exemplar rows, exemplar targets) triples."""
    return EvalBatch(
        query=collate_videos([q for q, _, _ in samples]),
        exemplar_index=torch.stack([i for _, i, _ in samples]),
        exemplar_target=torch.stack([t for _, _, t in samples]),
    )
