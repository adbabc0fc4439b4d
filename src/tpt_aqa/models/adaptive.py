"""Unsupervised parsers that follow each video (``model/parser=boundary|slots|align``, issue 20).

The released decoder (``model/parser=decoder``) lets every query spread its attention over the clips
with a softmax over T, and nothing in the losses rewards one query per step: on videos whose steps
vary in length its queries sit at nearly fixed clips (docs/method.md §13). The parsers here give the
queries a reason to follow each video's content, without step labels:

* ``SoftBoundaryParser`` (``boundary``): a monotone soft segmentation. A small temporal network
  scores every edge between neighbouring clips; the normalised cumulative sum of the scores is a
  per-video *progress* ``P_t ∈ [0, K−1]`` and clip t belongs to segment k by cumulative sigmoids
  of ``P_t`` around ``k − ½``. Segments are contiguous and ordered by construction; equal scores
  give equal chunks, and a video whose steps are short early moves its boundaries early.
* ``SlotCompetitionParser`` (``slots``): the queries compete for the clips (softmax over the K
  queries for every clip), and are refined from what they won over a few iterations. A clip's
  content, not its position, decides which query takes it.
* ``MonotoneAlignParser`` (``align``): every clip scores its fit to every query from its content;
  the exact posterior of a left-to-right alignment (clips 1..T to segments 1..K in order, every
  segment at least one clip) turns the scores into soft memberships with a forward–backward pass.
  Content decides *where* the boundaries go, the alignment keeps the segments ordered, contiguous
  and all present, pooling the evidence of the whole video for every boundary.

Each returns parts ``(B,K,D)`` and attention ``(B,Y,T,K)`` whose columns (each query's weights over
the T clips) sum to 1, like the decoder's, so the parsing metrics and, where ``attention_losses``
is true, the rank and sparsity losses apply. The membership each design computes first, whose
rows (each clip's weights over the K segments) sum to 1, is the attention normalised per column.

What the evidence reads: with ``center`` the features that decide the segmentation are the clip
features minus the video's mean clip, so what is constant over a video (its nuisance, its overall
look) cannot move the boundaries. The parts always pool the raw features: the scores need them.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# the release decoder's options (model/parser=decoder); the ablations that set them (pe_memory,
# pe_memory_query) have no meaning for these parsers
_DECODER_ONLY = (
    "num_layers",
    "ffn_dim",
    "num_heads",
    "self_attn_layers",
    "detr_order",
    "scale",
    "temperature_init",
    "pe_memory",
    "pe_query",
)
# a very negative but finite log-weight: impossible alignments weigh exp(−1e4) = 0 in float32 and
# their gradients stay finite (−inf would give NaN through logaddexp(−inf, −inf))
_NEG = -1.0e4


def _refuse_decoder_options(name: str, options: dict) -> None:
    """Raise for release-decoder options given to another parser (an ablation such as pe_memory)."""
    if not options:
        return
    keys = ", ".join(f"model.parser.{k}" for k in sorted(options))
    unknown = sorted(set(options) - set(_DECODER_ONLY))
    what = (
        f"unknown option(s) {unknown}"
        if unknown
        else "options of the release decoder (model/parser=decoder)"
    )
    raise ValueError(
        f"model/parser={name} got {keys}: {what}. Drop them (an ablation such as "
        f"ablation=pe_memory sets them; it applies to the release decoder only) or use "
        f"model/parser=decoder"
    )


def columns_to_attention(membership: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each segment's weights over the clips, from memberships.

    Args:
        membership: ``(B,T,K)``, each clip's weights over the K segments (rows sum to 1).
        eps: added to every membership, so an empty segment attends uniformly instead of 0/0.

    Returns:
        Attention ``(B,T,K)`` whose columns sum to 1 over T.
    """
    m = membership + eps
    return m / m.sum(dim=1, keepdim=True)


def centred(memory: torch.Tensor, center: bool) -> torch.Tensor:
    """Clip features minus the video's mean clip ``(B,T,C)`` when ``center``, else unchanged."""
    return memory - memory.mean(dim=1, keepdim=True) if center else memory


