"""The command line of the entry points: checks of the overrides as typed, before Hydra starts a run.

Hydra reports a mistyped key as ``Key 'num_querys' is not in struct``, and a multirun stops at the
first grid point that fails. ``run_command`` composes the configuration first: a mistyped key gets
the nearest valid key, and in a multirun (``-m``) every grid point is composed and checked before
any is launched, listing the bad ones.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from tpt_aqa.config import CONF_DIR, REPLACED_KEYS, replaced_key_message
from tpt_aqa.core.errors import ConfigError, find_user_error

MULTIRUN_FLAGS = ("-m", "--multirun")


def run_command(
    main: Callable[[], Any],
    config_name: str,
    validate: Callable[[DictConfig], None] | None = None,
    argv: list[str] | None = None,
) -> None:
    """Check the command line of ``python -m tpt_aqa.<config_name>``, then run the Hydra ``main``.

    Args:
        main: the ``@hydra.main`` function.
        config_name: its primary config.
        validate: the entry point's own check of a composed configuration, run on every grid point
            of a multirun (a single run calls it itself).
        argv: the arguments (default ``sys.argv[1:]``).
    """
    problem = check_command_line(config_name, sys.argv[1:] if argv is None else argv, validate)
    if problem:
        print(f"config error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()


def check_command_line(
    config_name: str, argv: list[str], validate: Callable[[DictConfig], None] | None = None
) -> str | None:
    """What is wrong with the overrides, or ``None``. Hydra's own flags (``--help``, ``--cfg``, …)
    skip the check; so does a composition problem that is not a mistyped key (Hydra reports it)."""
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    overrides = [a for a in argv if a not in MULTIRUN_FLAGS]
    if any(a.startswith("-") for a in overrides):
        return None
    try:
        points = grid_points(config_name, overrides) if multirun else [overrides]
        if len(points) == 1:
            compose_point(config_name, points[0])
            return None  # a single run validates itself, after logging is set up
        bad = []
        swept = _swept_keys(points)
        for job, point in enumerate(points):
            try:
                cfg = compose_point(config_name, point)
                with open_dict(cfg):  # the job's folder is known only once Hydra runs it
                    cfg.paths.output_dir = "."
                if validate is not None:
                    validate(cfg)
            except Exception as exc:
                err = find_user_error(exc)
                if err is None:
                    raise
                label = " ".join(o for o in point if o.split("=", 1)[0] in swept)
                bad.append(f"  job {job} ({label}): {err}")
    except ConfigError as err:
        return str(err)
    except HydraException:
        return None
    if bad:
        return (
            f"{len(bad)} of {len(points)} grid points are invalid; nothing was launched:\n"
            + "\n".join(bad)
        )
    return None


def grid_points(config_name: str, overrides: list[str]) -> list[list[str]]:
    """The overrides of every job of a multirun: the sweep config's ``hydra.sweeper.params``
    crossed with the command line's sweeps, as Hydra's basic sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(overrides)
    first = [_first_value(o) for o in parsed]
    cfg = compose_point(config_name, first, hydra=True)
    params = cfg.hydra.sweeper.get("params") or {}
    combined = [f"{k}={v}" for k, v in params.items()] + overrides
    return BasicSweeper.split_arguments(parser.parse_overrides(combined), None)[0]


def _swept_keys(points: list[list[str]]) -> set[str]:
    """The keys whose value differs between grid points."""
    values: dict[str, set[str]] = {}
    for point in points:
        for o in point:
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    return {k for k, v in values.items() if len(v) > 1}


def _first_value(override) -> str:
    """An override with a sweep replaced by its first value (enough to find the sweep params)."""
    if not override.is_sweep_override():
        return override.input_line
    key = override.get_key_element()
    return f"{key}={next(iter(override.sweep_string_iterator()))}"


def compose_point(config_name: str, overrides: list[str], hydra: bool = False) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` as Hydra would for one job.

    Raises:
        ConfigError: an override names a key the configuration lacks, with the nearest valid key.
    """
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        try:
            return compose(config_name, overrides=overrides, return_hydra_config=hydra)
        except ConfigCompositionException as exc:
            cause = exc.__cause__
            if not isinstance(cause, ConfigAttributeError | ConfigKeyError) or not cause.full_key:
                raise
            key = cause.full_key
            if key in REPLACED_KEYS:
                raise ConfigError(replaced_key_message(key)) from None
            rest = [o for o in overrides if o.split("=", 1)[0] != key]
            known = _keys(compose(config_name, overrides=rest)) if rest != overrides else []
    given = next((o for o in overrides if o.split("=", 1)[0] == key), f"{key}=...")
    raise ConfigError(unknown_key_message(key, known, given, config_name))


def unknown_key_message(key: str, known: list[str], given: str, config_name: str) -> str:
    """The message for an override of a key the configuration lacks, with the nearest key."""
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    value = given.split("=", 1)[1] if "=" in given else "..."
    if near:
        return (
            f"{key} is not a key of the {config_name} configuration: did you mean "
            f"{near[0]}={value}? (+{given} adds a new key)"
        )
    return (
        f"{key} is not a key of the {config_name} configuration: check the spelling "
        f"(python -m tpt_aqa.{config_name} --cfg job lists the keys), or +{given} adds a new key"
    )


def _keys(cfg: DictConfig) -> list[str]:
    """Every dotted key of a configuration, nested ones included."""
    out: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            out.append(f"{prefix}{k}")
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return out
