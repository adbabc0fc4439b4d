"""Reading checkpoint files, and saying what does not fit when one is given to another model.

Every entry point that takes a checkpoint (``tpt_aqa.train ckpt_path=``, ``tpt_aqa.eval``,
``tpt_aqa.predict``, ``tpt_aqa.convert --from-release``) reads it through ``load_torch_file``: tensors
and plain values only (``weights_only``), and a truncated, random or unsafe file stops the command
with one line naming the file. ``compare_state`` lists the keys and shapes that differ between a
file's weights and a model's; ``fitting_overrides`` turns the configuration stored in a tpt_aqa
checkpoint into the overrides that would build a model it fits. ``stored_config`` reads that
configuration with the ``_target_``s of modules that have moved since (``MOVED_MODULES``) renamed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tpt_aqa.core.cache import flatten
from tpt_aqa.core.errors import UserError

# Where each module of the flat layout went when the library was grouped by stage (README,
# layout). A configuration stored in a checkpoint written before names the old modules in its
# ``_target_``s (``tpt_aqa.losses.TPTCriterion``, ``tpt_aqa.runtime.adam``, …); ``stored_config``
# names the new ones, so ``tpt_aqa.eval`` and ``tpt_aqa.predict`` rebuild old checkpoints. The one
# table of old module paths: add a row here whenever a module a config can name moves.
MOVED_MODULES = {
    "tpt_aqa.atomic": "tpt_aqa.core.atomic",
    "tpt_aqa.cache": "tpt_aqa.core.cache",
    "tpt_aqa.checkpoints": "tpt_aqa.core.checkpoints",
    "tpt_aqa.errors": "tpt_aqa.core.errors",
    "tpt_aqa.pretrained": "tpt_aqa.core.pretrained",
    "tpt_aqa.report": "tpt_aqa.core.report",
    "tpt_aqa.scoring": "tpt_aqa.scoring.groups",
    "tpt_aqa.losses": "tpt_aqa.scoring.losses",
    "tpt_aqa.score_stage": "tpt_aqa.scoring.stage",
    "tpt_aqa.bank": "tpt_aqa.scoring.bank",
    "tpt_aqa.metrics": "tpt_aqa.scoring.metrics",
    "tpt_aqa.parsing": "tpt_aqa.scoring.step_metrics",
    "tpt_aqa.evaluation": "tpt_aqa.training.pairwise_eval",
    "tpt_aqa.lit_module": "tpt_aqa.training.lit_module",
    "tpt_aqa.faults": "tpt_aqa.training.faults",
    "tpt_aqa.runtime": "tpt_aqa.training.runtime",
    "tpt_aqa.run_folder": "tpt_aqa.training.run_folder",
    "tpt_aqa.viz": "tpt_aqa.reporting.viz",
    "tpt_aqa.wandb_logging": "tpt_aqa.reporting.wandb_logging",
    "tpt_aqa.paper": "tpt_aqa.reporting.paper",
}


def current_target(target: str) -> str:
    """``target`` (a dotted ``_target_``) with its module renamed when it has moved
    (``MOVED_MODULES``); any other target unchanged."""
    module, dot, name = target.rpartition(".")
    return f"{MOVED_MODULES[module]}{dot}{name}" if module in MOVED_MODULES else target


def with_current_targets(config: Any) -> Any:
    """A copy of ``config`` (nested dicts and lists) with every ``_target_`` made current."""
    if isinstance(config, Mapping):
        return {
            k: current_target(v)
            if k == "_target_" and isinstance(v, str)
            else with_current_targets(v)
            for k, v in config.items()
        }
    if isinstance(config, list | tuple):
        return [with_current_targets(v) for v in config]
    return config


def stored_config(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tpt_aqa configuration stored in a checkpoint, its ``_target_``s made current, or
    ``None`` when it holds none (not written by ``tpt_aqa.train``)."""
    config = (ckpt.get("tpt_aqa") or {}).get("config")
    return None if config is None else with_current_targets(config)


class CheckpointError(UserError, ValueError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """A Lightning checkpoint (``tpt_aqa.train``, ``tpt_aqa.convert``) as a dict, checked readable.

    Raises:
        ConfigError: when ``path`` is not a file.
        CheckpointError: when it cannot be read (truncated, not a checkpoint, unsafe to unpickle)
            or holds no model weights.
    """
    from tpt_aqa.core.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{key}={path} is not a file: pass {key}=/path/to/run/checkpoints/<name>.ckpt"
        )
    ckpt = load_torch_file(
        path,
        hint="it is truncated (an interrupted copy or download) or not a PyTorch checkpoint; pass "
        "a .ckpt written by tpt_aqa.train or tpt_aqa.convert",
        unsafe_hint="tpt_aqa writes tensors and plain values only: was the file written by "
        "another program?",
    )
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{key}={path} holds no model weights (no 'state_dict'): pass a .ckpt written by "
            "tpt_aqa.train or tpt_aqa.convert"
        )
    return ckpt


