"""I3D weight files: a Kinetics-400 RGB checkpoint read into ``InceptionI3d`` strictly
(``tpt_aqa.models.i3d``, docs/method.md §9).

Two community layouts load: ``model_rgb.pth`` as is (the network's own module names) and
``rgb_imagenet.pt`` through a key map; anything else stops with a message that lists what does not
match. ``python -m tpt_aqa.weights`` converts DeepMind's release into the first layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from tpt_aqa.core.errors import UserError
from tpt_aqa.core.pretrained import resolve_weights

_BRANCHES_RGB_IMAGENET = {
    "b0": "branch_0",
    "b1a": "branch_1.0",
    "b1b": "branch_1.1",
    "b2a": "branch_2.0",
    "b2b": "branch_2.1",
    "b3b": "branch_3.1",
}
_LAYOUT_MODEL_RGB = "model_rgb.pth"
_LAYOUT_RGB_IMAGENET = "rgb_imagenet.pt"
_WEIGHTS_KEY = "model.encoder.weights"


class I3DWeightsError(UserError, ValueError):
    """An I3D weights file that does not match ``InceptionI3d``."""


def _rgb_imagenet_to_model_rgb(key: str) -> str:
    """Rename one ``rgb_imagenet.pt`` key to the ``model_rgb.pth`` layout; unknown keys pass."""
    parts = key.split(".")
    head = parts[0]
    if head == "logits":
        parts[0] = "conv3d_0c_1x1"
    elif head.startswith(("Conv3d_", "Mixed_")):
        parts[0] = head.lower()
        if head.startswith("Mixed_") and len(parts) > 1:
            parts[1] = _BRANCHES_RGB_IMAGENET.get(parts[1], parts[1])
    return ".".join("batch3d" if p == "bn" else p for p in parts)


def _detect_layout(keys: list[str], path: Path) -> str:
    """Name the checkpoint layout from its top-level module names."""
    imagenet = any(k.startswith(("Conv3d_", "Mixed_", "logits.")) for k in keys)
    model_rgb = any(k.startswith(("conv3d_", "mixed_")) for k in keys)
    if imagenet and model_rgb:
        raise I3DWeightsError(
            f"I3D weights file {path} mixes the {_LAYOUT_MODEL_RGB} names "
            f"(conv3d_1a_7x7, mixed_3b, ...) with the {_LAYOUT_RGB_IMAGENET} names "
            f"(Conv3d_1a_7x7, Mixed_3b, ...); "
            f"point {_WEIGHTS_KEY} to an unmodified Kinetics-400 RGB I3D checkpoint"
        )
    if not (imagenet or model_rgb):
        raise I3DWeightsError(
            f"I3D weights file {path} has neither the {_LAYOUT_MODEL_RGB} layout (conv3d_1a_7x7.*) "
            f"nor the {_LAYOUT_RGB_IMAGENET} layout (Conv3d_1a_7x7.*); its first keys are "
            f"{keys[:5]}; point {_WEIGHTS_KEY} to a Kinetics-400 RGB I3D checkpoint"
        )
    return _LAYOUT_RGB_IMAGENET if imagenet else _LAYOUT_MODEL_RGB


def _listing(title: str, items: list[str], shown: int = 5) -> str:
    more = f", ... (+{len(items) - shown} more)" if len(items) > shown else ""
    return f"\n  {title} ({len(items)}): {', '.join(items[:shown])}{more}"


def load_i3d_weights(model: nn.Module, path: str | Path) -> str:
    """Load a Kinetics-400 RGB I3D checkpoint into ``model``, strictly.

    Accepts the ``model_rgb.pth`` layout as is and the ``rgb_imagenet.pt`` layout through a key map
    (``Conv3d_1a_7x7.bn.*`` → ``conv3d_1a_7x7.batch3d.*``, ``Mixed_3b.b1a`` →
    ``mixed_3b.branch_1.0``, ``logits`` → ``conv3d_0c_1x1``, ...); a DDP ``module.`` prefix is
    stripped. Files with and without BatchNorm ``num_batches_tracked`` both load. BatchNorm eps is a
    property of the model, not of the file: ``rgb_imagenet.pt`` and ``kinetics400`` were trained
    with 1e-3.

    Args:
        model: the network to fill in place (``tpt_aqa.models.i3d.InceptionI3d``).
        path: checkpoint file holding a state dict, or the name of weights converted by
            ``python -m tpt_aqa.weights`` (``"kinetics400"``: its file in the user cache).

    Returns:
        The detected layout, ``"model_rgb.pth"`` or ``"rgb_imagenet.pt"``.

    Raises:
        FileNotFoundError: ``path`` does not exist (for a name: the message gives the command).
        I3DWeightsError: the file is not a state dict, or its keys or shapes do not match
            (the message lists missing and unexpected keys and shape mismatches).
    """
    path = Path(resolve_weights(str(path)))
    if not path.is_file():
        raise FileNotFoundError(
            f"I3D weights file {path} not found; set {_WEIGHTS_KEY} to the Kinetics-400 RGB "
            f"checkpoint ({_LAYOUT_MODEL_RGB} or {_LAYOUT_RGB_IMAGENET}), "
            "or to null for random init"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise I3DWeightsError(
            f"could not read I3D weights file {path} as a PyTorch state dict: {err}"
        ) from err
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise I3DWeightsError(
            f"I3D weights file {path} holds a {type(state).__name__}, not a state dict of tensors; "
            f"point {_WEIGHTS_KEY} to {_LAYOUT_MODEL_RGB} or {_LAYOUT_RGB_IMAGENET}"
        )

    stripped = {k.removeprefix("module."): v for k, v in state.items()}  # DDP-saved files
    if len(stripped) != len(state):
        raise I3DWeightsError(
            f"I3D weights file {path} holds keys both with and without the DDP 'module.' prefix; "
            f"point {_WEIGHTS_KEY} to a checkpoint saved from one model"
        )
    state = stripped
    layout = _detect_layout(list(state), path)
    rename = _rgb_imagenet_to_model_rgb if layout == _LAYOUT_RGB_IMAGENET else lambda k: k
    original = {rename(k): k for k in state}  # model name → name in the file
    mapped = {rename(k): v for k, v in state.items()}

    expected = model.state_dict()
    optional = {k for k in expected if k.endswith(".num_batches_tracked")}
    missing = [k for k in expected if k not in mapped and k not in optional]
    unexpected = [original[k] for k in mapped if k not in expected]
    mismatched = [
        f"{original[k]} {tuple(v.shape)} in the file vs {tuple(expected[k].shape)} in the model"
        for k, v in mapped.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        mapping_note = (
            f", mapped onto the {_LAYOUT_MODEL_RGB} names" if layout == _LAYOUT_RGB_IMAGENET else ""
        )
        raise I3DWeightsError(
            f"I3D weights file {path} (detected layout: {layout}{mapping_note}) does not match "
            f"InceptionI3d:"
            + (_listing("missing from the file", missing) if missing else "")
            + (_listing("unexpected in the file", unexpected) if unexpected else "")
            + (_listing("shape mismatch", mismatched, shown=3) if mismatched else "")
            + f"\nPoint {_WEIGHTS_KEY} to a Kinetics-400 RGB I3D checkpoint "
            f"({_LAYOUT_MODEL_RGB} or {_LAYOUT_RGB_IMAGENET})."
        )
    for key in optional - mapped.keys():
        # Ports saved before PyTorch 0.4.1 have no counter; it only matters for momentum=None.
        mapped[key] = torch.zeros_like(expected[key])
    model.load_state_dict(mapped, strict=True)
    return layout
