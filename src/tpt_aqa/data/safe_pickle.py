"""Restricted unpickling of downloaded files (the benchmarks' annotations, DeepMind's I3D arrays):
``pickle.load`` can run arbitrary code, so only plain containers, numbers, strings and numpy
arrays or scalars are built; any other global is refused, naming the file and the global.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from tpt_aqa.core.errors import ConfigError, UserError

# Globals a pickle of plain data (and numpy arrays/scalars, from numpy 1.x or 2.x) may reference.
ALLOWED = {
    ("builtins", "dict"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "complex"),
    ("builtins", "str"),
    ("builtins", "bytes"),
    ("builtins", "bool"),
    ("_codecs", "encode"),  # how protocol-2 pickles store bytes (numpy array buffers)
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol-5 arrays
    ("numpy._core.numeric", "_frombuffer"),
}


class UnsafePickleError(UserError, ValueError):
    """A pickle referenced something other than plain data."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase | BinaryIO, source: str) -> None:
        super().__init__(file, encoding="latin1")  # python-2 pickles of numpy arrays need latin1
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: refusing to unpickle {module}.{name}; these pickles may only hold "
            "plain containers, numbers, strings and numpy arrays. If this file is what its "
            "publisher distributes, convert it to plain data in a trusted environment"
        )


def safe_load(path: str | Path) -> Any:
    """Unpickle a file holding only plain data."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found")
    with open(path, "rb") as f:
        return safe_load_file(f, str(path))


def load_keys(path: Path, as_key: Callable[[Any, Path], Any], what: str) -> list[Any]:
    """A split file: a pickled list of sample keys (each checked by ``as_key``), none twice."""
    data = safe_load(path)
    if not isinstance(data, list | tuple | set | frozenset):
        raise ConfigError(f"{path}: expected a list of {what}, found {type(data).__name__}")
    keys = [as_key(k, path) for k in data]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{path} lists some dives more than once; use the release's split file")
    return keys


def safe_load_file(file: BinaryIO, source: str) -> Any:
    """Unpickle plain data from an open binary stream, named ``source`` in messages."""
    try:
        return _RestrictedUnpickler(file, source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise UnsafePickleError(f"{source}: not a readable pickle ({err})") from None
