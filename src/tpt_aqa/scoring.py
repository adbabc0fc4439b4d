"""Group-aware regression targets: score groups (SPEC §5, CoRe's grouping as TPT trained it).

The relative score Δ of a pair is encoded as a group (which interval Δ lies in) and an offset inside
that interval. Intervals are symmetric around 0 and hold equal numbers of the training split's
within-group pair deltas. Unlike the release, Δ at or beyond the cap is clamped into the outermost
group instead of silently landing in group 0.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def pair_deltas(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Absolute score differences of all unordered pairs i < j within the same exemplar group.

    Args:
        scores: training scores ``(N,)`` on the training scale.
        groups: exemplar-group id per sample ``(N,)``.

    Returns:
        The Δ list, concatenated over groups.
    """
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups)
    out = []
    for g in np.unique(groups):
        s = scores[groups == g]
        i, j = np.triu_indices(len(s), k=1)
        out.append(np.abs(s[i] - s[j]))
    return np.concatenate(out) if out else np.zeros(0)


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


class ScoreGroups(nn.Module):
    """Encode Δ → (group, offset) and decode back; edges live in buffers, so checkpoints carry them.

    Args:
        num_groups: G, an even power of two (16 in the release).
        cap: |Δ| covered by the outermost groups (30 for MTL-AQA raw scores, 100 for 0–100 scales).
    """

    def __init__(self, num_groups: int = 16, cap: float = 30.0) -> None:
        super().__init__()
        if num_groups < 2 or num_groups & (num_groups - 1):
            raise ValueError(f"model.num_groups must be an even power of two, got {num_groups}")
        if cap <= 0:
            raise ValueError(f"score-group cap must be > 0, got {cap}; set dataset.delta_cap")
        self.num_groups = num_groups
        self.cap = float(cap)
        self.register_buffer("left", torch.zeros(num_groups, dtype=torch.float64))
        self.register_buffer("right", torch.zeros(num_groups, dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(False))

    def fit(self, deltas: np.ndarray) -> ScoreGroups:
        """Set the group edges from the training split's Δ list."""
        e = torch.as_tensor(positive_edges(deltas, self.num_groups, self.cap), dtype=torch.float64)
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
        d = delta.detach().to(torch.float64).clamp(-self.cap, self.cap)[:, None]  # (N, 1)
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
