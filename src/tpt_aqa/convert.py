"""Convert a checkpoint of the authors' TPT training code into a tpt_aqa checkpoint.

``python -m tpt_aqa.convert --from-release RELEASE.pth --out tpt.ckpt experiment=mtl_aqa_tpt
dataset.root=/data/MTL-AQA``

The result loads in ``python -m tpt_aqa.eval ckpt_path=tpt.ckpt`` and
``python -m tpt_aqa.predict ckpt_path=tpt.ckpt input=...``: the release's weights mapped onto our
modules (strictly: every weight of ours set, every weight of the file used, shapes equal), the
score groups fitted on the training split (the release keeps no group edges in its files; it
rebuilds them from the training data at every start, as we do, docs/method.md §5), the exemplar bank
(``tpt_aqa.scoring.bank``) and the resolved configuration.

What the release file holds (source: github.com/baiyang4/aqa_tpt at commit 4f1506e, the one model
variant the repository publishes, ``models_cluster_2layer_pairencode1_clsreg_decoder_1selfatt_
self8head_ffn``; names read from its ``model.py``, ``layer.py``, ``i3d.py`` and ``utils/util.py``):

* ``model``: ``PairModel.state_dict()`` with submodules ``action_decoder`` (``ActionDecoder``:
  ``query_embed`` an ``nn.Embedding(K, D)``, ``layers`` a ``ModuleList`` of two
  ``ActionDecoderLayer``), ``pair_encoder`` (``PairEncoder``: ``mlp`` =
  Linear(2D, D) · ReLU · Dropout · Linear(D, D)), ``cls`` (Linear(D, 128) · ReLU · Linear(128, 16))
  and ``reg`` (the same · Sigmoid).
* ``ActionDecoderLayer``: ``temp`` (scalar, 0.07 at init), ``key_embed`` and ``value_embed``
  (Linear(1024, D)), ``query_embed`` (Linear(D, D)), ``norm1`` after the cross-attention,
  ``linear1``/``linear2`` the FFN, ``norm2`` after it, and in the first layer only ``self_attn``
  (``nn.MultiheadAttention(D, 8)``: fused ``in_proj_weight`` (3D, D), ``in_proj_bias``,
  ``out_proj``) with ``norm3``. All linears have biases.
* ``backbone``: ``I3D_backbone.state_dict()``, the I3D under ``backbone.`` in the ``model_rgb.pth``
  layout (the release loads that file strictly into it), BatchNorm eps 1e-5. Absent when the
  release ran on cached features (``--use_pretrain=True``).
* ``optimizer``, ``epoch``, ``epoch_best``, ``rho_best``, ``RL2_min``: the last three are numpy
  scalars read from a pandas table, so ``torch.load(weights_only=True)`` needs numpy's scalar and
  dtype globals allowed; only those are (anything else stops the conversion with instructions).
* Under DDP the release saves ``model.module.state_dict()``, so keys carry no ``module.`` prefix;
  one is stripped anyway where present.

Every name in ``RELEASE_KEY_MAP`` is confirmed from those files. No tensor needs a transpose: the
embedding weight ``(K, D)`` is our ``query_embed`` parameter as is, every linear is stored
``(out, in)`` in both, and both self-attentions are ``nn.MultiheadAttention`` with the same fused
q/k/v ``in_proj`` (batch-first or not does not change the parameters). The computations match
docs/method.md §3 layer for layer (``tests/test_convert.py`` checks outputs against a re-creation of the
release's modules). Assumed, not confirmed: that a given file comes from this model variant; a
file from another one (another layer count, heads, pooling) fails the strict key and shape checks
instead of loading partly. What keys cannot show (the logit scale, layer order, positional
encodings, attention heads, BatchNorm eps, input normalisation) is checked against the
configuration by ``check_release_settings``.

Not carried over: the optimizer state (the release's parameter groups are not ours; a converted
checkpoint is for evaluation and prediction, or as an initialisation).
"""

from __future__ import annotations

import argparse
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from tpt_aqa.config import CONF_DIR
from tpt_aqa.core.atomic import atomic_torch_save
from tpt_aqa.core.checkpoints import compare_state, listing, load_torch_file
from tpt_aqa.core.errors import ConfigError, user_errors_exit
from tpt_aqa.core.startup import setup

setup()  # resolver, warning filters, Lightning's tips (core.startup): before Hydra composes

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

