"""The command line: mistyped keys, required keys with the usage, multiruns checked point by point."""

from __future__ import annotations

from tpt_aqa.cli import check_command_line, grid_points
from tpt_aqa.config import validate_config

from .conftest import run_module


def cli(tmp_path, module, *args):
    return run_module(module, f"hydra.run.dir={tmp_path}", *args)


def test_mistyped_key_gets_the_nearest_valid_key(tmp_path):
    proc = cli(tmp_path, "train", "model.num_querys=3")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "config error: model.num_querys is not a key of the train configuration: did you mean "
        "model.num_queries=3? (+model.num_querys=3 adds a new key)"
    )
    problem = check_command_line("predict", ["ckpt=/x.ckpt"])
    assert problem.startswith(
        "ckpt is not a key of the predict configuration: did you mean ckpt_path"
    )


def test_commands_without_arguments_show_the_usage(tmp_path):
    proc = cli(tmp_path, "predict")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "config error: ckpt_path and input are not set; usage: python -m tpt_aqa.predict "
        "ckpt_path=CKPT input=PATH [difficulty=3.2 | class=diving | group=NAME]"
    )
    proc = cli(tmp_path, "eval")
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "config error: ckpt_path is not set; usage: python -m tpt_aqa.eval ckpt_path=PATH"
    )


def test_grid_points_cross_the_sweep_config_with_the_command_line():
    points = grid_points("train", ["sweep=margin", "seed=7", "trainer.max_epochs=1,2"])
    assert len(points) == 5 * 2  # five margins of the sweep config; seed=7 replaces its seeds
    assert all("seed=7" in p for p in points)
    assert {p[0] for p in points} == {f"criterion.margin={m}" for m in (0.0, 1.0, 2.0, 3.2, 4.0)}


def test_step_queries_sweep_is_k_3_4_5_7_by_three_seeds():
    points = grid_points("train", ["experiment=finediving_tpt", "sweep=step_queries"])
    assert len(points) == 4 * 3
    ks = sorted({int(a.split("=")[1]) for p in points for a in p if a.startswith("model.num_q")})
    assert ks == [3, 4, 5, 7]


def test_multirun_checks_every_point_before_launching(tmp_path):
    problem = check_command_line(
        "train", ["-m", "model.num_queries=3,0", "optim.lr.body=1e-4,-1e-4"], validate_config
    )
    lines = problem.splitlines()
    assert lines[0] == "3 of 4 grid points are invalid; nothing was launched:"
    assert lines[1].startswith("  job 1 (model.num_queries=3 optim.lr.body=-0.0001): optim.lr.body")
    assert lines[2].startswith(
        "  job 2 (model.num_queries=0 optim.lr.body=0.0001): model.num_queries=0"
    )
    # through the command line: an invalid first point launches nothing, not even the valid ones
    proc = run_module("train", "-m", f"hydra.sweep.dir={tmp_path}", "model.num_queries=0,3")
    assert proc.returncode == 2
    assert "1 of 2 grid points are invalid; nothing was launched" in proc.stderr
    assert "job 0 (model.num_queries=0): model.num_queries=0" in proc.stderr
    assert not any(tmp_path.iterdir())
