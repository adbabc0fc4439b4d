"""The authors' release checkpoint (``baiyang4/aqa_tpt``) read safely and its keys mapped onto
TPT's modules, strictly (docs/method.md §3); ``python -m tpt_aqa.convert`` builds a tpt_aqa
checkpoint from the result and says which release settings the configuration must match.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tpt_aqa.core.checkpoints import compare_state, listing, load_torch_file
from tpt_aqa.core.errors import ConfigError

RELEASE_FORMAT = "baiyang4/aqa_tpt@4f1506e"

# The release's key layout → ours, one row per group of tensors: (section of the release file,
# release key pattern, our key inside ``TPT.state_dict()``). Patterns match whole keys (after a
# ``module.`` prefix is stripped); ``\1``, ``\2`` carry layer indices and parameter names over.
# Every tensor is copied as is (no transpose, no split or fusion).
_LAYER = r"action_decoder\.layers\.(\d+)\."
_WB = r"\.(weight|bias)"
# fmt: off
RELEASE_KEY_MAP: tuple[tuple[str, str, str], ...] = (
    # ActionDecoder → TemporalParsingDecoder (model.parser)
    ("model", r"action_decoder\.query_embed\.weight", "parser.query_embed"),  # Embedding (K, D)
    ("model", _LAYER + r"temp",                       r"parser.layers.\1.temperature"),
    ("model", _LAYER + r"key_embed" + _WB,            r"parser.layers.\1.key_proj.\2"),
    ("model", _LAYER + r"value_embed" + _WB,          r"parser.layers.\1.value_proj.\2"),
    ("model", _LAYER + r"query_embed" + _WB,          r"parser.layers.\1.query_proj.\2"),
    ("model", _LAYER + r"norm1" + _WB,                r"parser.layers.\1.cross_norm.\2"),
    ("model", _LAYER + r"linear1" + _WB,              r"parser.layers.\1.ffn.0.\2"),
    ("model", _LAYER + r"linear2" + _WB,              r"parser.layers.\1.ffn.3.\2"),
    ("model", _LAYER + r"norm2" + _WB,                r"parser.layers.\1.ffn_norm.\2"),
    ("model", _LAYER + r"self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
                                                      r"parser.layers.\1.self_attn.\2"),
    ("model", _LAYER + r"norm3" + _WB,                r"parser.layers.\1.self_norm.\2"),
    # PairEncoder → PairStage (model.pair_stage): the same Sequential indices
    ("model", r"pair_encoder\.mlp\.([03])" + _WB,     r"pair_stage.mlp.\1.\2"),
    # cls / reg → GroupHeads (model.heads): the same Sequential indices
    ("model", r"cls\.([02])" + _WB,                   r"heads.cls.\1.\2"),
    ("model", r"reg\.([02])" + _WB,                   r"heads.reg.\1.\2"),
    # I3D_backbone.backbone (model_rgb.pth layout) → I3DEncoder.backbone (model.encoder)
    ("backbone", r"backbone\.(.+)",                   r"encoder.backbone.\1"),
)
# fmt: on

# Buffers a release file may lack (PyTorch < 0.4.1 saved no BatchNorm step counter); ours keep
# their value. The counter plays no part in evaluation (BatchNorm statistics are frozen).
OPTIONAL_SUFFIXES = ("num_batches_tracked",)
# numpy scalars (the release's ``rho_best``, ``RL2_min``, ``epoch_best``) unpickle through these
# globals; they build a number from its bytes and dtype and run no other code.
_NUMPY_DTYPES = ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType")


class ReleaseCheckpointError(ConfigError):
    """A release file that cannot be converted; the message says what was found and what to do."""


@dataclass
class ReleaseCheckpoint:
    """The tensors of a release file, ``module.`` prefixes stripped.

    Attributes:
        model: ``PairModel`` state dict.
        backbone: ``I3D_backbone`` state dict, or ``None`` for runs on cached features.
        meta: the file's plain entries (``epoch``, ``rho_best``, ...) as Python numbers.
    """

    model: dict[str, torch.Tensor]
    backbone: dict[str, torch.Tensor] | None
    meta: dict[str, Any] = field(default_factory=dict)


def _numpy_scalar_globals() -> list[Any]:
    import numpy as np

    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list[Any] = [
        (scalar, "numpy.core.multiarray.scalar"),  # written by numpy 1
        (scalar, "numpy._core.multiarray.scalar"),  # written by numpy 2
        (np.dtype, "numpy.dtype"),
    ]
    for name in _NUMPY_DTYPES:
        cls = getattr(getattr(np, "dtypes", None), name, None)
        if cls is not None:
            allowed.append((cls, f"numpy.dtypes.{name}"))
    return allowed


def _load_file(path: Path) -> Any:
    return load_torch_file(
        path,
        hint="is it a checkpoint the release's training code wrote (results/<run>/<rho>.pth or "
        "checkpoint_<epoch>.pth)?",
        unsafe_hint="Where the file comes from someone you trust, keep only its weights, then "
        "convert the new file: python -c \"import torch; c = torch.load('"
        f"{path}', map_location='cpu', weights_only=False); torch.save({{'model': c['model'], "
        f"'backbone': c.get('backbone')}}, '{path.with_suffix('.weights.pth')}')\"",
        allowed_globals=_numpy_scalar_globals(),
        error=ReleaseCheckpointError,
    )


def strip_ddp_prefix(state: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Drop DistributedDataParallel's ``module.`` prefix from every key that has it.

    Raises:
        ReleaseCheckpointError: when stripping makes two keys equal.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if name in out:
            raise ReleaseCheckpointError(
                f"{what} holds {name!r} both with and without the 'module.' prefix: "
                "which one to use is ambiguous; re-save the file with one of them"
            )
        out[name] = value
    return out


def _as_state(obj: Any, what: str, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ReleaseCheckpointError(
            f"{path}: {what} is not a state dict of tensors (found {type(obj).__name__}); "
            "expected the file the release's ResultsHandler writes"
        )
    return strip_ddp_prefix(obj, f"{path}: {what}")


def load_release(path: str | Path) -> ReleaseCheckpoint:
    """Read a checkpoint of the release's training code.

    Args:
        path: a ``.pth`` file the release wrote (``results/<run>/<rho>.pth`` or
            ``checkpoint_<epoch>.pth``).

    Returns:
        Its model and backbone state dicts and plain metadata.

    Raises:
        ReleaseCheckpointError: when the file is missing, unsafe to read or not of this layout.
    """
    path = Path(path)
    if not path.is_file():
        raise ReleaseCheckpointError(f"--from-release {path}: no such file")
    raw = _load_file(path)
    if not isinstance(raw, Mapping) or "model" not in raw:
        found = sorted(map(str, raw)) if isinstance(raw, Mapping) else type(raw).__name__
        raise ReleaseCheckpointError(
            f"{path} is not a checkpoint of the release's training code: expected a dict with "
            f"'model' (and 'backbone' when the I3D was fine-tuned), found {found}"
        )
    backbone = raw.get("backbone")
    meta = {}
    for key in ("epoch", "epoch_best", "rho_best", "RL2_min"):
        value = raw.get(key)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, numbers.Number):  # numpy scalars too
            meta[key] = value.item() if hasattr(value, "item") else value
    return ReleaseCheckpoint(
        model=_as_state(raw["model"], "'model'", path),
        backbone=None if backbone is None else _as_state(backbone, "'backbone'", path),
        meta=meta,
    )


def release_dims(model: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Sizes the release model was built with, read from its tensors (those present)."""
    shapes = {k: tuple(v.shape) for k, v in model.items()}
    dims: dict[str, int] = {}
    if len(shapes.get("action_decoder.query_embed.weight", ())) == 2:
        dims["model.num_queries"], dims["model.d_model"] = shapes[
            "action_decoder.query_embed.weight"
        ]
    layers = {m.group(1) for k in shapes if (m := re.match(r"action_decoder\.layers\.(\d+)\.", k))}
    if layers:
        dims["model.parser.num_layers"] = len(layers)
    if len(shapes.get("action_decoder.layers.0.linear1.weight", ())) == 2:
        dims["model.parser.ffn_dim"] = shapes["action_decoder.layers.0.linear1.weight"][0]
    if len(shapes.get("cls.0.weight", ())) == 2:
        dims["model.heads.hidden_dim"] = shapes["cls.0.weight"][0]
    if len(shapes.get("cls.2.weight", ())) == 2:
        dims["model.num_groups"] = shapes["cls.2.weight"][0]
    if len(shapes.get("action_decoder.layers.0.key_embed.weight", ())) == 2:
        dims["clip feature width C"] = shapes["action_decoder.layers.0.key_embed.weight"][1]
    return dims


