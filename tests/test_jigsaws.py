"""JIGSAWS: both annotation forms, folds, linspace clips from AVIs and frame folders, errors,
``check_sample``, training end to end and on a feature cache, and the fold pooling script."""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tpt_aqa import extract_features
from tpt_aqa import train as train_entry
from tpt_aqa.benchmarks.frames import textured_frames
from tpt_aqa.core.cache import CacheMismatchError
from tpt_aqa.data.jigsaws import (
    JIGSAWSDataError,
    parse_meta_file,
    seeded_folds,
    surgeon_folds,
)
from tpt_aqa.data.video import (
    VideoReadError,
    read_frame_folder,
    read_video_file,
    write_frame_folder,
)
from tpt_aqa.scoring.metrics import spearman

from .conftest import TINY_MODEL, compose_cfg

TASK = "Knot_Tying"
SURGEONS = "BCDEFGHI"
# Surgeon B has two trials, the others one: folds by surgeon then differ in size.
TRIALS = [f"{TASK}_B001", f"{TASK}_B002"] + [f"{TASK}_{s}001" for s in SURGEONS[1:]]
NUM_VIDEO_FRAMES = 40
HEIGHT, WIDTH = 48, 64
DATA = [  # 2 clips of 8 frames, 32² crops, no workers
    "dataset=jigsaws",
    f"dataset.task={TASK}",
    "dataset.sampler.num_clips=2",
    "dataset.train_transform.crop_size=32",
    "dataset.test_transform.crop_size=32",
    "dataset.num_workers=0",
    "dataset.eval_batch_size=4",
]
SMALL = [*DATA, "model.num_queries=2", "global_batch_size=2"]  # train config only


# ---- fixtures in the real formats --------------------------------------------------------------
def subscores(i: int) -> list[int]:
    """Six GRS sub-scores (1–5) of trial ``i``."""
    return [1 + (7 * i + 3 * k + i * k) % 5 for k in range(6)]


def write_video(path: Path, frames: torch.Tensor, fps: int = 30) -> None:
    """Write uint8 ``(F, 3, H, W)`` frames as an MPEG-4 AVI with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[3], frames.shape[2], "yuv420p"
        for img in frames.permute(0, 2, 3, 1).numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def write_meta(root: Path, task: str, trials: list[str], lines: list[str] | None = None) -> Path:
    """``{root}/{task}/meta_file_{task}.txt`` in the distribution's tab-separated layout."""
    path = root / task / f"meta_file_{task}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if lines is None:
        lines = []
        for i, name in enumerate(trials):
            sub = subscores(i)
            skill = "NIE"[i % 3]
            lines.append(f"{name}\t\t{skill}\t{sum(sub)}\t" + "\t".join(map(str, sub)))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_pickles(root: Path, folds: dict[str, list[list[str]]], labels: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "splits.pkl", "wb") as f:
        pickle.dump(folds, f)
    with open(root / "label.pkl", "wb") as f:
        pickle.dump(labels, f)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """One 40-frame 48×64 AVI per trial, distinct textured frames."""
    folder = tmp_path_factory.mktemp("videos")
    for i, name in enumerate(TRIALS):
        frames = textured_frames(NUM_VIDEO_FRAMES, HEIGHT, WIDTH, seed=i)
        write_video(folder / f"{name}_capture1.avi", frames)
    return folder


def meta_root(tmp_path: Path, videos: Path) -> Path:
    """A copy of the original distribution: meta file + video folder (linked)."""
    root = tmp_path / "JIGSAWS"
    write_meta(root, TASK, TRIALS)
    (root / TASK / "video").symlink_to(videos, target_is_directory=True)
    return root


def linked_root(
    tmp_path: Path, videos: Path, replaced: str | None = None, frames: torch.Tensor | None = None
) -> Path:
    """A meta-file root whose videos are links to the fixture's, except ``replaced``."""
    root = tmp_path / "JIGSAWS"
    write_meta(root, TASK, TRIALS)
    folder = root / TASK / "video"
    folder.mkdir(parents=True)
    for name in TRIALS:
        if name == replaced:
            write_video(folder / f"{name}_capture1.avi", frames)
        else:
            (folder / f"{name}_capture1.avi").symlink_to(videos / f"{name}_capture1.avi")
    return root


