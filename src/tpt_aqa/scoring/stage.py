"""The score stage (docs/method.md §7): a video's score from its exemplars, each encoded once.

A video is compared with M training exemplars of its exemplar group; the pair stage and heads give
a relative score Δ̂ per exemplar, and the prediction is the **vote**: the mean over the real
(not padded) exemplars of (exemplar score + Δ̂), × the video's scale. Training's evaluation,
``tpt_aqa.training.pairwise_eval``'s pair-by-pair reference, the checkpoint's exemplar bank and
``tpt_aqa.predict`` all score this way.

Parts are per video (``TPT.encode``), so every exemplar is encoded once per evaluation and paired
many times (``encode_rows``). Which exemplars an evaluated video gets is the protocol
(``eval_exemplars``):

* ``per_video`` (the release's, the default): each evaluated video has its own seeded list of M
  (``AQADataModule.eval_exemplars``), so a split encodes every exemplar that any list names.
* ``per_group``: one seeded list of M per exemplar group, the list the checkpoint's exemplar bank
  stores for ``tpt_aqa.predict`` (``group_exemplars``); an evaluation encodes G·M exemplars at most.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchmetrics import Metric

from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data.batch import Videos
from tpt_aqa.data.samplers import STREAM_BANK, choose_eval_exemplars

PROTOCOLS = ("per_video", "per_group")


def check_protocol(protocol: str) -> str:
    """``protocol`` when it is one of ``PROTOCOLS``.

    Raises:
        ConfigError: naming the key ``eval_exemplars`` and its values.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"eval_exemplars={protocol}: use eval_exemplars=per_video (each evaluated video's own "
            "M exemplars, as released) or eval_exemplars=per_group (one list of M per exemplar "
            "group, each encoded once)"
        )
    return protocol


# ---- which exemplars ---------------------------------------------------------------------------
def group_exemplars(table, num_exemplars: int, seed: int) -> np.ndarray:
    """The fixed, seeded M training exemplars of every exemplar group.

    Args:
        table: the datamodule's ``SampleTable``.
        num_exemplars: M.
        seed: the run's seed (stream ``STREAM_BANK``).

    Returns:
        Table rows ``(G,M)``, ``-1`` padded (all of a group's training videos when it has fewer
        than M; a row of ``-1`` for a group without training videos).
    """
    rows = table.rows("train")
    groups = table.group[rows]
    out = np.full((len(table.group_names), num_exemplars), -1, dtype=np.int64)
    present = np.unique(groups)
    rng = np.random.default_rng([seed, STREAM_BANK])
    out[present] = choose_eval_exemplars(present, rows, groups, num_exemplars, rng)
    return out


def exemplar_lists(dm, split: str, protocol: str) -> np.ndarray:
    """The exemplar rows of every evaluated video of ``split`` under ``protocol``.

    Returns:
        Table rows ``(N,M)`` in the order of ``dm.table.rows(split)``, ``-1`` padded.

    Raises:
        ValueError: when the datamodule has no exemplar lists for ``split``.
    """
    if dm.table is None or split not in dm.eval_exemplars:
        raise ValueError(
            f"the datamodule has no exemplar lists for split {split!r} "
            f"(has {sorted(dm.eval_exemplars)}); call datamodule.setup() first"
        )
    if check_protocol(protocol) == "per_video":
        return dm.eval_exemplars[split]
    fixed = group_exemplars(dm.table, dm.num_exemplars, dm.seed)
    return fixed[dm.table.group[dm.table.rows(split)]]


def row_loader(dm, rows: np.ndarray) -> DataLoader:
    """Batches of ``Videos`` of table ``rows`` in the exemplar view, in order."""
    return dm.rows_dataloader(rows, "exemplar")


# ---- encoding once -----------------------------------------------------------------------------
@torch.no_grad()
def encode_rows(
    model, batches: Iterable[Videos], num_rows: int, to_device: Callable[[Videos], Videos]
) -> torch.Tensor:
    """Encode every video of ``batches`` once: a bank of parts indexed by table row.

    Args:
        model: the ``TPT`` model (its ``encode``).
        batches: ``Videos`` batches (``row_loader``).
        num_rows: rows of the table; rows not in ``batches`` stay zero.
        to_device: moves a batch to the model's device.

    Returns:
        Parts ``(num_rows,K,D)`` on the model's device.
    """
    bank = None
    for videos in batches:
        videos = to_device(videos)
        parts = model.encode(videos.video).parts  # (b, K, D)
        if bank is None:
            bank = parts.new_zeros(num_rows, *parts.shape[1:])
        bank[videos.index] = parts
    assert bank is not None, "no exemplar videos to encode"
    return bank


# ---- scoring -----------------------------------------------------------------------------------
def relative_scores(
    model, score_groups, query_parts: torch.Tensor, exemplar_parts: torch.Tensor
) -> torch.Tensor:
    """Δ̂ of every (exemplar, query) pair: f(exemplar, query) decoded by the score groups.

    Args:
        model: the ``TPT`` model (its ``compare_each``).
        score_groups: fitted ``ScoreGroups``.
        query_parts: ``(B,K,D)``.
        exemplar_parts: ``(B,M,K,D)``.

    Returns:
        Δ̂ ``(B,M)`` float32, on the training scale.
    """
    b, m = exemplar_parts.shape[:2]
    logits, offsets = model.compare_each(exemplar_parts, query_parts)  # (B, M, G)
    delta = score_groups.decode(logits.flatten(0, 1).float(), offsets.flatten(0, 1).float())
    return delta.view(b, m)


