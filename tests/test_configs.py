"""Every config file composes and instantiates; bad configs fail early with the key and the fix."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tpt_aqa.config import CONF_DIR, ConfigError, build_datamodule, build_module, validate_config
from tpt_aqa.core.report import ProgressBar, epoch_label
from tpt_aqa.data import AQADataModule
from tpt_aqa.data.synthetic import FeatureSettings, export_features, generate
from tpt_aqa.models import TPT
from tpt_aqa.scoring.losses import TPTCriterion
from tpt_aqa.training.runtime import build_trainer

from .conftest import TINY, TINY_MODEL, compose_cfg

CONF = Path(CONF_DIR)
GROUPS = [
    "dataset",
    "model",
    "model/encoder",
    "model/parser",
    "criterion",
    "optim",
    "trainer",
    "callbacks",
    "logger",
    "experiment",
    "ablation",
    "speed",
    "debug",
    "sweep",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


CASES = [(g, o) for g in GROUPS for o in options(g)]
# video benchmarks (value: whether the config needs a data root); instantiating reads no file
VIDEO_DATASETS = {
    "synthetic_video": False,
    "mtl_aqa": True,
    "aqa7": True,
    "jigsaws": True,
    "finediving": True,
}
VIDEO_EXPERIMENTS = {
    "synthetic_video_tpt": False,
    "mtl_aqa_tpt": True,
    "mtl_aqa_tpt_no_dd": True,
    "aqa7_tpt": True,
    "jigsaws_tpt": True,
    "finediving_tpt": True,
}


def test_every_group_has_options():
    assert all(options(g) for g in GROUPS), "a config group folder is empty"
    assert set(options("ablation")) >= {"none", "baseline_pool"}


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_config_composes_and_instantiates(tmp_path, group, option):
    overrides = [*TINY, f"{group}={option}"]
    if option in ("features", "features_tpt"):
        overrides = [*TINY_MODEL, f"{group}={option}", f"dataset.root={tmp_path}"]
    elif option in VIDEO_DATASETS or option in VIDEO_EXPERIMENTS:
        overrides = [*TINY_MODEL, f"{group}={option}", "model/encoder=i3d"]
        if VIDEO_DATASETS.get(option, VIDEO_EXPERIMENTS.get(option)):  # reads files: needs a root
            overrides.append(f"dataset.root={tmp_path}")
        if option in VIDEO_EXPERIMENTS:
            overrides.append(
                "require_encoder_weights=false"
            )  # the paper experiments require a path
    if group == "model/encoder" and option == "i3d":  # a video encoder needs a video dataset
        overrides = [*TINY_MODEL, "dataset=synthetic_video", "model/encoder=i3d"]
    if option == "none" and group == "callbacks":
        overrides.remove("callbacks.progress_bar=null")
    if option == "mean_pool":
        overrides.append("model.num_queries=1")
    cfg = compose_cfg(tmp_path, *overrides)
    validate_config(cfg)
    assert isinstance(instantiate(cfg.model), TPT)
    assert isinstance(instantiate(cfg.criterion), TPTCriterion)
    assert isinstance(instantiate(cfg.dataset), AQADataModule)
    assert callable(instantiate(cfg.optim.optimizer))
    if group == "trainer" and option != "cpu":  # GPU trainers: check the wiring on the CPU
        cfg.trainer.accelerator = "cpu"
    trainer = build_trainer(cfg, has_val=True)
    assert isinstance(trainer, L.Trainer)
    if group == "speed":  # speed=fast: bf16 autocast and fused Adam
        adam = instantiate(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(1))])
        assert trainer.precision == "bf16-mixed" and adam.defaults["fused"] is True


def test_sweep_sets_seeds_and_ablations():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["sweep=synthetic_ablation"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params.seed == "1,2,3"
    assert params.ablation == "none,baseline_pool"


def test_release_defaults():
    """The default model and criterion are the released settings of docs/method.md §3, §4 and §6."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/unused"])
    assert (cfg.model.d_model, cfg.model.num_queries, cfg.model.num_groups) == (512, 5, 16)
    assert cfg.model.parser.num_layers == 2 and cfg.model.parser.self_attn_layers == "first"
    assert cfg.criterion.margin == 3.2 and cfg.criterion.weight_sparsity == 0.05
    assert OmegaConf.to_container(cfg.optim.lr) == {"backbone": 1e-4, "body": 1e-4, "heads": 1e-3}
    assert cfg.seed == 12 and cfg.dataset.num_exemplars == 10


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.num_queries=0", "model.num_queries=0"),
        ("model.num_queries=21", "exceeds the 20 clips"),
        ("model.num_groups=12", "model.num_groups=12"),
        ("model.encoder._target_=tpt_aqa.models.Nope", "model/encoder=<name>"),
    ],
)
def test_invalid_configs_name_the_key(tmp_path, override, message):
    cfg = compose_cfg(tmp_path, *TINY, override)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr.body=-1e-4", "optim.lr.body=-0.0001: a learning rate must be a number > 0"),
        ("optim.lr.heads=0", "optim.lr.heads=0: a learning rate must be a number > 0"),
        ("optim.lr=-0.001", "optim.lr=-0.001: a learning rate must be a number > 0"),
        ("trainer.max_epochs=-2", r"trainer.max_epochs=-2: .* or -1 to train until stopped"),
        ("trainer.max_epochs=0", r"trainer.max_epochs=0: must be an integer >= 1"),
        ("dataset.eval_batch_size=0", r"dataset.eval_batch_size=0: must be an integer >= 1"),
        ("dataset.eval_batch_size=2.5", r"dataset.eval_batch_size=2.5: must be an integer >= 1"),
        ("dataset.num_exemplars=0", r"dataset.num_exemplars=0: must be an integer >= 1"),
        ("model.d_model=0", r"model.d_model=0: must be an integer >= 1"),
        ("model.parser.dropout=1.0", r"model.parser.dropout=1.0: must be a number in \[0, 1\)"),
        ("model.pair_stage.dropout=-0.1", r"model.pair_stage.dropout=-0.1: must be a number in"),
        ("dataset.val_fraction=1", r"dataset.val_fraction=1: must be a number in \[0, 1\)"),
        ("criterion.margin=-1", r"criterion.margin=-1: must be a number >= 0"),
        ("criterion.weight_rank=-0.5", r"criterion.weight_rank=-0.5: must be a number >= 0"),
        ("dataset.delta_cap=0", r"dataset.delta_cap=0: must be a number > 0"),
        ("global_batch_size=0", r"global_batch_size=0: must be an integer >= 1"),
    ],
)
def test_numeric_knobs_are_checked_before_work_starts(tmp_path, override, message):
    cfg = compose_cfg(tmp_path, *TINY, override)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_training_until_stopped_is_allowed(tmp_path):
    validate_config(compose_cfg(tmp_path, *TINY, "trainer.max_epochs=-1"))


