"""End to end: fast_dev_run, evaluation semantics, checkpoint → tpt_aqa.eval, command-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from tpt_aqa import eval as eval_entry
from tpt_aqa import train as train_entry
from tpt_aqa.cli import check_command_line
from tpt_aqa.config import (
    ConfigError,
    build_datamodule,
    build_module,
    validate_config,
    validate_train_config,
)
from tpt_aqa.training.runtime import apply_global_batch, split_batch

from .conftest import TINY, TINY_MODEL, compose_cfg, quiet_trainer, run_module


def test_fast_dev_run(tiny_cfg):
    cfg = tiny_cfg("debug=fast_dev_run")
    results = train_entry.run(cfg)
    assert -1 <= results["test/srcc"] <= 1 and results["test/rl2"] > 0
    assert 0 <= results["test/parse_acc"] <= 1 and results["test/parse_boundary"] >= 0
    # marked in results.json, so that tpt_aqa.aggregate leaves it out
    saved = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert saved["smoke_test"] is True


def test_fast_dev_run_baseline(tiny_cfg):
    results = train_entry.run(tiny_cfg("debug=fast_dev_run", "ablation=baseline_pool"))
    assert "test/parse_acc" not in results and "test/srcc" in results


def test_fast_dev_run_hard_variant(tiny_cfg):
    results = train_entry.run(tiny_cfg("debug=fast_dev_run", "dataset=synthetic_hard"))
    assert 0 <= results["test/parse_adapt"] <= 1 and "test/srcc" in results


def test_fast_dev_run_step_supervision_and_true_phase_pool(tmp_path):
    for dataset in ("synthetic", "synthetic_hard"):
        sup = train_entry.run(
            compose_cfg(
                tmp_path / f"{dataset}_sup",
                *TINY,
                "debug=fast_dev_run",
                f"dataset={dataset}",
                "ablation=step_supervision",
                "dataset.step_label_fraction=0.1",
            )
        )
        assert "test/parse_adapt" in sup
        ceiling = train_entry.run(
            compose_cfg(
                tmp_path / f"{dataset}_ceiling",
                *TINY,
                "debug=fast_dev_run",
                f"dataset={dataset}",
                "ablation=true_phase_pool",
            )
        )
        assert "test/srcc" in ceiling and "test/parse_acc" not in ceiling


def test_own_features_with_steps_report_parsing(tmp_path):
    """export_synthetic writes {id}.steps.npy; dataset=features reads them, so a run on the
    user's format reports the parse_* metrics and can be step-supervised."""
    from tpt_aqa import export_synthetic

    data = tmp_path / "features"
    export_synthetic.main(
        [str(data), "--num-train", "60", "--num-test", "20", "--feature-dim", "16"]
    )
    overrides = [*TINY_MODEL, "experiment=features_tpt", f"dataset.root={data}",
                 "dataset.feature_dim=16", "dataset.delta_cap=10", "debug=fast_dev_run"]  # fmt: skip
    plain = train_entry.run(compose_cfg(tmp_path / "plain", *overrides))
    assert 0 <= plain["test/parse_acc"] <= 1 and "test/parse_adapt" in plain
    sup = train_entry.run(
        compose_cfg(
            tmp_path / "sup",
            *overrides,
            "ablation=step_supervision",
            "dataset.step_label_fraction=0.5",
        )
    )
    assert "test/parse_adapt" in sup


def test_step_label_fraction_hides_training_steps_only(tiny_cfg):
    """dataset.step_label_fraction keeps the steps of that share of the training videos (seeded
    by dataset.seed); validation and test videos keep theirs; the step loss sees the hidden ones
    as unknown (−1)."""
    cfg = tiny_cfg("dataset.step_label_fraction=0.25", "dataset.val_fraction=0.1")
    dm = build_datamodule(cfg)
    dm.setup()
    train = dm.table.rows("train")  # 81 of the 90 after the validation carve
    hidden = np.array(sorted(dm.unlabelled_rows))
    assert len(hidden) == len(train) - round(0.25 * len(train)) and np.isin(hidden, train).all()
    assert (dm.sample(int(hidden[0]), "train")["clip_labels"] == -1).all()
    kept = np.setdiff1d(train, hidden)
    assert (dm.sample(int(kept[0]), "train")["clip_labels"] >= 0).all()
    for split in ("val", "test"):
        assert (dm.sample(int(dm.table.rows(split)[0]), "test")["clip_labels"] >= 0).all()
    again = build_datamodule(cfg)
    again.setup()
    assert again.unlabelled_rows == dm.unlabelled_rows
    with pytest.raises(ConfigError, match=r"dataset\.step_label_fraction=1\.5.*\[0, 1\]"):
        validate_config(tiny_cfg("dataset.step_label_fraction=1.5"))


