"""Feature caches: the manifest that records what produced a folder of clip features.

A cache is a ``dataset=features`` folder (``{id}.npy`` + ``annotations.csv``) plus ``manifest.json``
written by ``tpt_aqa.extract_features``. Training on a cache checks the manifest against the
settings it is asked to use, so features extracted with another checkpoint, normalisation, clip
sampling or view are never mixed up silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tpt_aqa.core.errors import UserError

MANIFEST = "manifest.json"
FORMAT = "tpt_aqa.features/1"


class CacheMismatchError(UserError, ValueError):
    """A feature cache was produced with settings other than the requested ones."""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
