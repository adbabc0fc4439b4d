"""Errors a user can act on: each message names the config key or file and says how to fix it.

Every such error derives from :class:`UserError`; entry points print it as one line and exit with
status 2 (``config.exit_on_user_error``). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable

# Run just before an entry point exits on a user error (``config.user_errors_exit``): e.g.
# ``run_folder.discard_new_run_folder``, which removes a run folder created for nothing. Modules
# register here, so that ``config`` imports none of them.
BEFORE_USER_ERROR_EXIT: list[Callable[[], None]] = []


class UserError(Exception):
    """A problem with the user's configuration, data or files, not with the package."""


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the key and the fix."""
