"""LightningModule: wiring of model, criterion, score groups and the score stage.

Training (docs/method.md §6): each batch holds (query, exemplar) pairs; both pair orders are scored and the
relative scores encoded into score groups. Evaluation (docs/method.md §7, ``tpt_aqa.scoring.stage``):
the exemplars of a split are encoded once per evaluation, each evaluated video once, and the
prediction is the vote over its M exemplars.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.optim import Optimizer
from torchmetrics import MaxMetric

from tpt_aqa.data.batch import EvalBatch, PairBatch
from tpt_aqa.models.tpt import TPT
from tpt_aqa.scoring.groups import ScoreGroups
from tpt_aqa.scoring.losses import LossMeans, TPTCriterion
from tpt_aqa.scoring.metrics import evaluate
from tpt_aqa.scoring.stage import EncodedExemplars, EvalRecords, check_protocol, encode_exemplars
from tpt_aqa.scoring.step_metrics import parsing_metrics
from tpt_aqa.training.faults import NONFINITE_ADVICE, restore_rng_states, rng_states


class AQAModule(L.LightningModule):
    """Train and evaluate a ``TPT`` model by contrastive group-aware regression.

    Args:
        model: the TPT composer.
        criterion: the named losses.
        score_groups: group edges, fitted on the training split in ``setup`` unless restored.
        optimizer: optimizer factory taking parameter groups (Hydra partial, e.g. Adam).
        lr: learning rate per parameter group: ``backbone``, ``body`` (parser and pair stage), ``heads``.
        config: the resolved run configuration, stored in checkpoints for ``tpt_aqa.eval``.
        eval_exemplars: ``per_video`` or ``per_group`` (``tpt_aqa.scoring.stage``).
    """

    def __init__(
        self,
        model: TPT,
        criterion: TPTCriterion,
        score_groups: ScoreGroups,
        optimizer: Callable[..., Optimizer],
        lr: dict[str, float],
        config: dict[str, Any] | None = None,
        eval_exemplars: str = "per_video",
    ) -> None:
        super().__init__()
        self.model, self.criterion, self.score_groups = model, criterion, score_groups
        self.optimizer_factory, self.lr, self.config = optimizer, dict(lr), config
        self.eval_exemplars = check_protocol(eval_exemplars)
        self.class_names: list[str] = ["all"]
        # best validation ρ so far, in float32 (NaN epochs ignored); the same on every rank, so
        # never synced
        self.val_srcc_best = MaxMetric(nan_strategy="ignore", sync_on_compute=False)
        self.records = torch.nn.ModuleDict({s: EvalRecords(s) for s in ("val", "test")})
        self.train_losses = LossMeans()
        self.last_metrics: dict[str, dict[str, float]] = {}
        # each split's latest gathered records (EvalRecords), on the CPU: what plots and callbacks read
        self.last_records: dict[str, dict[str, torch.Tensor]] = {}
        self.test_history: list[dict[str, float]] = []
        self._exemplars: dict[str, EncodedExemplars] = {}

    @property
    def best_val_srcc(self) -> float:
        """The best validation ρ so far (``-inf`` before the first)."""
        best = self.val_srcc_best
        return float(best.compute()) if best.update_count else -math.inf

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.class_names = list(dm.class_names)
        if not bool(self.score_groups.fitted):
            self.score_groups.fit(dm.train_deltas(), dm.delta_cap)

    def configure_optimizers(self) -> Optimizer:
        groups = [{"params": p, "lr": self.lr[n], "name": n} for n, p in self.model.param_groups()]
        return self.optimizer_factory(groups)  # config.learning_rates has a rate for each group

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
        if not torch.isfinite(losses["loss"]):  # one device sync a step: any bad term makes it bad
            bad = ", ".join(f"{k}={v.item()}" for k, v in losses.items() if not torch.isfinite(v))
            raise FloatingPointError(
                f"{bad} at epoch {self.current_epoch}, step {self.global_step}; {NONFINITE_ADVICE}"
            )
        self.train_losses.update(losses, len(batch.query))
        return losses["loss"]

    def on_train_epoch_end(self) -> None:
        if self.train_losses.update_count:  # means over all ranks' pairs
            self.log_dict({f"train/{k}": v for k, v in self.train_losses.compute().items()})
        self.train_losses.reset()

    # ---- evaluation ------------------------------------------------------------------------
    def _eval_step(self, batch: EvalBatch, batch_idx: int, split: str) -> None:
        if batch_idx == 0:  # a new evaluation of the split: its exemplars with today's weights
            t = self.trainer  # a smoke test evaluates a few batches: only their exemplars
            first = int(t.fast_dev_run) * t.datamodule.eval_batch_size if t.fast_dev_run else None
            self._exemplars[split] = encode_exemplars(
                self.model, t.datamodule, split, self.eval_exemplars,
                lambda videos: self.transfer_batch_to_device(videos, self.device, 0),
                shard=(t.global_rank, t.world_size, first),
            )  # fmt: skip
        q = batch.query
        parsed = self.model.encode(q.video)
        pred = self._exemplars[split].predict(self.model, self.score_groups, parsed.parts, q)
        self.records[split].update(q, pred, parsed.attn)

    def _finish(self, split: str) -> dict[str, float]:
        self._exemplars.pop(split, None)
        if not self.records[split].update_count:
            return {}
        rec = {k: v.cpu() for k, v in self.records[split].compute().items()}
        self.records[split].reset()
        metrics = evaluate(rec["pred"], rec["target"], rec["class_id"], self.class_names)
        if "attn" in rec:  # step-level parsing where the steps are known (docs/method.md §7)
            metrics |= parsing_metrics(rec["attn"], rec["clip_labels"])
        # Undefined metrics stay NaN (evaluate warned why): selection treats a NaN ρ as the worst
        self.last_metrics[split], self.last_records[split] = metrics, rec
        return metrics

    def validation_step(self, batch: EvalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, batch_idx, self.trainer.datamodule.val_splits[dataloader_idx])

    def on_validation_epoch_end(self) -> None:
        if metrics := self._finish("val"):
            if not self.trainer.sanity_checking:
                self.val_srcc_best.update(metrics["srcc"])
            best = self.best_val_srcc
            log = {f"val/{k}": v for k, v in metrics.items() if k != "srcc"}
            self.log_dict(
                {**log, "val/srcc_best": best if math.isfinite(best) else metrics["srcc"]}
            )
            self.log("val/srcc", metrics["srcc"], prog_bar=True)
        # The release's protocol: the test split evaluated every epoch (reported apart, never used
        # for selection).
        test = self._finish("test")
        if test and not self.trainer.sanity_checking:
            self.test_history.append({"epoch": self.current_epoch, **test})
            self.log_dict({f"test_every_epoch/{k}": v for k, v in test.items()})

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{k}": v for k, v in self._finish("test").items()})

    # ---- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tpt_aqa"] = {
            "config": self.config,
            "best_val_srcc": self.best_val_srcc,
            "test_history": self.test_history,
            **rng_states(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("tpt_aqa", {})
        self.val_srcc_best.reset()
        if math.isfinite(best := state.get("best_val_srcc", -math.inf)):
            self.val_srcc_best.update(best)
        self.test_history = list(state.get("test_history", []))
        if self._trainer is not None and self._trainer.state.fn == "fit":  # resuming a run
            restore_rng_states(state)
