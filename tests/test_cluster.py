"""Cluster launch: the multirun guard, and conf/cluster/slurm.yaml with hydra-submitit-launcher.

The plugin is an optional extra (`pip install -e ".[slurm]"`); the tests that compose or submit with
it are skipped without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from tpt_aqa import train as train_entry
from tpt_aqa.config import CONF_DIR, ConfigError

REPO = Path(__file__).resolve().parents[1]
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def compose_with_hydra(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.fixture
def as_job(monkeypatch):
    """Make ``HydraConfig.get()`` return this config's ``hydra`` node, as inside a launched job."""
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test

    def set_job(cfg: DictConfig, mode: RunMode = RunMode.MULTIRUN) -> DictConfig:
        with open_dict(cfg):
            cfg.hydra.mode = mode
        HydraConfig.instance().set_config(cfg)
        return cfg

    return set_job


@pytest.mark.parametrize(
    ("launcher", "mode", "refused"),
    [
        (BASIC, RunMode.MULTIRUN, True),  # every child would re-run the whole sweep
        (BASIC, RunMode.RUN, False),
        (SLURM, RunMode.MULTIRUN, False),  # srun starts the ranks; nothing re-runs the sweep
    ],
)
def test_ddp_guard_depends_on_the_launcher(as_job, launcher, mode, refused):
    cfg = compose_with_hydra("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    with open_dict(cfg):
        cfg.hydra.launcher._target_ = launcher
    as_job(cfg, mode)
    if refused:
        with pytest.raises(ConfigError, match=r"trainer\.strategy=ddp inside a local multirun"):
            train_entry.check_multirun_strategy(cfg)
    else:
        train_entry.check_multirun_strategy(cfg)


def test_one_device_per_job_is_allowed_in_a_local_multirun(as_job):
    cfg = compose_with_hydra("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=1")
    assert cfg.hydra.launcher._target_ == BASIC
    train_entry.check_multirun_strategy(as_job(cfg))


# --- with hydra-submitit-launcher installed --------------------------------------------------------


@pytest.fixture
def plugin():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def test_cluster_config_sizes_the_jobs_from_the_trainer(plugin, as_job):
    cfg = compose_with_hydra(
        "cluster=slurm", "experiment=mtl_aqa_tpt", "trainer.devices=8", "trainer.num_nodes=2"
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == SLURM
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (8, 8, 2)
    assert (cfg.trainer.strategy, cfg.trainer.accelerator) == ("ddp", "gpu")
    assert cfg.trainer.max_epochs == 250  # the experiment's values stay; the cluster adds resources
    assert launcher.additional_parameters.signal == "TERM@120"
    train_entry.check_multirun_strategy(as_job(cfg))  # ddp on 8 devices, allowed with this launcher


def test_sbatch_script_of_a_grid(plugin, tmp_path):
    """Submit a 2-point grid to a stand-in ``sbatch`` and read the script SLURM would have run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        '#!/bin/sh\ncp "$1" "$CAPTURE"\necho "stand-in sbatch: nothing submitted" >&2\nexit 1\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that srun exists
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    script = tmp_path / "job.sh"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CAPTURE": str(script),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tpt_aqa.train",
            "-m",
            "cluster=slurm",
            "hydra.launcher.partition=gpu",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "seed=1,2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "stand-in sbatch: nothing submitted" in proc.stderr, proc.stderr[-3000:]
    lines = script.read_text().splitlines()
    flags = {line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH ")}
    assert {
        "--array=0-1%2",  # one array task per grid point
        "--nodes=1",
        "--ntasks-per-node=4",  # = trainer.devices: one rank per task
        "--gpus-per-node=4",
        "--cpus-per-task=10",
        "--mem=64GB",
        "--time=1440",
        "--partition=gpu",
        "--signal=TERM@120",  # not submitit's USR2: Lightning's graceful stop
    } <= flags
    assert not any(flag.startswith("--signal=USR") for flag in flags)
    srun = next(line for line in lines if line.startswith("srun "))
    assert "submitit.core._submit" in srun and f"{tmp_path / 'sweep'}/.submitit/" in srun
