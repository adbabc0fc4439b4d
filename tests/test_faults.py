"""Interruptions: SIGTERM leaves a resumable checkpoint; checkpoint writes are atomic; broken
(non-finite) weights stop training before anything validates or saves them."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from tpt_aqa import train as train_entry
from tpt_aqa.config import ConfigError, build_datamodule, build_module
from tpt_aqa.training.faults import AtomicCheckpointIO, CheckpointOnSignal, FiniteWeights
from tpt_aqa.training.runtime import build_trainer

from .conftest import TINY

REPO = Path(__file__).resolve().parents[1]
BATCHES = 2  # training batches per epoch in these runs
SHORT = [
    "dataset.num_train=40",
    f"+trainer.limit_train_batches={BATCHES}",
    "trainer.log_every_n_steps=1",
]


class SigtermAt(L.Callback):
    """Send this process SIGTERM after a given training batch, as a scheduler would."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) != (self.epoch, self.batch):
            return
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.01)  # the Python-level handler runs between bytecodes of this thread


def fit(cfg, ckpt_path=None, extra_callbacks=()):
    """Build data, module and the configured trainer, and fit; returns (trainer, module)."""
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = build_trainer(cfg, has_val=dm.has_val)
    trainer.callbacks.extend(extra_callbacks)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module


def test_configured_trainer_checkpoints_on_sigterm_and_writes_atomically(tiny_cfg):
    trainer = build_trainer(tiny_cfg(), has_val=True)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert sum(isinstance(c, CheckpointOnSignal) for c in trainer.callbacks) == 1


def test_sigterm_saves_a_checkpoint_that_resumes(tiny_cfg):
    cfg = tiny_cfg(*SHORT)
    stopped_at = BATCHES + 1  # epoch 1, after its first batch
    with pytest.raises(SystemExit) as stop:
        fit(cfg, extra_callbacks=[SigtermAt(epoch=1, batch=0)])
    assert stop.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # Lightning restored the handler

    folder = Path(cfg.paths.output_dir) / "checkpoints"
    path = folder / "sigterm.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (1, stopped_at)
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert progress["current"]["completed"] == 1 and not progress["is_last_batch"]
    adam = ckpt["optimizer_states"][0]["state"]
    assert adam and all(int(s["step"]) == stopped_at for s in adam.values())
    # the epoch-end checkpoints are untouched: last.ckpt is still the end of epoch 0
    last = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == BATCHES

    with pytest.warns(PossibleUserWarning, match="ended before the epoch ended"):
        trainer, _ = fit(cfg, ckpt_path=str(path))
    assert trainer.current_epoch == cfg.trainer.max_epochs == 2
    assert trainer.global_step == 2 * BATCHES  # the interrupted epoch finished its remaining steps


def test_a_restarted_run_resumes_from_its_sigterm_checkpoint(tiny_cfg):
    """A requeued SLURM job starts the same command in the same folder: it picks up sigterm.ckpt."""
    cfg = tiny_cfg(*SHORT)
    assert train_entry.interrupted_checkpoint(cfg) is None
    with pytest.raises(SystemExit):
        fit(cfg, extra_callbacks=[SigtermAt(epoch=1, batch=0)])
    path = Path(cfg.paths.output_dir) / "checkpoints" / "sigterm.ckpt"
    assert train_entry.interrupted_checkpoint(cfg) == str(path)
    with pytest.warns(PossibleUserWarning, match="ended before the epoch ended"):
        results = train_entry.run(cfg)  # no ckpt_path given
    assert torch.load(results["checkpoint"], weights_only=False)["global_step"] <= 2 * BATCHES
    last = torch.load(path.with_name("last.ckpt"), map_location="cpu", weights_only=False)
    assert last["global_step"] == 2 * BATCHES  # one interrupted + one resumed epoch, not three
    assert not path.exists()  # consumed: a later start in this folder does not resume it again
    assert train_entry.interrupted_checkpoint(cfg) is None