def test_one_learning_rate_for_every_group(tmp_path):
    """``optim.lr=0.001``, as a user types it, sets every parameter group's rate."""
    cfg = compose_cfg(tmp_path, *TINY, "optim.lr=0.001")
    validate_config(cfg)
    module = build_module(cfg)
    rates = {g["name"]: g["lr"] for g in module.configure_optimizers().param_groups}
    assert rates == {"body": 0.001, "heads": 0.001}  # the precomputed encoder has no parameters


def test_video_dataset_needs_a_video_encoder(tmp_path):
    cfg = compose_cfg(tmp_path, *TINY_MODEL, "dataset=mtl_aqa", f"dataset.root={tmp_path}")
    with pytest.raises(ConfigError, match=r"reads videos.*add model/encoder=i3d"):
        validate_config(cfg)
    cfg = compose_cfg(tmp_path, *TINY, "model/encoder=i3d")
    with pytest.raises(ConfigError, match="add model/encoder=precomputed"):
        validate_config(cfg)


def test_missing_data_root(tmp_path):
    cfg = compose_cfg(tmp_path, *TINY_MODEL, "dataset=features", f"dataset.root={tmp_path}/absent")
    with pytest.raises(ConfigError, match=r"dataset\.root=.*absent does not exist"):
        validate_config(cfg)
    cfg = compose_cfg(tmp_path, *TINY_MODEL, "dataset=features")
    with pytest.raises(ConfigError, match=r"dataset\.root is not set"):
        validate_config(cfg)


def test_queries_beyond_clips_of_the_data(tmp_path):
    cfg = compose_cfg(
        tmp_path,
        *TINY,
        "dataset.num_clips=4",
        "dataset.num_phases=2",
        "dataset.phase_weights=[1,1]",
    )
    cfg.model.num_queries = 5
    with pytest.raises(ConfigError, match="exceeds the 4 clips"):
        build_datamodule(cfg)


