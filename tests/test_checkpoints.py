"""Checkpoints given to the wrong command or damaged: one clear message, exit status 2, nothing
written; a checkpoint of another configuration names the keys, shapes and fitting overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from tpt_aqa import eval as eval_entry
from tpt_aqa import predict as predict_entry
from tpt_aqa import train as train_entry
from tpt_aqa.config import ConfigError, build_module
from tpt_aqa.core.checkpoints import CheckpointError
from tpt_aqa.core.errors import exit_on_user_error

from .conftest import compose_cfg

REPO = Path(__file__).resolve().parents[1]
HINT = (
    "it is truncated (an interrupted copy or download) or not a PyTorch checkpoint; pass a .ckpt "
    "written by tpt_aqa.train or tpt_aqa.convert"
)


def tpt_checkpoint(cfg, path: Path) -> Path:
    """A checkpoint as tpt_aqa.train writes it (weights and configuration), without training."""
    L.seed_everything(0)
    module = build_module(cfg)
    ckpt = {"epoch": 0, "global_step": 0, "state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.fixture(params=["truncated", "random", "empty"])
def damaged(request, tiny_cfg, tmp_path) -> tuple[Path, str]:
    """A damaged .ckpt and the detail its message gives."""
    path = tmp_path / "damaged.ckpt"
    if request.param == "truncated":
        good = tpt_checkpoint(tiny_cfg(), tmp_path / "good.ckpt").read_bytes()
        path.write_bytes(good[: len(good) // 2])  # an interrupted copy
        return (
            path,
            "PytorchStreamReader failed reading zip archive: failed finding central directory",
        )
    if request.param == "random":
        path.write_bytes(os.urandom(4096))
        return path, ""
    path.write_bytes(b"")
    return path, "an empty file"


def assert_one_line(err: BaseException, path: Path, detail: str) -> None:
    message = str(err)
    assert "\n" not in message
    assert message.startswith(f"cannot read {path} ({detail}") and message.endswith(HINT)


def test_a_damaged_checkpoint_to_eval_predict_or_resume_is_one_line(damaged, tiny_cfg, tmp_path):
    path, detail = damaged
    out = tmp_path / "run"  # every command's paths.output_dir here
    with pytest.raises(CheckpointError) as err:
        eval_entry.run(compose_cfg(tmp_path, f"ckpt_path={path}", "logger=csv", config="eval"))
    assert_one_line(err.value, path, detail)
    predict_cfg = compose_cfg(
        tmp_path, f"ckpt_path={path}", f"input={tmp_path}", "device=cpu", config="predict"
    )
    with pytest.raises(CheckpointError) as err:
        predict_entry.run(predict_cfg)
    assert_one_line(err.value, path, detail)
    with pytest.raises(CheckpointError) as err:
        train_entry.run(tiny_cfg(f"ckpt_path={path}"))
    assert_one_line(err.value, path, detail)
    assert not out.exists()  # nothing written by any of them


def test_entry_points_report_it_without_traceback(tmp_path, capsys):
    path = tmp_path / "random.ckpt"
    path.write_bytes(os.urandom(4096))
    cfg = compose_cfg(tmp_path, f"ckpt_path={path}", "logger=csv", config="eval")
    with pytest.raises(SystemExit) as stop:
        exit_on_user_error(eval_entry.run)(cfg)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read {path} (")


def test_cli_eval_of_a_damaged_checkpoint(tmp_path):
    path = tmp_path / "half.ckpt"
    path.write_bytes(b"PK\x03\x04" + os.urandom(2048))  # starts like a zip, then garbage
    proc = subprocess.run(
        [sys.executable, "-m", "tpt_aqa.eval", f"ckpt_path={path}", f"hydra.run.dir={tmp_path}/e"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot read {path} ("), proc.stderr
    assert lines[0].endswith(HINT)
    assert not (tmp_path / "e" / "results.json").exists()


def test_a_checkpoint_without_weights_is_named(tmp_path, tiny_cfg):
    path = tmp_path / "weights_only.pt"
    torch.save({"encoder": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"holds no model weights \(no 'state_dict'\)"):
        train_entry.run(tiny_cfg(f"ckpt_path={path}"))


def test_resuming_a_checkpoint_of_another_configuration_names_keys_shapes_and_overrides(
    tiny_cfg, tmp_path
):
    other = tpt_checkpoint(
        tiny_cfg("model.d_model=48", "model.num_queries=3"), tmp_path / "other.ckpt"
    )
    cfg = tiny_cfg(f"ckpt_path={other}")
    with pytest.raises(CheckpointError) as err:
        train_entry.run(cfg)
    message = str(err.value)
    assert message.startswith(f"ckpt_path={other} holds a model of another configuration:")
    assert "shapes that differ (file → this model)" in message
    assert "model.parser.query_embed (3, 48) → (5, 32)" in message
    assert message.endswith(
        "the checkpoint was trained with: pass model.d_model=48 model.num_queries=3"
    )
    assert not Path(cfg.paths.output_dir).exists()  # refused before anything is written


def test_eval_refuses_overrides_it_would_ignore(tmp_path):
    cfg = compose_cfg(
        tmp_path, "ckpt_path=/no/such.ckpt", "+model.num_queries=3", "+seed=4", config="eval"
    )
    with pytest.raises(ConfigError) as err:
        eval_entry.run(cfg)
    assert str(err.value).startswith(
        "model.num_queries=3 seed=4: not read by tpt_aqa.eval, which evaluates the model as the "
        "checkpoint stores it"
    )
    allowed = compose_cfg(tmp_path, "ckpt_path=/no/such.ckpt", "+dataset.root=/data", config="eval")
    with pytest.raises(ConfigError, match="is not a file"):  # dataset keys are read: no refusal
        eval_entry.run(allowed)


def test_a_resumed_run_may_change_speed_switches_but_not_settings():
    """An interrupted run resumes with other speed switches (same function) or with a checkpoint
    written before a switch existed; any other setting still blocks the resume."""
    from tpt_aqa.core.checkpoints import config_differences

    saved = {"model": {"num_queries": 5, "encoder": {}}, "optim": {"optimizer": {"lr": 1e-4}}}
    now = {
        "model": {"num_queries": 5, "compile_encoder": True, "encoder": {"fold_bn": True}},
        "optim": {"optimizer": {"lr": 1e-4, "implementation": "fused"}},
        "trainer": {"benchmark": True},
    }
    assert config_differences(saved, now, ignore=train_entry.RUN_LOCAL_KEYS) == []
    now["model"]["num_queries"] = 4
    assert config_differences(saved, now, ignore=train_entry.RUN_LOCAL_KEYS) == [
        ("model.num_queries", 5, 4)
    ]