# What the release computes that its keys cannot show, as our config values (docs/method.md §3, §9).
RELEASE_SETTINGS: dict[str, Any] = {
    "model.parser._target_": "tpt_aqa.models.TemporalParsingDecoder",
    "model.parser.scale": "dim",
    "model.parser.detr_order": False,
    "model.parser.pe_memory": False,
    "model.parser.pe_query": False,
    "model.parser.num_heads": 8,
    "model.pool_parts": False,
}
RELEASE_I3D_SETTINGS: dict[str, Any] = {
    "model.encoder.bn_eps": 1e-5,
    "model.encoder.normalization": "imagenet",
}

# Data settings of the release applied unless an override names them: its exemplars and score
# groups come from the whole training split (it had no validation carve), and it resized frames
# to height 455 x width 256 (docs/method.md §9), which its weights were fitted to.
# Keys set together count as one setting: an override of any of them keeps them all as given.
RELEASE_DATA_DEFAULTS: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("dataset.val_fraction",), 0.0),
    (
        (
            "dataset.train_transform.reference_resize_quirk",
            "dataset.test_transform.reference_resize_quirk",  # what evaluation and the bank read
        ),
        True,
    ),
)

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


def check_release_settings(cfg: DictConfig, has_backbone: bool) -> None:
    """Reject configurations that compute something other than the release did.

    Raises:
        ConfigError: naming each differing key and the override that fixes it.
    """
    from tpt_aqa.config import KNOWN_ENCODERS

    wanted = dict(RELEASE_SETTINGS)
    encoder = KNOWN_ENCODERS.get(OmegaConf.select(cfg, "model.encoder._target_"))
    if has_backbone and encoder != "i3d":
        raise ConfigError(
            "the release file holds a fine-tuned I3D ('backbone'): convert with model/encoder=i3d "
            "(or an experiment that uses it, e.g. experiment=mtl_aqa_tpt)"
        )
    if not has_backbone and encoder != "precomputed":
        raise ConfigError(
            "the release file has no 'backbone' (it ran on cached I3D features): convert with "
            "model/encoder=precomputed"
        )
    if has_backbone:
        wanted.update(RELEASE_I3D_SETTINGS)
    wrong = []
    for key, value in wanted.items():
        got = OmegaConf.select(cfg, key)
        if got != value:
            wrong.append(f"{key}={got} (the release: {key}={value})")
    if wrong:
        raise ConfigError(
            "this configuration computes something other than the release did: " + "; ".join(wrong)
        )


def _overridden(key: str, overrides: Sequence[str]) -> bool:
    """Whether an override sets ``key`` or a node above it (a group choice such as
    ``dataset=mtl_aqa`` does not count)."""
    for item in overrides:
        name = item.lstrip("+~").split("=", 1)[0]
        if "." in name and (name == key or key.startswith(name + ".")):
            return True
    return False