def test_module_sizes_follow_the_encoder(tmp_path):
    cfg = compose_cfg(tmp_path, *TINY)
    module = build_module(cfg)
    first = module.model.parser.layers[0].key_proj
    assert first.in_features == cfg.dataset.feature_dim == module.model.encoder.out_dim
    assert module.model.pair_stage.mlp[0].in_features == 2 * cfg.model.d_model
    assert not bool(module.score_groups.fitted)  # fitted in setup, with the datamodule's cap


def test_progress_bar_null_means_no_bar(tmp_path):
    """The README's advice for multiruns, callbacks.progress_bar=null, leaves no bar at all."""
    trainer = build_trainer(compose_cfg(tmp_path, *TINY), has_val=True)
    assert trainer.progress_bar_callback is None
    cfg = compose_cfg(tmp_path, *[o for o in TINY if not o.startswith("callbacks.progress_bar")])
    assert isinstance(build_trainer(cfg, has_val=True).progress_bar_callback, ProgressBar)


@pytest.mark.parametrize(
    ("epoch", "max_epochs", "label"),
    [(0, 2, "Epoch 1/2"), (1, 2, "Epoch 2/2"), (3, -1, "Epoch 4 (until stopped)")],
)
def test_progress_bar_counts_epochs_from_one(epoch, max_epochs, label):
    bar = ProgressBar()
    bar._trainer = type("T", (), {"max_epochs": max_epochs})()
    assert epoch_label(epoch, max_epochs) == label
    assert bar._get_train_description(epoch).strip() == label


def test_queries_beyond_a_video_samplers_clips_are_refused_before_any_data(tmp_path):
    # The check used to read dataset.num_clips, a key only the synthetic benchmarks have.
    cfg = compose_cfg(
        tmp_path,
        "experiment=mtl_aqa_tpt",
        f"dataset.root={tmp_path}",  # empty: the data is never read
        "model.encoder.weights=null",
        "require_encoder_weights=false",
        "model.num_queries=21",
    )
    with pytest.raises(ConfigError, match=r"21 exceeds the 20 clips .*dataset.sampler.num_clips"):
        validate_config(cfg)


def test_temporal_conv_takes_t_from_the_data(tmp_path):
    """The temporal convolution is built for the data's T: the video sampler's, or a feature
    folder's as read from its files; never a second setting of its own."""
    video = compose_cfg(
        tmp_path,
        *TINY_MODEL,
        "dataset=synthetic_video",
        "model/encoder=i3d",
        "ablation=temporal_conv",
        "dataset.sampler.num_clips=4",
        "model.num_queries=2",
    )
    assert instantiate(video.model).parser.num_clips == 4
    root = tmp_path / "features"
    export_features(
        generate(FeatureSettings(num_train=20, num_test=6, num_clips=10, feature_dim=8)), root
    )
    cfg = compose_cfg(
        tmp_path,
        *TINY_MODEL,
        "experiment=features_tpt",
        f"dataset.root={root}",
        "dataset.feature_dim=8",
        "ablation=temporal_conv",
    )
    assert cfg.dataset.num_clips is None and cfg.model.parser.num_clips is None
    build_datamodule(cfg)
    assert cfg.dataset.num_clips == cfg.model.parser.num_clips == 10
    parser = build_module(cfg).model.parser
    parts, _ = parser(torch.randn(3, 10, 8))
    assert parser.num_clips == 10 and parts.shape[:2] == (3, cfg.model.num_queries)


def test_the_seed_has_one_home(tmp_path):
    """``seed: 12`` is written once (conf/common.yaml; the datasets interpolate it): every entry
    point that builds a dataset reads it there, and a command-line seed reaches the dataset."""
    homes = sorted(
        str(p.relative_to(CONF_DIR))
        for p in Path(CONF_DIR).rglob("*.yaml")
        if any(ln.startswith("seed:") and "${" not in ln for ln in p.read_text().splitlines())
    )
    assert homes == ["common.yaml"]
    for config in ("train", "extract", "export_table", "verify"):
        cfg = compose_cfg(tmp_path, config=config)
        assert cfg.seed == 12 and cfg.dataset.seed == 12, config
        assert compose_cfg(tmp_path, "seed=3", config=config).dataset.seed == 3, config
