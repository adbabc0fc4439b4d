"""Shared test helpers: compose the real Hydra configs with small, fast overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from tpt_aqa.config import CONF_DIR
from tpt_aqa.core.startup import setup

setup()  # as the commands do: the tests compose the configs themselves (core.startup)

# A tiny run: small model, two epochs, no progress bar; outputs go to tmp_path.
TINY_MODEL = [
    "model.d_model=32",
    "model.heads.hidden_dim=16",
    "trainer.max_epochs=2",
    "callbacks.progress_bar=null",
    "logger=csv",
]
# ... on a small synthetic benchmark.
TINY = [
    "dataset.num_train=90",
    "dataset.num_test=30",
    "dataset.feature_dim=16",
    "global_batch_size=6",
    *TINY_MODEL,
]


REPO = Path(__file__).resolve().parents[1]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m tpt_aqa.<module> args…`` from the checkout, output captured."""
    return subprocess.run(
        [sys.executable, "-m", f"tpt_aqa.{module}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def compose_cfg(tmp_path: Path, *overrides: str, config: str = "train") -> DictConfig:
    """Compose ``conf/<config>.yaml`` with overrides, writing outputs under ``tmp_path``."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config, overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


def quiet_trainer(**kwargs) -> L.Trainer:
    """A CPU trainer that logs, checkpoints and prints nothing unless ``kwargs`` say so."""
    return L.Trainer(
        **{
            "accelerator": "cpu",
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **kwargs,
        }
    )


@pytest.fixture
def tiny_cfg(tmp_path):
    """Factory for a tiny synthetic training config with extra overrides."""

    def make(*overrides: str) -> DictConfig:
        return compose_cfg(tmp_path, *TINY, *overrides)

    return make