PICKLE_FOLDS = [TRIALS[0:3], TRIALS[3:5], TRIALS[5:7], TRIALS[7:9]]


def pickle_root(tmp_path: Path, videos: Path) -> Path:
    """The prepared form: splits.pkl + label.pkl (numpy sub-scores) + the video folder."""
    root = tmp_path / "prepared"
    labels = {name: np.array(subscores(i), dtype=np.float64) for i, name in enumerate(TRIALS)}
    labels["Suturing_B001"] = np.ones(6)  # other tasks share the label file
    write_pickles(root, {TASK: PICKLE_FOLDS, "Suturing": [["Suturing_B001"], [], [], []]}, labels)
    (root / TASK).mkdir()
    (root / TASK / "video").symlink_to(videos, target_is_directory=True)
    return root


def make_dm(tmp_path: Path, root: Path, *overrides: str, setup: bool = True):
    cfg = compose_cfg(tmp_path, *TINY_MODEL, *SMALL, f"dataset.root={root}", *overrides)
    dm = instantiate(cfg.dataset)
    if setup:
        dm.setup()
    return dm


def raises(error: type[Exception], match: str, fn, *args) -> Exception:
    """``fn(*args)`` raises ``error`` (maybe wrapped by Hydra) with ``match`` in its message."""
    with pytest.raises(Exception) as info:
        fn(*args)
    err: BaseException | None = info.value
    while err is not None and not isinstance(err, error):
        err = err.__cause__
    assert err is not None, f"expected {error.__name__}, got {info.value!r}"
    assert match in str(err), f"{match!r} not in {err}"
    return err


# ---- annotations and folds ---------------------------------------------------------------------
def test_meta_table_scores_and_surgeon_folds(tmp_path, videos):
    root = meta_root(tmp_path, videos)
    tables = []
    for fold in range(4):
        dm = make_dm(tmp_path, root, f"dataset.fold={fold}", "dataset.val_fraction=0")
        t = dm.table
        assert dm.format_used == "meta" and t.ids == sorted(TRIALS)
        want = {name: sum(subscores(i)) for i, name in enumerate(TRIALS)}
        assert t.target.tolist() == [want[i] for i in t.ids]  # score = sum of the sub-scores
        assert np.array_equal(dm.subscores.sum(1), t.target)
        assert (t.scale == 1).all() and (t.group == 0).all() and (t.class_id == 0).all()
        assert t.class_names == [TASK] and t.group_names == [TASK]
        # surgeon letters sorted B..I, surgeon i → fold i % 4: fold 0 tests B and F
        test_surgeons = {name.split("_")[-1][0] for name in np.array(t.ids)[t.rows("test")]}
        assert test_surgeons == {SURGEONS[fold], SURGEONS[fold + 4]}
        tables.append(set(np.array(t.ids)[t.rows("test")]))
    assert len(tables[0]) == 3 and all(len(s) == 2 for s in tables[1:])
    assert set().union(*tables) == set(TRIALS) and sum(map(len, tables)) == len(TRIALS)


def test_pickle_table_fold_f_is_the_test_fold(tmp_path, videos):
    root = pickle_root(tmp_path, videos)
    for fold in range(4):
        dm = make_dm(tmp_path, root, f"dataset.fold={fold}", "dataset.val_fraction=0")
        t = dm.table
        assert dm.format_used == "pickle" and sorted(t.ids) == sorted(TRIALS)
        assert sorted(np.array(t.ids)[t.rows("test")]) == sorted(PICKLE_FOLDS[fold])
        assert len(t.rows("train")) == len(TRIALS) - len(PICKLE_FOLDS[fold])
        want = {name: sum(subscores(i)) for i, name in enumerate(TRIALS)}
        assert t.target.tolist() == [want[i] for i in t.ids]
    # both forms present: auto prefers the pickles, annotation_format picks explicitly
    write_meta(root, TASK, TRIALS)
    assert make_dm(tmp_path, root).format_used == "pickle"
    assert make_dm(tmp_path, root, "dataset.annotation_format=meta").format_used == "meta"


