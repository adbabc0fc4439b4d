"""Training losses of TPT (paper §3.4, docs/method.md §4), as the release coded them, paper variants as switches.

Attention maps are ``(B,Y,T,K)``: post-softmax cross-attention of every decoder layer, each query's
weights summing to 1 over the T clips. Clip positions are 1-based, so attention centres lie in [1, T].

With the release's K=5, T=20 and margin 3.2 the ranking constraints cannot all hold at once
(1 + (K+1)·m > T), so the ranking loss never reaches zero; this is kept on purpose.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import Metric

from tpt_aqa.models.tpt import TPTOutput


def attention_centers(attn: torch.Tensor) -> torch.Tensor:
    """Attention centre c_k = Σ_t t·α_{t,k} (paper Eq. 8).

    Args:
        attn: attention ``(B,Y,T,K)``.

    Returns:
        Centres ``(B,Y,K)`` with t = 1..T.
    """
    t = torch.arange(1, attn.shape[2] + 1, device=attn.device, dtype=attn.dtype)
    return torch.einsum("bytk,t->byk", attn, t)


def rank_loss(attn: torch.Tensor, margin: float) -> torch.Tensor:
    """Margin ranking loss on the attention centres (paper Eq. 9), mean over batch, sum over layers.

    Args:
        attn: attention ``(B,Y,T,K)``.
        margin: m.

    Returns:
        Scalar loss.
    """
    num_clips = attn.shape[2]
    c = attention_centers(attn)  # (B, Y, K)
    order = F.relu(c[..., :-1] - c[..., 1:] + margin).sum(-1)  # (B, Y)
    first = F.relu(1 - c[..., 0] + margin)
    last = F.relu(c[..., -1] - num_clips + margin)
    return (order + first + last).mean(0).sum()


def sparsity_loss(attn: torch.Tensor, sum_over_queries: bool = False) -> torch.Tensor:
    """Sparsity loss Σ_t |t − c_k|·α_{t,k} (paper Eq. 10), c_k not detached.

    Args:
        attn: attention ``(B,Y,T,K)``.
        sum_over_queries: sum over k as the paper writes it instead of the release's mean.

    Returns:
        Scalar loss: mean over the batch, mean (or sum) over queries, sum over layers.
    """
    t = torch.arange(1, attn.shape[2] + 1, device=attn.device, dtype=attn.dtype)
    c = attention_centers(attn)  # (B, Y, K)
    spread = ((t[None, None, :, None] - c[:, :, None, :]).abs() * attn).sum(2)  # (B, Y, K)
    per_layer = spread.sum(-1) if sum_over_queries else spread.mean(-1)  # (B, Y)
    return per_layer.mean(0).sum()


def diversity_loss(attn: torch.Tensor, sigma: float) -> torch.Tensor:
    """Diversity loss of paper Tab. 5b: Σ_{i<j} exp(−(c_i − c_j)² / (2σ²)), mean batch, sum layers."""
    c = attention_centers(attn)  # (B, Y, K)
    diff = c[..., :, None] - c[..., None, :]  # (B, Y, K, K)
    k = c.shape[-1]
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=attn.device), diagonal=1)
    kernel = torch.exp(-diff.pow(2) / (2 * sigma**2))[..., upper]  # (B, Y, K(K-1)/2)
    return kernel.sum(-1).mean(0).sum()


def offset_loss(offsets: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared offset error on the true group only: mean within each group, summed over groups.

    Args:
        offsets: predicted offsets ``(N,G)``.
        labels: true groups ``(N,)``.
        targets: true offsets ``(N,)``.

    Returns:
        Scalar loss.
    """
    err = (offsets.gather(1, labels[:, None])[:, 0] - targets).pow(2)  # (N,)
    num_groups = offsets.shape[1]
    sums = torch.zeros(num_groups, device=err.device, dtype=err.dtype).index_add(0, labels, err)
    counts = torch.bincount(labels, minlength=num_groups).to(err.dtype)
    return (sums / counts.clamp_min(1)).sum()


