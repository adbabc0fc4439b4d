"""The output folder of a training run: checked writable, and held by one run at a time.

Before any training ``tpt_aqa.train`` checks that every place it will write (the output folder,
the checkpoint folder, the loggers' folders) can be written, so a read-only or mistyped location
stops the run at once instead of after the first epoch. It then takes the output folder with a
lock file (``.run.lock``: the pid, host and start time of the run) and gives it back when it ends.
A second run started in the same folder (the same ``hydra.run.dir``) is refused while the first
holds it, so results, checkpoints and logs of two runs are never mixed. A lock left by a run that
was killed outright (SIGKILL, a crash of the node) names a pid: on the same host, when no process
has it any more, the lock is taken over; a lock from another host is only given up by deleting it,
since its process cannot be checked from here.

A folder that already holds a finished run (``results.json``) is refused too, unless the run
continues it: ``ckpt_path=`` inside it, or its interrupted checkpoint (``tpt_aqa.training.faults``). So is a
folder with the checkpoints of a run that did not finish (a stale lock after SIGKILL, or an error),
unless the run continues it: a run from scratch there would write ``-v1`` checkpoints beside the old
ones; the message gives the command that resumes from its ``last.ckpt``.
Only the global-zero process does any of this (the other DDP ranks write nothing here). From the
command line, ``GuardRunFolder`` (a Hydra callback in ``conf/hydra/default.yaml``) makes the same
refusals and takes the lock before Hydra writes its ``.hydra/`` record into the folder, so runs
started at the same moment cannot overwrite each other's records.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shlex
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tpt_aqa.core.errors import BEFORE_USER_ERROR_EXIT, ConfigError, exit_on_user_error

log = logging.getLogger(__name__)

LOCK = ".run.lock"
RESULTS = "results.json"

# The override that moves each output location (shown in the messages).
_FIX = {"paths.output_dir": "hydra.run.dir", "trainer.default_root_dir": "hydra.run.dir"}


def output_locations(cfg: DictConfig) -> list[tuple[str, Path]]:
    """``(config key, folder)`` of every place a training run writes to."""
    keys = ["paths.output_dir", "trainer.default_root_dir"]
    for group, leaf in (("callbacks", "dirpath"), ("logger", "save_dir")):
        for name, node in (cfg.get(group) or {}).items():
            if isinstance(node, DictConfig) and node.get(leaf):
                keys.append(f"{group}.{name}.{leaf}")
    found = [(key, OmegaConf.select(cfg, key)) for key in keys]
    return [(key, Path(str(value))) for key, value in found if value]


def check_writable(locations: list[tuple[str, Path]]) -> None:
    """Create each folder and write a file in it, to find an unwritable location before training.

    Raises:
        ConfigError: naming the first key whose folder cannot be written, and the fix.
    """
    for key, folder in locations:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            fix = _FIX.get(key, key)
            raise ConfigError(
                f"{key}={folder} is not writable ({err.strerror or err}): pass "
                f"{fix}=<a folder you can write to>"
            ) from None


def written_after_results(checkpoint: Path, folder: Path) -> bool:
    """Whether ``checkpoint`` is newer than the run's ``results.json`` (or the run has none): an
    interrupted checkpoint older than the results was left by a run that finished after it."""
    results = folder / RESULTS
    return not results.is_file() or checkpoint.stat().st_mtime >= results.stat().st_mtime


def check_not_finished(folder: Path, resume: str | None) -> None:
    """Refuse a folder that holds a finished run, unless ``resume`` (a checkpoint inside it)
    continues that run.

    Raises:
        ConfigError: naming the folder and how to continue the run or start elsewhere.
    """
    results = folder / RESULTS
    if not results.is_file():
        return
    if resume and Path(resume).resolve().is_relative_to(folder.resolve()):
        return
    last = next(iter(sorted(folder.glob("**/last.ckpt"))), None)
    go_on = f", or continue that run with ckpt_path={last}" if last else ""
    raise ConfigError(
        f"{folder} already holds a finished run ({results}): start this one in a new folder "
        f"(hydra.run.dir=…){go_on}"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _holder(path: Path) -> dict[str, Any]:
    """The content of a lock file; ``{}`` when it cannot be read (being written, or damaged)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _stale(holder: dict[str, Any]) -> bool:
    """Whether a lock names a process of this host that no longer runs."""
    pid = holder.get("pid")
    return (
        holder.get("host") == socket.gethostname()
        and isinstance(pid, int)
        and pid != os.getpid()
        and not _alive(pid)
    )


