"""Group-aware regression targets: score groups (paper §3.3, CoRe's grouping as TPT trained it).

The relative score Δ of a pair is encoded as a group (which interval Δ lies in) and an offset inside
that interval. Intervals are symmetric around 0 and hold equal numbers of the training split's
within-group pair deltas. Unlike the release, Δ at or beyond the cap is clamped into the outermost
group instead of silently landing in group 0.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from tpt_aqa.core.errors import ConfigError

log = logging.getLogger(__name__)


def positive_edges(deltas: np.ndarray, num_groups: int, cap: float) -> np.ndarray:
    """Edges of the positive half of the groups, equal-count over the sorted Δ list.

    Args:
        deltas: the Δ list (non-negative).
        num_groups: G, even.
        cap: largest |Δ| the groups cover (the last right edge).

    Returns:
        ``(G/2 + 1,)`` non-decreasing edges, first 0, last ``cap``.
    """
    half = num_groups // 2
    d = np.sort(np.asarray(deltas, dtype=np.float64))
    n = len(d)
    if n == 0:
        raise ValueError("cannot fit score groups: the training split has no within-group pairs")
    edges = np.array([d[int(np.floor(i / half * (n - 1)))] for i in range(half + 1)])
    edges[0], edges[-1] = 0.0, cap
    return np.clip(edges, 0.0, cap)


def check_cap(deltas: np.ndarray, cap: float) -> int:
    """Check the score-group cap against the training Δ list; returns how many Δ exceed it.

    The pairs beyond the cap are clamped into the outermost group (reported as an info line); a cap
    below most of them is a wrong cap (e.g. the raw-score cap 30 on final scores, which span
    0–104.5), refused with the smallest value that covers every pair.

    Raises:
        ConfigError: ``cap`` is not positive, or more than half of the Δ list exceeds it.
    """
    deltas = np.asarray(deltas, dtype=np.float64)
    covering = math.ceil(float(deltas.max())) if len(deltas) else None
    fix = (
        f"pass dataset.delta_cap={covering:g}" if covering else "pass a positive dataset.delta_cap"
    )
    if not cap > 0:
        raise ConfigError(f"dataset.delta_cap={cap}: the score-group cap must be > 0; {fix}")
    beyond = int((deltas > cap).sum())
    if beyond * 2 > len(deltas):
        raise ConfigError(
            f"dataset.delta_cap={cap:g} is below most score differences between training videos of "
            f"one exemplar group ({beyond} of {len(deltas)} pairs exceed it, the largest "
            f"{deltas.max():.4g}); {fix} (the largest difference, rounded up)"
        )
    if beyond:
        log.info(
            "score groups: %d of %d within-group training pairs differ by more than "
            "dataset.delta_cap=%g (largest %.4g); they are clamped into the outermost group",
            beyond,
            len(deltas),
            cap,
            deltas.max(),
        )
    return beyond


class ScoreGroups(nn.Module):
    """Encode Δ → (group, offset) and decode back; edges live in buffers, so checkpoints carry them.

    The cap (the largest |Δ| the groups cover) is the training data's, given to :meth:`fit`
    (``dataset.delta_cap``, defaulted per benchmark by its datamodule); after fitting it is the
    outermost edge.

    Args:
        num_groups: G, an even power of two (16 in the release).
    """

    def __init__(self, num_groups: int = 16) -> None:
        super().__init__()
        if num_groups < 2 or num_groups & (num_groups - 1):
            raise ValueError(f"model.num_groups must be an even power of two, got {num_groups}")
        self.num_groups = num_groups
        self.register_buffer("left", torch.zeros(num_groups, dtype=torch.float64))
        self.register_buffer("right", torch.zeros(num_groups, dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(False))

    @property
    def cap(self) -> float:
        """The largest |Δ| the fitted groups cover (their outermost edge)."""
        self._check()
        return float(self.right[-1])

    def fit(self, deltas: np.ndarray, cap: float) -> ScoreGroups:
        """Set the group edges from the training split's Δ list.

        A Δ beyond the cap is clamped into the outermost group when encoded; real splits have a
        few (MTL-AQA w/o DD: a failed dive scored 0 against finals above 100), which is reported as
        an info line. A cap that is clearly wrong (not positive, or below most of the Δ list) is
        refused with a value that works.

        Args:
            deltas: the Δ list (``tpt_aqa.data.labels.pair_deltas`` of the training split).
            cap: largest |Δ| the groups cover (``dataset.delta_cap``).

        Raises:
            ConfigError: for a cap that is not positive or below most within-group differences.
        """
        deltas = np.asarray(deltas, dtype=np.float64)
        check_cap(deltas, cap)
        e = torch.as_tensor(positive_edges(deltas, self.num_groups, cap), dtype=torch.float64)
        left = torch.cat([-e[1:].flip(0), e[:-1]])  # (G,)
        right = torch.cat([-e[:-1].flip(0), e[1:]])  # (G,)
        self.left.copy_(left)
        self.right.copy_(right)
        self.fitted.fill_(True)
        return self

    def _check(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(
                "ScoreGroups used before fit(): fit them on the training split first"
            )

    def encode(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group label and offset target of each relative score.

        Args:
            delta: relative scores ``(N,)``.

        Returns:
            Labels ``(N,)`` long and offsets ``(N,)`` float in [0, 1].
        """
        self._check()
        half = self.num_groups // 2
        cap = self.right[-1]  # a tensor: no device sync in the training step
        d = torch.clamp(delta.detach().to(torch.float64), -cap, cap)[:, None]  # (N, 1)
        idx = torch.arange(self.num_groups, device=d.device)
        left, right = self.left[None, :], self.right[None, :]  # (1, G)
        pos = (d >= 0) & (idx >= half) & (left <= d) & (d < right)
        neg = (d < 0) & (idx < half) & (left < d) & (d <= right)
        match = pos | neg  # (N, G), at most one True per row
        label = match.to(torch.int64).argmax(dim=1)
        # Δ = ±cap matches no half-open interval: clamp into the outermost group.
        none = ~match.any(dim=1)
        label = torch.where(none & (d[:, 0] >= 0), self.num_groups - 1, label)
        label = torch.where(none & (d[:, 0] < 0), 0, label)
        lo, hi = self.left[label], self.right[label]
        width = hi - lo
        offset = torch.where(width > 0, (d[:, 0] - lo) / width.clamp_min(1e-12), d[:, 0] - lo)
        return label, offset.clamp(0.0, 1.0).to(
            delta.dtype if delta.is_floating_point() else torch.float32
        )

    def decode(self, logits: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Relative score from the predicted group and its offset.

        Args:
            logits: group logits ``(N,G)``.
            offsets: predicted offsets ``(N,G)``.

        Returns:
            Δ̂ ``(N,)`` as float32.
        """
        self._check()
        label = logits.argmax(dim=1)
        off = offsets.gather(1, label[:, None])[:, 0].to(torch.float64)
        lo, hi = self.left[label], self.right[label]
        width = hi - lo
        return torch.where(width > 0, lo + width * off, lo + off).float()
