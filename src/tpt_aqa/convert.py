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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from tpt_aqa.config import CONF_DIR
from tpt_aqa.core.atomic import atomic_torch_save
from tpt_aqa.core.errors import ConfigError, user_errors_exit
from tpt_aqa.core.startup import setup
from tpt_aqa.models.release_weights import RELEASE_FORMAT, load_release, map_release_state
from tpt_aqa.training.runtime import resolve_device

setup()  # resolver, warning filters, Lightning's tips (core.startup): before Hydra composes


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
            dev = resolve_device(device, "--device")  # the one device check of the commands
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