def test_meta_parsing_layouts_and_total_mismatch(tmp_path):
    path = write_meta(
        tmp_path,
        TASK,
        [],
        lines=[
            f"{TASK}_B001  N  13  2 2 2 2 2 3",
            "",  # blank lines are skipped
            f"{TASK}_C001 E 7 99 30 5 5 5 5 5 5",  # extra numeric columns: last six count
            f"{TASK}_D001\tI\t20\t3\t3\t3\t3\t3\t3",  # total 20 ≠ sum 18
        ],
    )
    with pytest.warns(UserWarning, match=r"line 4 \(Knot_Tying_D001: total 20, sum 18\)"):
        scores = parse_meta_file(path)
    assert list(scores) == [f"{TASK}_B001", f"{TASK}_C001", f"{TASK}_D001"]
    assert [s.sum() for s in scores.values()] == [13, 30, 18]  # the sum is used


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (f"{TASK}_C001 N 13 2 2 2 2", "line 2: expected a trial name"),
        ("13 2 2 2 2 2 3", "line 2: expected a trial name"),
        (f"{TASK}_C001 N 13 2 2 2 2 2 9", "line 2 (Knot_Tying_C001): GRS sub-scores"),
        (f"{TASK}_B001 N 12 2 2 2 2 2 2", "line 2: trial Knot_Tying_B001 is listed again"),
    ],
)
def test_malformed_meta_line_names_file_and_line(tmp_path, line, match):
    path = write_meta(tmp_path, TASK, [], lines=[f"{TASK}_B001 N 12 2 2 2 2 2 2", line])
    err = raises(JIGSAWSDataError, match, parse_meta_file, path)
    assert str(path) in str(err)


def test_fold_rules():
    trials = [f"S_{s}{r:03d}" for s in "BCDEFGHI" for r in range(1, 6)]
    folds = surgeon_folds(trials)
    want = [["B", "F"], ["C", "G"], ["D", "H"], ["E", "I"]]
    assert [sorted({t[2] for t in f}) for f in folds] == want
    seeded = seeded_folds(trials, seed=0)
    assert seeded == seeded_folds(list(reversed(trials)), seed=0)  # a function of the names
    assert seeded != seeded_folds(trials, seed=1)
    assert sorted(t for f in seeded for t in f) == sorted(trials)
    assert {len(f) for f in seeded} == {10}
    raises(JIGSAWSDataError, "meta_folds=seeded", surgeon_folds, ["S_B001", "S_C001", "S_D001"])
    raises(JIGSAWSDataError, "surgeon letter", surgeon_folds, ["trial_one"])


def test_meta_seeded_folds(tmp_path, videos):
    root = meta_root(tmp_path, videos)
    tests = [
        set(np.array(dm.table.ids)[dm.table.rows("test")])
        for dm in (
            make_dm(tmp_path, root, "dataset.meta_folds=seeded", f"dataset.fold={f}")
            for f in range(4)
        )
    ]
    assert set().union(*tests) == set(TRIALS) and sum(map(len, tests)) == len(TRIALS)
    assert sorted(map(len, tests)) == [2, 2, 2, 3]


