"""The reference's evaluation, pair by pair, to check and measure encode-once evaluation (docs/method.md §7).

``AQAModule`` evaluates by encoding every exemplar of a split once into a bank of parts, encoding
each evaluated video once, and pairing cached parts (``TPT.encode`` then ``TPT.compare``). The
authors' release instead scores each (query, exemplar) pair from scratch: for each of a test
video's M = 10 exemplars it sends the query and the exemplar through the backbone together, i.e.
2·M backbone passes per test video. ``naive_predictions`` implements that path (with the same
vote, ``tpt_aqa.scoring.stage``) so that tests can show both give the same predictions, and ``count_encoder_passes`` counts the backbone passes each
path makes (``python -m tpt_aqa.benchmark --eval-compare`` times them).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tpt_aqa.data.base import AQADataModule
from tpt_aqa.data.batch import collate_videos
from tpt_aqa.scoring.stage import exemplar_lists, relative_scores, vote
from tpt_aqa.training.lit_module import AQAModule


@dataclass
class PassCount:
    """Encoder forward passes counted by ``count_encoder_passes``.

    Attributes:
        videos: videos encoded (batch rows summed over calls): one backbone pass each.
        calls: encoder ``forward`` calls.
    """

    videos: int = 0
    calls: int = 0


@contextmanager
def count_encoder_passes(module: AQAModule) -> Iterator[PassCount]:
    """Count the videos that go through ``module.model.encoder`` inside the ``with`` block.

    Args:
        module: the evaluated module; a forward hook on its encoder counts batch rows.

    Yields:
        A ``PassCount`` updated in place while the block runs.
    """
    count = PassCount()

    def hook(encoder: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        count.videos += args[0].shape[0]  # (B, T, ...): one pass per video
        count.calls += 1

    handle = module.model.encoder.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


@torch.no_grad()
def naive_predictions(
    module: AQAModule,
    datamodule: AQADataModule,
    split: str = "test",
    limit: int | None = None,
) -> dict[str, torch.Tensor]:
    """Predict ``split`` as the reference does: every (query, exemplar) pair encoded afresh.

    For each exemplar slot m of a batch of evaluated videos, the queries whose slot m holds a real
    exemplar are loaded again with those exemplars and both go through the encoder together
    (two backbone passes per pair); the pair's Δ̂ is decoded from f(exemplar, query). The
    prediction is the score stage's vote over those Δ̂. The exemplar lists are those of the
    module's protocol (``module.eval_exemplars``). The module is put in eval mode for the call and
    its mode restored afterwards.

    Args:
        module: a module whose score groups are fitted (after ``trainer.fit`` or ``trainer.test``).
        datamodule: the set-up datamodule holding the split's fixed exemplar lists.
        split: ``"val"`` or ``"test"``.
        limit: evaluate only the first ``limit`` videos of the split (all when ``None``).

    Returns:
        ``index`` (table rows), ``pred`` and ``target`` (reported scale), each ``(N,)`` on the CPU and
        sorted by index, as ``AQAModule.last_records``.

    Raises:
        ValueError: when the datamodule is not set up, the split has no exemplar lists, or the
            score groups are not fitted.
    """
    dm = datamodule
    exemplars = exemplar_lists(dm, split, module.eval_exemplars)  # (N, M)
    if not bool(module.score_groups.fitted):
        raise ValueError(
            "the score groups are not fitted; run trainer.fit or trainer.test with this module "
            "first (its setup fits them on the training deltas)"
        )
    rows = dm.table.rows(split)
    if limit is not None:
        rows, exemplars = rows[:limit], exemplars[:limit]
    model, device = module.model, module.device
    table_target = torch.as_tensor(dm.table.target, dtype=torch.float32)
    was_training = module.training
    module.eval()
    index, pred, target = [], [], []
    try:
        for start in range(0, len(rows), dm.eval_batch_size):
            q_rows = rows[start : start + dm.eval_batch_size]
            ex_rows = exemplars[start : start + dm.eval_batch_size]  # (B, M)
            delta = torch.zeros(ex_rows.shape)  # (B, M)
            for m in range(ex_rows.shape[1]):
                real = np.flatnonzero(ex_rows[:, m] >= 0)
                if len(real) == 0:
                    continue
                # the reference reloads and re-encodes both videos of every pair
                query = collate_videos([dm.sample(int(r), "test") for r in q_rows[real]])
                exemplar = collate_videos([dm.sample(int(r), "exemplar") for r in ex_rows[real, m]])
                videos = torch.cat([query.video, exemplar.video]).to(device)  # (2n, T, ...)
                parts = model.encode(videos).parts  # (2n, K, D)
                n = len(real)
                pair = relative_scores(model, module.score_groups, parts[:n], parts[n:, None])
                delta[real, m] = pair[:, 0].cpu()
            ex_rows = torch.as_tensor(ex_rows)
            scale = torch.as_tensor(dm.table.scale[q_rows], dtype=torch.float32)
            ex_target = table_target[ex_rows.clamp_min(0)]
            index.append(torch.as_tensor(q_rows, dtype=torch.long))
            pred.append(vote(ex_target, delta, scale, ex_rows >= 0))
            target.append(torch.as_tensor(dm.table.target[q_rows], dtype=torch.float32) * scale)
    finally:
        module.train(was_training)
    out = {"index": torch.cat(index), "pred": torch.cat(pred), "target": torch.cat(target)}
    order = torch.argsort(out["index"], stable=True)
    return {k: v[order] for k, v in out.items()}