class TPTCriterion(nn.Module):
    """All TPT losses with their weights, returned by name (DETR ``SetCriterion`` style).

    Args:
        weight_cls: λ_cls.
        weight_reg: λ_reg.
        weight_rank: λ_rank (weight of the ordering loss: the ranking or, with
            ``order_loss="diversity"``, the diversity loss).
        weight_sparsity: λ_sparsity.
        margin: ranking margin m (3.2 in the released command).
        cls_loss: ``"ce"`` (release: G-way softmax cross-entropy) or ``"bce"`` (paper Eq. 11: per
            group BCE, summed over groups).
        sparsity_sum_over_queries: sum the sparsity loss over queries as the paper writes it.
        order_loss: ``"rank"`` (paper Eq. 9) or ``"diversity"`` (Tab. 5b).
        diversity_sigma: σ of the diversity loss.
    """

    def __init__(
        self,
        weight_cls: float = 1.0,
        weight_reg: float = 1.0,
        weight_rank: float = 1.0,
        weight_sparsity: float = 0.05,
        margin: float = 3.2,
        cls_loss: str = "ce",
        sparsity_sum_over_queries: bool = False,
        order_loss: str = "rank",
        diversity_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        if cls_loss not in ("ce", "bce"):
            raise ValueError(f"criterion.cls_loss must be 'ce' or 'bce', got {cls_loss!r}")
        if order_loss not in ("rank", "diversity"):
            raise ValueError(
                f"criterion.order_loss must be 'rank' or 'diversity', got {order_loss!r}"
            )
        self.weights = {
            "loss_cls": weight_cls,
            "loss_reg": weight_reg,
            f"loss_{order_loss}": weight_rank,  # loss_rank, or loss_diversity (Tab. 5b)
            "loss_sparsity": weight_sparsity,
        }
        self.margin = margin
        self.cls_loss = cls_loss
        self.sparsity_sum_over_queries = sparsity_sum_over_queries
        self.order_loss = order_loss
        self.diversity_sigma = diversity_sigma

    def _classification(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.cls_loss == "ce":
            return F.cross_entropy(logits, labels)
        onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").sum(1).mean()

    def forward(
        self, output: TPTOutput, labels: torch.Tensor, offsets: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Compute the named losses and their weighted total.

        Args:
            output: model output with both pair orders stacked ``(2B, G)``.
            labels: true groups of both orders ``(2B,)``.
            offsets: true offsets of both orders ``(2B,)``.

        Returns:
            ``{"loss_cls", "loss_reg", "loss_rank" (or "loss_diversity"), "loss_sparsity", "loss"}``
            (each logged as ``train/<name>``); classification and
            regression are summed over the two pair orders; the attention losses are one mean over
            the query's and the exemplar's maps stacked together, summed over layers.
        """
        logits, pred_off = output.logits.float(), output.offsets.float()
        b = logits.shape[0] // 2
        losses = {
            "loss_cls": sum(
                self._classification(logits[s], labels[s]) for s in (slice(0, b), slice(b, None))
            ),
            "loss_reg": sum(
                offset_loss(pred_off[s], labels[s], offsets[s])
                for s in (slice(0, b), slice(b, None))
            ),
        }
        maps = [m.float() for m in (output.attn_query, output.attn_exemplar) if m is not None]
        if maps:
            # The release runs query and exemplar through the decoder as one batch, so each
            # attention loss is ONE mean over all 2B maps of the step (a mean over the query maps
            # plus a mean over the exemplar maps would double both losses and their gradients).
            attn = torch.cat(maps)  # (2B, Y, T, K)
            if self.order_loss == "rank":
                losses["loss_rank"] = rank_loss(attn, self.margin)
            else:
                losses["loss_diversity"] = diversity_loss(attn, self.diversity_sigma)
            losses["loss_sparsity"] = sparsity_loss(attn, self.sparsity_sum_over_queries)
        else:
            losses[f"loss_{self.order_loss}"] = losses["loss_sparsity"] = logits.new_zeros(())
        losses["loss"] = sum(self.weights[k] * losses[k] for k in self.weights)
        return losses


class LossMeans(Metric):
    """Epoch means of the named losses over every pair of every rank: each step adds its losses times
    its pairs, and the sums are reduced once an epoch. Logging each loss at each step through
    Lightning instead cost about 6 % of a feature-mode epoch (README, speed)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sums", torch.zeros(0), dist_reduce_fx="sum")  # the losses', then the pairs'
        self.names: list[str] = []

    def update(self, losses: dict[str, torch.Tensor], pairs: int) -> None:
        step = torch.stack([*losses.values(), losses["loss"].new_ones(())]).detach().float() * pairs
        self.sums = self.sums + step if self.sums.numel() else step
        self.names = list(losses)

    def compute(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.sums[:-1] / self.sums[-1], strict=True))
