"""Weights & Biases dashboards for training runs (``logger=wandb``).

Usage::

    python -m tpt_aqa.train logger=wandb                        # offline: no key, no network
    python -m tpt_aqa.train logger=wandb logger.wandb.offline=false   # online (after wandb login)
    wandb sync outputs/train/runs/<time>/wandb/offline-run-*    # upload offline runs later

``build_logger`` (the ``_target_`` of ``conf/logger/wandb.yaml``) names each run after its setting:
``<experiment>[+<ablation>]-seed<seed>`` (e.g. ``mtl_aqa_tpt+no_rank_loss-seed12``), grouped by
``<experiment>[+<ablation>]`` so the seeds of one setting are averaged together, and tagged with
the dataset, experiment and ablation. The names come from Hydra's runtime choices when the run
was started by ``python -m tpt_aqa.train``; without Hydra (tests, notebooks) from ``task_name``
and ``seed``. Values swept by a ``conf/sweep`` grid other than the seed (e.g.
``model.num_queries=3``) join the group. ``logger.wandb.name``/``group``/``tags`` override all
of it. The summary keeps the best ``val/srcc`` (max) and ``val/rl2`` (min), so the runs table sorts
by best ρ; ``tpt_aqa.train`` logs the full resolved configuration as the run's config.

``WandbFigures`` (in ``conf/callbacks/default.yaml``) adds pictures at every validation: the
predicted-vs-true scatter of the validation split and the cross-attention maps of every decoder
layer for the first validation videos. It does nothing without a ``WandbLogger``.

W&B never stops a run: when wandb cannot be imported or initialised the factory warns and returns
a ``CSVLogger`` in the same folder, and a figure that cannot be logged only warns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure

from tpt_aqa.data.batch import collate_videos
from tpt_aqa.reporting import viz
from tpt_aqa.scoring.step_metrics import METRICS as PARSING_METRICS

log = logging.getLogger(__name__)

STEP_METRIC = "trainer/global_step"  # WandbLogger's x axis
# How each evaluation metric is summarised in the runs table (exact names: W&B matches globs in no
# fixed order, and WandbLogger's "*" would compete with them).
SUMMARIES = {
    "srcc": "max",
    "rl2": "min",
    "srcc_avg": "max",
    "rl2_avg": "min",
    **PARSING_METRICS,
}
# Swept keys that the name has already (or, for the seed, keeps out of the group).
IDENTITY_EXCLUDED = ("seed", "experiment", "ablation")


@dataclass(frozen=True)
class RunIdentity:
    """How a run appears in W&B.

    Attributes:
        name: run name, ``<setting>-seed<seed>``.
        group: the setting, shared by the seeds of one configuration.
        tags: short labels (dataset, experiment, ablation).
    """

    name: str
    group: str
    tags: list[str] = field(default_factory=list)


def hydra_context() -> tuple[dict[str, str | None], list[str]]:
    """Hydra's config-group choices and the swept overrides of this job, if run under Hydra.

    Returns:
        ``({"dataset": "mtl_aqa", "experiment": ..., "ablation": ...}, ["model.num_queries=3"])``,
        or ``({}, [])`` outside ``@hydra.main`` (tests, notebooks).
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}, []
    hydra_cfg = HydraConfig.get()
    choices = {
        str(k): (None if v is None else str(v)) for k, v in hydra_cfg.runtime.choices.items()
    }
    swept_keys = set((hydra_cfg.sweeper.get("params") or {}).keys()) - set(IDENTITY_EXCLUDED)
    swept = [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept_keys]
    return choices, swept


