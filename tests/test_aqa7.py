"""AQA-7: split .mat files, frame folders, per-class normalisation, class selection, errors, training.

Fixtures are written in the real on-disk format (``scipy.io.savemat`` split lists, JPEG frame
folders ``frames/{class}-out/{no:03d}/img_00001.jpg`` …), two classes with a few tiny videos; the
sampler and transforms are shrunk for speed except in the test of the default index arithmetic.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from hydra.utils import instantiate
from PIL import Image

from tpt_aqa import extract_features
from tpt_aqa import train as train_entry
from tpt_aqa.core.cache import CacheMismatchError
from tpt_aqa.data.aqa7 import (
    AQA7_CLASSES,
    AQA7_SCORE_RANGES,
    AQA7DataError,
    AQA7DataModule,
    normalise,
    resolve_classes,
)
from tpt_aqa.data.video import VideoReadError

from .conftest import TINY_MODEL, compose_cfg

# [class, sample_no, raw score]; class 1 diving, 2 gym_vault
TRAIN_ROWS = [
    [1, 1, 62.1],
    [1, 2, 30.0],
    [1, 3, 45.5],
    [1, 4, 80.2],
    [1, 5, 70.0],
    [1, 6, 55.5],
    [2, 1, 14.585],
    [2, 2, 16.87],
    [2, 3, 13.0],
    [2, 4, 15.2],
    [2, 5, 14.0],
    [2, 6, 12.9],
]
TEST_ROWS = [[1, 7, 66.0], [1, 8, 40.0], [1, 9, 90.0], [2, 7, 15.5], [2, 8, 13.7], [2, 9, 16.1]]
NUM_FRAMES = 12  # = 2 clips of 8 at stride 4, the shrunk sampler below
HEIGHT, WIDTH = 32, 40

# Small clips: 2 clips of 8 frames at stride 4 (12 frames), no resize, 32² crops.
FAST = [
    "dataset=aqa7",
    "dataset.sampler.num_clips=2",
    "dataset.sampler.stride=4",
    "dataset.train_transform.resize=null",
    "dataset.train_transform.crop_size=32",
    "dataset.test_transform.resize=null",
    "dataset.test_transform.crop_size=32",
    "dataset.num_workers=0",
    "dataset.eval_batch_size=8",
]
MODEL = [*TINY_MODEL, "model/encoder=i3d", "model.num_queries=2", "global_batch_size=2"]


def write_frames(folder: Path, values: list[int], start: int = 1, ramp: bool = True) -> None:
    """JPEG frames ``img_{start + i:05d}.jpg``: grey level ``values[i]``, plus a horizontal ramp so
    that random crops differ."""
    folder.mkdir(parents=True, exist_ok=True)
    x = np.arange(WIDTH)[None, :, None] * (3 if ramp else 0)
    for i, v in enumerate(values):
        frame = np.broadcast_to((v + x) % 256, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        Image.fromarray(frame).save(folder / f"img_{start + i:05d}.jpg", quality=95)


def make_aqa7(
    root: Path,
    train: list[list[float]] = TRAIN_ROWS,
    test: list[list[float]] = TEST_ROWS,
    num_frames: int = NUM_FRAMES,
    split_dir: str = "Split_4",
) -> Path:
    """An AQA-7 folder in the release layout."""
    lists = root / split_dir
    lists.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        lists / "split_4_train_list.mat", {"consolidated_train_list": np.array(train, float)}
    )
    scipy.io.savemat(
        lists / "split_4_test_list.mat", {"consolidated_test_list": np.array(test, float)}
    )
    for cls, no, _ in [*train, *test]:
        folder = root / "frames" / f"{AQA7_CLASSES[int(cls) - 1]}-out" / f"{int(no):03d}"
        base = 40 * int(cls) + 9 * int(no)  # every video looks different
        write_frames(folder, [(base + 2 * i) % 200 for i in range(num_frames)])
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A read-only AQA-7 fixture shared by the tests that do not change it."""
    return make_aqa7(tmp_path_factory.mktemp("aqa7"))


def datamodule(tmp_path: Path, root: Path, *overrides: str, setup: bool = True) -> AQA7DataModule:
    cfg = compose_cfg(tmp_path, *MODEL, *FAST, f"dataset.root={root}", *overrides)
    dm = instantiate(cfg.dataset)
    if setup:
        dm.setup()
    return dm


