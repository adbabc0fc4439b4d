"""Feature caches: the manifest that records what produced a folder of clip features.

A cache is a ``dataset=features`` folder (``{id}.npy`` + ``annotations.csv``) plus ``manifest.json``
written by ``tpt_aqa.extract_features``. Training on a cache checks the manifest against the
settings it is asked to use, so features extracted with another checkpoint, normalisation, clip
sampling or view are never mixed up silently.

It also holds ``atomic_write``, the one way this package writes a file that readers may open
while it is being written (features, checkpoints, figures, results).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from tpt_aqa.errors import UserError

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


def atomic_write(
    path: str | Path,
    write: Callable[[BinaryIO], None],
    mode: int | None = None,
    durable: bool = False,
) -> Path:
    """Write a file so that readers see the old or the new content, never a partial one.

    ``write`` fills a fresh hidden file in the target's folder (so the rename cannot cross
    filesystems), which is then renamed over the target. The file gets the mode any new file of the
    user gets (``0666`` less the umask) unless ``mode`` says otherwise. A failed or interrupted
    write removes its temporary file and leaves the previous content; a process killed outright
    (SIGKILL) may leave a ``.<name>.<random>.tmp`` behind, never a partial ``<name>``.

    Args:
        path: the target; missing parent folders are created.
        write: called once with the open binary file.
        mode: permission bits for the new file (e.g. those of the file it replaces).
        durable: flush the data and the rename to disk before returning (checkpoints).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:  # "x": a fresh file, mode from the umask like any other
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable; some filesystems cannot sync a folder, which is harmless."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (``atomic_write``)."""
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj: Any, path: Path, mode: int | None = None) -> None:
    """``torch.save`` atomically (``atomic_write``): readers never see a partial checkpoint;
    ``mode`` sets the file's permissions."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), mode=mode)


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
