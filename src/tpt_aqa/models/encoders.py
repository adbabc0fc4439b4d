"""Encoders: turn a video into clip features ``(B,T,C)``.

``PrecomputedEncoder`` is the identity on cached clip features (the ``dataset=features`` format and
the synthetic benchmark). The I3D backbone of docs/method.md §9 plugs in behind the same contract: a module with
an ``out_dim`` attribute whose ``forward`` maps a batch of videos to ``(B,T,out_dim)``.
"""

from __future__ import annotations

import torch
from torch import nn


class PrecomputedEncoder(nn.Module):
    """Identity encoder for clip features that were computed ahead of time.

    Args:
        out_dim: width C of the stored clip features; checked on every batch.
    """

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"model.encoder.out_dim must be >= 1, got {out_dim}")
        self.out_dim = out_dim

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """Check and pass through clip features.

        Args:
            videos: clip features ``(B,T,C)``.

        Returns:
            The same features ``(B,T,C)`` as float.
        """
        if videos.dim() != 3 or videos.shape[-1] != self.out_dim:
            raise ValueError(
                f"precomputed encoder expects clip features (B, T, {self.out_dim}), got "
                f"{tuple(videos.shape)}; set model.encoder.out_dim to the features' width"
            )
        return videos.float()