# ---- scores ------------------------------------------------------------------------------------
def test_normalise_hand_checked():
    assert set(AQA7_SCORE_RANGES) == set(AQA7_CLASSES)
    # (s - lo) / (hi - lo) * 100, computed by hand
    assert normalise("diving", 62.1) == pytest.approx(50.0)  # 40.5 / 81
    assert normalise("gym_vault", 14.585) == pytest.approx(50.0)  # 2.285 / 4.57
    assert normalise("ski_big_air", 29.0) == pytest.approx(50.0)  # 21 / 42
    assert normalise("snowboard_big_air", 50.0) == pytest.approx(100.0)
    assert normalise("sync_diving_3m", 46.2) == pytest.approx(0.0)
    assert normalise("sync_diving_10m", 74.58) == pytest.approx(50.0)  # 24.78 / 49.56
    with pytest.raises(AQA7DataError, match="no score range for AQA-7 class 'curling'"):
        normalise("curling", 1.0)


def test_table_from_mat_files(tmp_path, data_root):
    dm = datamodule(tmp_path, data_root, "dataset.classes=[diving,gym_vault]")
    t = dm.table
    assert t.class_names == ["diving", "gym_vault"] == t.group_names
    assert len(t) == 18
    counts = {s: int((dm.source_split == s).sum()) for s in ("train", "test")}
    assert counts == {"train": 12, "test": 6}
    assert (t.split == "val").sum() == 2  # ceil(0.1 × 12) carved from training
    assert t.ids[0] == "diving_001" and t.ids[6] == "gym_vault_001" and t.ids[-1] == "gym_vault_009"
    # hand-checked targets: diving 62.1 → 50, gym_vault 16.87 → 100, diving 90 → 68.9/81·100
    assert t.target[0] == pytest.approx(50.0)
    assert t.target[7] == pytest.approx(100.0)
    assert t.target[14] == pytest.approx(68.4 / 81 * 100)
    assert (t.scale == 1).all() and (t.group == t.class_id).all()
    assert t.class_id.tolist() == [0] * 6 + [1] * 6 + [0] * 3 + [1] * 3
    assert dm.sample_no[7] == 2  # gym_vault 16.87 above
    assert dm.class_name_of(14) == "diving" and dm.num_clips == 2
    assert dm.delta_cap == 100.0
    assert dm.source(7) == data_root / "frames" / "gym_vault-out" / "002"


@pytest.mark.parametrize(
    ("classes", "names", "rows"),
    [
        ("diving", ["diving"], 9),
        ("2", ["gym_vault"], 9),
        ("[1,gym_vault]", ["diving", "gym_vault"], 18),
        ("[gym_vault,diving,1]", ["diving", "gym_vault"], 18),
        ("all", list(AQA7_CLASSES), 18),
    ],
)
def test_class_selection(tmp_path, data_root, classes, names, rows):
    dm = datamodule(tmp_path, data_root, f"dataset.classes={classes}")
    assert dm.table.class_names == names and len(dm.table) == rows
    # class ids index the selected classes, so every row's class name is its own
    for row in range(len(dm.table)):
        assert names[dm.table.class_id[row]] == dm.class_name_of(row)
        assert dm.table.ids[row].startswith(dm.class_name_of(row))


def test_resolve_classes():
    assert resolve_classes(None) == resolve_classes("ALL") == [1, 2, 3, 4, 5, 6]
    assert resolve_classes(["sync_diving_10m", 3, "3"]) == [3, 6]
    for bad in ("curling", 7, 0, ["diving", "x"]):
        with pytest.raises(
            AQA7DataError, match=r"unknown AQA-7 class .*1=diving.*6=sync_diving_10m"
        ):
            resolve_classes(bad)


def test_selected_class_without_videos(tmp_path, data_root):
    dm = datamodule(tmp_path, data_root, "dataset.classes=ski_big_air", setup=False)
    with pytest.raises(AQA7DataError, match=r"list no video of the selected classes \['ski_big"):
        dm.setup()


