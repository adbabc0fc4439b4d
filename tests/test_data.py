"""Exemplar pairing, validation carve, the synthetic benchmark and the features format."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch

from tpt_aqa.config import ConfigError
from tpt_aqa.data import (
    EvalBatch,
    ExemplarPairSampler,
    FeaturesDataModule,
    PairBatch,
    SyntheticDataModule,
    choose_eval_exemplars,
)
from tpt_aqa.data.base import auto_workers
from tpt_aqa.data.batch import collate_videos
from tpt_aqa.data.features import FeatureDataError
from tpt_aqa.data.samplers import difficulty_groups, draw_exemplars
from tpt_aqa.data.synthetic import FeatureSettings, export_features, generate

GROUPS = np.array([0, 0, 0, 1, 1, 2, 0, 1, 3, 3])


def test_draw_exemplars_same_group_never_itself():
    rng = np.random.default_rng(0)
    for _ in range(50):
        partner = draw_exemplars(GROUPS, rng)
        assert (GROUPS[partner] == GROUPS).all()
        alone = GROUPS == 2
        assert (partner[alone] == np.flatnonzero(alone)).all()  # alone: paired with itself
        assert (partner[~alone] != np.flatnonzero(~alone)).all()


def test_draw_exemplars_uniform_over_the_others():
    rng = np.random.default_rng(1)
    counts = np.zeros(len(GROUPS))
    for _ in range(3000):
        counts[draw_exemplars(GROUPS, rng)[0]] += 1
    # row 0's group-0 partners are rows 1, 2 and 6, each with probability 1/3
    assert counts[[1, 2, 6]].min() > 900 and counts.sum() == counts[[1, 2, 6]].sum()


def test_pair_sampler_is_a_function_of_seed_and_epoch():
    rows = np.arange(100, 110)
    sampler = ExemplarPairSampler(rows, GROUPS, seed=5)
    sampler.set_epoch(0)
    first = list(sampler)
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert sorted(q for q, _ in first) == list(rows)
    group_of = dict(zip(rows, GROUPS, strict=True))
    assert all(group_of[q] == group_of[e] for q, e in first)


def test_pair_sampler_shards_over_ranks():
    rows = np.arange(10)
    shards = []
    for rank in range(2):
        s = ExemplarPairSampler(rows, GROUPS, num_replicas=2, rank=rank, seed=3)
        s.set_epoch(4)
        shards.append(list(s))
    queries = [q for shard in shards for q, _ in shard]
    assert sorted(queries) == list(rows)  # 10 rows over 2 ranks: no padding, no duplicate
    single = ExemplarPairSampler(rows, GROUPS, seed=3)
    single.set_epoch(4)
    partner = dict(single)
    # every rank draws the same exemplars as a single process would
    assert all(partner[q] == e for shard in shards for q, e in shard)


def test_eval_exemplars_fixed_same_group_all_when_few():
    pool = np.arange(10)
    queries = np.array([0, 1, 2, 3])
    a = choose_eval_exemplars(queries, pool, GROUPS, 3, np.random.default_rng(9))
    b = choose_eval_exemplars(queries, pool, GROUPS, 3, np.random.default_rng(9))
    assert (a == b).all()
    assert set(a[0]) <= {0, 1, 2, 6} and len(set(a[0])) == 3
    assert list(a[2]) == [5, -1, -1]  # group 2 has one training member: use it, pad the rest
    assert list(a[3]) == [8, 9, -1]
    with pytest.raises(ValueError, match="exemplar group 7"):
        choose_eval_exemplars(np.array([7]), pool, GROUPS, 3, np.random.default_rng(0))


def small_synthetic(**kwargs) -> SyntheticDataModule:
    args = dict(num_train=60, num_test=20, feature_dim=8, batch_size=4, eval_batch_size=5)
    args.update(kwargs)
    return SyntheticDataModule(**args)


def test_synthetic_is_deterministic_and_phases_are_ordered():
    settings = FeatureSettings(num_train=20, num_test=5, seed=3)
    a, b = generate(settings), generate(settings)
    assert np.array_equal(a.videos, b.videos) and np.array_equal(a.raw, b.raw)
    other = generate(replace(settings, seed=4))
    assert not np.array_equal(a.videos, other.videos)
    assert (np.diff(a.phases, axis=1) >= 0).all()  # phases follow each other in time
    assert (a.phases[:, 0] == 0).all() and (a.phases[:, -1] == 4).all()
    assert ((a.phases[:, :, None] == np.arange(5)).sum(1) >= 2).all()  # min_phase_len


def test_synthetic_hard_variant_settings():
    """dataset=synthetic_hard (docs/parsing.md): 4 phases of widely varying length, one negative
    weight with the scores still in [0, 10], a per-video offset with nothing along the quality
    direction; the settings come from its config, and the default's stream is untouched."""
    from tpt_aqa.config import dataset_settings

    hard = dataset_settings("synthetic_hard")
    assert hard["num_phases"] == 4 and min(hard["phase_weights"]) < 0 < hard["nuisance"]
    assert dataset_settings("synthetic") == vars(FeatureSettings())  # one home of the defaults
    d = generate(FeatureSettings(**{**hard, "num_train": 300, "num_test": 100}))
    lengths = (d.phases[:, :, None] == np.arange(4)).sum(1)  # (N, 4) clips per phase
    assert lengths.min() == 2 and lengths.max() >= 12 and (lengths.std(0) > 2).all()
    assert d.raw.min() >= 0 and d.raw.max() <= 10
    # judge: s = 10·(q·w − Σ_{w<0} w)/Σ|w|; with q = (1, 0, 1, 0) and w = (1, 2, −1.5, 1.5):
    # 10·(1 − 1.5 + 1.5)/6 = 10/6
    s = FeatureSettings(**{**hard, "judge_noise": 0.0})
    raw, _ = s.judge(np.random.default_rng(0), np.array([[1.0, 0.0, 1.0, 0.0]]))
    assert raw[0] == pytest.approx(10 / 6)
    # the offset shifts every clip of a video alike: clip differences within a phase carry none
    calm = generate(FeatureSettings(**{**hard, "num_train": 300, "num_test": 100, "nuisance": 0}))
    assert np.array_equal(calm.phases, d.phases) and np.array_equal(calm.raw, d.raw)
    offset = (d.videos - calm.videos).astype(np.float64)  # (N, T, C)
    assert np.allclose(offset, offset[:, :1], atol=1e-5)
    with pytest.raises(ValueError, match=r"dataset\.phase_concentration"):
        FeatureSettings(phase_concentration=0)


