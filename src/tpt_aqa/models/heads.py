"""Group-aware regression heads (docs/method.md §3, paper §3.3): two two-layer MLPs, no regression tree."""

from __future__ import annotations

import torch
from torch import nn


class GroupHeads(nn.Module):
    """Classification over the G score groups and a sigmoid offset inside each group.

    Args:
        in_dim: width of the fused pair representation (D).
        num_groups: number of score groups G.
        hidden_dim: hidden width of both MLPs (128 in the release).
    """

    def __init__(self, in_dim: int, num_groups: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.cls = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, num_groups)
        )
        self.reg = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, num_groups),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score a fused pair representation.

        Args:
            x: pair representation ``(B,D)``.

        Returns:
            Group logits ``(B,G)`` and in-group offsets in (0, 1) ``(B,G)``.
        """
        return self.cls(x), self.reg(x)
