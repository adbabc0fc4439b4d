"""Surviving interruptions: a resumable checkpoint on SIGTERM, checkpoint files written atomically, and
a stop as soon as the weights are no longer finite (``FiniteWeights``).

SIGTERM is how schedulers stop a job (SLURM on preemption and at the time limit, ``scancel``,
Kubernetes, ``kill``). Lightning 2.6 already turns it into a clean stop: its signal handler only sets
``trainer.received_sigterm``, and the loops raise ``SIGTERMException`` at the next batch boundary (on
every rank: rank 0's flag is broadcast before each training batch). ``CheckpointOnSignal`` saves the
state at that boundary so that ``ckpt_path=<checkpoints>/sigterm.ckpt`` continues the run.

Lightning writes a checkpoint by serializing it in memory, writing it to a temporary file in the
*system* temporary folder and ``shutil.move``-ing it over the target. When that folder and the
checkpoint folder are on different filesystems (node-local ``/tmp``, shared checkpoint storage: the
usual cluster layout) the move is a copy onto the final path, and a process killed during the copy
leaves a truncated checkpoint where the previous good one was. ``AtomicCheckpointIO`` writes next to
the target and renames, which is atomic on POSIX filesystems.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from tpt_aqa.core.atomic import atomic_torch_save


def rng_states() -> dict[str, Any]:
    """torch's generator states, for a checkpoint: dropout and augmentation draw from them, so a
    resumed run continues them (``restore_rng_states``)."""
    return {
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }


def restore_rng_states(state: dict[str, Any]) -> None:
    """Set torch's generators to the ``rng_states`` saved in ``state`` (the ones it has)."""
    if "rng_cpu" in state:
        torch.set_rng_state(state["rng_cpu"])
    if state.get("rng_cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng_cuda"])


