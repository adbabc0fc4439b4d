"""Train, then test the checkpoint chosen on validation: ``python -m tpt_aqa.train [overrides]``."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from tpt_aqa.cli import run_command
from tpt_aqa.config import CONF_DIR, build_datamodule, build_module, validate_train_config
from tpt_aqa.core.atomic import atomic_write_text
from tpt_aqa.core.checkpoints import (
    check_state_fits,
    config_differences,
    outline,
    read_checkpoint,
    stored_config,
)
from tpt_aqa.core.errors import ConfigError, exit_on_user_error
from tpt_aqa.core.report import format_results, json_text
from tpt_aqa.core.startup import setup
from tpt_aqa.scoring.bank import attach_bank, build_bank
from tpt_aqa.training.run_folder import RESULTS, hold_run_folder, written_after_results
from tpt_aqa.training.runtime import apply_global_batch, build_trainer, fit_precision

setup()  # resolver, warning filters, Lightning's tips (core.startup): before Hydra composes

log = logging.getLogger(__name__)


def check_multirun_strategy(cfg: DictConfig) -> None:
    """Refuse the combination known to fail: Lightning's ``ddp`` (which re-launches the script for
    every extra device) inside a local Hydra multirun, where each child would start its own sweep."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # not running under @hydra.main (tests, notebooks)
        return
    local = "BasicLauncher" in str(hydra_cfg.launcher.get("_target_", ""))
    devices = cfg.trainer.get("devices", 1)
    several = not (isinstance(devices, int) and 0 <= devices <= 1)  # -1, "auto", lists count
    if (
        hydra_cfg.mode == RunMode.MULTIRUN
        and local
        and cfg.trainer.get("strategy") == "ddp"
        and several
    ):
        raise ConfigError(
            "trainer.strategy=ddp inside a local multirun (-m) makes every child start its own sweep: "
            "use trainer.strategy=ddp_spawn, one device per job, or a cluster launcher that starts one "
            "job per grid point (DDP inside the job)"
        )


# ablations that swap the parser (conf/ablation), and the parser each swaps in
PARSER_ABLATIONS = {
    "adaptive_pool": "adaptive_pool",
    "temporal_conv": "temporal_conv",
    "baseline_pool": "mean_pool",
}


def parser_ablation_conflict(choices: dict) -> str | None:
    """Why the chosen ``ablation`` and ``model/parser`` cannot both hold, or ``None``.

    A parser named on the command line wins over the one an ablation swaps in, so
    ``model/parser=align ablation=adaptive_pool`` would silently train ``align`` (and
    ``ablation=baseline_pool`` would give it a single query).
    """
    ablation, parser = choices.get("ablation"), choices.get("model/parser")
    wanted = PARSER_ABLATIONS.get(str(ablation))
    if wanted is None or parser in (None, wanted):
        return None
    return (
        f"ablation={ablation} replaces the parser with model/parser={wanted}, but "
        f"model/parser={parser} was chosen: drop model/parser={parser} to run the ablation, or "
        f"drop ablation={ablation} to run {parser}"
    )


def check_parser_ablation() -> None:
    """Refuse an ablation that swaps the parser together with another parser (under Hydra)."""
    try:
        choices = dict(HydraConfig.get().runtime.choices)
    except ValueError:  # not running under @hydra.main (tests, notebooks)
        return
    if problem := parser_ablation_conflict(choices):
        raise ConfigError(problem)


# Speed switches: settings that compute the same function faster, so a resumed run may change them.
SPEED_KEYS = (
    "model.compile_encoder",
    "model.compile_decoder",
    "model.encoder.fold_bn",
    "optim.optimizer.implementation",
    "trainer.benchmark",
)
# Keys that name where a run writes or what it resumes, not what it computes, and the speed
# switches: a run may continue an interrupted one whatever their values.
RUN_LOCAL_KEYS = (
    "ckpt_path", "paths", "logger", "callbacks", "trainer.default_root_dir", *SPEED_KEYS
)  # fmt: skip


