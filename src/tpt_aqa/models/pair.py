"""Part-aware pair stage f_r (docs/method.md §3, paper Eq. 7).

A shared MLP on the concatenation of the two videos' aligned parts, then the mean over parts. It is
trained to predict ``s_second - s_first``; evaluation calls it with (exemplar, query).
"""

from __future__ import annotations

import torch
from torch import nn


class PairStage(nn.Module):
    """Relative representation of two videos from their parts.

    Args:
        in_dim: width of one part (D for the decoder, C for holistic pooling).
        d_model: output width D.
        dropout: dropout between the two layers (0.1 in the release).
    """

    def __init__(self, in_dim: int, d_model: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * in_dim, d_model),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(d_model, d_model),
        )
        self.out_dim = d_model

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Fuse two videos' parts.

        Args:
            first: parts of the reference video ``(B,K,D)``.
            second: parts of the compared video ``(B,K,D)``.

        Returns:
            Relative representation ``(B,D)``, mean over the K per-part outputs.
        """
        if first.shape != second.shape:
            raise ValueError(
                f"pair stage needs equal part shapes, got {first.shape} and {second.shape}"
            )
        relative = self.mlp(torch.cat([first, second], dim=-1))  # (B, K, D)
        return relative.mean(dim=1)  # (B, D)