class CheckpointOnSignal(Callback):
    """Save a full, resumable checkpoint when SIGTERM stops training, then let the exit proceed.

    The checkpoint holds what ``trainer.save_checkpoint`` holds at the end of the last finished batch:
    weights, optimizer and scheduler states, loop progress (epoch, global step, batch within the
    epoch) and callback states (the ``ModelCheckpoint`` best score). It is named ``sigterm.ckpt`` so
    that ``last.ckpt`` keeps meaning "end of the last finished epoch". Resuming mid-epoch runs the
    rest of that epoch on a freshly shuffled loader (Lightning warns that the loader is not
    resumable), so the run takes the same number of optimizer steps, on slightly different pairs.

    Lightning's ``SIGTERMException`` is a ``SystemExit`` without a code, so the process would exit
    with status 0 as if the run had finished; the callback sets the code to 143 (128 + SIGTERM, the
    status of a process killed by the signal) so that shells and schedulers see an interrupted run.

    Only ``SIGTERMException`` triggers a save: it is raised at a batch boundary on every rank, so the
    state is consistent and all ranks reach the save's barrier. Other exceptions (a bug, Ctrl-C,
    submitit's own exit on its requeue signal) can arrive in the middle of an optimizer step or on
    one rank only, and are left alone. A SIGTERM while testing saves nothing: there is no training
    to resume.

    A run resumed from a ``sigterm.ckpt`` consumes it: the file is removed once the run has gone past
    it (at the start of the next epoch, when the end-of-epoch checkpoints are newer, or at the end
    of training), so that later starts in the same folder do not resume from the old state again.

    Args:
        dirpath: folder of ``sigterm.ckpt``; ``None`` puts it next to the ``ModelCheckpoint`` files
            (following a resumed run into its original folder), or in
            ``<default_root_dir>/checkpoints`` without a ``ModelCheckpoint``.
    """

    FILENAME = "sigterm.ckpt"

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self._resumed: tuple[Path, int] | None = None  # (sigterm.ckpt resumed from, its epoch)

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        """Where the checkpoint goes for this trainer."""
        if self.dirpath is not None:
            folder = Path(self.dirpath)
        elif isinstance(trainer.checkpoint_callback, ModelCheckpoint) and (
            trainer.checkpoint_callback.dirpath
        ):
            folder = Path(trainer.checkpoint_callback.dirpath)
        else:
            folder = Path(trainer.default_root_dir) / "checkpoints"
        return folder / self.FILENAME

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = trainer.ckpt_path
        if path and Path(path).name == self.FILENAME:
            self._resumed = (Path(path), trainer.current_epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._resumed and trainer.current_epoch > self._resumed[1]:
            self._consume(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._resumed:
            self._consume(trainer)

    def _consume(self, trainer: L.Trainer) -> None:
        path, _ = self._resumed
        self._resumed = None
        if trainer.is_global_zero:
            path.unlink(missing_ok=True)
            rank_zero_info(f"removed {path}: the resumed run has gone past it")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        exception.code = 128 + signal.SIGTERM
        if trainer.state.fn != TrainerFn.FITTING:
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # every rank calls it (barrier); rank 0 writes
        rank_zero_info(
            f"SIGTERM: saved epoch {trainer.current_epoch}, step {trainer.global_step} to {path}; "
            f"continue with ckpt_path={path}"
        )


# What to change when the loss or the weights stop being finite (``FiniteWeights``, and the loss
# check in ``AQAModule.training_step``).
NONFINITE_ADVICE = (
    "lower the learning rates (optim.lr), train in full precision (trainer.precision=32-true), "
    "or check the input features"
)


class FiniteWeights(Callback):
    """Stop training with a ``FloatingPointError`` when a weight is NaN or infinite, before
    validation, a checkpoint or the exemplar bank takes the broken weights.

    A NaN or infinite gradient turns every weight it reaches NaN at the next Adam step. The loss
    check in ``training_step`` catches that at the next forward pass, but the last step before a
    validation or a checkpoint has none: its broken weights would be validated, saved as
    ``last.ckpt`` and tested (a wrong bf16 convolution gradient did exactly this once,
    docs/method.md §12). So the weights are checked before every validation during training and at
    the end of every training epoch (Lightning runs the checkpoint callbacks after this one). A
    check is one sum per parameter tensor and one device sync.
    """

    @staticmethod
    def check(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Raise ``FloatingPointError`` naming the non-finite parameters, if there are any."""
        params = [(n, p.detach()) for n, p in pl_module.named_parameters()]
        total = torch.stack([p.float().sum() for _, p in params]).sum()  # NaN or inf if one is
        if bool(torch.isfinite(total)):
            return
        bad = [n for n, p in params if not bool(torch.isfinite(p).all())]
        if not bad:  # finite weights whose float32 sum overflows: nothing is broken
            return
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise FloatingPointError(
            f"weights are NaN or infinite after epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}: {', '.join(bad[:3])}{more}. A non-finite gradient reached "
            f"them; {NONFINITE_ADVICE}"
        )

    def __init__(self) -> None:
        self._checked_step = -1  # the weights of this optimizer step are known to be finite

    def _check_once(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # an epoch-end validation is followed by the epoch's end at the same step: check once
        if trainer.global_step != self._checked_step:
            self.check(trainer, pl_module)
            self._checked_step = trainer.global_step

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._check_once(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_once(trainer, pl_module)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes never leave a partial file at the target path.

    The checkpoint is serialized straight into a hidden temporary file in the target's folder (so the
    rename cannot cross filesystems, and no in-memory copy of the whole checkpoint is made), flushed
    to disk, then renamed over the target with ``os.replace``. Readers see the old file or the new
    one, never a mixture; a failed or interrupted write leaves the previous checkpoint untouched. A
    process killed outright (SIGKILL) may leave its ``.<name>.<random>.tmp`` file behind, never a
    ``*.ckpt`` (``tpt_aqa.core.atomic.atomic_write``). Remote paths (``s3://`` …) keep Lightning's behaviour.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        fs, local_path = url_to_fs(str(path))  # "file://…" and plain paths alike
        if not isinstance(fs, LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options for a local path, got {storage_options!r}"
            )
        atomic_torch_save(checkpoint, local_path, durable=True)
