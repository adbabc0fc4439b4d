"""Errors a user can act on: each message names the config key or file and says how to fix it.

Every such error derives from :class:`UserError`; entry points print it as one line and exit with
status 2 (``exit_on_user_error``, ``user_errors_exit``). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any


class UserError(Exception):
    """A problem with the user's configuration, data or files, not with the package."""


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the key and the fix."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's config or data, reported as one message without a traceback:
    every :class:`~tpt_aqa.core.errors.UserError`, and a missing file."""
    return (UserError, FileNotFoundError)


def find_user_error(exc: BaseException) -> BaseException | None:
    """The user error behind ``exc`` (itself or a cause, e.g. one wrapped by ``instantiate``)."""
    err: BaseException | None = exc
    while err is not None and not isinstance(err, user_errors()):
        err = err.__cause__
    return err


@contextlib.contextmanager
def user_errors_exit() -> Iterator[None]:
    """Inside: a user error (also when Hydra's ``instantiate`` wrapped it) prints its message on
    stderr (and the run's log file) and exits with status 2; anything else keeps its traceback."""
    try:
        yield
    except Exception as exc:
        err = find_user_error(exc)
        if err is None:
            raise
        from tpt_aqa.core.report import to_log_file

        label = "config error" if isinstance(err, ConfigError) else "error"
        print(f"{label}: {err}", file=sys.stderr)
        to_log_file(f"{label}: {err}")
        sys.exit(2)


def exit_on_user_error(main: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a Hydra entry point in :func:`user_errors_exit`, its log lines in the run's files."""

    @functools.wraps(main)
    def wrapper(cfg: Any) -> Any:
        from tpt_aqa.core.report import log_to_run_files

        log_to_run_files()
        with user_errors_exit():
            return main(cfg)

    return wrapper
