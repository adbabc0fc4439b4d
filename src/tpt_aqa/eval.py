"""Re-evaluate a checkpoint on its test split: ``python -m tpt_aqa.eval ckpt_path=PATH`` (``USAGE``).

With ``write_bank=true`` it also (re)builds the checkpoint's exemplar bank for ``tpt_aqa.predict``
(``tpt_aqa.train`` writes one into the checkpoint it selects; other checkpoints get one this way).

The run's configuration is read from the checkpoint, so the exemplar lists and splits are rebuilt
exactly as in training. Keys under ``dataset`` can be changed for evaluation, e.g.
``+dataset.root=/new/location``, as can ``trainer`` and ``logger``, and ``eval_exemplars=per_group``
evaluates with one fixed list of M exemplars per group instead of the run's protocol
(``tpt_aqa.scoring.stage``); any other override (say ``+model.num_queries=3``) would be ignored, so
it is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from tpt_aqa.cli import run_command
from tpt_aqa.config import CONF_DIR, build_datamodule, build_module, require_keys, validate_config
from tpt_aqa.core.atomic import atomic_write_text
from tpt_aqa.core.cache import flatten
from tpt_aqa.core.errors import ConfigError, exit_on_user_error
from tpt_aqa.core.report import format_results, json_text
from tpt_aqa.core.startup import setup
from tpt_aqa.scoring.bank import attach_bank, build_bank
from tpt_aqa.training.runtime import build_trainer, load_checkpoint, without_pretrained_file

setup()  # resolver, warning filters, Lightning's tips (core.startup): before Hydra composes

log = logging.getLogger(__name__)
USAGE = (
    "python -m tpt_aqa.eval ckpt_path=PATH [write_bank=true] [eval_exemplars=per_group] "
    "[+dataset.root=/new/location]"
)


# The keys of conf/eval.yaml that ``run`` reads; the rest of the run's configuration is the
# checkpoint's.
READ_KEYS = (
    "task_name",
    "ckpt_path",
    "write_bank",
    "eval_exemplars",
    "dataset",
    "trainer",
    "logger",
    "paths",
)


def check_read_keys(cfg: DictConfig) -> None:
    """Refuse overrides evaluation would ignore (``+model.num_queries=3``): the model is the
    checkpoint's.

    Raises:
        ConfigError: naming the ignored overrides and the command that would use them.
    """
    ignored = [k for k in cfg if k not in READ_KEYS]
    if not ignored:
        return
    given = flatten(OmegaConf.to_container(cfg, resolve=False))
    shown = " ".join(
        f"{k}={v}"
        for k, v in given.items()
        if any(k == i or k.startswith(i + ".") for i in ignored)
    )
    raise ConfigError(
        f"{shown or ', '.join(ignored)}: not read by tpt_aqa.eval, which evaluates the model as the "
        "checkpoint stores it (only dataset.*, trainer.*, logger and eval_exemplars can change); drop the override, "
        f"or train a model with it: python -m tpt_aqa.train {shown}"
    )


def run(cfg: DictConfig) -> dict[str, float]:
    """Rebuild data and model from the checkpoint's config and test."""
    check_read_keys(cfg)
    ckpt, run_cfg = load_checkpoint(cfg.ckpt_path)
    without_pretrained_file(run_cfg)
    run_cfg.dataset = OmegaConf.merge(run_cfg.dataset, cfg.get("dataset") or {})
    run_cfg.trainer = OmegaConf.merge(run_cfg.trainer, cfg.trainer)
    run_cfg.paths = cfg.paths
    run_cfg.logger = cfg.get("logger")
    if cfg.get("eval_exemplars"):  # else the protocol the run was trained with
        run_cfg.eval_exemplars = cfg.eval_exemplars
    validate_config(run_cfg)
    L.seed_everything(run_cfg.seed, workers=True)
    dm = build_datamodule(run_cfg)
    if not dm.has_test:
        raise ConfigError(
            "the data has no test split (no video has split 'test'): nothing to evaluate; point "
            "+dataset.root= at data with test videos"
        )
    module = build_module(run_cfg)
    module.load_state_dict(ckpt["state_dict"])  # includes the fitted score groups
    module.on_load_checkpoint(ckpt)
    run_cfg.callbacks = None  # evaluation writes no checkpoints
    trainer = build_trainer(run_cfg, has_val=False)
    trainer.test(module, datamodule=dm, verbose=False)
    test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    if cfg.get("write_bank") and trainer.is_global_zero:
        bank = build_bank(module, dm, forward_context=trainer.precision_plugin.forward_context)
        attach_bank(cfg.ckpt_path, bank, module)
        log.info(
            "exemplar bank of %d videos (%.2f MiB) written to %s",
            len(bank),
            bank.nbytes / 2**20,
            cfg.ckpt_path,
        )
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            out / "results.json", json_text({"checkpoint": str(cfg.ckpt_path), **test})
        )
        log.info(format_results(test, f"Test metrics — {cfg.ckpt_path}"))
    return test


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    require_keys(cfg, USAGE)
    run(cfg)


if __name__ == "__main__":
    run_command(main, "eval")
