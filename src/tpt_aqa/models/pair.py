"""Part-aware pair stage f_r (docs/method.md §3, paper Eq. 7).

A shared MLP on the concatenation of the two videos' aligned parts, then the mean over parts. It is
trained to predict ``s_second - s_first``; evaluation calls it with (exemplar, query).

The first layer acts on a concatenation, so it splits into one term per video:
W·[a; b] + c = W_a·a + (W_b·b + c). Training pairs every video twice (both orders) and gains
nothing from the split, so ``forward`` keeps the concatenation the release computed. Evaluation
pairs each query with M exemplars: ``forward_each`` projects the query once instead of M times and
never builds the concatenated (…, K, 2D) tensor.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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

    def forward_each(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """``forward`` for every pair of a broadcast, the first layer split per video (module
        docstring); equal to ``forward`` on the broadcast pairs up to float rounding.

        Args:
            first: parts ``(...,K,D)``, e.g. each query's M exemplars ``(B,M,K,D)``.
            second: parts whose shape broadcasts against ``first``'s, e.g. the queries ``(B,1,K,D)``.

        Returns:
            Relative representations ``(...,D)`` over the broadcast shape, mean over the K parts.
        """
        layer, d = self.mlp[0], first.shape[-1]
        if second.shape[-1] != d or layer.in_features != 2 * d:
            raise ValueError(
                f"pair stage needs parts of width {layer.in_features // 2}, got {first.shape} and "
                f"{second.shape}"
            )
        hidden = F.linear(first, layer.weight[:, :d]) + F.linear(
            second, layer.weight[:, d:], layer.bias
        )  # (..., K, D)
        return self.mlp[1:](hidden).mean(dim=-2)  # ReLU, dropout, second layer; mean over parts