class NanGradientAt(L.Callback):
    """Make the first head weight's gradient NaN before the optimizer step that ends at global step
    ``step + 1``, as a faulty kernel would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step:
            pl_module.model.heads.cls[0].weight.grad.fill_(float("nan"))


def test_broken_weights_after_an_epochs_last_step_stop_before_validation_and_checkpoints(tiny_cfg):
    cfg = tiny_cfg(*SHORT)
    with pytest.raises(
        FloatingPointError, match=r"after epoch 0, step 2: model\.heads\.cls\.0\.weight\."
    ):
        fit(cfg, extra_callbacks=[NanGradientAt(BATCHES - 1)])  # the epoch's last step
    assert not list((Path(cfg.paths.output_dir) / "checkpoints").glob("*.ckpt"))


def test_without_the_weight_check_broken_weights_are_validated_and_saved(tiny_cfg):
    """What FiniteWeights prevents: the loss check sees the NaN weights only at the next forward
    pass, after the epoch's validation and checkpoints have taken them. (NaN group logits even give
    finite predictions: the arg-max of NaNs picks some group, so nothing else would notice.)"""
    cfg = tiny_cfg(*SHORT, "callbacks.finite_weights=null")
    with pytest.raises(FloatingPointError, match=r"at epoch 1, step 2"):  # training_step's check
        fit(cfg, extra_callbacks=[NanGradientAt(BATCHES - 1)])
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["state_dict"]["model.heads.cls.0.weight"].isnan().all()


def test_weight_check_names_what_is_broken_and_ignores_a_sum_that_overflows():
    trainer = types.SimpleNamespace(current_epoch=3, global_step=70)
    module = torch.nn.Module()
    module.big = torch.nn.Parameter(torch.full((2,), 3e38))  # finite; their float32 sum is inf
    FiniteWeights.check(trainer, module)
    module.bad = torch.nn.Parameter(torch.tensor([1.0, float("inf")]))
    with pytest.raises(FloatingPointError, match=r"after epoch 3, step 70: bad\. A non-finite"):
        FiniteWeights.check(trainer, module)


class FirstBatches(L.Callback):
    """Record whether a file exists at the first training batch of every epoch."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.seen or self.seen[-1][0] != trainer.current_epoch:
            self.seen.append((trainer.current_epoch, self.path.exists()))


def test_resumed_run_consumes_the_sigterm_checkpoint_once_past_it(tiny_cfg):
    """Removed when the resumed run starts the next epoch (its end-of-epoch checkpoints are newer),
    not before: a run stopped again before that point still has it."""
    cfg = tiny_cfg(*SHORT, "trainer.max_epochs=3")
    with pytest.raises(SystemExit):
        fit(cfg, extra_callbacks=[SigtermAt(epoch=0, batch=0)])
    path = Path(cfg.paths.output_dir) / "checkpoints" / "sigterm.ckpt"
    starts = FirstBatches(path)
    with pytest.warns(PossibleUserWarning, match="ended before the epoch ended"):
        fit(cfg, ckpt_path=str(path), extra_callbacks=[starts])
    assert starts.seen == [(0, True), (1, False), (2, False)]


def test_auto_resume_refuses_a_checkpoint_of_other_settings(tiny_cfg):
    """A later start in the folder with another configuration stops with the differences listed
    instead of resuming the stale state (or failing on a size mismatch inside Lightning)."""
    cfg = tiny_cfg(*SHORT)
    with pytest.raises(SystemExit):
        fit(cfg, extra_callbacks=[SigtermAt(epoch=1, batch=0)])
    other = tiny_cfg(*SHORT, "model.d_model=16", "optim.optimizer.weight_decay=0.5")
    path = Path(cfg.paths.output_dir) / "checkpoints" / "sigterm.ckpt"
    with pytest.raises(ConfigError) as err:
        train_entry.run(other)
    message = str(err.value)
    assert message.startswith(f"{path} is the checkpoint of an interrupted run with other settings")
    assert (
        "model.d_model=16 (it has 32)" in message and "optim.optimizer.weight_decay=0.5" in message
    )
    assert f"pass ckpt_path={path} to resume it with these" in message
    assert path.is_file() and not (Path(cfg.paths.output_dir) / "results.json").exists()


def test_a_sigterm_checkpoint_older_than_the_results_is_not_resumed(tiny_cfg):
    """A folder from before consumption existed: the run finished after its sigterm.ckpt."""
    cfg = tiny_cfg(*SHORT)
    with pytest.raises(SystemExit):
        fit(cfg, extra_callbacks=[SigtermAt(epoch=1, batch=0)])
    path = Path(cfg.paths.output_dir) / "checkpoints" / "sigterm.ckpt"
    results = Path(cfg.paths.output_dir) / "results.json"
    results.write_text("{}")
    os.utime(path, (time.time() - 60,) * 2)
    assert train_entry.interrupted_checkpoint(cfg) is None


def test_sigterm_state_is_the_module_state_at_the_stop(tiny_cfg):
    """The checkpoint is taken at the batch boundary: it equals the weights left in memory."""
    cfg = tiny_cfg(*SHORT, "trainer.max_epochs=1")
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = build_trainer(cfg, has_val=dm.has_val)
    trainer.callbacks.append(SigtermAt(epoch=0, batch=0))
    with pytest.raises(SystemExit):
        trainer.fit(module, datamodule=dm)
    saved = torch.load(
        Path(cfg.paths.output_dir) / "checkpoints" / "sigterm.ckpt", weights_only=False
    )
    assert saved["global_step"] == 1
    for name, value in module.state_dict().items():
        assert torch.equal(saved["state_dict"][name], value), name


def test_other_exceptions_save_nothing(tiny_cfg):
    class Boom(L.Callback):
        def on_train_batch_end(self, *args) -> None:
            raise RuntimeError("boom")

    cfg = tiny_cfg(*SHORT, "trainer.max_epochs=1")
    with pytest.raises(RuntimeError, match="boom"):
        fit(cfg, extra_callbacks=[Boom()])
    assert not (Path(cfg.paths.output_dir) / "checkpoints" / "sigterm.ckpt").exists()