def interrupted_checkpoint(cfg: DictConfig) -> str | None:
    """``checkpoints/sigterm.ckpt`` of this run's folder, when a SIGTERM stopped an earlier start
    of the same run (a SLURM job requeued after preemption reuses its folder): resume from it.

    A checkpoint older than the folder's ``results.json`` was left by an earlier run that finished
    after it (written before these checkpoints were consumed on resume): it is not resumed.

    Raises:
        ConfigError: when the checkpoint was written with other settings (they are listed).
        CheckpointError: when it cannot be read.
    """
    ckpt_cfg = (cfg.get("callbacks") or {}).get("model_checkpoint")
    signal_cfg = (cfg.get("callbacks") or {}).get("checkpoint_on_signal")
    if not ckpt_cfg or not signal_cfg:
        return None
    from tpt_aqa.training.faults import CheckpointOnSignal

    folder = signal_cfg.get("dirpath") or ckpt_cfg.dirpath
    path = Path(folder) / CheckpointOnSignal.FILENAME
    if not path.is_file():
        return None
    if not written_after_results(path, Path(cfg.paths.output_dir)):
        log.warning("not resuming from %s: the run's %s was written after it", path, RESULTS)
        return None
    saved = stored_config(read_checkpoint(path)) or {}
    differ = config_differences(
        saved, OmegaConf.to_container(cfg, resolve=True), ignore=RUN_LOCAL_KEYS
    )
    if differ:
        shown = "; ".join(f"{k}={now} (it has {was})" for k, was, now in differ[:5])
        more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
        raise ConfigError(
            f"{path} is the checkpoint of an interrupted run with other settings: {shown}{more}. "
            "Start with that run's settings to resume it, pass "
            f"ckpt_path={path} to resume it with these, or start this run in another folder "
            "(hydra.run.dir=…)"
        )
    log.warning("resuming from %s, written when an earlier start of this run was stopped", path)
    return str(path)


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit, select, test; returns the test metrics and writes them to ``results.json``.

    Before anything is written: a ``ckpt_path`` (or the folder's interrupted checkpoint) is read
    and checked against the model, every output location is checked writable, and the output
    folder is taken for this run (``tpt_aqa.training.run_folder``).

    Without test videos, the selected checkpoint's validation metrics and predictions are
    reported instead, labelled as such (``evaluated_split``, ``val/…``, ``predictions.split``).
    """
    validate_train_config(cfg)
    check_multirun_strategy(cfg)
    check_parser_ablation()
    fit_precision(cfg)  # before anything records the configuration
    resume_outline = None
    resume = cfg.get("ckpt_path")
    if resume:
        resume_outline = outline(read_checkpoint(resume))
    else:
        resume = interrupted_checkpoint(cfg)
    if resume and (cfg.get("callbacks") or {}).get("model_checkpoint"):
        # keep writing into the resumed run's checkpoint folder, so the best-so-far checkpoint and
        # score carry over (Lightning restores them only for the same folder)
        cfg.callbacks.model_checkpoint.dirpath = str(Path(resume).resolve().parent)
    if cfg.trainer.get("max_epochs") == -1:
        log.info("trainer.max_epochs=-1: training until stopped (Ctrl-C, or a SIGTERM)")
    L.seed_everything(cfg.seed, workers=True)
    # fp32 CPU results repeat to the digit only at the same thread count (README, speed)
    log.info("torch %s, %d CPU threads", torch.__version__, torch.get_num_threads())
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    if resume_outline is not None:
        check_state_fits(resume, *resume_outline, module.state_dict(), module.config)
    with hold_run_folder(cfg, resume):
        return _fit_and_test(cfg, dm, module, resume)


def _fit_and_test(cfg: DictConfig, dm, module, resume: str | None) -> dict[str, Any]:
    """The run itself, in the folder ``run`` holds."""
    trainer = build_trainer(cfg, has_val=dm.has_val, evaluates=bool(dm.val_splits))
    apply_global_batch(cfg, trainer, dm)
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    paper_style = paper_style_best(module.test_history)  # before a checkpoint load replaces it
    results: dict[str, Any] = {}
    ckpt = trainer.checkpoint_callback
    chosen = ckpt.best_model_path if (ckpt and dm.has_val) else ""
    selection = "best val/srcc" if chosen else "last epoch"
    split = "test" if dm.has_test else "val" if dm.has_val else None
    if chosen and split == "test":  # the last epoch's weights are still in memory: test them first
        results.update(_evaluate(trainer, module, dm, None, "test", prefix="last_epoch_test/"))
    if not chosen and ckpt:
        chosen = ckpt.last_model_path
    if not ckpt:
        selection = "last epoch, not saved" + (" (fast_dev_run)" if trainer.fast_dev_run else "")
    if split != "test":
        log.warning(
            "there is no test split (no video has split 'test'): %s",
            "results.json holds validation metrics (val/…) and predictions labelled "
            '"split": "val", from the split that chose the checkpoint; add test videos for a '
            "test score"
            if split
            else "nothing is evaluated; add test videos for a test score",
        )
    metrics = (
        _evaluate(trainer, module, dm, chosen or None, split, prefix=f"{split}/") if split else {}
    )
    results = {
        "checkpoint": chosen,
        "best_val_srcc": module.best_val_srcc,
        "evaluated_split": split,
        **metrics,
        **results,
    }
    results.update(paper_style)
    if trainer.fast_dev_run:  # one batch per stage: tpt_aqa.aggregate leaves it out
        results["smoke_test"] = True
    if split:
        preds = module.last_records[split]  # of the final evaluation: the chosen checkpoint
        results["predictions"] = {
            "split": split,
            "ids": [dm.table.ids[int(i)] for i in preds["index"]],
            "pred": preds["pred"].double().tolist(),
            "target": preds["target"].double().tolist(),
        }
    out = Path(cfg.paths.output_dir)
    if trainer.is_global_zero and chosen:
        # the selected weights are in memory (the last evaluation loaded them): store what scoring
        # a new video needs in their checkpoint (tpt_aqa.predict)
        bank = build_bank(module, dm, forward_context=trainer.precision_plugin.forward_context)
        attach_bank(chosen, bank, module)
        results["bank_mib"] = round(bank.nbytes / 2**20, 3)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / RESULTS, json_text(results))
        title = {
            "test": "Test metrics",
            "val": "No test split. Validation metrics (the split that chose the checkpoint)",
            None: "No test split and no validation split: nothing evaluated",
        }[split]
        log.info(format_results(metrics, f"{title} (checkpoint: {selection}) — {out}"))
        others = {k: v for k, v in results.items() if k.startswith(("last_epoch_test/", "paper_"))}
        if others:
            log.info(format_results(others, "\nFor reference (not model selection)"))
    return results


def paper_style_best(history: list[dict[str, float]]) -> dict[str, float]:
    """The release's reported number: best test ρ and best test R-ℓ2 over the epochs of
    ``history`` (``AQAModule.test_history``), each picked independently (needs
    ``dataset.test_every_epoch=true``; optimistic by construction)."""
    if not history:
        return {}
    srcc = [h["srcc"] for h in history if math.isfinite(h.get("srcc", math.nan))]
    rl2 = [h["rl2"] for h in history if math.isfinite(h.get("rl2", math.nan))]
    return {
        "paper_style_best_test/srcc": max(srcc, default=math.nan),
        "paper_style_best_test/rl2": min(rl2, default=math.nan),
    }


def _evaluate(
    trainer: L.Trainer, module, dm, ckpt_path: str | None, split: str, prefix: str
) -> dict[str, float]:
    """Metrics of ``ckpt_path`` (or of the weights in memory) on ``split`` ("test" or "val"),
    renamed with ``prefix``."""
    if split == "test":
        trainer.test(module, datamodule=dm, ckpt_path=ckpt_path, verbose=False)
    else:
        trainer.validate(module, datamodule=dm, ckpt_path=ckpt_path, verbose=False)
    return {prefix + k: float(v) for k, v in module.last_metrics[split].items()}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    results = run(cfg)
    return results.get(cfg.get("optimized_metric", "test/srcc"))


if __name__ == "__main__":
    run_command(main, "train", validate=validate_train_config)
