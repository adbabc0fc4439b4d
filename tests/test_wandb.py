"""W&B dashboards: run names from Hydra's choices, the CSV fallback, the validation figures, and
(slow) a tiny offline training read back from the ``.wandb`` file wandb writes."""

from __future__ import annotations

import copy
import json
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import wandb
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, open_dict

from tpt_aqa import train as train_entry
from tpt_aqa.config import CONF_DIR, build_datamodule, build_module
from tpt_aqa.reporting import wandb_logging
from tpt_aqa.reporting.wandb_logging import WandbFigures, build_logger, run_identity

from .conftest import TINY, quiet_trainer


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """wandb offline and silent, every file of it under tmp_path; no run left open afterwards."""
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield
    if wandb.run is not None:
        wandb.finish()


@pytest.fixture
def hydra_run(tmp_path, monkeypatch):
    """Compose like ``@hydra.main`` does: the Hydra config is set (runtime choices, overrides) and
    restored afterwards; the returned config has no ``hydra`` key."""
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)

    def make(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        cfg = copy.deepcopy(cfg)  # the job's copy, as run_job makes it
        with open_dict(cfg):
            del cfg["hydra"]
            cfg.paths.output_dir = str(tmp_path / "run")
        return cfg

    return make


# ---- names, groups, tags -------------------------------------------------------------------
def test_run_identity_from_choices():
    choices = {"experiment": "mtl_aqa_tpt", "ablation": "no_rank_loss", "dataset": "mtl_aqa"}
    got = run_identity(12, choices=choices)
    assert got.name == "mtl_aqa_tpt+no_rank_loss-seed12"
    assert got.group == "mtl_aqa_tpt+no_rank_loss"
    assert got.tags == ["mtl_aqa", "mtl_aqa_tpt", "no_rank_loss"]
    # the reference row of an ablation grid and no ablation share a name
    for ablation in (None, "none"):
        got = run_identity(3, choices={**choices, "ablation": ablation})
        assert (got.name, got.group) == ("mtl_aqa_tpt-seed3", "mtl_aqa_tpt")
    # outside Hydra: the task name
    assert run_identity(12, task_name="train") == wandb_logging.RunIdentity(
        "train-seed12", "train", ["train"]
    )
    swept = run_identity(1, choices=choices, swept=["model.num_queries=3"])
    assert swept.name == "mtl_aqa_tpt+no_rank_loss,model.num_queries=3-seed1"


def test_hydra_context_reads_choices_and_swept_values(hydra_run):
    hydra_run(
        "experiment=synthetic_tpt",
        "ablation=no_rank_loss",
        "sweep=num_queries",
        "model.num_queries=3",
        "seed=2",
    )
    choices, swept = wandb_logging.hydra_context()
    assert choices["experiment"] == "synthetic_tpt" and choices["dataset"] == "synthetic"
    assert swept == ["model.num_queries=3"]  # the seed is the name's, not the group's
    got = run_identity(2, choices=choices, swept=swept)
    assert got.group == "synthetic_tpt+no_rank_loss,model.num_queries=3"


def test_hydra_context_outside_hydra(monkeypatch):
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    assert wandb_logging.hydra_context() == ({}, [])


# ---- the factory's fallback ----------------------------------------------------------------
def _refuse(**kwargs):
    raise wandb.errors.UsageError("api_key not configured (no-tty)")


def test_factory_falls_back_to_csv_when_init_fails(tmp_path, offline_wandb, monkeypatch):
    monkeypatch.setattr(wandb, "init", _refuse)
    with pytest.warns(RuntimeWarning, match=r"W&B could not start \(UsageError: api_key.*CSV"):
        logger = build_logger(save_dir=str(tmp_path / "run"), seed=1)
    assert isinstance(logger, CSVLogger)
    assert Path(logger.log_dir).parent == tmp_path / "run" / "csv"


def test_factory_falls_back_to_csv_without_wandb(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.warns(RuntimeWarning, match="W&B could not start"):
        logger = build_logger(save_dir=str(tmp_path), seed=1)
    assert isinstance(logger, CSVLogger)


# ---- the validation figures ----------------------------------------------------------------
class RecordingWandbLogger(WandbLogger):
    """A WandbLogger that records what it is asked to log instead of starting wandb."""

    def __init__(self) -> None:
        super().__init__(offline=True)
        self.images: dict[str, list[tuple[int, list[np.ndarray], dict]]] = {}
        self.defined: dict[str, str] = {}
        run = SimpleNamespace(define_metric=lambda name, **kw: self.defined.update({name: kw}))
        self._experiment = run

    @property
    def experiment(self):
        return self._experiment

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key, images, step=None, **kwargs) -> None:
        self.images.setdefault(key, []).append((step, images, kwargs))

    def finalize(self, status: str) -> None:
        pass

    @property
    def version(self) -> str:
        return "test"


def _fit_one_epoch(cfg: DictConfig, logger, callback: WandbFigures):
    L.seed_everything(0)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = quiet_trainer(
        max_epochs=1,
        limit_train_batches=2,
        num_sanity_val_steps=2,
        logger=logger,
        callbacks=[callback],
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=dm)
    return dm, module


@pytest.mark.parametrize("ablation", ["none", "baseline_pool"])
def test_figures_logged_at_validation(tiny_cfg, ablation):
    cfg = tiny_cfg(f"ablation={ablation}")
    logger = RecordingWandbLogger()
    dm, module = _fit_one_epoch(cfg, logger, WandbFigures(num_videos=2))
    # one validation after the sanity check (which is skipped): one scatter of the whole split
    attends = ablation == "none"  # the mean-pooling baseline has no attention maps
    assert list(logger.images) == ["val/scatter", "val/attention"][: 1 + attends]
    [(step, [scatter], _)] = logger.images["val/scatter"]
    assert step == 2 and scatter.ndim == 3 and scatter.shape[2] == 3 and scatter.dtype == np.uint8
    assert len(module.last_records["val"]["index"]) == len(dm.table.rows("val"))
    if attends:
        [(step, maps, kwargs)] = logger.images["val/attention"]
        first = [dm.table.ids[r] for r in dm.table.rows("val")[:2]]
        assert kwargs["caption"] == first and len(maps) == 2
        assert all(m.ndim == 3 and m.shape[2] == 3 for m in maps)
    # the best ρ sorts the runs table; per-class summaries only with several classes
    assert logger.defined["val/srcc"]["summary"] == "max"
    assert logger.defined["val/rl2"]["summary"] == "min"
    assert logger.defined["test/srcc"]["summary"] == "last"


def test_figures_do_nothing_without_wandb(tiny_cfg, tmp_path):
    callback = WandbFigures()
    calls = []
    callback._log = lambda *a: calls.append(a)
    _fit_one_epoch(tiny_cfg(), CSVLogger(tmp_path), callback)
    assert calls == []


def test_figure_failure_only_warns(tiny_cfg):
    logger = RecordingWandbLogger()
    callback = WandbFigures()

    def broken(*args):
        raise OSError("media folder not writable")

    callback._log = broken
    with pytest.warns(RuntimeWarning, match="figures of epoch 0 not logged.*not writable"):
        _fit_one_epoch(tiny_cfg(), logger, callback)


# ---- end to end, offline -------------------------------------------------------------------
def read_wandb_records(path: Path) -> list:
    """The protobuf records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then
    a LevelDB log: 32 KiB blocks of chunks, each ``crc32c (4) · length (2, LE) · type (1)`` with
    types full 1, first 2, middle 3, last 4; a block tail shorter than a chunk header is padding."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending += chunk
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def summarize_run(run_dir: Path) -> dict:
    """Run header, config, history rows and final summary of an offline run folder."""
    [log_file] = run_dir.glob("run-*.wandb")
    out: dict = {"config": {}, "history": [], "summary": {}}
    for record in read_wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        out.setdefault("kinds", set()).add(kind)
        if kind == "run":
            out["run"] = record.run
        elif kind == "config":
            out["config"].update({_key(u): json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            out["summary"].update(
                {_key(u): json.loads(u.value_json) for u in record.summary.update}
            )
    return out


@pytest.mark.slow
def test_offline_training_dashboard(offline_wandb, hydra_run):
    cfg = hydra_run(*TINY, "logger=wandb", "ablation=no_rank_loss", "seed=12")
    results = train_entry.run(cfg)
    wandb.finish()
    wandb.teardown()  # as at process exit: the wandb service writes out and closes the run's log
    [run_dir] = (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")
    run = summarize_run(run_dir)
    assert "exit" in run["kinds"], "the run's log is incomplete"

    assert run["run"].display_name == "synthetic_tpt+no_rank_loss-seed12"
    assert run["run"].run_group == "synthetic_tpt+no_rank_loss"
    assert list(run["run"].tags) == ["synthetic", "synthetic_tpt", "no_rank_loss"]
    # the full resolved configuration
    assert run["config"]["seed"] == 12
    assert run["config"]["model"]["d_model"] == 32
    assert run["config"]["criterion"]["weight_rank"] == 0.0
    # metrics: the module's, per epoch
    history = run["history"]
    val_srcc = [row["val/srcc"] for row in history if "val/srcc" in row]
    val_rl2 = [row["val/rl2"] for row in history if "val/rl2" in row]
    assert len(val_srcc) == 2 and any("train/loss_cls" in row for row in history)
    # the summary keeps the best validation ρ and R-ℓ2, the last test numbers
    summary = run["summary"]
    assert summary["val/srcc"] == {"max": pytest.approx(max(val_srcc))}
    assert summary["val/rl2"] == {"min": pytest.approx(min(val_rl2))}
    assert summary["val/srcc_best"] == {"max": pytest.approx(max(val_srcc))}
    assert summary["test/srcc"] == {"last": pytest.approx(results["test/srcc"], abs=1e-6)}
    # figures of both validations: one scatter and two attention maps each
    media = run_dir / "files" / "media" / "images" / "val"
    scatters, maps = sorted(media.glob("scatter_*.png")), sorted(media.glob("attention_*.png"))
    assert len(scatters) == 2 and len(maps) == 4
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in scatters + maps)
    assert summary["val/attention/count"] == 2


@pytest.mark.slow
def test_training_completes_when_wandb_cannot_start(offline_wandb, tiny_cfg, monkeypatch):
    monkeypatch.setattr(wandb, "init", _refuse)
    cfg = tiny_cfg("logger=wandb")
    with pytest.warns(RuntimeWarning, match="W&B could not start"):
        results = train_entry.run(cfg)
    assert -1 <= results["test/srcc"] <= 1
    out = Path(cfg.paths.output_dir)
    [metrics] = (out / "csv").glob("version_*/metrics.csv")
    header = metrics.read_text().splitlines()[0].split(",")
    assert "val/srcc" in header and "test/srcc" in header
    assert not (out / "wandb").exists() or not list((out / "wandb").glob("offline-run-*"))