@pytest.mark.slow
def test_cli_sigterm_then_resume(tmp_path):
    """A real run stopped by SIGTERM from outside, then continued from its checkpoint."""
    run_dir = tmp_path / "run"
    tiny = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    cmd = [sys.executable, "-m", "tpt_aqa.train", *tiny, *SHORT]
    proc = subprocess.Popen(
        [*cmd, "trainer.max_epochs=1000", f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoints = run_dir / "checkpoints"
    try:
        deadline = time.monotonic() + 120
        while not list(checkpoints.glob("epoch*.ckpt")):  # training is under way
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no epoch checkpoint after 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    path = checkpoints / "sigterm.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt["epoch"] >= 1 and ckpt["global_step"] >= BATCHES
    assert ckpt["optimizer_states"][0]["state"]
    assert not list(checkpoints.glob(".*.tmp"))
    assert f"continue with ckpt_path={path}" in output

    epochs = ckpt["epoch"] + 1
    resumed = subprocess.run(
        [
            *cmd,
            f"trainer.max_epochs={epochs}",
            f"ckpt_path={path}",
            f"hydra.run.dir={tmp_path}/resumed",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == epochs * BATCHES  # it kept writing into the original folder
    assert (tmp_path / "resumed" / "results.json").is_file()


# --- atomic writes ---------------------------------------------------------------------------------


def state(value: float) -> dict:
    return {"weights": torch.full((256, 256), value), "epoch": int(value)}


def cross_filesystem_copy_killed_halfway(monkeypatch) -> None:
    """Make renames fail as they do across filesystems (EXDEV), and the copy that replaces them
    stop halfway, as when the process is killed during the copy."""

    def rename(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    def copyfile(src, dst, *, follow_symlinks=True):
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt  # stands for the kill

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "copyfile", copyfile)


def test_lightning_checkpoint_io_can_leave_a_truncated_file(tmp_path, monkeypatch):
    """Why AtomicCheckpointIO exists: Lightning's write goes through a file in the system temporary
    folder and ``shutil.move``, which across filesystems copies onto the final path."""
    path = tmp_path / "last.ckpt"
    TorchCheckpointIO().save_checkpoint(state(1.0), path)
    good = path.read_bytes()
    cross_filesystem_copy_killed_halfway(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        TorchCheckpointIO().save_checkpoint(state(2.0), path)
    monkeypatch.undo()
    assert path.read_bytes() != good and len(path.read_bytes()) < len(good)
    with pytest.raises(RuntimeError):
        torch.load(path, weights_only=True)


def test_atomic_write_survives_the_same_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(state(1.0), path)
    cross_filesystem_copy_killed_halfway(monkeypatch)
    AtomicCheckpointIO().save_checkpoint(state(2.0), path)  # same folder: no copy, one rename
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["weights"], state(2.0)["weights"])
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_failed_write_keeps_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint(state(1.0), path)
    good = path.read_bytes()

    def save_half_then_fail(obj, f, *args, **kwargs):
        f.write(good[: len(good) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint(state(2.0), path)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert os.listdir(path.parent) == ["last.ckpt"]
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_atomic_write_round_trip_and_file_mode(tmp_path):
    path = tmp_path / "new" / "folder" / "epoch000.ckpt"
    AtomicCheckpointIO().save_checkpoint(state(3.0), path)
    loaded = AtomicCheckpointIO().load_checkpoint(path, weights_only=True)
    assert torch.equal(loaded["weights"], state(3.0)["weights"]) and loaded["epoch"] == 3
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user creates


@pytest.fixture
def umask_027():
    """A umask that tells the normal mode (0640) from a private one (0600)."""
    old = os.umask(0o027)
    yield 0o666 & ~0o027
    os.umask(old)


def test_every_atomic_write_gets_the_umask_mode(tmp_path, umask_027):
    """Figures, converted checkpoints, text and arrays are created like any file the user makes,
    not with the private mode of a temporary file."""
    import numpy as np

    from tpt_aqa.core.atomic import atomic_save_array, atomic_torch_save, atomic_write_text
    from tpt_aqa.reporting import viz

    written = [
        viz.save_figure(viz.scatter([1.0, 2.0], [2.0, 1.0]), tmp_path / "fig.png"),
        tmp_path / "converted.ckpt",
        tmp_path / "results.json",
        tmp_path / "clip.npy",
        tmp_path / "checkpoints" / "last.ckpt",
    ]
    atomic_torch_save(state(1.0), written[1])
    atomic_write_text(written[2], "{}")
    atomic_save_array(written[3], np.zeros(3))
    AtomicCheckpointIO().save_checkpoint(state(1.0), written[4])
    for path in written:
        assert path.stat().st_mode & 0o777 == umask_027, path.name
    atomic_torch_save(state(2.0), written[1], mode=0o600)  # an explicit mode still wins
    assert written[1].stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["fig.png", "converted.ckpt", "results.json", "clip.npy", "checkpoints"]
    )  # no temporary file left