def test_setup_carves_validation_and_fixes_exemplars():
    dm = small_synthetic(val_fraction=0.2, seed=1)
    dm.setup()
    t = dm.table
    assert (len(t.rows("train")), len(t.rows("val")), len(t.rows("test"))) == (48, 12, 20)
    for split in ("val", "test"):
        ex = dm.eval_exemplars[split]
        assert ex.shape == (len(t.rows(split)), 10)
        real = ex[ex >= 0]
        assert set(t.split[real]) == {"train"}
        assert (t.group[ex] == t.group[t.rows(split)][:, None])[ex >= 0].all()
    again = small_synthetic(val_fraction=0.2, seed=1)
    again.setup()
    assert (again.table.split == t.split).all()
    assert (again.eval_exemplars["test"] == dm.eval_exemplars["test"]).all()
    other = small_synthetic(val_fraction=0.2, seed=2)
    other.setup()
    assert not (other.table.split == t.split).all()


def test_no_validation_when_fraction_is_zero():
    dm = small_synthetic(val_fraction=0.0)
    dm.setup()
    assert not dm.has_val and len(dm.table.rows("train")) == 60


def test_loaders_yield_typed_batches():
    dm = small_synthetic()
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, PairBatch)
    assert batch.query.video.shape == (4, 20, 8)
    assert (batch.query.group == batch.exemplar.group).all()
    assert (batch.query.index != batch.exemplar.index).all()
    assert torch.equal(
        batch.query.scale, torch.as_tensor(dm.table.scale[batch.query.index], dtype=torch.float32)
    )
    ev = next(iter(dm.test_dataloader()))
    assert isinstance(ev, EvalBatch)
    rows = ev.exemplar_index
    expected = torch.as_tensor(dm.table.target, dtype=torch.float32)[rows.clamp_min(0)] * (
        rows >= 0
    )
    assert torch.equal(ev.exemplar_target, expected)
    assert (ev.query.clip_labels >= 0).all()


