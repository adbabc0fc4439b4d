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


def test_an_override_hydra_cannot_parse_is_named():
    problem = check_command_line("train", ["seed=1", "dataset.num_train=$((3*"])
    assert problem == (
        "cannot parse the override 'dataset.num_train=$((3*' (Hydra: mismatched input '(' "
        "expecting <EOF>): quote the value for the shell and for Hydra when it holds spaces, "
        "brackets, $, *, or parentheses, e.g. 'dataset.num_train=\"…\"'"
    )
    # an unquoted $(date +%F %T) splits into words; the stray one is named, with where it came from
    problem = check_command_line("train", ["hydra.run.dir=out/2026-12-08", "03:30:45"])
    assert problem.startswith("cannot parse the override '03:30:45' (Hydra: ")
    assert problem.endswith(
        "it is not key=value: a value with spaces, or a shell expression, was split into words "
        "after 'hydra.run.dir=out/2026-12-08'; quote the whole override, e.g. "
        "'key=value with spaces'"
    )


def test_seed_and_devices_are_checked():
    from tpt_aqa.config import validate_train_config

    assert check_command_line("train", ["seed=abc"], validate_train_config) == (
        "seed='abc': must be an integer from 0 to 4294967295 (e.g. seed=12); the same seed "
        "repeats a run"
    )
    assert check_command_line("train", ["trainer.devices=0"], validate_train_config) == (
        "trainer.devices=0: must be an integer >= 1 (how many), -1 (all), auto, or a list of "
        "device indices such as [0,1] (e.g. trainer.devices=1)"
    )
    for fine in ("trainer.devices=1", "trainer.devices=-1", "trainer.devices=auto", "seed=0"):
        assert check_command_line("train", [fine], validate_train_config) is None, fine
    assert check_command_line("train", ["trainer.devices=[0,1]"], validate_train_config) is None


def test_errors_before_work_leave_no_run_folder(tmp_path):
    """A config error is found before Hydra creates the folder; a data error once the run has
    started removes the folder it created (it held only Hydra's record, the log and the lock)."""
    run_dir = tmp_path / "new" / "run"
    for override, message in (
        ("seed=abc", "config error: seed='abc': must be an integer"),
        ("dataset.num_train=2", "config error: the validation split has 1 video"),
    ):
        proc = run_module("train", f"hydra.run.dir={run_dir}", "trainer.max_epochs=1", override)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
        assert not (tmp_path / "new").exists(), sorted(tmp_path.rglob("*"))


def test_a_missing_file_found_by_the_check_is_left_to_the_run(tmp_path, monkeypatch):
    """Only configuration errors stop the command line check; a missing weights file is reported
    by the run itself (as `error: …`), not as a traceback of the check."""
    from tpt_aqa.config import validate_train_config

    monkeypatch.setenv("TPT_AQA_CACHE", str(tmp_path / "empty_cache"))
    args = ["model/encoder=i3d", "dataset=synthetic_video", "model.encoder.weights=kinetics400"]
    assert check_command_line("train", args, validate_train_config) is None
