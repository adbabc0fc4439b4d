"""What a run reports: strict JSON records, log lines in the run's log file, the progress bar."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar


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


def stage(text: str) -> None:
    """One timestamped line as a long command enters a stage, so it is never silent."""
    print(f"[{datetime.now():%H:%M:%S}] {text} …", flush=True)


def format_results(results: dict[str, float], title: str) -> str:
    """A short plain-text table of metrics."""
    width = max(len(k) for k in results) if results else 0
    lines = [title, "-" * max(len(title), width + 12)]
    lines += [f"{k:<{width}}  {v:10.4f}" for k, v in results.items()]
    return "\n".join(lines)


# ---- log lines -------------------------------------------------------------------------------
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
# Lightning logs its messages through this one logger (lightning_utilities' rank-zero helpers).
RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _NoTips(logging.Filter):
    """Drops Lightning's advertisements for its cloud packages (litlogger, litmodels)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def quiet_lightning_tips() -> None:
    """Silence Lightning's "💡 Tip: … try installing litlogger / litmodels" lines."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


def log_to_run_files() -> None:
    """Send Lightning's log lines to the handlers Hydra configured (the console and the job's
    ``<task>.log``): imported before Hydra set up logging, Lightning kept a console handler of its
    own and stopped its lines from reaching the log file."""
    if not logging.getLogger().handlers:  # not under Hydra: leave Lightning's own handler
        return
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def to_log_file(message: str, level: int = logging.ERROR) -> None:
    """Write ``message`` to the run's log file only (it was already printed on the console)."""
    record = logging.LogRecord("tpt_aqa", level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


# ---- progress --------------------------------------------------------------------------------
def epoch_label(current_epoch: int, max_epochs: int | None) -> str:
    """``Epoch 2/2`` for the second of two epochs; ``Epoch 4 (until stopped)`` for
    ``trainer.max_epochs=-1`` (Lightning counts from 0 and shows ``Epoch 1/1`` and ``Epoch 3/-2``)."""
    if max_epochs is None or max_epochs < 0:
        return f"Epoch {current_epoch + 1} (until stopped)"
    return f"Epoch {current_epoch + 1}/{max_epochs}"


class ProgressBar(RichProgressBar):
    """Lightning's Rich progress bar with epochs counted as ``epoch_label`` says."""

    def _get_train_description(self, current_epoch: int) -> str:
        label = epoch_label(current_epoch, self.trainer.max_epochs)
        # as Lightning does: padded to the validation label's width, so the bar does not jump
        return f"{label:{len(self.validation_description)}}"