def write_features(root, rows, shape=(6, 4), dtype=np.float32):
    root.mkdir(parents=True, exist_ok=True)
    for r in rows:
        np.save(
            root / f"{r['id']}.npy", np.random.default_rng(0).standard_normal(shape).astype(dtype)
        )
    with open(root / "annotations.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def feature_rows(n=8):
    return [
        {"id": f"v{i}", "score": str(10 + i), "split": "train" if i < 6 else "test", "group": "a"}
        for i in range(n)
    ]


def features_dm(root, **kwargs):
    return FeaturesDataModule(root=str(root), feature_dim=4, val_fraction=0.0, **kwargs)


def test_features_dataset_reads_folder(tmp_path):
    rows = feature_rows()
    rows[0]["scale"], rows[0]["class"] = "2.5", "x"
    write_features(tmp_path, rows, dtype=np.float16)
    dm = features_dm(tmp_path)
    dm.setup()
    assert dm.num_clips == 6 and dm.table.scale[0] == 2.5 and dm.table.scale[1] == 1.0
    assert dm.table.target[3] == 13.0
    assert dm.load_video(0, "train").dtype == torch.float32


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda root, rows: (root / "v3.npy").unlink(), r"v3\.npy not found"),
        (
            lambda root, rows: np.save(root / "v2.npy", np.zeros((6, 5), np.float32)),
            r"v2\.npy: has C=5",
        ),
        (
            lambda root, rows: np.save(root / "v2.npy", np.zeros((7, 4), np.float32)),
            r"v2\.npy: has T=7",
        ),
        (
            lambda root, rows: np.save(root / "v1.npy", np.zeros((6, 4), np.int64)),
            r"v1\.npy: expected a float32",
        ),
        (
            lambda root, rows: np.save(root / "v4.npy", np.full((6, 4), np.nan, np.float32)),
            r"v4\.npy: contains NaN or infinite values",
        ),
        (
            lambda root, rows: np.save(root / "v1.npy", np.zeros(6, np.float32)),
            r"v1\.npy: expected a float32",
        ),
        (lambda root, rows: (root / "v1.npy").write_text("junk"), r"v1\.npy: not a readable"),
    ],
)
def test_features_file_errors_name_the_file(tmp_path, mutate, message):
    rows = feature_rows()
    write_features(tmp_path, rows)
    mutate(tmp_path, rows)
    with pytest.raises(FeatureDataError, match=message):
        features_dm(tmp_path).setup()


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("split", "dev", r"line 4 \(id 'v2'\): unknown split 'dev'"),
        ("score", "high", r"line 4 \(id 'v2'\): score 'high' is not a finite number"),
        ("score", "nan", r"line 4 \(id 'v2'\): score 'nan' is not a finite number"),
        ("id", "v1", r"line 4 \(id 'v1'\): duplicated id"),
    ],
)
def test_features_table_errors_name_the_row(tmp_path, column, value, message):
    rows = feature_rows()
    write_features(tmp_path, rows)
    rows[2][column] = value
    write_features(tmp_path, rows)
    with pytest.raises(FeatureDataError, match=message):
        features_dm(tmp_path).setup()


def test_features_missing_column_and_table(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "score"} for r in feature_rows()]
    write_features(tmp_path, rows)
    with pytest.raises(FeatureDataError, match=r"missing column\(s\) \['score'\]"):
        features_dm(tmp_path).setup()
    with pytest.raises(FeatureDataError, match=r"annotation table .*other\.csv not found"):
        features_dm(tmp_path, annotations="other.csv").setup()


def test_synthetic_export_round_trip(tmp_path):
    syn = small_synthetic(val_fraction=0.0)
    syn.setup()
    export_features(syn.data, tmp_path)
    dm = FeaturesDataModule(root=str(tmp_path), feature_dim=8, val_fraction=0.0)
    dm.setup()
    assert dm.table.ids == syn.table.ids
    assert np.allclose(dm.table.target, syn.table.target, atol=1e-6)
    assert np.allclose(dm.table.scale, syn.table.scale)
    assert (dm.table.split == syn.table.split).all()
    assert (dm.table.group == syn.table.group).all()  # names dd2 < dd2.6 < dd3.2 sort like ids
    for row in (0, 17, 79):
        assert torch.equal(dm.load_video(row, "test"), syn.load_video(row, "test"))
        assert torch.equal(dm.clip_labels(row), syn.clip_labels(row))  # {id}.steps.npy