def test_exemplars_from_training_deterministic_all_when_few(tmp_path, videos):
    root = meta_root(tmp_path, videos)
    dm = make_dm(tmp_path, root, "dataset.fold=1", "dataset.val_fraction=0.1")
    t = dm.table
    train = set(t.rows("train"))
    assert len(t.rows("val")) == 2  # ceil(0.1 × 7) = 1, raised to the 2 that ρ needs
    ex = dm.eval_exemplars["test"]
    for row, exemplars in zip(t.rows("test"), ex, strict=True):
        real = exemplars[exemplars >= 0]
        assert set(real) == train and row not in real  # M=10 > 6 members: all of them
    few_exemplars = ("dataset.fold=1", "dataset.num_exemplars=3", "dataset.val_fraction=0.1")
    few = make_dm(tmp_path, root, *few_exemplars)
    same = make_dm(tmp_path, root, *few_exemplars)
    other = make_dm(tmp_path, root, *few_exemplars, "seed=5")
    chosen = few.eval_exemplars["test"]
    assert np.array_equal(chosen, same.eval_exemplars["test"])  # fixed per seed
    assert (chosen >= 0).all() and set(chosen.ravel()) <= set(few.table.rows("train"))
    assert not np.array_equal(few.table.split, other.table.split) or not np.array_equal(
        chosen, other.eval_exemplars["test"]
    )


# ---- clips -------------------------------------------------------------------------------------
def test_default_sampling_is_160_frames_in_20_clips_of_8(tmp_path):
    cfg = compose_cfg(tmp_path, "dataset=jigsaws", "dataset.root=/tmp")
    sampler = instantiate(cfg.dataset.sampler)
    index = sampler.indices(2000)
    assert index.shape == (20, 8)
    assert np.array_equal(index.ravel(), np.floor(np.linspace(0, 1999, 160)).astype(int))
    assert index[0, 0] == 0 and index[-1, -1] == 1999 and (np.diff(index.ravel()) > 0).all()
    assert np.array_equal(sampler.indices(160), np.arange(160).reshape(20, 8))
    with pytest.raises(ValueError, match="needs at least 160 frames"):
        sampler.indices(159)
    transforms = [instantiate(cfg.dataset[k]) for k in ("train_transform", "test_transform")]
    assert all(t.crop_size == 224 and t.resize is None and not t.train for t in transforms)


def test_linspace_clips_from_an_avi(tmp_path, videos):
    root = linked_root(tmp_path, videos, TRIALS[0], textured_frames(200, HEIGHT, WIDTH, seed=7))
    dm = make_dm(tmp_path, root, "dataset.sampler.num_clips=4")
    row = dm.table.ids.index(TRIALS[0])
    clips = dm.load_video(row, "test")
    assert clips.shape == (4, 3, 8, 32, 32) and clips.dtype == torch.uint8
    want = np.floor(np.linspace(0, 199, 32)).astype(int).reshape(4, 8)
    assert np.array_equal(dm.clip_index(row), want)
    decoded = read_video_file(root / TASK / "video" / f"{TRIALS[0]}_capture1.avi", np.arange(200))
    top, left = (HEIGHT - 32) // 2, (WIDTH - 32) // 2
    for t in range(4):
        ref = decoded[want[t], :, top : top + 32, left : left + 32]  # (8, 3, 32, 32)
        assert torch.equal(clips[t].transpose(0, 1), ref)
    # every view is the same center crop (no random crop, no flip)
    assert torch.equal(dm.load_video(row, "train"), clips)
    assert torch.equal(dm.load_video(row, "exemplar"), clips)


def test_frame_folder_source(tmp_path):
    root = tmp_path / "JIGSAWS"
    write_meta(root, TASK, TRIALS)
    frames_root = tmp_path / "frames"
    for i, name in enumerate(TRIALS):
        write_frame_folder(
            frames_root / f"{name}_capture1",
            textured_frames(24, HEIGHT, WIDTH, seed=i),
            "{:04d}.jpg",
        )
    dm = make_dm(tmp_path, root, "dataset.source=frames", f"dataset.frames_root={frames_root}")
    row = dm.table.ids.index(TRIALS[2])
    clips = dm.load_video(row, "test")
    want = np.floor(np.linspace(0, 23, 16)).astype(int).reshape(2, 8)
    ref = read_frame_folder(frames_root / f"{TRIALS[2]}_capture1", want.ravel())
    top, left = (HEIGHT - 32) // 2, (WIDTH - 32) // 2
    ref = ref[:, :, top : top + 32, left : left + 32].reshape(2, 8, 3, 32, 32)
    assert torch.equal(clips, ref.transpose(1, 2))
    assert dm.video_settings()["source"] == "frames"
    # the default frames_root is {root}/frames
    (root / "frames").symlink_to(frames_root, target_is_directory=True)
    assert make_dm(tmp_path, root, "dataset.source=frames").load_video(row, "test").shape == (
        clips.shape
    )