def compose_config(overrides: Sequence[str], output_dir: Path) -> DictConfig:
    """Our training configuration for the release's model, from Hydra-style overrides.

    The encoder reads no pretrained file (the weights come from the release file); the release's
    data settings (``RELEASE_DATA_DEFAULTS``) apply where the dataset has them and no override
    names them.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[f"paths.output_dir={output_dir}", *overrides])
    except HydraException as err:
        raise ConfigError(
            f"cannot compose the configuration from {list(overrides)}: {err}"
        ) from None
    with open_dict(cfg):
        if "weights" in (cfg.model.get("encoder") or {}):
            cfg.model.encoder.weights = None
        cfg.require_encoder_weights = False
        for keys, value in RELEASE_DATA_DEFAULTS:
            if any(_overridden(key, overrides) for key in keys):
                continue
            for key in keys:
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(cfg, parent)
                if isinstance(node, DictConfig) and leaf in node:
                    node[leaf] = value
    return cfg


def _dataset_given(cfg: DictConfig) -> bool:
    return not any(k.startswith("dataset.") for k in OmegaConf.missing_keys(cfg))


def convert(
    release_path: str | Path,
    out_path: str | Path,
    overrides: Sequence[str] = (),
    bank: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Convert a release checkpoint; see the module docstring and ``--help``.

    Args:
        release_path: the release's ``.pth`` file.
        out_path: where the tpt_aqa checkpoint goes (written atomically).
        overrides: Hydra overrides of the training configuration (experiment, dataset, sizes).
        bank: build the exemplar bank (needs the dataset); ``False`` converts the weights only.
        device: where the training videos are encoded for the bank (``cpu``, ``cuda``, ``auto``).

    Returns:
        A summary: ``checkpoint``, ``score_groups_fitted``, ``bank_videos``, ``release``.
    """
    import lightning as L

    from tpt_aqa.config import build_datamodule, build_module, validate_config
    from tpt_aqa.scoring.bank import build_bank
    from tpt_aqa.training.runtime import autocast

    out = Path(out_path).resolve()
    release = load_release(release_path)
    cfg = compose_config(overrides, out.parent)
    check_release_settings(cfg, has_backbone=release.backbone is not None)
    with_data = _dataset_given(cfg)
    if bank and not with_data:
        missing = sorted(k for k in OmegaConf.missing_keys(cfg) if k.startswith("dataset."))
        raise ConfigError(
            f"the exemplar bank needs the training data, but {', '.join(missing)} is not set: "
            f"pass {missing[0]}=/path/to/data, or --no-bank to convert the weights only"
        )
    if with_data:
        validate_config(cfg)
    L.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    module.model.load_state_dict(map_release_state(release, module.model.state_dict()))
    exemplars = None
    if with_data:
        dm = build_datamodule(cfg)
        module.score_groups.fit(dm.train_deltas(), dm.delta_cap)
        if bank:
            dev = torch.device(
                ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
            )
            module.to(dev)
            precision = str(cfg.trainer.get("precision", "32-true"))
            exemplars = build_bank(module, dm, forward_context=lambda: autocast(precision, dev))
            module.cpu()
    epoch = release.meta.get("epoch")
    ckpt: dict[str, Any] = {
        "epoch": int(epoch) if isinstance(epoch, (int, float)) else 0,
        "global_step": 0,
        "pytorch-lightning_version": L.__version__,
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }
    module.on_save_checkpoint(ckpt)  # ckpt["tpt_aqa"]: the resolved config, as tpt_aqa.train
    ckpt["tpt_aqa"]["converted_from"] = {
        "file": str(Path(release_path).resolve()),
        "format": RELEASE_FORMAT,
        **release.meta,
    }
    if exemplars is not None:
        ckpt["tpt_aqa"]["bank"] = exemplars.to_state()
    atomic_torch_save(ckpt, out)
    return {
        "checkpoint": str(out),
        "score_groups_fitted": bool(module.score_groups.fitted),
        "bank_videos": None if exemplars is None else len(exemplars),
        "release": release.meta,
    }


_HELP = """\
Hydra-style overrides pick our configuration for the release's model, as for tpt_aqa.train:
e.g. experiment=mtl_aqa_tpt dataset.root=/data/MTL-AQA. The sizes must be the release's
(model.num_queries, model.d_model, ...); a mismatch lists the keys and the sizes the file has.
model.encoder.weights is ignored (the weights come from the release file). Unless an override
names them, the release's data settings apply: dataset.val_fraction=0 (its exemplars and
score groups come from the whole training split) and
dataset.{train,test}_transform.reference_resize_quirk=true (frames resized as it did).

--no-bank converts the weights without building the exemplar bank. With the dataset configured
(dataset.root given) the score groups are still fitted on its training split, and the result
works with tpt_aqa.eval; tpt_aqa.predict needs a bank (convert again without --no-bank).
Without the dataset the score groups stay unfitted, because the release file does not hold
them: tpt_aqa.eval fits them at each run from +dataset.root=..., but the file itself cannot
score anything until it is converted again with the dataset.
"""


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: ``python -m tpt_aqa.convert --from-release FILE --out FILE [overrides]``."""
    parser = argparse.ArgumentParser(
        prog="python -m tpt_aqa.convert",
        description="Convert a checkpoint of the authors' TPT training code (github.com/"
        "baiyang4/aqa_tpt) into a tpt_aqa checkpoint for tpt_aqa.eval and tpt_aqa.predict.",
        epilog=_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from-release", required=True, metavar="FILE", help="the release's .pth checkpoint"
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="the tpt_aqa checkpoint")
    parser.add_argument(
        "--no-bank", action="store_true", help="weights only, no exemplar bank (see below)"
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where the training videos are encoded for the bank",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset.root=/data")
    args = parser.parse_args(argv)
    with user_errors_exit():
        summary = convert(
            args.from_release,
            args.out,
            args.overrides,
            bank=not args.no_bank,
            device=args.device,
        )
    meta = ", ".join(f"{k}={v}" for k, v in summary["release"].items())
    print(f"converted {args.from_release} ({meta or 'no metadata'}) to {summary['checkpoint']}")
    if summary["bank_videos"] is not None:
        print(f"exemplar bank of {summary['bank_videos']} training videos")
    if not summary["score_groups_fitted"]:
        print(
            "score groups not fitted (no dataset): tpt_aqa.eval fits them from +dataset.root=...; "
            "for tpt_aqa.predict convert again with the dataset"
        )
    return summary


if __name__ == "__main__":
    main()