def load_torch_file(
    path: str | Path,
    hint: str,
    unsafe_hint: str = "",
    allowed_globals: Sequence[Any] = (),
    error: type[Exception] = CheckpointError,
) -> Any:
    """``torch.load`` of tensors and plain values only, on the CPU.

    Args:
        path: the file.
        hint: what to do when the file cannot be read at all (truncated, not a checkpoint).
        unsafe_hint: what to do when it holds Python objects that unpickling would run.
        allowed_globals: ``torch.serialization.safe_globals`` entries the file may also use.
        error: the exception raised (a subclass of ``CheckpointError`` or ``ConfigError``).

    Raises:
        error: one line with the file, what was wrong, and ``hint`` or ``unsafe_hint``.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # re-raised below with what to do
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # a legacy-format or broken file: the load error tells
            unsafe = []
        names = {name for _, name in allowed_globals}
        others = [g for g in unsafe if g not in names]
        rejected = [ln for ln in lines if "Unsupported global" in ln]
        if others or rejected:
            raise error(
                f"cannot read {path} safely: it holds Python objects other than tensors and "
                f"numbers ({', '.join(others) or rejected[0]}). Unpickling those would run code "
                f"from the file, so tpt_aqa does not. {unsafe_hint}".rstrip()
            ) from None
        raise error(
            f"cannot read {path} ({_load_error_detail(path, err, lines)}): {hint}"
        ) from None


def _load_error_detail(path: Path, err: Exception, lines: list[str]) -> str:
    """The useful part of a ``torch.load`` error, in a few words."""
    if path.stat().st_size == 0:
        return "an empty file"
    found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(Check the|$)", " ".join(lines))
    if found:
        return found.group(1)
    if not lines:
        return type(err).__name__
    return lines[0].split(". ")[0].rstrip(".")  # torch's long advice follows the first sentence


@dataclass
class StateDifference:
    """How a file's weights differ from a model's, by key.

    Attributes:
        unexpected: keys of the file the model lacks.
        missing: keys of the model the file does not set.
        shapes: ``(key, shape in the file, shape in the model)`` for keys of both.
    """

    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.unexpected or self.missing or self.shapes)


def compare_state(
    found: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    optional: tuple[str, ...] = (),
) -> StateDifference:
    """Compare a state dict with the one a model expects; keys ending in ``optional`` may be
    absent from ``found``."""
    diff = StateDifference()
    for key, value in found.items():
        if key not in expected:
            diff.unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[key].shape):
            diff.shapes.append((key, tuple(value.shape), tuple(expected[key].shape)))
    diff.missing = [k for k in expected if k not in found and not k.endswith(optional)]
    return diff


def listing(title: str, items: Iterable[str], shown: int = 8) -> str:
    """An indented line ``title (n): a; b; … and m more``."""
    items = list(items)
    more = f" … and {len(items) - shown} more" if len(items) > shown else ""
    return f"\n  {title} ({len(items)}): " + "; ".join(items[:shown]) + more


def config_differences(
    saved: Mapping[str, Any], current: Mapping[str, Any], ignore: Sequence[str] = ()
) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` for each dotted key whose values differ; keys equal to
    or under an ``ignore`` entry are left out."""
    have, want = flatten(dict(saved)), flatten(dict(current))
    missing = "<not set>"
    return [
        (k, have.get(k, missing), want.get(k, missing))
        for k in sorted(set(have) | set(want))
        if have.get(k, missing) != want.get(k, missing)
        and not any(k == p or k.startswith(p + ".") for p in ignore)
    ]


def fitting_overrides(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The ``model.*`` overrides that would build the model a tpt_aqa checkpoint's stored
    configuration (``saved``) describes, starting from ``current``."""
    return [
        f"{'+' if now == '<not set>' else ''}{k}={_override_value(was)}"
        for k, was, now in config_differences(
            {"model": saved.get("model", {})}, {"model": current.get("model", {})}
        )
        if was != "<not set>"
    ]


def _override_value(value: Any) -> str:
    return (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


def outline(ckpt: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """What ``check_state_fits`` needs of a checkpoint, without its memory: the weights as meta
    tensors (shapes only) and the stored tpt_aqa configuration."""
    state = {k: v.to("meta") for k, v in ckpt.get("state_dict", {}).items()}
    return state, stored_config(ckpt)


def check_state_fits(
    path: str | Path,
    found: Mapping[str, torch.Tensor],
    saved_config: Mapping[str, Any] | None,
    expected: Mapping[str, torch.Tensor],
    current_config: Mapping[str, Any],
    key: str = "ckpt_path",
) -> None:
    """Refuse a checkpoint whose weights do not fit the model built from the configuration.

    Args:
        path: the checkpoint, for the message.
        found: its state dict (meta tensors do: only shapes are read).
        saved_config: the configuration stored in it (tpt_aqa checkpoints), or ``None``.
        expected: the state dict of the model it is given to.
        current_config: the configuration that model was built from.
        key: the config key that named the checkpoint.

    Raises:
        CheckpointError: listing the keys and shapes that differ and the ``model.*`` overrides of
            the checkpoint's own configuration.
    """
    diff = compare_state(found, expected)
    if not diff:
        return
    message = f"{key}={path} holds a model of another configuration:"
    if diff.unexpected:
        message += listing("keys this model lacks", diff.unexpected)
    if diff.missing:
        message += listing("keys of this model the file does not set", diff.missing)
    if diff.shapes:
        message += listing(
            "shapes that differ (file → this model)",
            (f"{k} {a} → {b}" for k, a, b in diff.shapes),
        )
    overrides = fitting_overrides(saved_config, current_config) if saved_config else []
    if overrides:
        message += f"\n  the checkpoint was trained with: pass {' '.join(overrides)}"
    raise CheckpointError(message)