def run_identity(
    seed: int | None,
    task_name: str = "train",
    choices: Mapping[str, str | None] | None = None,
    swept: Sequence[str] = (),
) -> RunIdentity:
    """Name, group and tags of a run from its experiment, ablation, swept values and seed.

    Args:
        seed: the run's seed.
        task_name: the setting when no experiment was chosen (outside Hydra).
        choices: Hydra's config-group choices (``hydra.runtime.choices``).
        swept: ``key=value`` overrides of a sweep grid that define the setting besides the seed.

    Returns:
        e.g. name ``mtl_aqa_tpt+no_rank_loss-seed12``, group ``mtl_aqa_tpt+no_rank_loss``,
        tags ``["mtl_aqa", "mtl_aqa_tpt", "no_rank_loss"]``.
    """
    choices = dict(choices or {})
    experiment = choices.get("experiment") or task_name
    ablation = choices.get("ablation")
    if ablation in (None, "none"):
        ablation = None
    group = experiment + (f"+{ablation}" if ablation else "")
    if swept:
        group += "," + ",".join(swept)
    name = group if seed is None else f"{group}-seed{seed}"
    tags = [t for t in (choices.get("dataset"), experiment, ablation) if t]
    return RunIdentity(name=name, group=group, tags=list(dict.fromkeys(tags)))


def build_logger(
    project: str = "tpt_aqa",
    save_dir: str = ".",
    offline: bool = True,
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] | None = None,
    seed: int | None = None,
    task_name: str = "train",
    **kwargs: Any,
) -> Logger:
    """A ``WandbLogger`` for this run, or a ``CSVLogger`` when wandb cannot start.

    The W&B run is started here (on rank zero), so that a missing package, a missing API key or a
    refused connection is found before training, not in the middle of it.

    Args:
        project: W&B project.
        save_dir: the run folder; wandb writes ``<save_dir>/wandb/``.
        offline: log to disk only (``wandb sync`` uploads later).
        name: run name; default from experiment, ablation and seed (``run_identity``).
        group: run group; default the setting without the seed.
        tags: run tags; default dataset, experiment and ablation.
        seed: the run's seed, for the default name.
        task_name: the setting's name outside Hydra.
        **kwargs: further ``WandbLogger``/``wandb.init`` arguments (``entity``, ``notes``…).

    Returns:
        The logger: W&B, or CSV in ``<save_dir>/csv`` after a warning.
    """
    identity = run_identity(seed, task_name, *hydra_context())
    try:
        import wandb

        if wandb.run is not None:  # the previous job of an in-process multirun
            log.info("finishing the W&B run %s before starting a new one", wandb.run.name)
            wandb.finish()
        logger = WandbLogger(
            project=project,
            save_dir=save_dir,
            offline=offline,
            name=name or identity.name,
            group=group or identity.group,
            tags=list(tags) if tags is not None else identity.tags,
            **kwargs,
        )
        # Lightning 2.6 always passes `anonymous`, which wandb 0.31 only warns about
        getattr(logger, "_wandb_init", {}).pop("anonymous", None)
        define_summaries(logger.experiment)
    except Exception as exc:  # any failure to start W&B: keep the run going with CSV metrics
        rank_zero_warn(
            f"W&B could not start ({type(exc).__name__}: {exc}); logging to CSV in {save_dir}/csv "
            "instead. Set logger.wandb.offline=true (no key or network needed), or run `wandb "
            "login`, or use logger=csv.",
            category=RuntimeWarning,
        )
        return CSVLogger(save_dir=save_dir, name="csv")
    return logger


def define_summaries(run: Any, class_names: Sequence[str] = ()) -> None:
    """Summarise validation metrics by their best value (the runs table sorts by best ρ), test
    metrics by their last.

    Args:
        run: the wandb run.
        class_names: classes with per-class metrics (``srcc_<name>``, ``rl2_<name>``).
    """
    summaries = dict(SUMMARIES)
    if len(class_names) > 1:  # per-class metrics exist with two or more classes
        for name in class_names:
            summaries[f"srcc_{name}"] = "max"
            summaries[f"rl2_{name}"] = "min"
    metrics = {"val/srcc_best": "max"}
    for key, best in summaries.items():
        metrics[f"val/{key}"] = best
        metrics[f"test_every_epoch/{key}"] = best
        metrics[f"test/{key}"] = "last"
    for name, summary in metrics.items():
        run.define_metric(name, step_metric=STEP_METRIC, summary=summary)