def test_evaluation_is_mean_of_exemplar_plus_delta(tiny_cfg):
    """Encode-once evaluation equals scoring each (exemplar, query) pair separately."""
    cfg = tiny_cfg()
    L.seed_everything(0)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    trainer = quiet_trainer(max_epochs=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    got = module.last_records["test"]
    model, groups, t = module.model.eval(), module.score_groups, dm.table
    test_rows = t.rows("test")
    with torch.no_grad():
        for pos in (0, 7, len(test_rows) - 1):
            row = int(test_rows[pos])
            q = model.encode(dm.load_video(row, "test")[None]).parts
            scores = []
            for ex in dm.eval_exemplars["test"][pos]:
                if ex < 0:
                    continue
                e = model.encode(dm.load_video(int(ex), "exemplar")[None]).parts
                delta = groups.decode(*model.compare(e, q))
                scores.append(float(t.target[ex]) + float(delta))
            expected = sum(scores) / len(scores) * float(t.scale[row])
            i = int((got["index"] == row).nonzero())
            assert got["pred"][i].item() == pytest.approx(expected, abs=1e-4)
            assert got["target"][i].item() == pytest.approx(t.target[row] * t.scale[row], rel=1e-6)
    assert len(got["index"]) == len(test_rows) == len(set(got["index"].tolist()))


def test_train_losses_are_logged_as_the_epochs_pair_weighted_means(tiny_cfg):
    cfg = tiny_cfg()
    L.seed_everything(0)
    dm, module = build_datamodule(cfg), build_module(cfg)
    steps: list[tuple[float, int]] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps.append((outputs["loss"].item(), len(batch.query)))

    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=4, limit_val_batches=0, callbacks=[Record()]
    )
    trainer.fit(module, datamodule=dm)
    expected = sum(loss * n for loss, n in steps) / sum(n for _, n in steps)
    assert len(steps) == 4
    assert trainer.callback_metrics["train/loss"].item() == pytest.approx(expected, rel=1e-6)
    assert {f"train/{k}" for k in module.criterion.weights} <= set(trainer.callback_metrics)


def test_checkpoint_then_eval_reproduces_test_metrics(tmp_path, tiny_cfg):
    cfg = tiny_cfg()
    results = train_entry.run(cfg)
    ckpt = Path(results["checkpoint"])
    assert ckpt.is_file() and "epoch" in ckpt.name  # best val/srcc, not last.ckpt
    saved = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert saved["test/srcc"] == pytest.approx(results["test/srcc"])
    eval_cfg = compose_cfg(tmp_path / "eval", f"ckpt_path={ckpt}", "logger=csv", config="eval")
    again = eval_entry.run(eval_cfg)
    for key in ("test/srcc", "test/rl2", "test/parse_acc", "test/parse_boundary"):
        assert again[key] == pytest.approx(results[key], abs=1e-6), key
    written = json.loads((tmp_path / "eval" / "run" / "results.json").read_text())
    assert written["eval_exemplars"] == "per_video"  # the protocol the run was trained with


