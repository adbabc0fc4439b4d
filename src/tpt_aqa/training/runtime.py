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


def resolve_device(device: str, key: str = "device") -> torch.device:
    """The device a command runs on: ``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or
    ``cuda:N``, checked before any work.

    Raises:
        ConfigError: naming ``key``, for another value or a CUDA device this torch does not have.
    """
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(text)
    except RuntimeError:
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key}={text!r}: use auto, cpu or cuda (cuda:N for one of several)")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                "this torch is built without CUDA"
                if torch.version.cuda is None
                else "no CUDA device is visible"
            )
            raise ConfigError(
                f"{key}={text}: {why} (torch {torch.__version__}); pass {key}=cpu, or {key}=auto "
                "to use a GPU where there is one"
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{key}={text}: there are {torch.cuda.device_count()} CUDA devices "
                f"(cuda:0 … cuda:{torch.cuda.device_count() - 1})"
            )
    return chosen


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


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and what was found, in words.

    bf16 autocast on the CPU runs on oneDNN kernels that need AVX512-BF16 or AMX; without them
    the products are emulated, several times slower than fp32 (README, speed). The check reads
    the instruction sets PyTorch reports; on a torch without those queries, a short probe times a
    bf16 against an fp32 matmul instead. ``tpt_aqa.train`` (``fit_precision``) and
    ``tpt_aqa.benchmark`` both use this function.
    """
    flags = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", None),
        getattr(torch.cpu, "_is_amx_tile_supported", None),
    )
    if all(callable(f) for f in flags):
        avx512_bf16, amx = (bool(f()) for f in flags)
        found = f"AVX512-BF16 {'yes' if avx512_bf16 else 'no'}, AMX {'yes' if amx else 'no'}"
        return avx512_bf16 or amx, found
    ratio = _bf16_matmul_slowdown()
    return ratio < 2.0, f"a bf16 matmul takes {ratio:.1f}× the fp32 time (probe)"


def _bf16_matmul_slowdown(n: int = 256, repeats: int = 5) -> float:
    """Time of a bf16 ``n``² matmul over the fp32 one on this CPU (best of ``repeats``)."""
    import time

    def best(dtype: torch.dtype) -> float:
        a = torch.randn(n, n).to(dtype)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - start)
        return min(times)

    return best(torch.bfloat16) / best(torch.float32)


def runs_on_cpu(cfg: DictConfig) -> bool:
    """Whether the configured trainer computes on the CPU (``cpu``, or ``auto`` without a GPU)."""
    accelerator = str(cfg.trainer.get("accelerator") or "auto")
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def fit_precision(cfg: DictConfig) -> None:
    """Keep fp32 where bf16 would be emulated: a bf16 ``trainer.precision`` (``speed=fast``) on a
    CPU without AVX512-BF16 or AMX (``cpu_bf16``) becomes ``32-true``, with one warning that says
    why. GPUs, and CPUs with native bf16, keep the configured precision."""
    precision = str(cfg.trainer.get("precision"))
    if not precision.startswith("bf16") or not runs_on_cpu(cfg):
        return
    native, found = cpu_bf16()
    if native:
        return
    log.warning(
        "trainer.precision=%s (speed=fast) is not used: this CPU has no native bf16 (%s), so bf16 "
        "would be emulated, several times slower than fp32; training in fp32 "
        "(trainer.precision=32-true). bf16 pays off on CPUs with AVX512-BF16 or AMX and on GPUs",
        precision,
        found,
    )
    cfg.trainer.precision = "32-true"


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
