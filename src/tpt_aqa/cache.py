"""Feature caches: the manifest that records what produced a folder of clip features.

A cache is a ``dataset=features`` folder (``{id}.npy`` + ``annotations.csv``) plus ``manifest.json``
written by ``tpt_aqa.extract_features``. Training on a cache checks the manifest against the
settings it is asked to use, so features extracted with another checkpoint, normalisation, clip
sampling or view are never mixed up silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = "tpt_aqa.features/1"


class CacheMismatchError(ValueError):
    """A feature cache was produced with settings other than the requested ones."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def json_text(obj: Any) -> str:
    """Strict JSON of ``obj``: non-finite floats (an undefined ρ, a NaN prediction) become ``null``,
    so every reader can parse the file (``json.dumps`` would write the invalid token ``NaN``)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=2, allow_nan=False)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never a partial one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path, mode: int | None = None) -> None:
    """``torch.save`` to a temporary file in the target's folder, then rename it over the target:
    readers never see a partial checkpoint; ``mode`` sets the file's permissions."""
    import tempfile

    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest of a cache folder, or ``None`` when the folder has none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CacheMismatchError(
            f"{path}: not valid JSON ({err}); delete it and re-extract"
        ) from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def check_manifest(root: str | Path, expected: dict[str, Any]) -> None:
    """Compare a cache's manifest with the requested settings (dotted keys or nested dicts).

    Raises:
        CacheMismatchError: listing each differing key with the cache's and the requested value.
    """
    manifest = read_manifest(root)
    if manifest is None:
        raise CacheMismatchError(
            f"{Path(root) / MANIFEST} not found: settings were requested but the folder has no "
            "manifest; extract the features with python -m tpt_aqa.extract_features"
        )
    have, want = flatten(manifest), flatten(expected)
    diffs = [
        f"{k}: cache has {have.get(k, '<missing>')!r}, requested {v!r}"
        for k, v in want.items()
        if have.get(k, "<missing>") != v
    ]
    if diffs:
        raise CacheMismatchError(
            f"feature cache {root} was extracted with other settings:\n  "
            + "\n  ".join(diffs)
            + "\nre-extract with python -m tpt_aqa.extract_features into a new folder, "
            "or request the cache's settings"
        )
