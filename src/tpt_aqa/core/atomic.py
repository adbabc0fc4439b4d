"""Writing files atomically: readers see the old content or the new, never a partial file.

``atomic_write`` is the one way this package writes a file that readers may open while it is being
written (features, checkpoints, figures, results); ``atomic_write_text`` and ``atomic_torch_save``
are its text and ``torch.save`` forms.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


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


def atomic_torch_save(
    obj: Any, path: str | Path, mode: int | None = None, durable: bool = False
) -> None:
    """``torch.save`` atomically (``atomic_write``): readers never see a partial checkpoint;
    ``mode`` sets the file's permissions, ``durable`` flushes it to disk before returning."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), mode=mode, durable=durable)


def atomic_save_array(path: str | Path, array: Any) -> None:
    """``numpy.save`` of one ``.npy`` atomically (``atomic_write``): a feature cache never holds a
    partial array."""
    import numpy as np

    atomic_write(path, lambda f: np.save(f, array))