class _SegmentPool(nn.Module):
    """Parts from attention: pool the raw clip features with each segment's weights, project to D
    and add a learned embedding of the segment's index (so the shared pair stage knows which
    segment a part is; the segments are ordered, so index k is the k-th part of the action)."""

    def __init__(self, in_dim: int, d_model: int, num_queries: int) -> None:
        super().__init__()
        self.value = nn.Linear(in_dim, d_model)
        self.index_embed = nn.Parameter(torch.zeros(num_queries, d_model))

    def forward(self, attn: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Parts ``(B,K,D)`` from attention ``(B,T,K)`` (columns sum to 1) and clips ``(B,T,C)``."""
        pooled = torch.einsum("btk,btc->bkc", attn, memory)  # (B, K, C)
        return self.value(pooled) + self.index_embed


def boundary_membership(
    progress: torch.Tensor, num_segments: int, temperature: float
) -> torch.Tensor:
    """Soft segment membership from a monotone progress, by cumulative sigmoids.

    Clip t is in segment k (1-based) when ``k − 1.5 < P_t < k − 0.5``, softened:
    ``m[t,k] = σ((P_t − k + 1.5)/τ) − σ((P_t − k + 0.5)/τ)``, the first term 1 for k = 1 and the
    second 0 for k = K. The sum over k telescopes to 1, and a non-decreasing progress gives
    contiguous, ordered segments.

    Args:
        progress: ``(B,T)``, non-decreasing, in [0, K−1].
        num_segments: K.
        temperature: τ > 0; smaller is harder.

    Returns:
        Membership ``(B,T,K)``, rows summing to 1.
    """
    k = torch.arange(num_segments, device=progress.device, dtype=progress.dtype)  # 0-based
    # cut c_j = j + 0.5 between segments j and j+1 (0-based), j = 0..K−2
    past = torch.sigmoid((progress[..., None] - (k[:-1] + 0.5)) / temperature)  # (B, T, K−1)
    ones = torch.ones_like(progress)[..., None]
    zeros = torch.zeros_like(progress)[..., None]
    above = torch.cat([ones, past], dim=-1)  # P past the cut before segment k (1 for the first)
    below = torch.cat([past, zeros], dim=-1)  # P past the cut after it (0 for the last)
    return above - below


class SoftBoundaryParser(nn.Module):
    """Monotone soft segmentation into K ordered segments (``model/parser=boundary``).

    Every edge between clips t−1 and t gets a score ``e_t > 0`` from a temporal convolution of
    ``2·context`` clips around it; the progress ``P_t = (K−1)·Σ_{s≤t} e_s / Σ_s e_s`` rises from 0 at
    the first clip to K−1 at the last, and ``boundary_membership`` cuts it at ``k − ½``. Equal scores
    cut T into K equal chunks (adaptive pooling); scores concentrated on K−1 edges cut exactly
    there, so every video gets its own K−1 boundaries. Segments are contiguous and ordered by
    construction, so the rank loss is not needed to order them.

    Args:
        in_dim: clip feature width C.
        d_model: part width D.
        num_queries: segments K.
        hidden: width of the edge-scoring network.
        context: clips each side of an edge the score reads.
        temperature: τ of the cumulative sigmoids.
        center: score edges on clip features minus the video's mean clip.
        attention_losses: apply the rank and sparsity losses to its maps.
    """

    def __init__(
        self,
        in_dim: int,
        d_model: int = 512,
        num_queries: int = 5,
        hidden: int = 64,
        context: int = 2,
        temperature: float = 0.2,
        center: bool = True,
        attention_losses: bool = False,
        **decoder_options,
    ) -> None:
        super().__init__()
        _refuse_decoder_options("boundary", decoder_options)
        if context < 1 or temperature <= 0:
            raise ValueError(
                f"model.parser.context must be >= 1 and model.parser.temperature > 0, got "
                f"{context} and {temperature}"
            )
        self.num_queries, self.out_dim = num_queries, d_model
        self.context, self.temperature, self.center = context, float(temperature), center
        self.attention_losses = attention_losses
        self.edge = nn.Sequential(
            nn.Conv1d(in_dim, hidden, kernel_size=2 * context),
            nn.GELU(),
            nn.Conv1d(hidden, 1, kernel_size=1),
        )
        self.pool = _SegmentPool(in_dim, d_model, num_queries)

    def progress(self, memory: torch.Tensor) -> torch.Tensor:
        """The per-video progress ``(B,T)``: 0 at the first clip, K−1 at the last, non-decreasing."""
        x = centred(memory, self.center).transpose(1, 2)  # (B, C, T)
        # replicate the end clips so every one of the T−1 edges sees 2·context clips
        x = F.pad(x, (self.context - 1, self.context - 1), mode="replicate")
        scores = F.softplus(self.edge(x)[:, 0]) + 1e-4  # (B, T−1) > 0
        cum = torch.cumsum(scores, dim=1) / scores.sum(dim=1, keepdim=True)
        cum = torch.cat([torch.zeros_like(cum[:, :1]), cum], dim=1)  # (B, T)
        return (self.num_queries - 1) * cum

    def forward(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment clips ``(B,T,C)`` into parts ``(B,K,D)`` and attention ``(B,1,T,K)``."""
        if memory.shape[1] < 2:
            raise ValueError("model/parser=boundary needs at least 2 clips per video")
        member = boundary_membership(self.progress(memory), self.num_queries, self.temperature)
        attn = columns_to_attention(member)  # (B, T, K)
        return self.pool(attn, memory), attn[:, None]


def moving_average(x: torch.Tensor, width: int) -> torch.Tensor:
    """Moving average over time of ``(B,T,K)`` with an odd ``width``, the end clips replicated."""
    if width == 1:
        return x
    pad = width // 2
    padded = F.pad(x.transpose(1, 2), (pad, pad), mode="replicate")
    return F.avg_pool1d(padded, width, stride=1).transpose(1, 2)


def competition(logits: torch.Tensor) -> torch.Tensor:
    """Attention of queries that compete for clips.

    Args:
        logits: ``(B,T,K)``, the fit of every clip to every query.

    Returns:
        ``(B,T,K)``: a softmax over the K queries (each clip's share of every query; a clip's shares
        sum to 1), then each query's column normalised over the T clips (sums to 1).
    """
    return columns_to_attention(logits.softmax(dim=-1))


class SlotCompetitionParser(nn.Module):
    """Queries that compete for the clips (``model/parser=slots``).

    Each iteration scores every (clip, query) pair, ``logits = key(x_t)·W q_k / √D / τ``, and takes a
    softmax over the K *queries*: a clip's weight is shared among the queries, so a query that
    explains a clip takes it from the others (the release's softmax over clips lets every query
    take every clip). Each query then reads the weighted mean of the clips it won (its column
    normalised over T, the attention map of that iteration) and is updated from it: ``q ← LN(q +
    value)``, ``q ← q + MLP(LN(q))``. The parts are the final queries plus their index embedding.

    The queries start from learned embeddings, so query k has an identity shared by all videos;
    what each takes is decided per video by content. Nothing orders them in time: keep
    ``attention_losses`` (the rank loss orders the centres, the sparsity loss keeps each compact).

    Args:
        in_dim: clip feature width C.
        d_model: part width D.
        num_queries: queries K.
        iterations: refinement rounds Y (each contributes one attention map).
        smooth: odd width of a moving average of the logits over time (1: none); a clip's
            neighbours then vote on which query takes it.
        temperature: τ dividing the logits; below 1 a clip goes more wholly to one query, so each
            query's column holds less of the clips it did not win.
        center: score clips on features minus the video's mean clip.
        attention_losses: apply the rank and sparsity losses to its maps.
    """

    def __init__(
        self,
        in_dim: int,
        d_model: int = 512,
        num_queries: int = 5,
        iterations: int = 3,
        smooth: int = 1,
        temperature: float = 1.0,
        center: bool = True,
        attention_losses: bool = True,
        **decoder_options,
    ) -> None:
        super().__init__()
        _refuse_decoder_options("slots", decoder_options)
        if iterations < 1 or smooth < 1 or smooth % 2 == 0 or temperature <= 0:
            raise ValueError(
                f"model.parser.iterations must be >= 1, model.parser.smooth odd and >= 1 and "
                f"model.parser.temperature > 0, got {iterations}, {smooth} and {temperature}"
            )
        self.num_queries, self.out_dim = num_queries, d_model
        self.iterations, self.smooth, self.center = iterations, smooth, center
        self.temperature = float(temperature)
        self.attention_losses = attention_losses
        self.query_embed = nn.Parameter(torch.empty(num_queries, d_model))
        nn.init.xavier_uniform_(self.query_embed)
        self.key = nn.Linear(in_dim, d_model)
        self.query = nn.Linear(d_model, d_model)
        self.value = nn.Linear(in_dim, d_model)
        self.norm_query = nn.LayerNorm(d_model)
        self.norm_update = nn.LayerNorm(d_model)
        self.norm_mlp = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model)
        )
        self.index_embed = nn.Parameter(torch.zeros(num_queries, d_model))

    def forward(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Parse clips ``(B,T,C)`` into parts ``(B,K,D)`` and one map per iteration ``(B,Y,T,K)``."""
        b = memory.shape[0]
        keys = self.key(centred(memory, self.center))  # (B, T, D)
        values = self.value(memory)  # (B, T, D)
        slots = self.query_embed.unsqueeze(0).expand(b, -1, -1)  # (B, K, D)
        scale = 1.0 / math.sqrt(keys.shape[-1]) / self.temperature
        maps = []
        for _ in range(self.iterations):
            logits = torch.einsum("btd,bkd->btk", keys, self.query(self.norm_query(slots))) * scale
            logits = moving_average(logits, self.smooth)
            attn = competition(logits)  # (B, T, K)
            update = torch.einsum("btk,btd->bkd", attn, values)
            slots = self.norm_update(slots + update)
            slots = slots + self.mlp(self.norm_mlp(slots))
            maps.append(attn)
        return slots + self.index_embed, torch.stack(maps, dim=1)


def monotone_alignment(scores: torch.Tensor, stay: torch.Tensor) -> torch.Tensor:
    """Posterior of a left-to-right alignment of T clips to K ordered segments.

    An alignment puts clip 1 in segment 1 and clip T in segment K, and from each clip to the next
    either stays or moves on by one, so every segment holds at least one contiguous run of clips.
    Its log-weight is ``Σ_t scores[t, k_t] + Σ_k stay[k]·(clips of k − 1)``. The posterior
    membership of clip t in segment k, summed over all alignments by a forward–backward pass, is
    returned. With K = T there is one alignment (the identity); with ``scores`` 0 every alignment
    weighs the same.

    Args:
        scores: ``(B,T,K)``, the log-fit of every clip to every segment.
        stay: ``(K,)``, log-weight of one more clip in each segment (a length prior).

    Returns:
        Membership ``(B,T,K)``, rows summing to 1.

    Raises:
        ValueError: when K > T (no alignment exists).
    """
    b, t_len, k_len = scores.shape
    if k_len > t_len:
        raise ValueError(f"an alignment of {t_len} clips to {k_len} segments does not exist")
    neg = scores.new_full((b, 1), _NEG)
    start = torch.cat([scores[:, 0, :1], scores.new_full((b, k_len - 1), _NEG)], dim=1)
    fwd = [start]  # log-weight of the alignments of clips 1..t ending in segment k
    for t in range(1, t_len):
        prev = fwd[-1]
        moved = torch.cat([neg, prev[:, :-1]], dim=1)
        fwd.append(scores[:, t] + torch.logaddexp(prev + stay, moved))
    end = torch.cat([scores.new_full((b, k_len - 1), _NEG), scores.new_zeros((b, 1))], dim=1)
    bwd = [end]  # log-weight of the alignments of clips t+1..T given segment k at t
    for t in range(t_len - 1, 0, -1):
        nxt = bwd[-1] + scores[:, t]
        moved = torch.cat([nxt[:, 1:], neg], dim=1)
        bwd.append(torch.logaddexp(nxt + stay, moved))
    bwd.reverse()
    log_post = torch.stack(fwd, dim=1) + torch.stack(bwd, dim=1)  # (B, T, K)
    return (log_post - fwd[-1][:, -1:, None]).exp()


class MonotoneAlignParser(nn.Module):
    """Content scores, ordered segments: soft monotone alignment (``model/parser=align``).

    Every clip scores its fit to every query, ``s[t,k] = z_t·q_k / √D / τ`` with ``z_t`` a temporal
    convolution over ``2·context + 1`` clips; ``monotone_alignment`` sums over every ordered,
    contiguous segmentation of the video weighted by these scores and returns each clip's posterior
    membership. A boundary goes where the content changes from what query k fits to what query k+1
    fits, wherever that falls in this video; segments stay ordered and none is empty, so neither
    the rank loss nor the sparsity loss is needed (``attention_losses`` false).

    ``refine`` rounds then condition the queries on the video itself: each segment's prototype is
    the mean ``z`` of its clips under the current membership, and the next alignment adds to the
    scores ``−mean_d (z_t − μ_k)² / σ²`` (σ² learned): a monotone soft k-means of the video's own
    clips, so a boundary moves to where this video's content changes even when the learned queries
    fit both sides alike. Every round's map is returned (Y = refine + 1); the parts pool the last.

    Args:
        in_dim: clip feature width C.
        d_model: part width D.
        num_queries: segments K (at most T).
        context: clips each side a score reads (0: the clip alone).
        temperature: initial τ (learned, as log τ).
        refine: rounds of per-video prototypes (0: the learned queries alone).
        center: score on clip features minus the video's mean clip.
        attention_losses: apply the rank and sparsity losses to its maps.
    """

    def __init__(
        self,
        in_dim: int,
        d_model: int = 512,
        num_queries: int = 5,
        context: int = 1,
        temperature: float = 1.0,
        refine: int = 0,
        center: bool = True,
        attention_losses: bool = False,
        **decoder_options,
    ) -> None:
        super().__init__()
        _refuse_decoder_options("align", decoder_options)
        if context < 0 or temperature <= 0 or refine < 0:
            raise ValueError(
                f"model.parser.context and model.parser.refine must be >= 0 and "
                f"model.parser.temperature > 0, got {context}, {refine} and {temperature}"
            )
        self.num_queries, self.out_dim = num_queries, d_model
        self.context, self.refine, self.center = context, refine, center
        self.attention_losses = attention_losses
        self.key = nn.Conv1d(in_dim, d_model, kernel_size=2 * context + 1)
        self.query_embed = nn.Parameter(torch.empty(num_queries, d_model))
        nn.init.xavier_uniform_(self.query_embed)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        # log σ² of the prototype term (only with refinement rounds: no unused parameters)
        self.log_spread = nn.Parameter(torch.zeros(())) if refine else None
        self.stay = nn.Parameter(torch.zeros(num_queries))
        self.pool = _SegmentPool(in_dim, d_model, num_queries)

    def embed(self, memory: torch.Tensor) -> torch.Tensor:
        """What the scores read of every clip, ``z`` ``(B,T,D)``."""
        x = centred(memory, self.center).transpose(1, 2)  # (B, C, T)
        if self.context:
            x = F.pad(x, (self.context, self.context), mode="replicate")
        return self.key(x).transpose(1, 2)

    def scores(self, z: torch.Tensor) -> torch.Tensor:
        """The log-fit of every clip to every learned query ``(B,T,K)``."""
        scale = math.sqrt(z.shape[-1]) * self.log_temperature.exp()
        return z @ self.query_embed.t() / scale

    def forward(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Align clips ``(B,T,C)`` to K segments: parts ``(B,K,D)``, attention ``(B,Y,T,K)``."""
        if memory.shape[1] < self.num_queries:
            raise ValueError(
                f"model/parser=align needs model.num_queries={self.num_queries} <= clips per "
                f"video, got {memory.shape[1]} clips"
            )
        z = self.embed(memory).float()  # (B, T, D)
        base, stay = self.scores(z), self.stay.float()
        maps = [columns_to_attention(monotone_alignment(base, stay))]
        for _ in range(self.refine):
            prototypes = torch.einsum("btk,btd->bkd", maps[-1], z)  # (B, K, D)
            misfit = (z[:, :, None] - prototypes[:, None]).pow(2).mean(-1)  # (B, T, K)
            member = monotone_alignment(base - misfit / self.log_spread.exp(), stay)
            maps.append(columns_to_attention(member))
        attn = torch.stack(maps, dim=1).to(memory.dtype)  # (B, Y, T, K)
        return self.pool(attn[:, -1], memory), attn