# ---- errors ------------------------------------------------------------------------------------
def test_config_errors(tmp_path, videos):
    root = meta_root(tmp_path, videos)
    raises(JIGSAWSDataError, "dataset.task='Bogus'", make_dm, tmp_path, root, "dataset.task=Bogus")
    for fold in ("4", "-1"):
        raises(
            JIGSAWSDataError,
            f"dataset.fold={fold}",
            make_dm,
            tmp_path,
            root,
            f"dataset.fold={fold}",
        )
    raises(
        JIGSAWSDataError, "dataset.source='disk'", make_dm, tmp_path, root, "dataset.source=disk"
    )
    # case-insensitive task names resolve to the canonical one
    assert make_dm(tmp_path, root, "dataset.task=knot_tying").task == TASK


def test_data_errors(tmp_path, videos):
    root = meta_root(tmp_path, videos)
    raises(JIGSAWSDataError, "is not a folder", make_dm, tmp_path, tmp_path / "nowhere")
    raises(
        JIGSAWSDataError,
        "meta_file_Suturing.txt",
        make_dm,
        tmp_path,
        root,
        "dataset.task=Suturing",
    )
    raises(
        JIGSAWSDataError,
        "splits.pkl not found",
        make_dm,
        tmp_path,
        root,
        "dataset.annotation_format=pickle",
    )
    # the video template may be absolute
    (tmp_path / "video").symlink_to(videos, target_is_directory=True)
    template = f"dataset.video_template='{tmp_path}/video/{{trial}}_capture1.avi'"
    assert len(make_dm(tmp_path, root, template).table) == len(TRIALS)
    # a trial in the annotations without its video: named, with the fix
    write_meta(root, TASK, [*TRIALS, f"{TASK}_I005"])
    err = raises(VideoReadError, "1 of 10 Knot_Tying trials have no video", make_dm, tmp_path, root)
    assert f"{TASK}_I005_capture1.avi" in str(err) and "tpt_aqa.verify dataset=jigsaws" in str(err)
    # a video too short for the clips
    short = linked_root(tmp_path / "s", videos, TRIALS[0], textured_frames(10, HEIGHT, WIDTH))
    dm = make_dm(tmp_path, short)
    err = raises(VideoReadError, "needs at least 16 frames", dm.load_video, 0, "test")
    assert f"{TRIALS[0]}_capture1.avi" in str(err) and "tpt_aqa.prepare_frames" in str(err)


def test_pickle_errors(tmp_path, videos):
    root = pickle_root(tmp_path, videos)
    labels = {name: subscores(i) for i, name in enumerate(TRIALS)}
    write_pickles(root, {TASK: PICKLE_FOLDS[:3]}, labels)
    raises(JIGSAWSDataError, "expected a list of 4 folds, found 3", make_dm, tmp_path, root)
    write_pickles(root, {"Suturing": PICKLE_FOLDS}, labels)
    raises(JIGSAWSDataError, "has no folds for task Knot_Tying", make_dm, tmp_path, root)
    write_pickles(root, {TASK: [PICKLE_FOLDS[0], PICKLE_FOLDS[0], [], []]}, labels)
    raises(JIGSAWSDataError, "is in fold 0 and fold 1", make_dm, tmp_path, root)
    del labels[TRIALS[4]]
    write_pickles(root, {TASK: PICKLE_FOLDS}, labels)
    raises(JIGSAWSDataError, f"no sub-scores for trial {TRIALS[4]}", make_dm, tmp_path, root)
    labels[TRIALS[4]] = 17
    write_pickles(root, {TASK: PICKLE_FOLDS}, labels)
    raises(JIGSAWSDataError, "expected 6 GRS sub-scores, found 17", make_dm, tmp_path, root)
    with open(root / "label.pkl", "wb") as f:
        pickle.dump({TRIALS[0]: Path("x")}, f)  # not plain data: refused, never executed
    raises(JIGSAWSDataError, "refusing to unpickle", make_dm, tmp_path, root)


