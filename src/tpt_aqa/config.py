"""Building the run from a Hydra config, and checking the config before any work starts."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tpt_aqa.core.errors import ConfigError
from tpt_aqa.core.pretrained import NAMED, resolve_weights
from tpt_aqa.data.synthetic import FeatureSettings
from tpt_aqa.scoring.stage import check_protocol
from tpt_aqa.training.runtime import split_batch

# The Hydra configs ship inside the package (package data), so an installed wheel finds them too;
# the repository's top-level `conf` is a link to this folder.
CONF_DIR = str(Path(__file__).resolve().parent / "conf")

KNOWN_ENCODERS = {
    "tpt_aqa.models.PrecomputedEncoder": "precomputed",
    "tpt_aqa.models.encoders.PrecomputedEncoder": "precomputed",
    "tpt_aqa.models.I3DEncoder": "i3d",
    "tpt_aqa.models.i3d.I3DEncoder": "i3d",
}


def require_keys(cfg: DictConfig, usage: str) -> None:
    """The entry point's required top-level keys (``???`` in its config) are set.

    Raises:
        ConfigError: naming the missing keys, with the command's usage.
    """
    missing = [k for k in cfg if OmegaConf.is_missing(cfg, k)]
    if missing:
        names = " and ".join(
            [", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing
        )
        verb = "are" if len(missing) > 1 else "is"
        raise ConfigError(f"{names} {verb} not set; usage: {usage}")


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The numeric knobs a user types: (keys, test, what is required, an example). A key absent from the
# configuration (another parser, a dataset without it) or null where null is allowed is skipped.
_AT_LEAST_ONE = (_is_int, lambda v: v >= 1, "an integer >= 1")
NUMERIC_RULES: list[tuple[tuple[str, ...], tuple[Callable, Callable, str], str]] = [
    (
        (
            "model.d_model",
            "model.parser.num_layers",
            "model.parser.ffn_dim",
            "model.parser.num_heads",
            "model.heads.hidden_dim",
            "dataset.eval_batch_size",
            "dataset.num_exemplars",
            "dataset.num_clips",
            "dataset.sampler.num_clips",
            "dataset.sampler.clip_len",
            "dataset.sampler.stride",
            "global_batch_size",
            "max_device_batch_size",
        ),
        _AT_LEAST_ONE,
        "8",
    ),
    (
        ("dataset.delta_cap", "criterion.diversity_sigma", "model.parser.temperature_init"),
        (_is_number, lambda v: v > 0 and math.isfinite(v), "a number > 0"),
        "1.0",
    ),
    (
        (
            "criterion.weight_cls",
            "criterion.weight_reg",
            "criterion.weight_rank",
            "criterion.weight_sparsity",
            "criterion.margin",
            "criterion.weight_step",
            "optim.optimizer.weight_decay",
        ),
        (_is_number, lambda v: v >= 0 and math.isfinite(v), "a number >= 0"),
        "0.0",
    ),
    (
        ("model.parser.dropout", "model.pair_stage.dropout", "dataset.val_fraction"),
        (_is_number, lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "0.1",
    ),
    (
        ("dataset.step_label_fraction",),
        (_is_number, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        "0.1",
    ),
]


def check_numbers(cfg: DictConfig) -> None:
    """The learning rates, the epoch count and the other numeric knobs of ``NUMERIC_RULES``.

    Raises:
        ConfigError: naming the first key out of range, what it must be, and an example.
    """
    for rate_key, rate in learning_rate_items(cfg):
        if not _is_number(rate) or not (rate > 0 and math.isfinite(rate)):
            raise ConfigError(
                f"{rate_key}={rate!r}: a learning rate must be a number > 0 (e.g. {rate_key}=1e-4); "
                "a negative one trains by gradient ascent"
            )
    seed = _get(cfg, "seed")
    if seed is not None and not (_is_int(seed) and 0 <= seed < 2**32):
        raise ConfigError(
            f"seed={seed!r}: must be an integer from 0 to {2**32 - 1} (e.g. seed=12); the same seed "
            "repeats a run"
        )
    devices = _get(cfg, "trainer.devices")
    if devices is not None and not _valid_devices(devices):
        raise ConfigError(
            f"trainer.devices={devices!r}: must be an integer >= 1 (how many), -1 (all), auto, or a "
            "list of device indices such as [0,1] (e.g. trainer.devices=1)"
        )
    epochs = _get(cfg, "trainer.max_epochs")
    if epochs is not None and (not _is_int(epochs) or not (epochs >= 1 or epochs == -1)):
        raise ConfigError(
            f"trainer.max_epochs={epochs!r}: must be an integer >= 1 (e.g. trainer.max_epochs=30), "
            "or -1 to train until stopped"
        )
    for keys, (kind, test, requirement), example in NUMERIC_RULES:
        for key in keys:
            value = _get(cfg, key)
            if value is None:
                continue
            if not kind(value) or not test(value):
                raise ConfigError(f"{key}={value!r}: must be {requirement} (e.g. {key}={example})")


def _valid_devices(devices: Any) -> bool:
    """Lightning's ``devices``: a count >= 1, -1, ``auto``, or device indices (a list, or a string
    such as ``"0,1"``)."""
    if _is_int(devices):
        return devices >= 1 or devices == -1
    if isinstance(devices, str):
        if devices == "auto":
            return True
        parts = [p.strip() for p in devices.split(",") if p.strip()]
        return bool(parts) and all(p.lstrip("-").isdigit() for p in parts) and devices != "0"
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        return len(devices) > 0 and all(_is_int(d) and d >= 0 for d in devices)
    return False


def learning_rate_items(cfg: DictConfig) -> list[tuple[str, Any]]:
    """``(key, value)`` of every configured learning rate: ``optim.lr.<group>``, or ``optim.lr``
    itself when it is one number for every parameter group."""
    lr = _get(cfg, "optim.lr")
    if isinstance(lr, DictConfig):
        return [(f"optim.lr.{name}", rate) for name, rate in lr.items()]
    return [] if lr is None else [("optim.lr", lr)]


def learning_rates(cfg: DictConfig) -> dict[str, float]:
    """The learning rate of each parameter group; ``optim.lr=0.001`` (one number) means that rate
    for every group, ``optim.lr.body=…`` sets one group."""
    from tpt_aqa.models.tpt import PARAM_GROUPS

    lr = _get(cfg, "optim.lr")
    if not isinstance(lr, DictConfig):
        return dict.fromkeys(PARAM_GROUPS, float(lr))  # checked by check_numbers
    rates = {str(k): float(v) for k, v in OmegaConf.to_container(lr, resolve=True).items()}
    missing = [g for g in PARAM_GROUPS if g not in rates]
    if missing:
        raise ConfigError(
            f"optim.lr has no learning rate for parameter group {missing[0]!r}: pass "
            f"+optim.lr.{missing[0]}=<rate> (the groups are {', '.join(PARAM_GROUPS)})"
        )
    return rates


def check_missing_keys(cfg: DictConfig) -> None:
    """No ``???`` value is left (e.g. ``dataset.root`` of a real benchmark).

    Raises:
        ConfigError: naming the first missing key and a value to pass.
    """
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        hint = {
            "model.encoder.weights": "/path/to/model_rgb.pth, or kinetics400 "
            f"(`{NAMED['kinetics400'].command}`), or null for a random-init backbone",
            "dataset.root": "/path/to/data",
        }.get(key, "<value>")
        raise ConfigError(f"{key} is not set: pass {key}={hint}")


def check_dataset_root(cfg: DictConfig) -> None:
    """``dataset.root``, where the dataset has one, is set and exists.

    Raises:
        ConfigError: naming the key and the fix.
    """
    dataset = cfg.get("dataset") or OmegaConf.create({})
    if "root" in dataset.keys():  # noqa: SIM118 (`in` on a DictConfig skips ??? values)
        if OmegaConf.is_missing(dataset, "root") or dataset.root is None:
            raise ConfigError("dataset.root is not set: pass dataset.root=/path/to/data")
        root = dataset.root
        if not Path(str(root)).exists():
            raise ConfigError(
                f"dataset.root={root} does not exist: pass dataset.root=/path/to/data"
            )


def validate_config(cfg: DictConfig) -> None:
    """Reject configurations that cannot run, with a one-line message naming the key and the fix.

    Raises:
        ConfigError: on the first problem found.
    """
    check_missing_keys(cfg)
    check_numbers(cfg)
    check_protocol(cfg.get("eval_exemplars") or "per_video")
    k = _get(cfg, "model.num_queries")
    if not isinstance(k, int) or k < 1:
        raise ConfigError(
            f"model.num_queries={k}: must be an integer >= 1 (e.g. model.num_queries=5)"
        )
    # T where the config states it (the synthetic benchmarks, the video samplers); feature folders
    # only know it once read, so build_datamodule checks again against the data
    for key in ("dataset.num_clips", "dataset.sampler.num_clips"):
        if isinstance(t := _get(cfg, key), int):
            check_queries_fit(k, t, key)
    g = _get(cfg, "model.num_groups")
    if not isinstance(g, int) or g < 2 or g & (g - 1):
        raise ConfigError(
            f"model.num_groups={g}: must be an even power of two (e.g. model.num_groups=16)"
        )
    target = _get(cfg, "model.encoder._target_")
    if target not in KNOWN_ENCODERS:
        raise ConfigError(
            f"model.encoder._target_={target!r} is not a known encoder: choose one of "
            f"{sorted(set(KNOWN_ENCODERS.values()))} with model/encoder=<name>"
        )
    check_encoder_input(cfg, KNOWN_ENCODERS[target])
    if (
        cfg.get("require_encoder_weights")
        and "weights" in cfg.model.encoder
        and not cfg.model.encoder.weights
    ):
        raise ConfigError(
            "model.encoder.weights is not set, and this experiment fine-tunes a pretrained backbone: "
            "pass model.encoder.weights=/path/to/model_rgb.pth or model.encoder.weights=kinetics400 "
            f"(created by `{NAMED['kinetics400'].command}`), or require_encoder_weights=false to "
            "train from a random init"
        )
    # a named file that was never created stops here, with the command that creates it
    resolve_weights(_get(cfg, "model.encoder.weights"))
    check_dataset_root(cfg)
    for key in ("dataset._target_", "criterion._target_", "model._target_"):
        path = _get(cfg, key)
        module, _, name = str(path).rpartition(".")
        try:
            getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError):
            raise ConfigError(
                f"{key}={path!r} cannot be imported: check the config group"
            ) from None


# Keys of earlier versions, with what replaced them: a training configuration that sets one is
# refused with the fix (checkpoints written with them still evaluate).
REPLACED_KEYS = {
    "dataset.batch_size": "global_batch_size=<pairs per optimizer step over all devices>",
    "trainer.accumulate_grad_batches": "global_batch_size=<pairs per optimizer step> with "
    "max_device_batch_size=<pairs one device holds>",
}


def replaced_key_message(key: str) -> str:
    """What to pass instead of a key in ``REPLACED_KEYS``."""
    return (
        f"{key} is no longer a setting: the batch is one rule (global_batch_size pairs per "
        "optimizer step, split over the devices, gradient-accumulated when a device's share "
        f"exceeds max_device_batch_size); pass {REPLACED_KEYS[key]} instead"
    )


def validate_train_config(cfg: DictConfig) -> None:
    """``validate_config``, and what only training needs: the batch rule's keys, no replaced key.

    Raises:
        ConfigError: on the first problem found.
    """
    validate_config(cfg)
    for key in REPLACED_KEYS:
        if _get(cfg, key) is not None:
            raise ConfigError(replaced_key_message(key))
    if not _is_int(cfg.get("global_batch_size")):
        raise ConfigError(
            f"global_batch_size={cfg.get('global_batch_size')}: must be an integer >= 1, the "
            "pairs per optimizer step over all devices (e.g. global_batch_size=8)"
        )


def check_encoder_input(cfg: DictConfig, encoder: str) -> None:
    """A dataset that decodes videos needs a video encoder; clip features need the precomputed one.

    A dataset reads videos when it samples clips (``dataset.sampler``) and has no feature cache
    (``dataset.features_root``).
    """
    dataset = cfg.get("dataset") or OmegaConf.create({})
    name = str(dataset.get("_target_", "the dataset")).rpartition(".")[2]
    reads_videos = "sampler" in dataset and not dataset.get("features_root")
    if reads_videos and encoder == "precomputed":
        raise ConfigError(
            f"{name} reads videos, but model.encoder is the precomputed-feature encoder: add "
            "model/encoder=i3d (the paper experiments, e.g. experiment=mtl_aqa_tpt, do), or train "
            "on a feature cache with dataset.features_root=/path/to/cache"
        )
    if not reads_videos and encoder != "precomputed":
        where = "dataset.features_root" if dataset.get("features_root") else name
        raise ConfigError(
            f"{where} gives clip features, but model.encoder is a video encoder ({encoder}): add "
            "model/encoder=precomputed"
        )


def build_datamodule(cfg: DictConfig):
    """Instantiate and set up the datamodule, checking K against its clip count.

    Its training batch is one device's share of ``global_batch_size`` (``runtime.split_batch``);
    ``tpt_aqa.train`` resizes it for the trainer's devices. A configuration without the key (a
    checkpoint of an earlier version) keeps its ``dataset.batch_size``. A ``dataset.num_clips``
    left null (a feature folder: T comes from its files) is set to the datamodule's T, so that the
    model parts built for T (``model.parser.num_clips``) read it.
    """
    batch = {"batch_size": split_batch(cfg, 1)[0]} if cfg.get("global_batch_size") else {}
    dm = instantiate(cfg.dataset, **batch)
    dm.setup("fit")
    if "num_clips" in cfg.dataset and cfg.dataset.num_clips is None:
        cfg.dataset.num_clips = dm.num_clips
    check_queries_fit(cfg.model.num_queries, dm.num_clips, "the data")
    return dm


def check_queries_fit(k: int, num_clips: int, source: str) -> None:
    """K queries parse T clips: K ≤ T (paper §3.2).

    Raises:
        ConfigError: naming ``source``, where T comes from, and the largest K that fits.
    """
    if k > num_clips:
        raise ConfigError(
            f"model.num_queries={k} exceeds the {num_clips} clips per video ({source}): "
            f"use model.num_queries<={num_clips}"
        )


def build_module(cfg: DictConfig):
    """Instantiate the LightningModule from the ``model``, ``criterion`` and ``optim`` groups."""
    from tpt_aqa.scoring.groups import ScoreGroups
    from tpt_aqa.training.lit_module import AQAModule

    return AQAModule(
        model=instantiate(cfg.model),
        criterion=instantiate(cfg.criterion),
        score_groups=ScoreGroups(num_groups=cfg.model.num_groups),
        optimizer=instantiate(cfg.optim.optimizer),
        lr=learning_rates(cfg),
        config=OmegaConf.to_container(cfg, resolve=True),
        eval_exemplars=cfg.get("eval_exemplars") or "per_video",
    )


def dataset_settings(name: str) -> dict:
    """The synthetic generator settings of ``conf/dataset/<name>.yaml`` (the one home of each
    variant's values, shared with ``dataset=<name>``), ``data_seed`` as ``seed``."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={name}"])
    given = OmegaConf.to_container(cfg.dataset, resolve=True)
    return vars(FeatureSettings.pop_from(given))