def test_eval_records_its_protocol_and_finds_data_that_moved(tmp_path):
    """A checkpoint whose data root moved: the message gives one override, and it works (through
    the command line); results.json says which exemplar protocol evaluated."""
    cfg = _exported_features_cfg(tmp_path, num_test=10)
    ckpt = train_entry.run(cfg)["checkpoint"]
    moved = tmp_path / "moved"
    (tmp_path / "features").rename(moved)
    eval_cfg = compose_cfg(tmp_path / "eval", f"ckpt_path={ckpt}", config="eval")
    with pytest.raises(ConfigError) as err:
        eval_entry.run(eval_cfg)
    assert str(err.value) == (
        f"dataset.root={tmp_path / 'features'} (as the checkpoint stores it) does not exist: if "
        "the data has moved, pass +dataset.root=/new/location (eval adds dataset keys with a "
        "leading +)"
    )
    # the key without its +: the same advice, not a key it imagines
    assert check_command_line("eval", [f"ckpt_path={ckpt}", f"dataset.root={moved}"]) == (
        f"dataset.root is not a key of the eval configuration, which adds dataset keys with a "
        f"leading +: pass +dataset.root={moved}"
    )
    out = tmp_path / "eval_run"
    args = [f"ckpt_path={ckpt}", f"+dataset.root={moved}", "eval_exemplars=per_group"]
    proc = run_module("eval", *args, f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((out / "results.json").read_text())
    assert saved["eval_exemplars"] == "per_group" and -1 <= saved["test/srcc"] <= 1


def test_training_without_validation_uses_last_epoch(tiny_cfg):
    results = train_entry.run(tiny_cfg("dataset.val_fraction=0"))
    assert Path(results["checkpoint"]).name == "last.ckpt"


def run_cli(tmp_path, *args):
    return run_module("train", f"hydra.run.dir={tmp_path}", *args)


def test_cli_runs_with_fewer_queries(tmp_path):
    proc = run_cli(tmp_path, "dataset=synthetic", "model.num_queries=3", "debug=fast_dev_run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test/srcc" in proc.stdout
    # the run's own lines and Lightning's reach the job's log file; no cloud-service tips
    log = (tmp_path / "train.log").read_text()
    assert "Test metrics (checkpoint: last epoch, not saved (fast_dev_run))" in log
    assert "Seed set to 12" in log
    assert "Tip:" not in proc.stdout + proc.stderr + log


def test_fast_dev_run_is_a_smoke_test(tiny_cfg, monkeypatch):
    """A few batches, the exemplars of those batches only, no checkpoint and no exemplar bank."""
    from tpt_aqa.scoring import stage as score_stage

    encoded = []
    original = score_stage.row_loader

    def counting(dm, rows):
        encoded.append(len(rows))
        return original(dm, rows)

    monkeypatch.setattr(score_stage, "row_loader", counting)
    cfg = tiny_cfg("debug=fast_dev_run", "dataset.eval_batch_size=2", "dataset.num_exemplars=3")
    results = train_entry.run(cfg)
    assert encoded and max(encoded) <= 2 * 3  # one batch of 2 videos × M=3 exemplars
    assert results["checkpoint"] == "" and "bank_mib" not in results
    assert not list(Path(cfg.paths.output_dir).rglob("*.ckpt"))


def test_without_test_videos_validation_is_labelled_as_such(tmp_path, caplog):
    """No test rows: the run says so, and results.json never presents validation as test."""
    cfg = _exported_features_cfg(tmp_path, num_test=0, extra=("dataset.val_fraction=0.25",))
    with caplog.at_level("WARNING"):
        results = train_entry.run(cfg)
    assert "there is no test split" in caplog.text
    saved = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())
    assert saved["evaluated_split"] == "val" and "val/srcc" in saved
    assert not any(k.startswith("test/") for k in saved)
    assert saved["predictions"]["split"] == "val"
    dm = build_datamodule(cfg)
    assert sorted(saved["predictions"]["ids"]) == sorted(
        dm.table.ids[r] for r in dm.table.rows("val")
    )
    assert results["checkpoint"].endswith(".ckpt")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.num_queries=0", "config error: model.num_queries=0: must be an integer >= 1"),
        ("model.num_groups=6", "config error: model.num_groups=6: must be an even power of two"),
    ],
)
def test_cli_config_errors_are_one_line(tmp_path, override, message):
    proc = run_cli(tmp_path, override)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr


@pytest.mark.slow
def test_default_synthetic_training_reaches_target(tmp_path):
    """The README's `make train` number: test Spearman >= 0.90 on the embedded default."""
    cfg = compose_cfg(tmp_path, "callbacks.progress_bar=null")
    results = train_entry.run(cfg)
    assert results["test/srcc"] >= 0.90


@pytest.mark.parametrize(
    ("total", "limit", "devices", "batch", "accumulate"),
    [
        (24, None, 1, 24, 1),
        (24, 3, 1, 3, 8),
        (24, 3, 8, 3, 1),
        (24, 5, 2, 4, 3),
        (24, 16, 2, 12, 1),
    ],
)
def test_global_batch_is_kept_across_devices(tiny_cfg, total, limit, devices, batch, accumulate):
    cfg = tiny_cfg(f"global_batch_size={total}", f"max_device_batch_size={limit or 'null'}")
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False
    )
    dm = type("DM", (), {"batch_size": None})()
    apply_global_batch(cfg, trainer, dm)
    assert (dm.batch_size, trainer.accumulate_grad_batches) == (batch, accumulate)
    assert dm.batch_size * trainer.accumulate_grad_batches * devices == total


