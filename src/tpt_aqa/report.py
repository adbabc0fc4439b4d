"""What a run reports: strict JSON records, and log lines in the run's log file."""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``, in nested lists
    and dicts too: JSON has no NaN, and ``null`` is what readers of the file understand."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def json_text(record: Any) -> str:
    """``record`` as valid JSON text (indented): an undefined number is written ``null``."""
    return json.dumps(finite_or_none(record), indent=2, allow_nan=False)