def test_check_sample_finds_planted_problems(tmp_path, videos):
    root = linked_root(tmp_path, videos)
    folder = root / TASK / "video"
    dm = make_dm(tmp_path, root)
    row = {name: i for i, name in enumerate(dm.table.ids)}
    assert dm.check_sample(row[TRIALS[0]]) == []
    (folder / f"{TRIALS[1]}_capture1.avi").unlink()
    (folder / f"{TRIALS[2]}_capture1.avi").unlink()
    (folder / f"{TRIALS[2]}_capture1.avi").write_bytes(b"not a video at all")
    (folder / f"{TRIALS[3]}_capture1.avi").unlink()
    write_video(folder / f"{TRIALS[3]}_capture1.avi", textured_frames(12, HEIGHT, WIDTH))
    [missing] = dm.check_sample(row[TRIALS[1]])
    assert f"{TRIALS[1]}_capture1.avi is missing" in missing and "tpt_aqa.prepare_frames" in missing
    [corrupt] = dm.check_sample(row[TRIALS[2]])
    assert "not a readable video" in corrupt and f"{TRIALS[2]}_capture1.avi" in corrupt
    [short] = dm.check_sample(row[TRIALS[3]])
    assert "too short" in short and "has 12" in short
    # frame folders: a truncated JPEG among the needed frames
    frames_root = tmp_path / "frames"
    for i, name in enumerate(TRIALS):
        write_frame_folder(
            frames_root / f"{name}_capture1", textured_frames(20, HEIGHT, WIDTH, seed=i)
        )
    (frames_root / f"{TRIALS[5]}_capture1" / "00019.jpg").write_bytes(b"\xff\xd8 truncated")
    dm = make_dm(tmp_path, root, "dataset.source=frames", f"dataset.frames_root={frames_root}")
    assert dm.check_sample(row[TRIALS[4]]) == []
    [bad] = dm.check_sample(row[TRIALS[5]])
    assert "frame 19 cannot be read" in bad and "00019.jpg" in bad


# ---- training ----------------------------------------------------------------------------------
def test_fast_dev_run_i3d(tmp_path, videos):
    root = meta_root(tmp_path, videos)
    cfg = compose_cfg(
        tmp_path,
        *TINY_MODEL,
        *SMALL,
        f"dataset.root={root}",
        "dataset.fold=2",
        "dataset.num_exemplars=2",
        "model/encoder=i3d",
        "debug=fast_dev_run",
    )
    results = train_entry.run(cfg)
    assert "test/srcc" in results and math.isfinite(results["test/rl2"])


def load_script():
    """The fold runner (``python -m tpt_aqa.run_jigsaws_folds``)."""
    return importlib.import_module("tpt_aqa.run_jigsaws_folds")