def map_release_state(
    release: ReleaseCheckpoint, expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename the release's tensors to ours through ``RELEASE_KEY_MAP``, strictly.

    Args:
        release: the release file's tensors.
        expected: ``TPT.state_dict()`` of the model to load (keys and shapes are checked).

    Returns:
        A state dict for ``TPT.load_state_dict(strict=True)``.

    Raises:
        ReleaseCheckpointError: listing every release key no pattern matches, every release key
            whose target our model lacks, every key of ours the file does not set, and every
            shape that differs, with the sizes the file was trained with.
    """
    sections = {"model": release.model, "backbone": release.backbone or {}}
    compiled = [(s, re.compile(p), t) for s, p, t in RELEASE_KEY_MAP]
    renamed: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    unmatched = []
    for section, state in sections.items():
        for key, value in state.items():
            rule = next(
                ((rx, tmpl) for s, rx, tmpl in compiled if s == section and rx.fullmatch(key)),
                None,
            )
            if rule is None:
                unmatched.append(f"{section}: {key} {tuple(value.shape)}")
                continue
            ours = rule[0].sub(rule[1], key)
            renamed[ours] = value
            source[ours] = f"{section}: {key}"
    diff = compare_state(renamed, expected, optional=OPTIONAL_SUFFIXES)
    if not (unmatched or diff):
        return {k: renamed.get(k, v) for k, v in expected.items()}  # optional buffers keep ours
    extra = [f"{source[k]} {tuple(renamed[k].shape)} → {k}" for k in diff.unexpected]
    shapes = [f"{source[k]} {a} → {k} {b}" for k, a, b in diff.shapes]
    missing = [f"{k} {tuple(expected[k].shape)}" for k in diff.missing]
    message = "the release checkpoint does not match this model:"
    if unmatched:
        message += listing("release keys no RELEASE_KEY_MAP pattern knows", unmatched)
    if extra:
        message += listing("release keys whose counterpart this model lacks", extra)
    if missing:
        message += listing("keys of this model the file does not set", missing)
    if shapes:
        message += listing("shapes that differ (release → ours)", shapes)
    dims = release_dims(release.model)
    if dims:
        sizes = " ".join(f"{k}={v}" for k, v in dims.items() if k.startswith("model."))
        message += (
            f"\n  the file was trained with {', '.join(f'{k}={v}' for k, v in dims.items())}: "
            f"pass {sizes} (C is the encoder's width: 1024 for I3D, dataset.feature_dim for "
            "cached features)"
        )
    if missing and any(k.startswith("encoder.") for k in missing) and not release.backbone:
        message += (
            "\n  the file has no 'backbone' (the release ran on cached features): convert with "
            "model/encoder=precomputed"
        )
    raise ReleaseCheckpointError(message)
