"""Train, then test the checkpoint chosen on validation: ``python -m tpt_aqa.train [overrides]``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tpt_aqa.bank import attach_bank, build_bank
from tpt_aqa.cli import run_command
from tpt_aqa.config import (
    CONF_DIR,
    ConfigError,
    build_datamodule,
    build_module,
    exit_on_user_error,
    validate_config,
)

log = logging.getLogger(__name__)


def build_trainer(cfg: DictConfig, has_val: bool, evaluates: bool | None = None) -> L.Trainer:
    """The Lightning trainer with the configured callbacks and loggers.

    Without a validation split, checkpoint selection falls back to the last epoch; ``evaluates``
    (default ``has_val``) says whether validation passes run at all.
    """
    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None:
            continue
        if name == "model_checkpoint" and not has_val:
            cb_cfg = OmegaConf.merge(cb_cfg, {"monitor": None, "mode": "max"})
        callbacks.append(instantiate(cb_cfg))
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:  # the full resolved configuration (W&B: the run's config)
        logger.log_hyperparams(config)
    extra: dict[str, Any] = {}
    if not (has_val if evaluates is None else evaluates):
        extra["limit_val_batches"] = 0
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)


def apply_global_batch(cfg: DictConfig, trainer: L.Trainer, dm) -> None:
    """Keep the experiment's global batch whatever the number of devices.

    ``global_batch_size`` pairs per optimizer step are split over the devices; when a device's share
    exceeds ``max_device_batch_size`` it is accumulated over several steps. With frozen BatchNorm
    statistics this gives the same gradients as one large batch (dropout aside).
    """
    total = cfg.get("global_batch_size")
    if not total:
        return
    devices = trainer.num_devices * trainer.num_nodes
    if total % devices:
        raise ConfigError(
            f"global_batch_size={total} does not split over {devices} devices: "
            "choose a multiple of the device count"
        )
    share = total // devices
    limit = cfg.get("max_device_batch_size") or share
    accumulate = -(-share // limit)
    while share % accumulate:
        accumulate += 1
    dm.batch_size = share // accumulate
    trainer.accumulate_grad_batches = accumulate
    log.info(
        "global batch %d = %d devices x %d pairs x %d accumulation steps",
        total,
        devices,
        dm.batch_size,
        accumulate,
    )


def format_results(results: dict[str, float], title: str) -> str:
    """A short plain-text table of metrics."""
    width = max(len(k) for k in results) if results else 0
    lines = [title, "-" * max(len(title), width + 12)]
    lines += [f"{k:<{width}}  {v:10.4f}" for k, v in results.items()]
    return "\n".join(lines)


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


def interrupted_checkpoint(cfg: DictConfig) -> str | None:
    """``checkpoints/sigterm.ckpt`` of this run's folder, when a SIGTERM stopped an earlier start
    of the same run (a SLURM job requeued after preemption reuses its folder): resume from it."""
    ckpt_cfg = (cfg.get("callbacks") or {}).get("model_checkpoint")
    signal_cfg = (cfg.get("callbacks") or {}).get("checkpoint_on_signal")
    if not ckpt_cfg or not signal_cfg:
        return None
    from tpt_aqa.faults import CheckpointOnSignal

    folder = signal_cfg.get("dirpath") or ckpt_cfg.dirpath
    path = Path(folder) / CheckpointOnSignal.FILENAME
    if not path.is_file():
        return None
    log.warning("resuming from %s, written when an earlier start of this run was stopped", path)
    return str(path)


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit, select, test; returns the test metrics and writes them to ``results.json``."""
    validate_config(cfg)
    check_multirun_strategy(cfg)
    resume = cfg.get("ckpt_path") or interrupted_checkpoint(cfg)
    if resume and (cfg.get("callbacks") or {}).get("model_checkpoint"):
        if not Path(resume).is_file():
            raise ConfigError(f"ckpt_path={resume} is not a file: pass a checkpoint to resume from")
        # keep writing into the resumed run's checkpoint folder, so the best-so-far checkpoint and
        # score carry over (Lightning restores them only for the same folder)
        cfg.callbacks.model_checkpoint.dirpath = str(Path(resume).resolve().parent)
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = build_trainer(cfg, has_val=dm.has_val, evaluates=bool(dm.val_splits))
    apply_global_batch(cfg, trainer, dm)
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    paper_style = module.paper_style_best()  # before a checkpoint load replaces the history
    results: dict[str, Any] = {}
    ckpt = trainer.checkpoint_callback
    chosen = ckpt.best_model_path if (ckpt and dm.has_val) else ""
    if chosen:  # the last epoch's weights are still in memory: test them first
        results.update(_test(trainer, module, dm, None, prefix="last_epoch_test/"))
    elif ckpt:
        chosen = ckpt.last_model_path
    test = _test(trainer, module, dm, chosen or None, prefix="test/")
    results = {"checkpoint": chosen, "best_val_srcc": module.best_val_srcc, **test, **results}
    results.update(paper_style)
    preds = module.last_predictions  # of the final test: the chosen checkpoint
    results["predictions"] = {
        "ids": [dm.table.ids[int(i)] for i in preds["index"]],
        "pred": preds["pred"].double().tolist(),
        "target": preds["target"].double().tolist(),
    }
    out = Path(cfg.paths.output_dir)
    if trainer.is_global_zero and chosen:
        # the selected weights are in memory (the last test loaded them): store what scoring a
        # new video needs in their checkpoint (tpt_aqa.predict)
        bank = build_bank(module, dm, forward_context=trainer.precision_plugin.forward_context)
        attach_bank(chosen, bank, module)
        results["bank_mib"] = round(bank.nbytes / 2**20, 3)
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        selection = "best val/srcc" if dm.has_val else "last epoch"
        print(format_results(test, f"Test metrics (checkpoint: {selection}) — {out}"))
        others = {k: v for k, v in results.items() if k.startswith(("last_epoch_test/", "paper_"))}
        if others:
            print(format_results(others, "\nFor reference (not model selection)"))
    return results


def _test(trainer: L.Trainer, module, dm, ckpt_path: str | None, prefix: str) -> dict[str, float]:
    """Test metrics of ``ckpt_path`` (or of the weights in memory), renamed with ``prefix``."""
    trainer.test(module, datamodule=dm, ckpt_path=ckpt_path, verbose=False)
    return {
        prefix + k.removeprefix("test/"): float(v)
        for k, v in trainer.callback_metrics.items()
        if k.startswith("test/")
    }


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float | None:
    results = run(cfg)
    return results.get(cfg.get("optimized_metric", "test/srcc"))


if __name__ == "__main__":
    run_command(main, "train", validate=validate_config)
