"""The trainer and what the commands share around it: the batch rule, reading a trained checkpoint
with its configuration, the autocast of a run's precision and the Adam of ``optim.optimizer``.

The commands (``train``, ``eval``, ``predict``, ``convert``, …) build on this module rather than on
each other (``tests/test_imports.py`` checks that they never import each other).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks.progress import ProgressBar as ProgressBarBase
from omegaconf import DictConfig, OmegaConf

from tpt_aqa.core.checkpoints import read_checkpoint, stored_config
from tpt_aqa.core.errors import ConfigError

log = logging.getLogger(__name__)
# callbacks that write checkpoints, left out of a smoke test (debug=fast_dev_run)
CHECKPOINT_CALLBACKS = ("model_checkpoint", "checkpoint_on_signal")


def build_trainer(cfg: DictConfig, has_val: bool, evaluates: bool | None = None) -> L.Trainer:
    """The Lightning trainer with the configured callbacks and loggers.

    Without a validation split, checkpoint selection falls back to the last epoch; ``evaluates``
    (default ``has_val``) says whether validation passes run at all.
    """
    callbacks = []
    smoke_test = bool(cfg.trainer.get("fast_dev_run"))
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None:
            continue
        if smoke_test and name in CHECKPOINT_CALLBACKS:
            continue  # Lightning would still write last.ckpt at the end of a fast_dev_run
        if name == "model_checkpoint" and not has_val:
            cb_cfg = OmegaConf.merge(cb_cfg, {"monitor": None, "mode": "max"})
        callbacks.append(instantiate(cb_cfg))
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    config = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:  # the full resolved configuration (W&B: the run's config)
        logger.log_hyperparams(config)
    # without a configured bar (callbacks.progress_bar=null), none: Lightning would add its own
    extra: dict[str, Any] = {
        "enable_progress_bar": any(isinstance(c, ProgressBarBase) for c in callbacks)
    }
    if smoke_test:
        extra["enable_checkpointing"] = False
    if not (has_val if evaluates is None else evaluates):
        extra["limit_val_batches"] = 0
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)


def split_batch(cfg: DictConfig, devices: int) -> tuple[int, int]:
    """The one batch-size rule: ``global_batch_size`` pairs per optimizer step, over ``devices``.

    Each device takes an equal share; a share larger than ``max_device_batch_size`` is accumulated
    over the fewest steps whose per-device batches are equal and within the cap. With frozen
    BatchNorm statistics this gives the gradients of one large batch (dropout aside).

    Returns:
        ``(pairs per device and step, gradient-accumulation steps)``.

    Raises:
        ConfigError: when ``global_batch_size`` does not split over the devices.
    """
    total = cfg.global_batch_size
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
    return share // accumulate, accumulate


def apply_global_batch(cfg: DictConfig, trainer: L.Trainer, dm) -> None:
    """Size the datamodule's batches and the trainer's accumulation for the trainer's devices
    (``split_batch``), once they are known; the global batch stays what the config says."""
    devices = trainer.num_devices * trainer.num_nodes
    dm.batch_size, trainer.accumulate_grad_batches = split_batch(cfg, devices)
    log.info(
        "global batch %d = %d devices x %d pairs x %d accumulation steps",
        cfg.global_batch_size,
        devices,
        dm.batch_size,
        trainer.accumulate_grad_batches,
    )


def load_checkpoint(ckpt_path: str | Path) -> tuple[dict, DictConfig]:
    """A tpt_aqa checkpoint and the resolved training configuration stored in it, its ``_target_``s
    naming the modules where they are now (``stored_config``: checkpoints of the flat layout load).

    Raises:
        ConfigError: when the file is missing or holds no tpt_aqa configuration.
        CheckpointError: when it cannot be read (truncated, not a checkpoint, unsafe).
    """
    path = Path(ckpt_path)
    ckpt = read_checkpoint(path)
    config = stored_config(ckpt)  # the _target_s of modules moved since renamed
    if config is None:
        raise ConfigError(
            f"ckpt_path={path} has no tpt_aqa configuration: was it written by tpt_aqa.train?"
        )
    return ckpt, OmegaConf.create(config)


def without_pretrained_file(run_cfg: DictConfig) -> None:
    """The checkpoint holds every weight: do not read the pretrained encoder file again (it may
    not exist where the checkpoint is used)."""
    encoder = run_cfg.model.get("encoder") or {}
    if "weights" in encoder:
        run_cfg.model.encoder.weights = None
    run_cfg.require_encoder_weights = False


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of the run's ``trainer.precision``, so scores match its evaluation."""
    if str(precision).startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if str(precision).startswith("16") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


# ------------------------------------------------------------------------------- speed switches

ADAM_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")


def adam_implementation(choice: str) -> dict[str, bool]:
    """``torch.optim.Adam``'s keyword arguments for the update loop ``choice`` names.

    ``fused``: one kernel per parameter group; ``foreach``: a few batched operations over all
    tensors of a group; ``for_loop``: tensor by tensor. The three give the same update up to
    rounding. ``auto`` leaves the choice to PyTorch (``foreach`` for CUDA tensors, the for-loop on
    the CPU), which every published number of this package was trained with: rounding differences
    grow over an optimisation, so ``fused`` moves ``make train`` from test ρ 0.9734 / R-ℓ2 0.2587
    to 0.9703 / 0.2810 (within seed noise, but not the same digits). ``fused`` is the faster
    opt-in: on the 2-core CPU its step over the feature-mode model takes a quarter of the
    for-loop's, and ``foreach`` is slower than the for-loop (README, speed); on CUDA PyTorch
    documents it as the fastest (``scripts/gpu_check.sh`` measures the three).

    Raises:
        ConfigError: for a ``choice`` not in ``ADAM_IMPLEMENTATIONS``.
    """
    if choice not in ADAM_IMPLEMENTATIONS:
        raise ConfigError(
            f"optim.optimizer.implementation={choice!r}: choose one of "
            f"{', '.join(ADAM_IMPLEMENTATIONS)}"
        )
    if choice == "auto":
        return {}  # PyTorch's default
    return {"fused": choice == "fused", "foreach": choice == "foreach"}


def adam(params: Any, implementation: str = "auto", **kwargs: Any) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the update loop of ``implementation`` (``optim.optimizer`` is a
    Hydra partial of this function; ``AQAModule.configure_optimizers`` passes the groups).

    Args:
        params: parameters or parameter groups.
        implementation: one of ``ADAM_IMPLEMENTATIONS`` (``adam_implementation``).
        **kwargs: passed to ``torch.optim.Adam`` (``lr``, ``weight_decay``, …).
    """
    return torch.optim.Adam(params, **kwargs, **adam_implementation(implementation))
