"""LightningModule: wiring of model, criterion and score groups, one shared evaluation step, metrics.

Training (docs/method.md §6): each batch holds (query, exemplar) pairs; both pair orders are scored and the
relative scores encoded into score groups. Evaluation (docs/method.md §7): every exemplar video is encoded once
per evaluation into a bank of parts; each evaluated video is encoded once and compared with its M
fixed exemplars; prediction = mean over real exemplars of (exemplar score + Δ̂), × the video's scale.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.optim import Optimizer

from tpt_aqa.data.batch import EvalBatch, PairBatch
from tpt_aqa.losses import TPTCriterion
from tpt_aqa.metrics import evaluate
from tpt_aqa.models.tpt import TPT
from tpt_aqa.parsing import parsing_metrics
from tpt_aqa.scoring import ScoreGroups

# Evaluation metrics are computed once from every rank's gathered predictions, so all ranks log the
# same value; Lightning's advice to reduce them again (sync_dist) does not apply.
warnings.filterwarnings(
    "ignore", message=r"It is recommended to use `self\.log\('(val|test|test_every_epoch)/"
)


class AQAModule(L.LightningModule):
    """Train and evaluate a ``TPT`` model by contrastive group-aware regression.

    Args:
        model: the TPT composer.
        criterion: the named losses.
        score_groups: group edges, fitted on the training split in ``setup`` unless restored.
        optimizer: optimizer factory taking parameter groups (Hydra partial, e.g. Adam).
        lr: learning rate per parameter group: ``backbone``, ``body`` (parser and pair stage), ``heads``.
        config: the resolved run configuration, stored in checkpoints for ``tpt_aqa.eval``.
    """

    def __init__(
        self,
        model: TPT,
        criterion: TPTCriterion,
        score_groups: ScoreGroups,
        optimizer: Callable[..., Optimizer],
        lr: dict[str, float],
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.score_groups = score_groups
        self.optimizer_factory = optimizer
        self.lr = dict(lr)
        self.config = config
        self.class_names: list[str] = ["all"]
        self.best_val_srcc = -math.inf
        self.last_metrics: dict[str, dict[str, float]] = {}
        # the gathered records (index, pred, target, class_id, clip_labels, attn) of each split's
        # latest evaluation, on the CPU: what plots and callbacks read
        self.last_records: dict[str, dict[str, torch.Tensor]] = {}
        self.test_history: list[dict[str, float]] = []
        self._banks: dict[str, torch.Tensor] = {}
        self._records: dict[str, list[dict[str, torch.Tensor]]] = {}

    # ---- setup -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.class_names = list(dm.class_names)
        if not bool(self.score_groups.fitted):
            self.score_groups.fit(dm.train_deltas(), dm.delta_cap)

    def configure_optimizers(self) -> Optimizer:
        groups = []
        for name, params in self.model.param_groups():
            if name not in self.lr:
                raise KeyError(f"optim.lr has no learning rate for parameter group {name!r}")
            groups.append({"params": params, "lr": self.lr[name], "name": name})
        return self.optimizer_factory(groups)

    # ---- training --------------------------------------------------------------------------
    def compute_losses(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        """The named training losses of a batch of pairs (both pair orders)."""
        q, e = batch.query, batch.exemplar
        out = self.model(q.video, e.video)
        delta = torch.cat([q.target - e.target, e.target - q.target])  # (2B,) in the output's order
        labels, offsets = self.score_groups.encode(delta)
        return self.criterion(out, labels, offsets.float())

    def training_step(self, batch: PairBatch, batch_idx: int) -> torch.Tensor:
        losses = self.compute_losses(batch)
        for name, value in losses.items():
            if not torch.isfinite(value):
                raise FloatingPointError(
                    f"{name} is {value.item()} at epoch {self.current_epoch}, step {self.global_step}; "
                    "lower the learning rates (optim.lr) or check the input features"
                )
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in losses.items()},
            batch_size=len(batch.query),
            on_step=False,
            on_epoch=True,
            prog_bar=False,
            sync_dist=True,  # epoch means over all ranks' batches (one reduction per epoch)
        )
        return losses["loss"]

    # ---- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_exemplars(self, split: str) -> torch.Tensor:
        """Encode every exemplar video of ``split`` once: a bank of parts indexed by table row."""
        dm = self.trainer.datamodule
        queries = None
        if self.trainer.fast_dev_run:  # a smoke test evaluates a few batches: their exemplars only
            n = int(self.trainer.fast_dev_run) * dm.eval_batch_size
            shard = np.arange(len(dm.table.rows(split)))[
                self.global_rank :: self.trainer.world_size
            ]
            queries = shard[:n]  # the first batches of this rank (the distributed sampler's order)
        bank = None
        for videos in dm.exemplar_dataloader(split, queries):
            videos = self.transfer_batch_to_device(videos, self.device, 0)
            parts = self.model.encode(videos.video).parts  # (b, K, D)
            if bank is None:
                bank = parts.new_zeros(len(dm.table), *parts.shape[1:])
            bank[videos.index] = parts
        assert bank is not None, f"no exemplars for split {split!r}"
        return bank

    def _eval_step(self, batch: EvalBatch, split: str) -> None:
        if split not in self._banks:
            self._banks[split] = self._encode_exemplars(split)
        q = batch.query
        parsed = self.model.encode(q.video)
        b, m = batch.exemplar_index.shape
        ex_parts = self._banks[split][batch.exemplar_index.clamp_min(0)]  # (B, M, K, D)
        q_parts = parsed.parts.unsqueeze(1).expand(-1, m, -1, -1)  # (B, M, K, D)
        logits, offsets = self.model.compare(ex_parts.flatten(0, 1), q_parts.flatten(0, 1))
        delta = self.score_groups.decode(logits, offsets).view(b, m)  # (B, M)
        mask = batch.exemplar_mask.float()
        raw = ((batch.exemplar_target + delta) * mask).sum(1) / mask.sum(1)  # (B,)
        record = {
            "index": q.index,
            "pred": raw * q.scale,
            "target": q.target * q.scale,
            "class_id": q.class_id,
            "clip_labels": q.clip_labels,
        }
        if parsed.attn is not None:
            record["attn"] = parsed.attn[:, -1].float()  # (B, T, K) last layer
        self._records.setdefault(split, []).append(record)

    def _gather(self, records: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """One evaluation's records from every rank, each evaluated video exactly once."""
        local = {k: torch.cat([r[k] for r in records]) for k in records[0]}
        if self.trainer.world_size > 1:
            local = {k: v.flatten(0, 1) for k, v in self.all_gather(local).items()}
        order = torch.argsort(local["index"], stable=True)
        index = local["index"][order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]  # drop the duplicates that sampler padding adds
        return {k: v[order][first] for k, v in local.items()}

    def _finish(self, split: str) -> dict[str, float]:
        self._banks.pop(split, None)
        records = self._records.pop(split, [])
        if not records:
            return {}
        rec = self._gather(records)
        bad = int((~torch.isfinite(rec["pred"])).sum())
        if bad:
            warnings.warn(
                f"{bad} of {len(rec['pred'])} {split} predictions are not finite (NaN/inf): metrics "
                "that need them are left out; check the input videos and the precision "
                "(trainer.precision=32-true)",
                stacklevel=1,
            )
        metrics = evaluate(
            rec["pred"].cpu(), rec["target"].cpu(), rec["class_id"].cpu(), self.class_names
        )
        if (
            "attn" in rec
        ):  # step-level parsing metrics where the steps are known (docs/method.md §7)
            metrics |= parsing_metrics(rec["attn"].cpu(), rec["clip_labels"].cpu())
        # Undefined metrics stay, as NaN (evaluate warned why): checkpoint selection treats a NaN ρ
        # as the worst, and tables show it rather than dropping the column.
        self.last_metrics[split] = metrics
        self.last_records[split] = {k: v.cpu() for k, v in rec.items()}
        self.last_predictions = {k: rec[k].cpu() for k in ("index", "pred", "target")}
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._banks, self._records = {}, {}

    def validation_step(self, batch: EvalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self.trainer.datamodule.val_splits[dataloader_idx])

    def on_validation_epoch_end(self) -> None:
        metrics = self._finish("val")
        if metrics:
            if not self.trainer.sanity_checking:
                self.best_val_srcc = max(self.best_val_srcc, metrics["srcc"])
            log = {f"val/{k}": v for k, v in metrics.items() if k != "srcc"}
            log["val/srcc_best"] = (
                self.best_val_srcc if math.isfinite(self.best_val_srcc) else metrics["srcc"]
            )
            self.log_dict(log)
            self.log("val/srcc", metrics["srcc"], prog_bar=True)
        # The release's protocol: the test split evaluated every epoch (reported apart, never used
        # for selection).
        test = self._finish("test")
        if test and not self.trainer.sanity_checking:
            self.test_history.append({"epoch": self.current_epoch, **test})
            self.log_dict({f"test_every_epoch/{k}": v for k, v in test.items()})

    def on_test_epoch_start(self) -> None:
        self._banks, self._records = {}, {}

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        metrics = self._finish("test")
        self.log_dict({f"test/{k}": v for k, v in metrics.items()})

    def paper_style_best(self) -> dict[str, float]:
        """The release's reported number: best test ρ and best test R-ℓ2 over epochs, each picked
        independently (needs ``dataset.test_every_epoch=true``; optimistic by construction)."""
        if not self.test_history:
            return {}
        srcc = [h["srcc"] for h in self.test_history if math.isfinite(h.get("srcc", math.nan))]
        rl2 = [h["rl2"] for h in self.test_history if math.isfinite(h.get("rl2", math.nan))]
        return {
            "paper_style_best_test/srcc": max(srcc, default=math.nan),
            "paper_style_best_test/rl2": min(rl2, default=math.nan),
        }

    # ---- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tpt_aqa"] = {
            "config": self.config,
            "best_val_srcc": self.best_val_srcc,
            "test_history": self.test_history,
            # dropout and augmentation draw from torch's generators: a resumed run continues them
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("tpt_aqa", {})
        self.best_val_srcc = state.get("best_val_srcc", -math.inf)
        self.test_history = list(state.get("test_history", []))
        if (
            self._trainer is not None and self._trainer.state.fn == "fit"
        ):  # resuming, not evaluating
            if "rng_cpu" in state:
                torch.set_rng_state(state["rng_cpu"])
            if state.get("rng_cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng_cuda"])