# ---- exemplars ---------------------------------------------------------------------------------
def test_exemplars_from_the_same_class(tmp_path, data_root):
    dm = datamodule(tmp_path, data_root)
    t = dm.table
    for split in ("val", "test"):
        rows, ex = t.rows(split), dm.eval_exemplars[split]
        assert ex.shape == (len(rows), 10)
        for q, ex_rows in zip(rows, ex, strict=True):
            real = ex_rows[ex_rows >= 0]
            # a class has fewer than M = 10 training videos: all of them, each once
            same = np.flatnonzero((t.split == "train") & (t.class_id == t.class_id[q]))
            assert sorted(real.tolist()) == same.tolist()
            assert q not in real
    pairs = list(dm.train_dataloader().sampler)
    assert len(pairs) == len(t.rows("train"))
    assert all(t.class_id[q] == t.class_id[e] and q != e for q, e in pairs)
    # M below the class size: a seeded draw, reproducible, and different for another seed
    picks = {}
    for seed in (1, 1, 2, 3):
        dm = datamodule(tmp_path, data_root, "dataset.num_exemplars=2", f"dataset.seed={seed}")
        ex = dm.eval_exemplars["test"]
        assert (dm.table.class_id[ex] == dm.table.class_id[dm.table.rows("test")][:, None]).all()
        picks.setdefault(seed, []).append(ex.tolist())
    assert picks[1][0] == picks[1][1]
    assert picks[1][0] != picks[2][0] or picks[1][0] != picks[3][0]


# ---- clips -------------------------------------------------------------------------------------
def test_default_index_arithmetic(tmp_path):
    """The shipped sampler on a 103+ frame folder numbered from img_00001: which files are read."""
    rows = [[1, 1, 50.0]]
    root = make_aqa7(tmp_path / "data", train=rows, test=[[1, 2, 60.0]], num_frames=0)
    for no in (1, 2):  # img_00000 … img_00105 at grey level 2n: frames 0 and 104/105 must be unread
        folder = root / "frames" / "diving-out" / f"{no:03d}"
        write_frames(folder, [2 * n for n in range(106)], start=0, ramp=False)
    cfg = compose_cfg(tmp_path, *MODEL, "dataset=aqa7", f"dataset.root={root}")
    assert cfg.dataset.frame_start == 1 and cfg.dataset.sampler.num_clips == 20
    cfg.dataset.train_transform.resize = cfg.dataset.test_transform.resize = None
    cfg.dataset.train_transform.crop_size = cfg.dataset.test_transform.crop_size = None
    dm = instantiate(cfg.dataset)
    dm.setup()
    assert dm.frames_needed == 103
    index = dm.clip_index(0)
    assert index[:, 0].tolist() == list(range(0, 100, 5))  # clip starts 0, 5, …, 95
    assert index[-1].tolist() == list(range(95, 103))
    clips = dm.load_video(0, "test")
    assert clips.shape == (20, 3, 8, HEIGHT, WIDTH) and clips.dtype == torch.uint8
    grey = clips.float().mean(dim=(1, 3, 4))  # (T, L)
    want = 2 * (1 + index)  # clip t, frame l is file img_{1 + 5t + l}
    assert np.abs(grey.numpy() - want).max() < 2
    cfg.dataset.frame_start = 0  # the other numbering reads img_00000 … img_00102
    dm0 = instantiate(cfg.dataset)
    dm0.setup()
    assert (
        np.abs(dm0.load_video(0, "test").float().mean(dim=(1, 3, 4)).numpy() - want + 2).max() < 2
    )


def test_views_and_video_settings(tmp_path, data_root):
    dm = datamodule(tmp_path, data_root)
    clips = dm.load_video(3, "test")
    assert clips.shape == (2, 3, 8, 32, 32) and clips.dtype == torch.uint8
    assert torch.equal(clips, dm.load_video(3, "exemplar"))  # center crop, no jitter
    torch.manual_seed(0)
    assert len({dm.load_video(3, "train").float().sum().item() for _ in range(8)}) > 1
    settings = dm.video_settings()
    assert json.loads(json.dumps(settings)) == settings
    assert settings["sampler"]["num_clips"] == 2 and settings["frames"] == 12
    assert (
        settings["test_transform"]["crop_size"] == 32 and "seed" not in settings["test_transform"]
    )
    default = instantiate(compose_cfg(tmp_path, *MODEL, "dataset=aqa7", "dataset.root=x").dataset)
    shipped = default.video_settings()
    assert shipped["sampler"] == {
        "scheme": "strided",
        "num_clips": 20,
        "clip_len": 8,
        "stride": 5,
        "allow_repeats": False,
    }
    assert shipped["test_transform"]["resize"] == [256, 455]  # height 256 × width 455
    assert shipped["test_transform"]["crop_size"] == 224 and shipped["offset"] == 0


