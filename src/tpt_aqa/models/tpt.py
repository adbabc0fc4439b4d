"""The TPT composer: encoder → parser → pair stage → group heads (paper Fig. 2, docs/method.md §2).

Encoder and parser run per video; only the pair stage and the heads see two videos. That split is
what lets evaluation encode every video once and pair cached parts (``encode`` then ``compare``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from tpt_aqa.models.speed import compile_with_fallback

# The optimizer's parameter groups, each with its learning rate (optim.lr.<name>; paper §4.1).
PARAM_GROUPS = ("backbone", "body", "heads")


@dataclass
class Parsed:
    """Per-video representation.

    Attributes:
        parts: part representations ``(B,K,D)``.
        attn: cross-attention maps of every decoder layer ``(B,Y,T,K)``, or ``None`` for pooling parsers.
    """

    parts: torch.Tensor
    attn: torch.Tensor | None


@dataclass
class TPTOutput:
    """Training output for a batch of (query, exemplar) pairs, both pair orders stacked.

    The first B rows are f(exemplar, query) → s_query − s_exemplar, the last B rows
    f(query, exemplar) → s_exemplar − s_query.

    Attributes:
        logits: group logits ``(2B,G)``.
        offsets: in-group offsets in (0, 1) ``(2B,G)``.
        attn_query: the query videos' attention maps ``(B,Y,T,K)`` for the attention losses, or
            ``None`` (pooling parsers, and parsers whose ``attention_losses`` is false).
        attn_exemplar: the exemplars' attention maps ``(B,Y,T,K)`` or ``None``.
    """

    logits: torch.Tensor
    offsets: torch.Tensor
    attn_query: torch.Tensor | None
    attn_exemplar: torch.Tensor | None


class TPT(nn.Module):
    """Temporal Parsing Transformer with contrastive group-aware regression.

    Sizes flow from the encoder: the parser is built for ``encoder.out_dim`` inputs, the pair stage for
    the parser's ``out_dim``.

    Args:
        encoder: module mapping videos to clip features ``(B,T,C)``, with an ``out_dim`` attribute.
        parser: factory ``(in_dim, d_model, num_queries) -> module`` returning parts and attention.
        pair_stage: factory ``(in_dim, d_model) -> module`` fusing two videos' parts into ``(B,D)``.
        heads: factory ``(in_dim, num_groups) -> module`` returning logits and offsets.
        d_model: model width D.
        num_queries: number of parts K.
        num_groups: number of score groups G.
        pool_parts: pool the K parts of each video into one before pairing (Tab. 5d,
            "part-enhanced holistic").
        compile_encoder: run the encoder through ``torch.compile`` (eager again, with one warning,
            if compiling fails; ``models.speed``).
        compile_decoder: the same for the per-pair path after the encoder: parser, pair stage
            and heads (``compare`` in training, ``compare_each`` in evaluation).
    """

    def __init__(
        self,
        encoder: nn.Module,
        parser: Callable[..., nn.Module],
        pair_stage: Callable[..., nn.Module],
        heads: Callable[..., nn.Module],
        d_model: int = 512,
        num_queries: int = 5,
        num_groups: int = 16,
        pool_parts: bool = False,
        compile_encoder: bool = False,
        compile_decoder: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.parser = parser(in_dim=encoder.out_dim, d_model=d_model, num_queries=num_queries)
        self.pair_stage = pair_stage(in_dim=self.parser.out_dim, d_model=d_model)
        self.heads = heads(in_dim=self.pair_stage.out_dim, num_groups=num_groups)
        self.num_queries = num_queries
        self.num_groups = num_groups
        self.pool_parts = pool_parts
        said: set[str] = set()  # the first compiled call of each key says it is compiling
        if compile_encoder:
            compile_with_fallback(self.encoder, "model.compile_encoder", said)
        if compile_decoder:
            compile_with_fallback(self.parser, "model.compile_decoder", said)
            # an instance attribute: the parameters and state_dict keys stay where they are
            self.compare = compile_with_fallback(self.compare, "model.compile_decoder", said)
            self.compare_each = compile_with_fallback(
                self.compare_each, "model.compile_decoder", said
            )

    def encode(self, videos: torch.Tensor) -> Parsed:
        """Encode and parse videos independently of each other.

        Args:
            videos: clip features ``(B,T,C)`` or clips ``(B,T,3,L,H,W)``, as the encoder takes.

        Returns:
            ``Parsed`` with parts ``(B,K,D)`` and attention ``(B,Y,T,K)`` (or ``None``).
        """
        parts, attn = self.parser(self.encoder(videos))
        return Parsed(parts=parts, attn=attn)

    def compare(
        self, first: torch.Tensor, second: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict the relative score s_second − s_first as group logits and offsets.

        Args:
            first: parts of the reference videos ``(B,K,D)`` (the exemplars at evaluation).
            second: parts of the compared videos ``(B,K,D)`` (the queries at evaluation).

        Returns:
            Group logits ``(B,G)`` and offsets ``(B,G)``.
        """
        if self.pool_parts:
            first, second = first.mean(1, keepdim=True), second.mean(1, keepdim=True)  # (B, 1, D)
        return self.heads(self.pair_stage(first, second))

    def compare_each(
        self, exemplars: torch.Tensor, queries: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``compare`` of every query with each of its exemplars, each video projected once
        (``PairStage.forward_each``): what evaluation scores with.

        Args:
            exemplars: parts of each query's M exemplars ``(B,M,K,D)``.
            queries: parts of the queries ``(B,K,D)``.

        Returns:
            Group logits ``(B,M,G)`` and offsets ``(B,M,G)``: s_query − s_exemplar per pair.
        """
        queries = queries.unsqueeze(1)  # (B, 1, K, D): broadcast over the M exemplars
        if self.pool_parts:
            exemplars, queries = exemplars.mean(-2, keepdim=True), queries.mean(-2, keepdim=True)
        return self.heads(self.pair_stage.forward_each(exemplars, queries))

    def forward(self, query: torch.Tensor, exemplar: torch.Tensor) -> TPTOutput:
        """Score training pairs in both orders; query and exemplar pass the encoder together.

        Args:
            query: query videos ``(B,T,...)``.
            exemplar: exemplar videos, same shape as ``query``.

        Returns:
            ``TPTOutput`` with both pair orders stacked along the batch.
        """
        b = query.shape[0]
        parsed = self.encode(torch.cat([query, exemplar], dim=0))  # parts (2B, K, D)
        q_parts, e_parts = parsed.parts[:b], parsed.parts[b:]
        logits, offsets = self.compare(
            torch.cat([e_parts, q_parts], dim=0), torch.cat([q_parts, e_parts], dim=0)
        )  # (2B, G) each
        # a parser may keep its maps out of the rank and sparsity losses (models.adaptive): the
        # maps still reach evaluation through ``encode``
        attn = parsed.attn if getattr(self.parser, "attention_losses", True) else None
        return TPTOutput(
            logits=logits,
            offsets=offsets,
            attn_query=None if attn is None else attn[:b],
            attn_exemplar=None if attn is None else attn[b:],
        )

    def param_groups(self) -> Iterator[tuple[str, list[nn.Parameter]]]:
        """Yield the optimizer groups of docs/method.md §6: backbone, body (parser + pair stage), heads.

        Parameters with ``requires_grad=False`` and the encoder's ``unused_parameters()`` (e.g. the
        I3D logits layer) are left out, so DDP needs no ``find_unused_parameters``.
        """
        unused = {id(p) for p in getattr(self.encoder, "unused_parameters", lambda: [])()}
        groups = (
            self.encoder.parameters(),
            [*self.parser.parameters(), *self.pair_stage.parameters()],
            self.heads.parameters(),
        )
        for name, params in zip(PARAM_GROUPS, groups, strict=True):
            kept = [p for p in params if p.requires_grad and id(p) not in unused]
            if kept:
                yield name, kept