def vote(
    exemplar_target: torch.Tensor,
    delta: torch.Tensor,
    scale: torch.Tensor | float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The prediction: mean over real exemplars of (exemplar score + Δ̂), × the video's scale.

    Args:
        exemplar_target: exemplar scores on the training scale ``(B,M)``.
        delta: Δ̂ ``(B,M)``.
        scale: multiplier to the reported scale ``(B,)`` (or one number).
        mask: real exemplars ``(B,M)``; ``None``: all are real. Padded slots count for nothing,
            whatever their Δ̂.

    Returns:
        Predictions ``(B,)`` on the reported scale, in the dtype of ``delta``.
    """
    per = exemplar_target + delta  # (B, M)
    if mask is None:
        return per.mean(-1) * scale
    per = torch.where(mask, per, torch.zeros_like(per))
    return per.sum(-1) / mask.sum(-1).to(per.dtype) * scale


class EncodedExemplars:
    """One split's evaluation exemplars, encoded once, and each evaluated video's list of them.

    Args:
        parts: parts by table row ``(R,K,D)`` (``encode_rows``).
        lists: exemplar rows by table row of the evaluated video ``(R,M)``, ``-1`` padded.
        target: scores on the training scale by table row ``(R,)``.
    """

    def __init__(self, parts: torch.Tensor, lists: torch.Tensor, target: torch.Tensor) -> None:
        self.parts, self.lists, self.target = parts, lists, target

    def predict(
        self, model, score_groups, query_parts: torch.Tensor, query: Videos
    ) -> torch.Tensor:
        """Predictions ``(B,)`` on the reported scale of evaluated videos ``query`` with parts
        ``(B,K,D)``."""
        rows = self.lists[query.index]  # (B, M)
        exemplar_parts = self.parts[rows.clamp_min(0)]  # (B, M, K, D)
        delta = relative_scores(model, score_groups, query_parts, exemplar_parts)
        return vote(self.target[rows.clamp_min(0)], delta, query.scale, rows >= 0)


def encode_exemplars(
    model,
    dm,
    split: str,
    protocol: str,
    to_device: Callable[[Videos], Videos],
    shard: tuple[int, int, int | None] = (0, 1, None),
) -> EncodedExemplars:
    """Encode the exemplars of ``split``'s evaluated videos once each.

    Args:
        model: the ``TPT`` model.
        dm: the set-up datamodule.
        split: ``"val"`` or ``"test"``.
        protocol: ``"per_video"`` or ``"per_group"`` (``exemplar_lists``).
        to_device: moves a batch to the model's device.
        shard: ``(rank, world size, n)``: with ``n``, only the exemplars of the first ``n`` videos
            this rank evaluates (the distributed sampler's order), for a smoke test.
    """
    table = dm.table
    lists = exemplar_lists(dm, split, protocol)  # (N, M)
    rank, world, first = shard
    wanted = lists if first is None else lists[rank::world][:first]
    rows = np.unique(wanted[wanted >= 0])
    parts = encode_rows(model, row_loader(dm, rows), len(table), to_device)
    by_row = torch.full((len(table), lists.shape[1]), -1, dtype=torch.long)
    by_row[torch.as_tensor(table.rows(split))] = torch.as_tensor(lists)
    target = torch.as_tensor(table.target, dtype=torch.float32)
    return EncodedExemplars(parts, by_row.to(parts.device), target.to(parts.device))


# ---- what one evaluation collects --------------------------------------------------------------
class EvalRecords(Metric):
    """The per-video records of one split's evaluation, gathered from every rank by torchmetrics.

    ``compute`` returns each field concatenated over batches and ranks, sorted by table row, with
    the duplicates that ``DistributedSampler`` padding adds removed (each video exactly once), and
    warns when predictions are not finite.

    Args:
        split: the evaluated split, for the warning.
    """

    FIELDS = ("index", "pred", "target", "class_id", "clip_labels", "attn")
    full_state_update = False

    def __init__(self, split: str) -> None:
        super().__init__()
        self.split = split
        for name in self.FIELDS:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, query: Videos, pred: torch.Tensor, attn: torch.Tensor | None) -> None:
        """Record evaluated videos ``query``, their predictions ``(B,)`` (reported scale) and
        attention ``(B,Y,T,K)`` (its last layer is kept) or ``None``."""
        self.index.append(query.index)
        self.pred.append(pred)
        self.target.append(query.target * query.scale)
        self.class_id.append(query.class_id)
        self.clip_labels.append(query.clip_labels)
        if attn is not None:
            self.attn.append(attn[:, -1].float())  # (B, T, K)

    def compute(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.FIELDS:
            value = getattr(self, name)
            if isinstance(value, list):  # a single process: the batches, not yet concatenated
                value = torch.cat(value) if value else None
            if value is not None:
                out[name] = value
        order = torch.argsort(out["index"], stable=True)
        index = out["index"][order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]  # drop the duplicates that sampler padding adds
        out = {k: v[order][first] for k, v in out.items()}
        bad = int((~torch.isfinite(out["pred"])).sum())
        if bad:
            warnings.warn(
                f"{bad} of {len(out['pred'])} {self.split} predictions are not finite (NaN/inf): "
                "metrics that need them are left out; check the input videos and the precision "
                "(trainer.precision=32-true)",
                stacklevel=1,
            )
        return out