def _wandb_logger(trainer: L.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def _image(fig: Figure) -> np.ndarray:
    """A figure rendered to an RGB array ``(H,W,3)``."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


class WandbFigures(Callback):
    """Log figures to W&B after every validation: the predicted-vs-true scatter of the split and
    the attention maps of its first ``num_videos`` videos (every decoder layer).

    Reads the predictions the module gathered (``AQAModule.last_records``) and encodes the few
    fixed videos once more, on rank zero, for the maps of all layers. Without a ``WandbLogger``
    it returns at once; pooling parsers (no attention) get the scatter only.

    Args:
        num_videos: videos whose attention maps are logged (the split's first rows).
        split: evaluated split to picture.
    """

    def __init__(self, num_videos: int = 2, split: str = "val") -> None:
        super().__init__()
        self.num_videos = num_videos
        self.split = split

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = _wandb_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        try:
            define_summaries(logger.experiment, list(pl_module.class_names))
        except Exception as exc:
            rank_zero_warn(f"W&B summaries not defined ({type(exc).__name__}: {exc})")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        logger = _wandb_logger(trainer)
        records = getattr(pl_module, "last_records", {}).get(self.split)
        if logger is None or not records:
            return
        try:
            self._log(trainer, pl_module, logger, records)
        except Exception as exc:  # figures are a view on the run, never a reason to stop it
            rank_zero_warn(
                f"W&B figures of epoch {trainer.current_epoch} not logged "
                f"({type(exc).__name__}: {exc}); training continues",
                category=RuntimeWarning,
            )

    def _log(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        logger: WandbLogger,
        records: dict[str, torch.Tensor],
    ) -> None:
        epoch, step = trainer.current_epoch, trainer.global_step
        fig = viz.scatter(
            records["pred"],
            records["target"],
            class_ids=records["class_id"],
            class_names=list(pl_module.class_names),
            title=f"{self.split}, epoch {epoch}",
        )
        logger.log_image(f"{self.split}/scatter", [_image(fig)], step=step)
        if "attn" not in records or self.num_videos <= 0:  # pooling parser: nothing attends
            return
        maps = self.attention_figures(trainer, pl_module, records)
        if maps:
            captions, figs = zip(*maps, strict=True)
            images = [_image(f) for f in figs]
            logger.log_image(f"{self.split}/attention", images, step=step, caption=list(captions))

    @torch.no_grad()
    def attention_figures(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        records: dict[str, torch.Tensor],
    ) -> list[tuple[str, Figure]]:
        """Attention maps of every decoder layer for the split's first videos.

        Returns:
            ``(video id, figure)`` per video; empty when the parser returns no attention.
        """
        dm = trainer.datamodule
        rows = dm.table.rows(self.split)[: self.num_videos]
        predicted = dict(zip(records["index"].tolist(), records["pred"].tolist(), strict=True))
        precision = trainer.precision_plugin
        model = pl_module.model
        was_training = model.training
        model.eval()
        out = []
        try:
            for row in rows.tolist():
                videos = collate_videos([dm.sample(row, "test")])
                video = precision.convert_input(videos.video.to(pl_module.device))
                with precision.val_step_context():
                    attn = model.encode(video).attn  # (1, Y, T, K)
                if attn is None:
                    return []
                labels = videos.clip_labels[0]
                vid = dm.table.ids[row]
                truth = float(videos.target[0] * videos.scale[0])
                title = f"{vid}: true {truth:.2f}"
                if row in predicted:
                    title += f", predicted {predicted[row]:.2f}"
                fig = viz.attention_map(
                    attn[0].float().cpu(),
                    clip_labels=labels if bool((labels >= 0).any()) else None,
                    title=f"{title} (epoch {trainer.current_epoch})",
                )
                out.append((vid, fig))
        finally:
            model.train(was_training)
        return out