def test_global_batch_must_split_over_devices(tiny_cfg):
    cfg = tiny_cfg()
    cfg.global_batch_size = 24
    trainer = L.Trainer(accelerator="cpu", devices=5, strategy="ddp", logger=False)
    with pytest.raises(ConfigError, match="global_batch_size=24 does not split over 5 devices"):
        apply_global_batch(cfg, trainer, object())


def test_the_datamodule_takes_one_devices_share_of_the_global_batch(tmp_path):
    """The paper experiments: 24 pairs per step, at most 3 per device (the release's 3 × 8 GPUs)."""
    cfg = compose_cfg(tmp_path, "experiment=mtl_aqa_tpt", f"dataset.root={tmp_path}")
    assert split_batch(cfg, 1) == (3, 8) and split_batch(cfg, 8) == (3, 1)
    dm = build_datamodule(compose_cfg(tmp_path, *TINY))  # global_batch_size=6 on one device
    assert dm.batch_size == 6


@pytest.mark.parametrize(
    "override", ["+dataset.batch_size=3", "+trainer.accumulate_grad_batches=2"]
)
def test_replaced_batch_keys_are_refused_with_the_key_to_use(tiny_cfg, override):
    key = override.split("=")[0].lstrip("+")
    with pytest.raises(
        ConfigError, match=rf"{key} is no longer a setting.*pass global_batch_size="
    ):
        validate_train_config(tiny_cfg(override))
    # typed without "+": the command line names it, not a near miss (dataset.eval_batch_size)
    message = check_command_line("train", [override.lstrip("+")])
    assert message.startswith(f"{key} is no longer a setting") and "eval_batch_size" not in message


def test_global_batch_size_is_required_for_training(tiny_cfg):
    with pytest.raises(ConfigError, match="global_batch_size=None: must be an integer >= 1"):
        validate_train_config(tiny_cfg("global_batch_size=null"))
    validate_config(tiny_cfg("global_batch_size=null"))  # a checkpoint's config may lack it


def test_reports_last_epoch_and_paper_style_best(tiny_cfg):
    results = train_entry.run(tiny_cfg("trainer.max_epochs=3", "dataset.test_every_epoch=true"))
    assert results["checkpoint"].endswith(".ckpt") and "epoch" in results["checkpoint"]
    # the selected checkpoint's test ρ is one of the per-epoch test values, so the best of them
    # (picked on the test split, as the release reported) can only be higher or equal
    assert results["paper_style_best_test/srcc"] >= results["test/srcc"] - 1e-6
    assert results["paper_style_best_test/rl2"] <= results["test/rl2"] + 1e-6
    assert {"last_epoch_test/srcc", "last_epoch_test/rl2"} <= set(results)


@pytest.mark.slow
def test_resume_gives_the_same_run(tmp_path):
    """Stopped after epoch 2 and resumed from its checkpoint == an uninterrupted 3-epoch run."""
    tiny = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    whole = train_entry.run(compose_cfg(tmp_path / "whole", *tiny, "trainer.max_epochs=3"))
    first = compose_cfg(tmp_path / "first", *tiny, "trainer.max_epochs=2")
    train_entry.run(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = train_entry.run(
        compose_cfg(tmp_path / "second", *tiny, "trainer.max_epochs=3", f"ckpt_path={last}")
    )
    for key in ("last_epoch_test/srcc", "last_epoch_test/rl2", "test/srcc", "best_val_srcc"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-6), key


def test_cli_refuses_plain_ddp_in_a_local_multirun(tmp_path):
    proc = run_module(
        "train",
        "-m",
        f"hydra.sweep.dir={tmp_path}",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "seed=1,2",
    )
    assert proc.returncode == 2
    assert "config error: trainer.strategy=ddp inside a local multirun" in proc.stderr


def _exported_features_cfg(tmp_path, num_test: int, extra: tuple[str, ...] = ()):
    """A one-epoch tiny TPT on the synthetic benchmark exported to ``tmp_path/features``."""
    from tpt_aqa.data.synthetic import FeatureSettings, export_features, generate

    data = generate(FeatureSettings(num_train=40, num_test=num_test, num_clips=20, feature_dim=16))
    export_features(data, tmp_path / "features")
    return compose_cfg(
        tmp_path,
        *TINY_MODEL,
        "experiment=features_tpt",
        f"dataset.root={tmp_path / 'features'}",
        "dataset.feature_dim=16",
        "dataset.delta_cap=10",
        *extra,
        "trainer.max_epochs=1",
    )