# ---- errors ------------------------------------------------------------------------------------
def test_wrong_root(tmp_path):
    dm = datamodule(tmp_path, tmp_path / "absent", setup=False)
    with pytest.raises(FileNotFoundError, match=r"absent does not exist: pass dataset\.root="):
        dm.setup()


def test_missing_split_file_points_at_it(tmp_path):
    root = make_aqa7(tmp_path / "data", split_dir="lists")
    dm = datamodule(tmp_path, root, setup=False)
    with pytest.raises(
        FileNotFoundError, match=r"split_4_train_list\.mat not found.*split_dir=lists"
    ):
        dm.setup()
    (root / "lists" / "split_4_test_list.mat").unlink()
    dm = datamodule(tmp_path, root, "dataset.split_dir=lists", setup=False)
    with pytest.raises(FileNotFoundError, match=r"lists/split_4_test_list\.mat not found"):
        dm.setup()


def test_wrong_variable_lists_the_variables(tmp_path, data_root):
    dm = datamodule(tmp_path, data_root, "dataset.test_variable=test_list", setup=False)
    with pytest.raises(
        AQA7DataError,
        match=r"no variable 'test_list'; it holds \['consolidated_test_list'\]: "
        r"set dataset\.test_variable",
    ):
        dm.setup()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.array([[1.0, 2.0]]), r"shape \(1, 2\)"),
        (
            np.array([[9.0, 1.0, 50.0]]),
            r"row 0 .* is \[9\.0, 1\.0, 50\.0\]; expected \[class id 1–6",
        ),
        (np.array([[1.0, 1.5, 50.0]]), r"sample number \(integer\)"),
    ],
)
def test_malformed_split_list(tmp_path, data_root, rows, message):
    root = tmp_path / "data"
    shutil.copytree(data_root / "Split_4", root / "Split_4")
    scipy.io.savemat(root / "Split_4" / "split_4_test_list.mat", {"consolidated_test_list": rows})
    with pytest.raises(AQA7DataError, match=message):
        datamodule(tmp_path, root, setup=False).setup()


def test_not_a_mat_file(tmp_path, data_root):
    root = tmp_path / "data"
    shutil.copytree(data_root / "Split_4", root / "Split_4")
    (root / "Split_4" / "split_4_train_list.mat").write_bytes(b"not a matlab file at all")
    with pytest.raises(AQA7DataError, match="is not a readable MATLAB file"):
        datamodule(tmp_path, root, setup=False).setup()


def test_sample_in_both_splits(tmp_path):
    root = make_aqa7(tmp_path / "data", test=[*TEST_ROWS, [2, 3, 14.0]])
    with pytest.raises(AQA7DataError, match="gym_vault sample 3 is listed twice"):
        datamodule(tmp_path, root, setup=False).setup()


def test_missing_frames_at_setup(tmp_path):
    root = make_aqa7(tmp_path / "data")
    shutil.rmtree(root / "frames" / "gym_vault-out" / "008")
    with pytest.raises(
        VideoReadError,
        match=r"1 of 18 AQA-7 videos .* no frame folder \(e\.g\. gym_vault_008 → .*gym_vault-out/008\)"
        r".*python -m tpt_aqa\.prepare_frames.*python -m tpt_aqa\.verify dataset=aqa7 dataset\.root=",
    ):
        datamodule(tmp_path, root)
    shutil.rmtree(root / "frames")
    with pytest.raises(VideoReadError, match=r"frames folder .*frames does not exist"):
        datamodule(tmp_path, root)


