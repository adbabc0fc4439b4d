"""Pooling parsers: the ablations of paper Tab. 4–5 that replace the temporal parsing decoder.

Every parser maps clip features ``(B,T,C)`` to parts ``(B,K,out_dim)`` and, when it has one, its
attention maps ``(B,Y,T,K)`` (``None`` here, so the rank and sparsity losses do not apply).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MeanPoolParser(nn.Module):
    """Holistic baseline (paper Tab. 4, first row): the mean of the clip features is one part.

    The pooled feature is projected to D by a linear layer; followed by the linear first layer of the
    pair stage this is as expressive as pairing the raw pooled features.

    Args:
        in_dim: clip feature width C.
        d_model: part width D.
        num_queries: must be 1 (a holistic representation is a single part).
    """

    def __init__(self, in_dim: int, d_model: int, num_queries: int = 1) -> None:
        super().__init__()
        if num_queries != 1:
            raise ValueError(
                f"holistic mean pooling makes exactly one part, got model.num_queries={num_queries}; "
                "use ablation=baseline_pool (it sets model.num_queries=1)"
            )
        self.proj = nn.Linear(in_dim, d_model)
        self.out_dim = d_model
        self.num_queries = 1

    def forward(self, memory: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Pool clip features ``(B,T,C)`` into one part ``(B,1,D)``."""
        return self.proj(memory.mean(dim=1, keepdim=True)), None  # (B, 1, D)


class AdaptivePoolParser(nn.Module):
    """Adaptive average pooling of the T clips into K parts (paper Tab. 5a).

    Args:
        in_dim: clip feature width C.
        d_model: part width D.
        num_queries: number of parts K.
    """

    def __init__(self, in_dim: int, d_model: int, num_queries: int = 5) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, d_model)
        self.out_dim = d_model
        self.num_queries = num_queries

    def forward(self, memory: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Pool clip features ``(B,T,C)`` into K contiguous parts ``(B,K,D)``."""
        pooled = F.adaptive_avg_pool1d(memory.transpose(1, 2), self.num_queries)  # (B, C, K)
        return self.proj(pooled.transpose(1, 2)), None  # (B, K, D)


class TemporalConvParser(nn.Module):
    """Temporal convolution with kernel = stride = ⌊T/K⌋ into K parts (paper Tab. 5a).

    The kernel depends on T, so the number of clips is a constructor argument and checked on every
    batch; with T not a multiple of K the last clips are left out, as a strided convolution does.

    Args:
        in_dim: clip feature width C.
        d_model: part width D.
        num_queries: number of parts K.
        num_clips: T, the clips per video of the data.
    """

    def __init__(
        self, in_dim: int, d_model: int, num_queries: int = 5, num_clips: int = 20
    ) -> None:
        super().__init__()
        if not 1 <= num_queries <= num_clips:
            raise ValueError(
                f"temporal convolution needs 1 <= model.num_queries <= model.parser.num_clips, "
                f"got {num_queries} and {num_clips}"
            )
        step = num_clips // num_queries
        self.conv = nn.Conv1d(in_dim, d_model, kernel_size=step, stride=step)
        self.out_dim = d_model
        self.num_queries = num_queries
        self.num_clips = num_clips

    def forward(self, memory: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Convolve clip features ``(B,T,C)`` into K parts ``(B,K,D)``."""
        if memory.shape[1] != self.num_clips:
            raise ValueError(
                f"temporal convolution was built for {self.num_clips} clips, got {memory.shape[1]}; "
                "set model.parser.num_clips to the data's clips per video"
            )
        parts = self.conv(memory.transpose(1, 2)).transpose(1, 2)  # (B, T // step, D)
        return parts[:, : self.num_queries], None  # (B, K, D)
