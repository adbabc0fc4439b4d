"""Errors a user can act on: each message names the config key or file and says how to fix it.

Every such error derives from :class:`UserError`; entry points print it as one line and exit with
status 2 (``config.exit_on_user_error``). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's configuration, data or files, not with the package."""


class ConfigError(UserError, ValueError):
    """A configuration problem; the message names the key and the fix."""
