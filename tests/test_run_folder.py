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
from tpt_aqa.training.run_folder import LOCK, check_not_unfinished, release_lock, take_lock

from .conftest import TINY, run_module

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


# --- runs started at once, killed runs, folders that cannot be created ----------------------------


def test_three_runs_started_at_once_in_one_folder_do_not_mix_their_records(tmp_path):
    """The lock is taken (one atomic file creation) before Hydra writes .hydra/ and the log: one
    run goes on, the others stop without writing in the folder."""
    run_dir = tmp_path / "shared"
    tiny = [o for o in TINY if not o.startswith(("trainer.max_epochs", "dataset.num_"))]
    # each process imports the package, then waits until all three have: they reach Hydra together
    start_together = (
        "import pathlib, runpy, sys, time; import lightning, tpt_aqa.config, tpt_aqa.training.run_folder; "
        "ready = pathlib.Path(sys.argv.pop(1)); ready.with_suffix(f'.{sys.argv[1]}').touch(); "
        "[time.sleep(0.002) for _ in iter(lambda: len(list(ready.parent.glob('ready.*'))) < 3, False)]; "
        "runpy.run_module('tpt_aqa.train', run_name='__main__')"
    )
    small = ["dataset.num_train=20", "dataset.num_test=10", "+trainer.limit_train_batches=1"]
    args = [*tiny, "trainer.max_epochs=1", *small, f"hydra.run.dir={run_dir}"]
    ready = str(tmp_path / "ready")
    procs = {
        seed: subprocess.Popen(
            [sys.executable, "-c", start_together, ready, f"seed={seed}", *args],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2, 3)
    }
    errors = {seed: p.communicate(timeout=300)[1] for seed, p in procs.items()}
    winners = [seed for seed, p in procs.items() if p.returncode == 0]
    assert len(winners) == 1, errors
    for seed, p in procs.items():
        if seed in winners:
            continue
        lines = errors[seed].strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, errors[seed]
        assert lines[0].startswith(f"config error: {run_dir} "), lines[0]
        assert "is in use by another run" in lines[0] or "already holds a finished" in lines[0]
    seed = winners[0]
    assert OmegaConf.load(run_dir / ".hydra" / "overrides.yaml").count(f"seed={seed}") == 1
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").seed == seed
    log = (run_dir / "train.log").read_text()
    assert "config error" not in log and log.count("Test metrics") == 1
    assert json.loads((run_dir / "results.json").read_text())["checkpoint"]
    assert not (run_dir / LOCK).exists()


def unfinished_run(cfg, dead: bool) -> tuple[Path, Path]:
    """A run of ``cfg`` left as a killed one leaves it: checkpoints, no results.json, and (when
    ``dead``) the lock of a process that no longer runs."""
    train_entry.run(cfg)
    out = Path(cfg.paths.output_dir)
    (out / "results.json").unlink()
    record = out / ".hydra" / "overrides.yaml"
    record.parent.mkdir()
    record.write_text("- seed=5\n- optim.lr=0.001\n")
    if dead:
        write_lock(out, dead_pid())
    return out, out / "checkpoints" / "last.ckpt"


