"""Temporal parsing decoder (paper §3.2, docs/method.md §3).

K learnable queries decode the T clip features into K temporally ordered part representations. How
this differs from the paper's description and from a DETR decoder, following the authors' released
training code (the default) with the paper's variants as switches:

* Decoder only, no encoder, no positional encoding (``pe_memory``/``pe_query`` switch them on, Tab. 5c).
* Cross-attention is single-head with a learnable temperature per layer (initialised to 0.07, not
  constrained) and the logits are divided by D itself (``scale="sqrt_dim"`` gives the usual √D).
* Layer order is cross-attention → FFN → self-attention, with self-attention in the first layer only
  (``self_attn_layers="all"`` puts it in every layer, ``detr_order`` uses SA → CA → FFN).
* The state p starts at zeros; the query of the attention is a projection of p + q.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_encoding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding of (possibly fractional) positions.

    Args:
        positions: positions ``(N,)``.
        dim: encoding width (even or odd).

    Returns:
        Encodings ``(N, dim)``: sin on even channels, cos on odd channels.
    """
    half = (dim + 1) // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) * 2 / dim)
    angles = positions.float()[:, None] * freqs[None, :]  # (N, half)
    enc = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (N, 2*half)
    return enc[:, :dim]


class DecoderLayer(nn.Module):
    """One decoder layer: cross-attention on clips, FFN, optional self-attention over parts.

    Args:
        in_dim: clip feature width C.
        d_model: part width D.
        ffn_dim: hidden width of the FFN.
        dropout: dropout on every residual branch and inside the FFN.
        num_heads: heads of the self-attention over parts.
        self_attn: whether this layer has self-attention.
        detr_order: SA → CA → FFN instead of the release's CA → FFN → SA.
        scale: ``"dim"`` divides logits by D (release), ``"sqrt_dim"`` by √D (standard attention).
        temperature_init: initial value of the learnable temperature τ.
    """

    def __init__(
        self,
        in_dim: int,
        d_model: int,
        ffn_dim: int,
        dropout: float,
        num_heads: int,
        self_attn: bool,
        detr_order: bool,
        scale: str,
        temperature_init: float,
    ) -> None:
        super().__init__()
        if scale not in ("dim", "sqrt_dim"):
            raise ValueError(f"model.parser.scale must be 'dim' or 'sqrt_dim', got {scale!r}")
        self.key_proj = nn.Linear(in_dim, d_model)
        self.value_proj = nn.Linear(in_dim, d_model)
        self.query_proj = nn.Linear(d_model, d_model)
        self.temperature = nn.Parameter(torch.tensor(float(temperature_init)))
        self.logit_divisor = float(d_model) if scale == "dim" else math.sqrt(d_model)
        self.cross_dropout = nn.Dropout(dropout)
        self.cross_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, d_model),
        )
        self.ffn_dropout = nn.Dropout(dropout)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.detr_order = detr_order
        if self_attn:
            self.self_attn = nn.MultiheadAttention(
                d_model, num_heads, dropout=dropout, batch_first=True
            )
            self.self_dropout = nn.Dropout(dropout)
            self.self_norm = nn.LayerNorm(d_model)
        else:
            self.self_attn = None

    def _cross(
        self,
        parts: torch.Tensor,
        queries: torch.Tensor,
        keys_in: torch.Tensor,
        memory: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Same result as projecting every clip to keys and values (key·query, Σ_t α_t·value), with
        # the linear maps moved to the K query side: K ≪ T, so this costs about T/K times fewer
        # FLOPs. key_t·q = m_t·(W_kᵀq) + b_k·q, and Σ_t α_t(W_v m_t + b_v) = W_v(Σ_t α_t m_t) + b_v
        # because the weights α sum to 1 over t.
        query = self.query_proj(parts + queries)  # (B, K, D)
        query_in = query @ self.key_proj.weight  # (B, K, C)
        logits = torch.einsum("btc,bkc->btk", keys_in, query_in)
        logits = logits + (query @ self.key_proj.bias)[:, None, :]  # (B, T, K)
        logits = logits / self.logit_divisor / self.temperature
        attn = logits.softmax(dim=1)  # (B, T, K): each query's weights over clips sum to 1
        pooled = torch.einsum("btk,btc->bkc", attn, memory)  # (B, K, C)
        gathered = self.value_proj(pooled)  # (B, K, D)
        return self.cross_norm(parts + self.cross_dropout(gathered)), attn

    def _self(self, parts: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        if self.self_attn is None:
            return parts
        qk = parts + queries
        out, _ = self.self_attn(qk, qk, parts, need_weights=False)
        return self.self_norm(parts + self.self_dropout(out))

    def forward(
        self,
        parts: torch.Tensor,
        queries: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the parts.

        Args:
            parts: decoder state p ``(B,K,D)``.
            queries: query embeddings q ``(B,K,D)``.
            memory: clip features ``(B,T,C)``.
            memory_pos: positional encoding added to the keys ``(1,T,C)``, or ``None``.

        Returns:
            Updated parts ``(B,K,D)`` and the post-softmax cross-attention ``(B,T,K)``.
        """
        if self.detr_order:
            parts = self._self(parts, queries)
        keys_in = memory if memory_pos is None else memory + memory_pos
        parts, attn = self._cross(parts, queries, keys_in, memory)
        parts = self.ffn_norm(parts + self.ffn_dropout(self.ffn(parts)))
        if not self.detr_order:
            parts = self._self(parts, queries)
        return parts, attn


class TemporalParsingDecoder(nn.Module):
    """Decode clip features into K temporally ordered parts with learnable queries.

    Args:
        in_dim: clip feature width C (the composer passes ``encoder.out_dim``).
        d_model: part width D.
        num_queries: number of queries K.
        num_layers: number of decoder layers Y.
        ffn_dim: FFN hidden width.
        dropout: dropout rate.
        num_heads: heads of the self-attention over parts.
        self_attn_layers: ``"first"`` (release) or ``"all"`` (paper text) or ``"none"``.
        detr_order: use the DETR layer order SA → CA → FFN.
        scale: ``"dim"`` (release) or ``"sqrt_dim"``.
        temperature_init: initial temperature τ of every layer.
        pe_memory: add a sinusoidal encoding of the clip index to the keys.
        pe_query: add a sinusoidal encoding of ⌊T/K⌋·k to query k (Tab. 5c).
    """

    def __init__(
        self,
        in_dim: int,
        d_model: int = 512,
        num_queries: int = 5,
        num_layers: int = 2,
        ffn_dim: int = 512,
        dropout: float = 0.1,
        num_heads: int = 8,
        self_attn_layers: str = "first",
        detr_order: bool = False,
        scale: str = "dim",
        temperature_init: float = 0.07,
        pe_memory: bool = False,
        pe_query: bool = False,
    ) -> None:
        super().__init__()
        if self_attn_layers not in ("first", "all", "none"):
            raise ValueError(
                f"model.parser.self_attn_layers must be 'first', 'all' or 'none', got {self_attn_layers!r}"
            )
        if num_queries < 1 or num_layers < 1:
            raise ValueError(
                f"need num_queries >= 1 and num_layers >= 1, got {num_queries}, {num_layers}"
            )
        self.in_dim = in_dim
        self.out_dim = d_model
        self.num_queries = num_queries
        self.num_layers = num_layers
        self.pe_memory = pe_memory
        self.pe_query = pe_query
        self.query_embed = nn.Parameter(torch.empty(num_queries, d_model))
        self.layers = nn.ModuleList(
            DecoderLayer(
                in_dim=in_dim,
                d_model=d_model,
                ffn_dim=ffn_dim,
                dropout=dropout,
                num_heads=num_heads,
                self_attn=self_attn_layers == "all" or (self_attn_layers == "first" and i == 0),
                detr_order=detr_order,
                scale=scale,
                temperature_init=temperature_init,
            )
            for i in range(num_layers)
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Parse a batch of clip features.

        Args:
            memory: clip features ``(B,T,C)``.

        Returns:
            Parts ``(B,K,D)`` and the cross-attention maps of every layer ``(B,Y,T,K)``.
        """
        b, t, _ = memory.shape
        queries = self.query_embed
        if self.pe_query:
            positions = torch.arange(self.num_queries, device=memory.device) * (
                t // self.num_queries
            )
            queries = queries + sinusoidal_encoding(positions, queries.shape[-1]).to(queries)
        queries = queries.unsqueeze(0).expand(b, -1, -1)  # (B, K, D)
        memory_pos = None
        if self.pe_memory:
            memory_pos = sinusoidal_encoding(
                torch.arange(t, device=memory.device), memory.shape[-1]
            )
            memory_pos = memory_pos.to(memory).unsqueeze(0)  # (1, T, C)
        parts = torch.zeros_like(queries)
        maps = []
        for layer in self.layers:
            parts, attn = layer(parts, queries, memory, memory_pos)
            maps.append(attn)
        return parts, torch.stack(maps, dim=1)  # (B, K, D), (B, Y, T, K)