def test_export_synthetic_command_writes_the_generated_benchmark(tmp_path, capsys):
    from tpt_aqa import export_synthetic

    args = ["--num-train", "6", "--num-test", "3", "--num-clips", "10", "--feature-dim", "5"]
    export_synthetic.main([str(tmp_path), *args, "--seed", "2"])
    assert "wrote 9 videos (6 train, 3 test)" in capsys.readouterr().out
    want = generate(FeatureSettings(num_train=6, num_test=3, num_clips=10, feature_dim=5, seed=2))
    dm = FeaturesDataModule(root=str(tmp_path), feature_dim=5, val_fraction=0.0)
    dm.setup()
    assert np.allclose(dm.table.target, want.table().target, atol=1e-5)
    assert torch.equal(dm.load_video(8, "test"), torch.as_tensor(want.videos[8]))
    with pytest.raises(SystemExit):  # 5 phases of ≥ 2 clips need 10 clips: a usage error
        export_synthetic.main([str(tmp_path / "bad"), "--num-clips", "4"])
    assert "5 phases of at least 2 clips do not fit in 4 clips" in capsys.readouterr().err
    export_synthetic.main([str(tmp_path / "hard"), "--dataset", "synthetic_hard", *args])
    assert "of dataset=synthetic_hard" in capsys.readouterr().out
    hard = export_synthetic.dataset_settings("synthetic_hard")
    small = {"num_train": 6, "num_test": 3, "num_clips": 10, "feature_dim": 5}
    want = generate(FeatureSettings(**{**hard, **small}))
    assert np.array_equal(np.load(tmp_path / "hard" / "synthetic_00004.npy"), want.videos[4])


def test_features_step_labels(tmp_path):
    """{id}.steps.npy: per clip (T) or per frame (a multiple of T), the same length for all;
    a video without a file reads −1 (unknown); each fault names the file."""
    rows = feature_rows()
    write_features(tmp_path, rows)  # T = 6
    dm = features_dm(tmp_path)
    dm.setup()
    assert dm.clip_labels(0) is None and (dm.sample(0, "train")["clip_labels"] == -1).all()
    np.save(tmp_path / "v0.steps.npy", np.array([0, 0, 1, 1, 2, 2]))
    np.save(tmp_path / "v7.steps.npy", np.full(6, -1))
    dm = features_dm(tmp_path)
    dm.setup()
    assert dm.clip_labels(0).tolist() == [0, 0, 1, 1, 2, 2]
    assert dm.clip_labels(3).tolist() == [-1] * 6 and dm.clip_labels(7).tolist() == [-1] * 6
    bad = {
        "v1": (np.array([0, 1, 2]), r"has 3 labels for T=6 clips"),
        "v2": (np.zeros(6), r"float64 array of shape \(6,\), not 1-D integers"),
        "v3": (np.array([0, 0, 1, -1, 2, 2]), r"−1 for every entry"),
        "v4": (
            np.zeros(12, dtype=np.int64),
            r"has 12 labels where the other videos' step files have 6",
        ),
    }
    for vid, (labels, message) in bad.items():
        np.save(tmp_path / f"{vid}.steps.npy", labels)
        with pytest.raises(FeatureDataError, match=rf"{vid}\.steps\.npy: .*{message}"):
            features_dm(tmp_path).setup()
        (tmp_path / f"{vid}.steps.npy").unlink()
    # per frame: two frames a clip for every labelled video
    np.save(tmp_path / "v0.steps.npy", np.repeat([0, 0, 1, 1, 2, 2], 2))
    np.save(tmp_path / "v7.steps.npy", np.full(12, -1))
    dm = features_dm(tmp_path)
    dm.setup()
    assert len(dm.clip_labels(0)) == 12 and dm.clip_labels(5).tolist() == [-1] * 12


def test_export_synthetic_refuses_to_overwrite_or_misuse_its_target(tmp_path, capsys):
    from tpt_aqa import export_synthetic

    small = ["--num-train", "4", "--num-test", "2", "--num-clips", "10", "--feature-dim", "3"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "annotations.csv").write_text("my own table\n")

    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            export_synthetic.main(list(argv))
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    err = refused(str(mine), *small)
    assert f"OUT_DIR {mine} is not empty (annotations.csv): pass --force" in err
    assert (mine / "annotations.csv").read_text() == "my own table\n"  # untouched
    assert sorted(p.name for p in mine.iterdir()) == ["annotations.csv"]
    export_synthetic.main([str(mine), *small, "--force"])  # asked for: written into
    assert len(list(mine.glob("*.steps.npy"))) == 6  # the phases, one file per video
    assert len(list(mine.glob("*.npy"))) == 12  # and the features
    assert (mine / "annotations.csv").read_text().startswith("id,score,split")
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert f"OUT_DIR {afile} is a file" in refused(str(afile), *small)
    assert f"is below {afile}, which is a file" in refused(str(afile / "out"), *small)
    assert "argument --num-train: must be >= 1, got -5" in refused(
        str(tmp_path / "n"), "--num-train", "-5"
    )
    assert "argument --feature-dim: expected an integer, got 'x'" in refused(
        str(tmp_path / "n"), "--feature-dim", "x"
    )
    assert not (tmp_path / "n").exists()  # nothing written for a refused command