def test_frame_numbering_and_short_folders_at_load(tmp_path):
    root = make_aqa7(tmp_path / "data")
    dm = datamodule(tmp_path, root, "dataset.frame_start=0")
    with pytest.raises(
        VideoReadError,
        match=r"first frame .*diving-out/001/img_00000\.jpg is missing; its numbering starts at 1: "
        r"try dataset\.frame_start=1",
    ):
        dm.load_video(0, "test")
    dm = datamodule(tmp_path, root)
    diving_1 = root / "frames" / "diving-out" / "001"
    for path in sorted(diving_1.iterdir()):  # renumber from img_00000
        path.rename(path.with_name(f"img_{int(path.stem[4:]) - 1:05d}.jpg"))
    with pytest.raises(
        VideoReadError, match=r"001 has 11 frames .*may start at 0: try dataset\.frame_start=0"
    ):
        dm.load_video(0, "test")
    (root / "frames" / "diving-out" / "002" / "img_00012.jpg").unlink()
    with pytest.raises(
        VideoReadError,
        match=r"diving-out/002 has 11 frames but the train view needs 12; counted from "
        r"img_00001\.jpg: re-extract its frames with python -m tpt_aqa\.prepare_frames",
    ):
        dm.load_video(1, "train")


def test_check_sample_finds_planted_problems(tmp_path):
    root = make_aqa7(tmp_path / "data")
    dm = datamodule(tmp_path, root)
    assert all(dm.check_sample(r) == [] for r in range(len(dm.table)))
    frames = root / "frames"
    shutil.rmtree(frames / "diving-out" / "001")  # row 0: folder gone
    (frames / "diving-out" / "002" / "img_00012.jpg").unlink()  # row 1: too short
    (frames / "diving-out" / "003" / "img_00001.jpg").write_bytes(b"\xff\xd8 broken")  # row 2
    folder = frames / "diving-out" / "004"  # row 3: numbered from 0
    for path in sorted(folder.iterdir()):
        path.rename(path.with_name(f"img_{int(path.stem[4:]) - 1:05d}.jpg"))
    folder = frames / "diving-out" / "005"  # row 4: another naming scheme
    for path in sorted(folder.iterdir()):
        path.rename(path.with_name(f"frame_{int(path.stem[4:]):04d}.jpg"))
    problems = {r: dm.check_sample(r) for r in range(5)}
    assert len(problems[0]) == 1 and "diving-out/001 is missing" in problems[0][0]
    assert "tpt_aqa.prepare_frames" in problems[0][0]
    assert len(problems[1]) == 1 and "has 11 frames" in problems[1][0]
    assert len(problems[2]) == 1 and "img_00001.jpg is not a readable JPEG" in problems[2][0]
    assert len(problems[3]) == 1 and "may start at 0: try dataset.frame_start=0" in problems[3][0]
    assert len(problems[4]) == 1 and "img_00001.jpg is missing" in problems[4][0]
    assert "12 JPEG files such as frame_0001.jpg; set dataset.frame_pattern" in problems[4][0]
    assert dm.check_sample(5) == []


# ---- training ----------------------------------------------------------------------------------
def test_fast_dev_run_i3d_per_class_metrics(tmp_path, data_root):
    cfg = compose_cfg(tmp_path, *MODEL, *FAST, f"dataset.root={data_root}", "debug=fast_dev_run")
    results = train_entry.run(cfg)
    for key in ("test/srcc_diving", "test/srcc_gym_vault", "test/srcc_avg", "test/rl2_avg"):
        assert key in results, sorted(results)
    assert -1 <= results["test/srcc_avg"] <= 1


def test_extract_then_train_on_the_cache(tmp_path):
    root = make_aqa7(tmp_path / "data")
    out = tmp_path / "cache"
    extract_cfg = compose_cfg(
        tmp_path,
        *FAST,
        f"dataset.root={root}",
        f"out_dir={out}",
        "dtype=float32",
        config="extract",
    )
    extract_features.run(extract_cfg)
    assert len(list(out.glob("*.npy"))) == 18 and (out / "diving_001.npy").is_file()
    assert np.load(out / "gym_vault_009.npy").shape == (2, 1024)
    shutil.rmtree(root / "frames")  # the cache is all training needs
    overrides = [*MODEL, *FAST, f"dataset.root={root}", "model/encoder=precomputed"]
    cfg = compose_cfg(tmp_path, *overrides, f"dataset.features_root={out}", "debug=fast_dev_run")
    results = train_entry.run(cfg)
    assert "test/srcc_avg" in results and "test/srcc_diving" in results
    cfg.dataset.sampler.stride = 3
    with pytest.raises(
        CacheMismatchError, match=r"video\.sampler\.stride: cache has 4, requested 3"
    ):
        train_entry.run(cfg)
