"""Errors a user can act on: each message names the config key or file and says how to fix it.

Entry points print them as one line and exit with status 2 (``config.exit_on_user_error``).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration problem; the message names the key and the fix."""