def test_features_spreadsheet_csv_and_float64_files(tmp_path, caplog):
    """A CSV with a UTF-8 byte-order mark (what spreadsheet programs write) reads like any other;
    float64 arrays are cast to float32 with an info line."""
    rows = feature_rows()
    write_features(tmp_path, rows)
    text = (tmp_path / "annotations.csv").read_text()
    (tmp_path / "annotations.csv").write_text(text, encoding="utf-8-sig")
    np.save(tmp_path / "v1.npy", np.ones((6, 4), np.float64))
    dm = features_dm(tmp_path)
    with caplog.at_level("INFO", logger="tpt_aqa"):
        dm.setup()
    assert dm.table.ids[0] == "v0" and dm.load_video(1, "train").dtype == torch.float32
    assert "1 of 8 feature files in" in caplog.text and "float64: cast to float32" in caplog.text


def test_groups_of_one_training_video_are_named(tmp_path):
    rows = feature_rows()
    for i, r in enumerate(rows):
        r["group"] = f"g{i % 6}"  # six groups, one training video each
    write_features(tmp_path, rows)
    with pytest.raises(
        ConfigError,
        match=r"every exemplar group has a single training video "
        r"\(g0, g1, g2, g3, g4 and 1 more\).*group column of .*annotations\.csv",
    ):
        features_dm(tmp_path).setup()


def test_auto_workers_share_the_cpus_between_devices():
    assert auto_workers(16, 1) == 15  # one core left to the main process
    assert auto_workers(16, 4) == 3  # 4 cores per device, less its main process
    assert auto_workers(3, 8) == 0  # fewer cores than devices: load in the main process
    assert auto_workers(8, 0) == 7
    assert auto_workers(10, 8, bound=True) == 9  # SLURM: the process's 10 cores are its own


def test_loader_settings_follow_the_config(monkeypatch):
    dm = small_synthetic(num_workers=0)
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.num_workers == 0 and not loader.persistent_workers
    assert loader.pin_memory == torch.cuda.is_available()  # no trainer: pinned when CUDA is there
    monkeypatch.setattr("tpt_aqa.data.base.available_cpus", lambda: 5)
    dm = small_synthetic(num_workers="auto", pin_memory=True)
    dm.setup()
    for loader in (dm.train_dataloader(), dm.test_dataloader(), dm.rows_dataloader([0], "test")):
        assert loader.num_workers == 4 and loader.persistent_workers and loader.pin_memory
    dm = small_synthetic(num_workers=2, persistent_workers=False, pin_memory=False)
    dm.setup()
    loader = dm.test_dataloader()
    assert loader.num_workers == 2 and not loader.persistent_workers and not loader.pin_memory
    for bad in (-1, "many", 1.5, True):
        with pytest.raises(ConfigError, match=r"dataset\.num_workers=.*integer >= 0 .*or auto"):
            small_synthetic(num_workers=bad)


def test_difficulty_groups_round_to_one_decimal():
    group, names = difficulty_groups(np.array([3.2, 16 / 5, 2.0, 3.6, 3.24]))
    assert group.tolist() == [1, 1, 0, 2, 1] and names == ["dd2", "dd3.2", "dd3.6"]


def _pair_batch(n: int = 3):
    def videos(offset: int):
        return collate_videos(
            [
                {
                    "video": torch.full((4, 2), float(i + offset)),
                    "target": i + 0.5,
                    "scale": 1.0,
                    "group": 0,
                    "class_id": 0,
                    "index": i + offset,
                    "clip_labels": torch.full((4,), -1),
                }
                for i in range(n)
            ]
        )

    return PairBatch(query=videos(0), exemplar=videos(10))


def test_batches_are_pinned_and_moved_tensor_by_tensor(monkeypatch):
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from torch.utils.data._utils.pin_memory import pin_memory

    batch = _pair_batch()
    pinned = []
    # Pinning needs an accelerator: record which tensors the loader's pin_memory reaches instead.
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t) or t.clone())
    out = pin_memory(batch)
    assert isinstance(out, PairBatch) and len(pinned) == 14  # 7 fields × query and exemplar
    assert (
        torch.equal(out.exemplar.index, batch.exemplar.index)
        and out.query.video is not batch.query.video
    )
    moved = move_data_to_device(batch, torch.device("cpu"))  # Lightning's transfer: one .to call
    assert isinstance(moved, PairBatch) and torch.equal(moved.query.video, batch.query.video)
    evaluation = EvalBatch(batch.query, torch.tensor([[1, -1]] * 3), torch.zeros(3, 2))
    assert torch.equal(evaluation.to("cpu").exemplar_index, evaluation.exemplar_index)