def test_feature_cache_training_and_predictions(tmp_path, videos):
    root = pickle_root(tmp_path, videos)
    out = tmp_path / "cache"
    cfg = compose_cfg(
        tmp_path, *DATA, f"dataset.root={root}", f"out_dir={out}", "dtype=float32", config="extract"
    )
    extract_features.run(cfg)
    assert len(list(out.glob("*.npy"))) == len(TRIALS)
    cached = [
        *TINY_MODEL,
        *SMALL,
        f"dataset.root={root}",
        "dataset.fold=3",
        "model/encoder=precomputed",
        f"dataset.features_root={out}",
        "dataset.video_template='gone/{trial}.avi'",  # a cache needs no videos
    ]
    assert "test/srcc" in train_entry.run(compose_cfg(tmp_path, *cached, "debug=fast_dev_run"))
    # one real epoch with a checkpoint: results.json carries the per-trial test predictions
    run_cfg = compose_cfg(
        tmp_path / "epoch",
        *cached,
        "trainer.max_epochs=1",
        "logger=none",
        "dataset.val_fraction=0.4",
    )
    results = train_entry.run(run_cfg)
    folder = Path(run_cfg.paths.output_dir)
    preds = json.loads((folder / "results.json").read_text())["predictions"]
    assert sorted(preds["ids"]) == sorted(PICKLE_FOLDS[3])
    pred, target = torch.tensor(preds["pred"]), torch.tensor(preds["target"])
    assert spearman(pred, target) == pytest.approx(results["test/srcc"], abs=1e-6)
    want = {name: sum(subscores(i)) for i, name in enumerate(TRIALS)}
    assert preds["target"] == [want[i] for i in preds["ids"]]
    bad = compose_cfg(tmp_path, *cached, "debug=fast_dev_run", "dataset.sampler.num_clips=3")
    with pytest.raises(CacheMismatchError, match=r"video\.sampler\.num_clips: cache has 2"):
        train_entry.run(bad)


# ---- fold pooling ------------------------------------------------------------------------------
def fake_run(out: Path, task: str, fold: int, seed: int, rng, with_predictions: bool) -> dict:
    folder = out / task / f"fold{fold}" / f"seed{seed}"
    folder.mkdir(parents=True)
    ids = [f"{task}_{'BCDE'[fold]}00{k}" for k in range(1, 6)]
    target = rng.integers(6, 31, size=5).astype(float)
    pred = target + rng.normal(0, 4, size=5)
    t, p = torch.tensor(target), torch.tensor(pred)
    rl2 = float(100 * (((p - t) / (t.max() - t.min())) ** 2).mean())
    results = {"checkpoint": None, "test/srcc": spearman(p, t), "test/rl2": rl2}
    if with_predictions:  # as a run with a validation split reports them
        results["last_epoch_test/srcc"] = results["test/srcc"] / 2
        results["last_epoch_test/rl2"] = rl2 * 2
    record = dict(results)
    if with_predictions:  # as tpt_aqa.train writes them into results.json
        record["predictions"] = {"ids": ids, "pred": pred.tolist(), "target": target.tolist()}
    (folder / "results.json").write_text(json.dumps(record))
    return {"ids": ids, "pred": pred, "target": target, **results}


