"""The run's output folder: every output location writable before training, one run at a time,
and a finished run never mixed with a new one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tpt_aqa import train as train_entry
from tpt_aqa.config import ConfigError
from tpt_aqa.training.run_folder import LOCK, release_lock, take_lock

from .conftest import TINY

REPO = Path(__file__).resolve().parents[1]
ONE_EPOCH = [
    "trainer.max_epochs=1",
    "dataset.num_train=40",
    "+trainer.limit_train_batches=2",
    "trainer.log_every_n_steps=1",
]


def write_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    record = {"pid": pid, "host": host or socket.gethostname(), "started": "2024-01-01 00:00:00"}
    path.write_text(json.dumps(record))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def no_training(monkeypatch) -> None:
    """Fail the test if the run gets as far as building its trainer."""

    def refuse(*args, **kwargs):
        raise AssertionError("the run started although it should have been refused")

    monkeypatch.setattr(train_entry, "build_trainer", refuse)


# --- one run at a time -----------------------------------------------------------------------------


def test_a_second_lock_on_a_folder_is_refused_and_released_locks_free_it(tmp_path):
    path = take_lock(tmp_path)
    holder = json.loads(path.read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    with pytest.raises(ConfigError, match=rf"is in use by another run \(pid {os.getpid()} on "):
        take_lock(tmp_path)
    release_lock(path)
    assert not path.exists()
    release_lock(take_lock(tmp_path))


def test_a_folder_a_live_run_holds_is_refused(tiny_cfg, monkeypatch):
    cfg = tiny_cfg(*ONE_EPOCH)
    out = Path(cfg.paths.output_dir)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = write_lock(out, other.pid)
        no_training(monkeypatch)
        with pytest.raises(ConfigError) as err:
            train_entry.run(cfg)
    finally:
        other.kill()
        other.wait()
    message = str(err.value)
    assert f"{out} is in use by another run (pid {other.pid} on {socket.gethostname()}" in message
    assert f"if no run uses the folder any more, delete {lock}" in message
    assert json.loads(lock.read_text())["pid"] == other.pid  # the other run's lock is kept


def test_a_lock_from_another_host_is_not_taken_over(tiny_cfg, monkeypatch):
    cfg = tiny_cfg(*ONE_EPOCH)
    write_lock(Path(cfg.paths.output_dir), dead_pid(), host="some-other-node")
    no_training(monkeypatch)
    with pytest.raises(ConfigError, match="on some-other-node"):
        train_entry.run(cfg)


def test_a_stale_lock_of_a_dead_run_is_taken_over_and_released(tiny_cfg):
    cfg = tiny_cfg(*ONE_EPOCH)
    out = Path(cfg.paths.output_dir)
    lock = write_lock(out, dead_pid())
    results = train_entry.run(cfg)
    assert results["checkpoint"] and (out / "results.json").is_file()
    assert not lock.exists()  # released at the end
    assert not list(out.glob(f"{LOCK}*"))


# --- a finished run is not mixed with a new one ----------------------------------------------------


def test_a_finished_folder_is_refused_unless_the_run_continues_it(tiny_cfg, monkeypatch):
    first = tiny_cfg(*ONE_EPOCH)
    train_entry.run(first)
    out = Path(first.paths.output_dir)
    saved = (out / "results.json").read_text()
    last = out / "checkpoints" / "last.ckpt"
    with monkeypatch.context() as patch:
        no_training(patch)
        with pytest.raises(ConfigError) as err:
            train_entry.run(tiny_cfg(*ONE_EPOCH, "seed=3"))
    assert str(err.value) == (
        f"{out} already holds a finished run ({out / 'results.json'}): start this one in a new "
        f"folder (hydra.run.dir=…), or continue that run with ckpt_path={last}"
    )
    assert (out / "results.json").read_text() == saved
    # continuing it (one more epoch from its last checkpoint) is allowed
    more = tiny_cfg(*[o for o in ONE_EPOCH if "max_epochs" not in o], f"ckpt_path={last}")
    train_entry.run(more)
    assert json.loads((out / "results.json").read_text()) != json.loads(saved)


# --- every output location writable before training ------------------------------------------------


@pytest.mark.parametrize(
    "key", ["callbacks.model_checkpoint.dirpath", "logger.csv.save_dir", "paths.output_dir"]
)
def test_an_unwritable_output_location_stops_the_run_before_training(
    tiny_cfg, tmp_path, monkeypatch, key
):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a file where a folder should be: unwritable even for root
    cfg = tiny_cfg(*ONE_EPOCH)
    OmegaConf.update(cfg, key, f"{blocker}/sub")
    no_training(monkeypatch)
    with pytest.raises(ConfigError) as err:
        train_entry.run(cfg)
    fix = "hydra.run.dir" if key == "paths.output_dir" else key
    assert str(err.value) == (
        f"{key}={blocker}/sub is not writable (Not a directory): pass "
        f"{fix}=<a folder you can write to>"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_checkpoint_folder_stops_the_run_before_training(
    tiny_cfg, tmp_path, monkeypatch
):
    folder = tmp_path / "read_only"
    folder.mkdir(mode=0o555)
    cfg = tiny_cfg(*ONE_EPOCH, f"callbacks.model_checkpoint.dirpath={folder}")
    no_training(monkeypatch)
    with pytest.raises(ConfigError, match=r"is not writable \(Permission denied\)"):
        train_entry.run(cfg)


# --- the reported case: two commands with the same hydra.run.dir -----------------------------------


@pytest.mark.slow
def test_cli_second_run_in_the_same_folder_is_refused(tmp_path):
    run_dir = tmp_path / "shared"
    tiny = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    cmd = [sys.executable, "-m", "tpt_aqa.train", *tiny, f"hydra.run.dir={run_dir}"]
    first = subprocess.Popen(
        [*cmd, "trainer.max_epochs=1000"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((run_dir / "checkpoints").glob("epoch*.ckpt")):  # training is under way
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run(
            [*cmd, "seed=3"], cwd=REPO, capture_output=True, text=True, timeout=300
        )
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"config error: {run_dir} is in use by another run (pid {first.pid} on "
    ), second.stderr
    assert not (run_dir / "results.json").exists()


@pytest.mark.parametrize("state", ["finished", "in_use"])
def test_cli_refuses_before_hydra_rewrites_the_folders_record(tmp_path, state):
    """Hydra writes .hydra/ and the log into run.dir before the task starts: the check runs
    first, so the record of the run already there (what aggregate reads) is kept."""
    run_dir = tmp_path / "run"
    record = run_dir / ".hydra" / "overrides.yaml"
    record.parent.mkdir(parents=True)
    record.write_text("- seed=1\n")
    other = None
    if state == "finished":
        (run_dir / "results.json").write_text("{}")
        expected = f"config error: {run_dir} already holds a finished run"
    else:
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        write_lock(run_dir, other.pid)
        expected = f"config error: {run_dir} is in use by another run (pid {other.pid} on "
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tpt_aqa.train", f"hydra.run.dir={run_dir}", "seed=2"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        if other is not None:
            other.kill()
            other.wait()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
    assert record.read_text() == "- seed=1\n"
    assert not (run_dir / "train.log").exists()