# locks GuardRunFolder took before Hydra wrote into the folder, for the run this process starts
_TAKEN_BEFORE_HYDRA: set[Path] = set()
# (run folder, topmost folder created for it) when GuardRunFolder created the run folder
_CREATED: list[Path] = []
# what Hydra and the lock put in a run folder before the task does anything
_RECORD = {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", LOCK}


def _first_missing(folder: Path) -> Path | None:
    """The topmost folder of ``folder``'s path that does not exist yet (``None``: it exists)."""
    top, path = None, folder.absolute()
    while not path.exists() and path != path.parent:
        top, path = path, path.parent
    return top


def discard_new_run_folder() -> None:
    """After a user error (``core.errors.user_errors_exit`` calls it: ``BEFORE_USER_ERROR_EXIT``):
    remove the run folder this process created, when it holds nothing but Hydra's record
    (``.hydra/``), the log, this run's lock and empty folders, so that a run stopped before any
    work leaves nothing behind. A folder that existed before, or holds anything else (a
    checkpoint, a result, another run's lock), stays."""
    if not _CREATED:
        return
    folder, top = _CREATED
    _CREATED.clear()
    if not folder.is_dir():
        return
    files = [p for p in folder.rglob("*") if not p.is_dir()]
    names = {p.relative_to(folder).as_posix() for p in files}
    if any(n not in _RECORD and not (n.endswith(".log") and "/" not in n) for n in names):
        return
    if LOCK in names and not _ours(_holder(folder / LOCK)):
        return
    for handler in logging.getLogger().handlers:  # Hydra's <task>.log, open in the folder
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(
            folder.absolute()
        ):
            handler.close()
            logging.getLogger().removeHandler(handler)
    for path in files:
        path.unlink(missing_ok=True)
    folders = sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    path = folder.absolute()
    try:
        for sub in folders:
            sub.rmdir()
        while True:  # the folder, and the parents created for it
            path.rmdir()
            if path == top.absolute():
                break
            path = path.parent
    except OSError:  # not empty (something else was written meanwhile): leave the rest
        return


BEFORE_USER_ERROR_EXIT.append(discard_new_run_folder)


def _ours(holder: dict[str, Any]) -> bool:
    """Whether a lock was taken by this process."""
    return holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def _in_use(folder: Path, holder: dict[str, Any]) -> ConfigError:
    who = (
        f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
        if holder
        else "unreadable lock"
    )
    path = folder / LOCK
    return ConfigError(
        f"{folder} is in use by another run ({who}; {path}): wait for it to end or start this one "
        f"in another folder (hydra.run.dir=…); if no run uses the folder any more, delete {path}"
    )


def check_not_in_use(folder: Path) -> None:
    """Refuse a folder another live run holds (without taking it).

    Raises:
        ConfigError: naming the holder and the lock file.
    """
    path = folder / LOCK
    holder = _holder(path) if path.exists() else None
    if (
        holder is None
        or _stale(holder)
        or (_ours(holder) and path.absolute() in _TAKEN_BEFORE_HYDRA)
    ):
        return
    raise _in_use(folder, holder)


def check_not_unfinished(folder: Path, resume: str | None) -> None:
    """Refuse to start a new run from scratch in a folder that holds the checkpoints of a run that
    did not finish (killed with SIGKILL, a crashed node, an error): Lightning would write ``-v1``
    checkpoints beside the old ones and the two runs would be mixed. ``ckpt_path=`` inside the
    folder continues that run; the message gives the command.

    Raises:
        ConfigError: naming the folder, its last checkpoint and the command that resumes it.
    """
    if resume and Path(resume).resolve().is_relative_to(folder.resolve()):
        return
    last = next(iter(sorted(folder.glob("**/last.ckpt"))), None)
    if last is None or (folder / RESULTS).is_file():
        return
    holder = _holder(folder / LOCK)
    how = (
        f"its run (pid {holder.get('pid')}, started {holder.get('started')}) was killed before "
        f"it finished and left {folder / LOCK}"
        if holder and _stale(holder)
        else f"there is no {RESULTS}"
    )
    raise ConfigError(
        f"{folder} holds an unfinished run ({how}; its last checkpoint is {last}): continue it "
        f"with `{resume_command(folder, last)}`, or start this run in a new folder "
        "(hydra.run.dir=…)"
    )


def resume_command(folder: Path, last: Path) -> str:
    """The command that continues the run of ``folder`` from ``last``: its recorded overrides
    (``.hydra/overrides.yaml``) with its folder and the checkpoint."""
    record = folder / ".hydra" / "overrides.yaml"
    try:
        overrides = [str(o) for o in OmegaConf.load(record)] if record.is_file() else None
    except Exception:  # a damaged record: the user's own overrides
        overrides = None
    given = (
        [shlex.quote(o) for o in overrides if not o.lstrip("+~").startswith("ckpt_path=")]
        if overrides is not None
        else ["<that run's overrides>"]
    )
    return " ".join(
        [
            "python -m tpt_aqa.train",
            *given,
            shlex.quote(f"hydra.run.dir={folder}"),
            shlex.quote(f"ckpt_path={last}"),
        ]
    )


def take_lock(folder: Path) -> Path:
    """Create ``folder/.run.lock`` for this process, taking over a stale one.

    Returns:
        The lock file, for ``release_lock``.

    Raises:
        ConfigError: when another live run (or one on another host) holds the folder.
    """
    path = folder / LOCK
    try:
        return _create_lock(path)
    except FileExistsError:
        holder = _holder(path)
        if (
            _ours(holder) and path.absolute() in _TAKEN_BEFORE_HYDRA
        ):  # GuardRunFolder took it for this run
            return path
        if not (_stale(holder) and _remove_if_unchanged(path, holder)):
            raise _in_use(folder, holder) from None
    log.warning("%s: taking over the lock of pid %s, which no longer runs", folder, holder["pid"])
    try:
        return _create_lock(path)
    except FileExistsError:  # another run took it over at the same moment
        raise _in_use(folder, _holder(path)) from None


def _create_lock(path: Path) -> Path:
    """Create the lock file, failing with ``FileExistsError`` when there is one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "w") as f:
        record = {"pid": os.getpid(), "host": socket.gethostname()}
        json.dump({**record, "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
    return path


def _remove_if_unchanged(path: Path, holder: dict[str, Any]) -> bool:
    """Remove a stale lock unless another process replaced it meanwhile: moved aside first, so of
    two runs taking it over at once only one removes it."""
    aside = path.with_name(f"{LOCK}.{os.getpid()}.stale")
    try:
        os.replace(path, aside)
    except FileNotFoundError:  # another run took it over first: try to create it again
        return True
    if _holder(aside) != holder:  # moved a fresh lock of that other run: put it back
        os.replace(aside, path)
        return False
    aside.unlink()
    return True


def release_lock(path: Path) -> None:
    """Remove a lock this process holds (one another run took over stays)."""
    if _holder(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold_run_folder(cfg: DictConfig, resume: str | None) -> Iterator[None]:
    """Check a training run's output locations and hold its folders while the run lasts.

    The folders held are the output folder and, when a resumed run keeps writing checkpoints into
    its original run's folder, that folder too.

    Args:
        cfg: the training configuration (after the checkpoint folder follows ``resume``).
        resume: the checkpoint the run continues, if any.

    Raises:
        ConfigError: a finished run in the folder, an unwritable location, a folder in use.
    """
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank != 0:
        yield
        return
    out = Path(cfg.paths.output_dir)
    check_not_finished(out, resume)
    check_not_in_use(out)
    check_not_unfinished(out, resume)
    check_writable(output_locations(cfg))
    folders = [out]
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
    if dirpath and not Path(dirpath).resolve().is_relative_to(out.resolve()):
        folders.append(Path(dirpath).parent)
    locks: list[Path] = []
    try:
        for folder in folders:
            locks.append(take_lock(folder))
        yield
    finally:
        for lock in locks:
            release_lock(lock)


class GuardRunFolder(Callback):
    """Hydra callback: check ``hydra.run.dir`` and take it for this run before Hydra writes its
    ``.hydra/`` configuration and log into it (it does so before the task starts, which would
    overwrite the record of the run already there).

    For ``tpt_aqa.train`` in run mode: the checks of ``hold_run_folder`` (the interrupted
    checkpoint is looked for where the default configuration writes it), then the folder is
    created and its lock taken with one atomic file creation, so of several runs started at once
    with the same folder one goes on and the others stop before writing anything there. The lock
    is given back when the run ends (``hold_run_folder``) or, at the latest, when the process
    exits. A folder that cannot be created is reported for every command, naming the override.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from lightning.pytorch.utilities.rank_zero import rank_zero_only

        # Lightning's ddp re-runs the command for the other ranks, with the same hydra.run.dir:
        # the global-zero process holds the folder for all of them (as in hold_run_folder)
        if rank_zero_only.rank != 0:
            return
        exit_on_user_error(self._check)(config)

    @staticmethod
    def _check(config: DictConfig) -> None:
        from tpt_aqa.training.faults import CheckpointOnSignal

        # absolute: the run later names its folder by Hydra's absolute output_dir, and a lock
        # taken here must be recognised there (the default hydra.run.dir is relative)
        folder = Path(str(config.hydra.run.dir)).absolute()
        top = _first_missing(folder)
        if config.get("task_name") == "train":
            resume = config.get("ckpt_path")
            interrupted = folder / "checkpoints" / CheckpointOnSignal.FILENAME
            if not resume and interrupted.is_file() and written_after_results(interrupted, folder):
                resume = str(interrupted)
            check_not_finished(folder, resume)
            check_not_in_use(folder)
            check_not_unfinished(folder, resume)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"hydra.run.dir={folder} cannot be created ({err.strerror or err}: "
                f"{err.filename or folder}): pass hydra.run.dir=<a folder you can write to>"
            ) from None
        if config.get("task_name") == "train":
            lock = take_lock(folder)
            _TAKEN_BEFORE_HYDRA.add(lock)
            atexit.register(release_lock, lock)
        if top is not None:  # created for this run: removed again if it stops on a user error
            _CREATED[:] = [folder, top]