def test_fold_aggregation_on_fake_results(tmp_path, capsys):
    script = load_script()
    out = tmp_path / "jigsaws"
    rng = np.random.default_rng(0)
    runs = {
        (task, seed): [fake_run(out, task, f, seed, rng, task != TASK) for f in range(4)]
        for task in ("Suturing", TASK)
        for seed in (12, 13)
    }
    summary = script.aggregate(script.load_runs(out))
    for (task, seed), folds in runs.items():
        entry = summary["tasks"][task]["seeds"][str(seed)]
        rhos = [f["test/srcc"] for f in folds]
        assert entry["srcc_fold_mean"] == pytest.approx(
            # ρ = 1 exactly can occur with 5 trials: fisher_z_mean clips it to 1 − 1e-12
            math.tanh(np.mean([math.atanh(min(r, 1 - 1e-12)) for r in rhos]))
        )
        assert entry["rl2_fold_mean"] == pytest.approx(np.mean([f["test/rl2"] for f in folds]))
        if task == TASK:  # no saved predictions: no pooled ρ
            assert math.isnan(entry["srcc_pooled"]) and entry["pooled_trials"] == 0
        else:
            pred = torch.tensor(np.concatenate([f["pred"] for f in folds]))
            target = torch.tensor(np.concatenate([f["target"] for f in folds]))
            assert entry["srcc_pooled"] == pytest.approx(spearman(pred, target))
            assert entry["pooled_trials"] == 20
    sut = summary["tasks"]["Suturing"]
    per_seed = [sut["seeds"][s]["srcc_fold_mean"] for s in ("12", "13")]
    assert sut["srcc_fold_mean"]["mean"] == pytest.approx(np.mean(per_seed))
    assert sut["srcc_fold_mean"]["std"] == pytest.approx(np.std(per_seed, ddof=1))
    avg = summary["average"]["seeds"]["12"]
    tasks = summary["tasks"]
    assert avg["srcc_fold_mean"] == pytest.approx(
        math.tanh(np.mean([math.atanh(tasks[t]["seeds"]["12"]["srcc_fold_mean"]) for t in tasks]))
    )
    assert avg["rl2_fold_mean"] == pytest.approx(
        np.mean([tasks[t]["seeds"]["12"]["rl2_fold_mean"] for t in tasks])
    )
    assert math.isnan(avg["srcc_pooled"])  # Knot_Tying has none: no silent partial average
    last = [f["test/rl2"] * 2 for f in runs[("Suturing", 12)]]
    assert sut["seeds"]["12"]["last_epoch_rl2_fold_mean"] == pytest.approx(np.mean(last))
    assert math.isnan(avg["last_epoch_rl2_fold_mean"])
    assert list(tasks) == ["Suturing", TASK]  # the order of docs/method.md §8
    assert script.main(["--aggregate-only", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| Suturing | 4 × 2 |" in printed and "| 0.88 | 2.722 |" in printed
    assert "| average (2 tasks) |" in printed and "| 0.89 | 3.668 |" in printed
    saved = json.loads((out / "jigsaws_results.json").read_text())
    assert saved["tasks"][TASK]["srcc_pooled"]["mean"] is None  # NaN written as null
    table = [
        line for line in (out / "jigsaws_results.md").read_text().splitlines() if line[:1] == "|"
    ]
    assert len(table) == 10  # twice: header, rule, two tasks, average
    reference = printed.split("For reference")[1]
    assert "| ρ, last epoch | R-ℓ2 ×100, last epoch |" in reference
    assert "paper-style best on test |" not in reference  # no run reported it


def test_script_commands(tmp_path, capsys):
    script = load_script()
    with pytest.raises(SystemExit) as info:
        script.main(["--help"])
    assert info.value.code == 0 and "Fisher-z" in capsys.readouterr().out
    command = script.train_command("e", "Suturing", 2, 12, tmp_path, ["dataset.root=/d"])
    assert command[1:] == [
        "-m",
        "tpt_aqa.train",
        "experiment=e",
        "dataset=jigsaws",
        "dataset.task=Suturing",
        "dataset.fold=2",
        "seed=12",
        f"hydra.run.dir={tmp_path}/Suturing/fold2/seed12",
        "dataset.root=/d",
    ]
    argv = ["--tasks", "all", "--dry-run", "--experiment", "synthetic_tpt", "--out", str(tmp_path)]
    assert script.main(argv) == 0
    assert capsys.readouterr().out.count("tpt_aqa.train") == 12  # 3 tasks × 4 folds
    with pytest.raises(SystemExit, match=r"no conf/experiment/nope\.yaml"):
        script.main(["--experiment", "nope", "--dry-run"])


def test_rerun_moves_the_finished_run_aside(tmp_path, monkeypatch):
    """tpt_aqa.train refuses a folder holding a finished run: --rerun moves it aside first."""
    script = load_script()
    folder = tmp_path / "Suturing" / "fold0" / "seed12"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"test/srcc": 0.1, "test/rl2": 9.0}))
    started = []

    def fake_run(command, **kwargs):
        started.append(command)
        assert not folder.exists()  # the new run gets an empty folder
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({"test/srcc": 0.5, "test/rl2": 1.0}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(script.subprocess, "run", fake_run)
    argv = ["--tasks", "Suturing", "--folds", "0", "--seeds", "12", "--out", str(tmp_path)]
    assert script.main([*argv, "--experiment", "synthetic_tpt", "--rerun"]) == 0
    assert len(started) == 1
    (aside,) = (tmp_path / "Suturing" / "fold0").glob("seed12.replaced-*")
    assert json.loads((aside / "results.json").read_text())["test/srcc"] == 0.1