def test_a_killed_run_is_not_restarted_from_scratch_beside_its_checkpoints(tiny_cfg, monkeypatch):
    cfg = tiny_cfg(*ONE_EPOCH)
    out, last = unfinished_run(cfg, dead=True)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with monkeypatch.context() as patch:
        no_training(patch)
        with pytest.raises(ConfigError) as err:
            train_entry.run(tiny_cfg(*ONE_EPOCH))
    command = f"python -m tpt_aqa.train seed=5 optim.lr=0.001 hydra.run.dir={out} ckpt_path={last}"
    pid = json.loads((out / LOCK).read_text())["pid"]
    assert str(err.value) == (
        f"{out} holds an unfinished run (its run (pid {pid}, started 2024-01-01 00:00:00) was "
        f"killed before it finished and left {out / LOCK}; its last checkpoint is {last}): "
        f"continue it with `{command}`, or start this run in a new folder (hydra.run.dir=…)"
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    # without a lock (a run stopped by an error): refused the same way
    lock = (out / LOCK).read_text()
    (out / LOCK).unlink()
    with pytest.raises(ConfigError, match=r"holds an unfinished run \(there is no results.json; "):
        check_not_unfinished(out, None)
    (out / LOCK).write_text(lock)
    # what the message advises: continue from last.ckpt, in the same files
    more = [o for o in ONE_EPOCH if "max_epochs" not in o]
    results = train_entry.run(tiny_cfg(*more, "trainer.max_epochs=2", f"ckpt_path={last}"))
    assert results["checkpoint"] and (out / "results.json").is_file()
    assert not [p for p in (out / "checkpoints").iterdir() if "-v" in p.name]
    assert not (out / LOCK).exists()


def test_a_run_dir_that_cannot_be_created_is_one_clear_message(tmp_path, capsys):
    from tpt_aqa.training.run_folder import GuardRunFolder

    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    proc = run_module("train", f"hydra.run.dir={blocker}/run", "trainer.max_epochs=1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"config error: hydra.run.dir={blocker}/run cannot be created (Not a directory: "
        f"{blocker}/run): pass hydra.run.dir=<a folder you can write to>"
    )
    assert blocker.read_text() == "mine"
    # under /proc, for any command (eval here)
    config = OmegaConf.create({"task_name": "eval", "hydra": {"run": {"dir": "/proc/tpt/run"}}})
    with pytest.raises(SystemExit) as stop:
        GuardRunFolder().on_run_start(config)
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(
        "config error: hydra.run.dir=/proc/tpt/run cannot be created ("
    )


def test_a_folder_that_existed_or_holds_work_is_not_discarded(tmp_path):
    from tpt_aqa.training import run_folder

    folder = tmp_path / "new" / "run"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("{}")
    (folder / "train.log").write_text("config error: …")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_text("work")
    run_folder._CREATED[:] = [folder, tmp_path / "new"]
    run_folder.discard_new_run_folder()
    assert (folder / "checkpoints" / "last.ckpt").is_file() and (folder / "train.log").is_file()
    (folder / "checkpoints" / "last.ckpt").unlink()
    run_folder._CREATED[:] = [folder, tmp_path / "new"]
    run_folder.discard_new_run_folder()
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_cli_a_run_killed_with_sigkill_is_resumed_with_the_command_given(tmp_path):
    """The reported case: SIGKILL leaves a stale lock; the same command again is refused with the
    command that resumes, and that command continues from last.ckpt (no -v1 files)."""
    import shlex

    run_dir = tmp_path / "killed"
    tiny = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    cmd = ["-m", "tpt_aqa.train", *tiny, "trainer.max_epochs=12", f"hydra.run.dir={run_dir}"]
    first = subprocess.Popen([sys.executable, *cmd], cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    first.kill()
    first.wait()
    assert (run_dir / LOCK).is_file() and not (run_dir / "results.json").exists()

    again = subprocess.run([sys.executable, *cmd], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2
    message = again.stderr.strip()
    assert message.startswith(f"config error: {run_dir} holds an unfinished run (its run (pid "), (
        message
    )
    command = message.split("continue it with `", 1)[1].split("`", 1)[0]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "tpt_aqa.train"]
    resumed = subprocess.run(
        [sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "results.json").read_text())["checkpoint"]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if "-v" in p.name]
    assert not (run_dir / LOCK).exists()


def test_the_other_ranks_of_a_ddp_run_pass_the_folder_the_first_one_holds(tmp_path, monkeypatch):
    """Lightning's ddp starts the command again for ranks >= 1 with the same hydra.run.dir: they
    must not be refused by the lock of rank 0."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from tpt_aqa.training.run_folder import GuardRunFolder

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, other.pid)
        config = OmegaConf.create({"task_name": "train", "hydra": {"run": {"dir": str(tmp_path)}}})
        monkeypatch.setattr(rank_zero_only, "rank", 1)
        GuardRunFolder().on_run_start(config)  # no SystemExit
        monkeypatch.setattr(rank_zero_only, "rank", 0)
        with pytest.raises(SystemExit) as stop:
            GuardRunFolder().on_run_start(config)
        assert stop.value.code == 2
    finally:
        other.kill()
        other.wait()


def test_cli_run_in_a_relative_folder_holds_its_own_lock(tmp_path):
    """The default hydra.run.dir is relative (outputs/train/runs/<time>): the lock taken before
    Hydra writes must be recognised as this run's when the run checks its folder by Hydra's
    absolute path (it once refused itself as 'in use by another run')."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tpt_aqa.train",
            "debug=fast_dev_run",
            *TINY,
            "hydra.run.dir=rel/run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-1500:] + run.stderr[-1500:]
    assert "in use by another run" not in run.stdout + run.stderr
    folder = tmp_path / "rel" / "run"
    assert (folder / "results.json").is_file() and not (folder / LOCK).exists()
