"""MTL-AQA datamodule (docs/method.md §8, §5, §7): annotations, score modes, the three frame layouts, errors.

Fixtures are written in the real on-disk format: pickles with ``pickle.dump``, JPEG frames with PIL,
H.264 videos with PyAV. Frames are flat grey with a level that encodes their number, so a test can
tell from the decoded pixels which frame files were read.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tpt_aqa import extract_features
from tpt_aqa import train as train_entry
from tpt_aqa.config import ConfigError, build_datamodule, build_module, validate_config
from tpt_aqa.core.cache import CacheMismatchError
from tpt_aqa.data.clips import ClipSampler
from tpt_aqa.data.mtl_aqa import ANNOTATION_FILES, MTLAQADataModule
from tpt_aqa.data.safe_pickle import UnsafePickleError
from tpt_aqa.data.transforms import VideoTransform
from tpt_aqa.data.video import VideoReadError, write_frame_folder
from tpt_aqa.scoring.groups import ScoreGroups

from .conftest import TINY_MODEL, compose_cfg

# (video_no, clip_no) → (difficulty, final_score, start_frame, end_frame). Whole videos have 60
# frames numbered from 1; dive (1, 1) is shorter than the 20-frame tiny window, (4, 3) ends on the
# last frame of its video. 16 / 5 is 3.2000000000000002: the same difficulty group as 3.2.
TRAIN = {
    (1, 1): (2.0, 40.0, 10, 25),
    (1, 2): (2.0, 50.0, 20, 45),
    (2, 1): (3.2, 70.4, 3, 25),
    (2, 2): (16 / 5, 64.0, 20, 45),
    (3, 1): (3.2, 80.0, 3, 25),
    (3, 2): (2.0, 30.0, 20, 45),
}
TEST = {
    (4, 1): (2.0, 45.0, 3, 25),
    (4, 2): (3.2, 60.0, 20, 45),
    (4, 3): (3.2, 57.6, 50, 60),
}
VIDEO_FRAMES = 60
HEIGHT, WIDTH = 40, 48
FOLDER_FRAMES = 22  # tiny window 20 + the largest tiny offset 2

# 4 clips of 8 at stride 4 (a 20-frame window), 32-pixel crops, offsets 0–2 / 0 / 1.
TINY_DATA = [
    "dataset.sampler.num_clips=4",
    "dataset.sampler.stride=4",
    "dataset.train_offset_max=2",
    "dataset.exemplar_offset=1",
    "dataset.train_transform.resize=null",
    "dataset.train_transform.crop_size=32",
    "dataset.test_transform.crop_size=32",
    "dataset.eval_batch_size=4",
    "dataset.val_fraction=0.25",
    "dataset.num_workers=0",
]
TINY_TRAIN = [*TINY_DATA, "global_batch_size=2"]  # the batch is a training key


class Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---------------------------------------------------------------------------------------- fixtures


def grey(levels) -> torch.Tensor:
    """Flat grey frames, one per level ``(F, 3, HEIGHT, WIDTH)`` uint8."""
    levels = torch.as_tensor(list(levels), dtype=torch.uint8)
    return levels[:, None, None, None].expand(-1, 3, HEIGHT, WIDTH).contiguous()


def level_of_folder_frame(i: int) -> int:
    """Grey level of JPEG ``i`` (0-based, name order) of a dive folder."""
    return 2 * i + 10


def level_of_video_frame(n: int) -> int:
    """Grey level of frame number ``n`` (1-based) of a whole video."""
    return 4 * n


def write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_video(path: Path, levels) -> None:
    """Lossless H.264 of flat grey frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"qp": "0"}
        for level in levels:
            rgb = np.full((HEIGHT, WIDTH, 3), level, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def annotation(dd: float, final: float, start: int, end: int) -> dict:
    return {
        "difficulty": dd,
        "final_score": final,
        "start_frame": start,
        "end_frame": end,
        "judge_scores": [final / dd / 3] * 7,
        "rotation_type": 1,
        "armstand": 0,
        "position": 2,
        "ss_no": 2.5,
        "tw_no": 0,
        "primary_view": 0,
    }


def make_mtl_aqa(
    root: Path,
    layout: str = "dive_folders",
    name: str = ANNOTATION_FILES[0],
    train: dict | None = None,
) -> Path:
    """A tiny MTL-AQA release in ``root`` with frames in one ``layout`` (``train``: other
    training dives than ``TRAIN``)."""
    root.mkdir(parents=True, exist_ok=True)
    train = TRAIN if train is None else train
    dives = {**train, **TEST}
    write_pickle(root / name, {k: annotation(*v) for k, v in dives.items()})
    write_pickle(root / "train_split_0.pkl", list(train))
    write_pickle(root / "test_split_0.pkl", list(TEST))
    if layout == "dive_folders":
        frames = grey(level_of_folder_frame(i) for i in range(FOLDER_FRAMES))
        for video, clip in dives:
            write_frame_folder(root / "frames" / f"{video:02d}_{clip:02d}", frames)
    numbers = range(1, VIDEO_FRAMES + 1)
    videos = sorted({video for video, _ in dives})
    if layout == "video_folders":
        frames = grey(level_of_video_frame(n) for n in numbers)
        for video in videos:
            write_frame_folder(root / "frames" / f"{video:02d}", frames, "{:08d}.jpg", start=1)
    if layout == "videos":
        (root / "videos").mkdir()
        for video in videos:
            write_video(root / "videos" / f"{video:02d}.mp4", map(level_of_video_frame, numbers))
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """One tiny release per layout, shared by the read-only tests."""
    base = tmp_path_factory.mktemp("mtl_aqa")
    return {layout: make_mtl_aqa(base / layout, layout) for layout in ("dive_folders", "videos")}


def datamodule(tmp_path, root, *overrides, setup=True) -> MTLAQADataModule:
    cfg = compose_cfg(tmp_path, "dataset=mtl_aqa", f"dataset.root={root}", *TINY_DATA, *overrides)
    dm = instantiate(cfg.dataset)
    if setup:
        dm.setup()
    return dm


def parts(root: Path) -> dict:
    """Constructor arguments of a tiny datamodule, for building it without Hydra."""
    return dict(
        root=str(root),
        sampler=ClipSampler(num_clips=4, stride=4),
        train_transform=VideoTransform(resize=None, crop_size=32, train=True),
        test_transform=VideoTransform(resize=None, crop_size=32),
    )


def frame_levels(clips: torch.Tensor) -> np.ndarray:
    """Mean level of every clip frame ``(T, L)`` of clips ``(T, 3, L, H, W)``."""
    return clips.float().mean(dim=(1, 3, 4)).numpy()


# ------------------------------------------------------------------------------ table and scores


def test_table_with_dd(tmp_path, release):
    dm = datamodule(tmp_path, release["dive_folders"], "dataset.val_fraction=0")
    t = dm.table
    assert len(t.rows("train")) == 6 and len(t.rows("test")) == 3 and not dm.has_val
    assert t.ids[:2] == ["01_01", "01_02"] and t.ids[-1] == "04_03"
    dives = {**TRAIN, **TEST}
    final = np.array([v[1] for v in dives.values()])
    difficulty = np.array([v[0] for v in dives.values()])
    assert np.allclose(t.target, final / difficulty) and np.array_equal(t.scale, difficulty)
    assert np.allclose(t.target * t.scale, final)  # reported = raw × DD, compared with final
    assert t.group_names == ["dd2", "dd3.2"]  # 16 / 5 falls into dd3.2
    assert t.group.tolist() == [0, 0, 1, 1, 1, 0, 0, 1, 1]
    assert t.class_names == ["diving"] and not t.class_id.any()
    assert dm.delta_cap == 30.0


def test_table_without_dd(tmp_path, release):
    root = release["dive_folders"]
    dm = datamodule(
        tmp_path, root, "dataset.use_dd=false"
    )  # the config's null cap follows the mode
    t = dm.table
    assert np.array_equal(t.target, [v[1] for v in {**TRAIN, **TEST}.values()])
    assert np.array_equal(t.scale, np.ones(9)) and not t.group.any() and t.group_names == ["all"]
    assert dm.delta_cap == 100.0
    assert datamodule(tmp_path, root).delta_cap == 30.0
    # constructed directly, delta_cap=None follows the mode
    assert MTLAQADataModule(**parts(root), use_dd=False).delta_cap == 100.0
    assert MTLAQADataModule(**parts(root)).delta_cap == 30.0


# The real training split in miniature: a failed dive (final 0.0, as 17_164) and a final of 102.6
# (above the w/o DD cap of 100, as two real dives), both difficulty 3.2. W/o DD one pair (0 vs
# 102.6) of the 8 training dives' 28 exceeds the cap of 100. W/ DD the raws are 0 and 32.06: one
# pair of the dd3.2 group's 10 exceeds the cap of 30.
FAILED_AND_HIGH = {**TRAIN, (5, 1): (3.2, 0.0, 3, 25), (5, 2): (3.2, 102.6, 20, 45)}


@pytest.mark.parametrize(
    ("use_dd", "cap", "count"), [(False, 100, "1 of 28"), (True, 30, "1 of 13")]
)
def test_a_failed_dive_and_a_final_above_the_cap_are_clamped(tmp_path, caplog, use_dd, cap, count):
    root = make_mtl_aqa(tmp_path / "data", train=FAILED_AND_HIGH)
    dm = datamodule(tmp_path, root, f"dataset.use_dd={use_dd}", "dataset.val_fraction=0")
    assert dm.delta_cap == cap
    with caplog.at_level(logging.INFO, logger="tpt_aqa.scoring.groups"):
        groups = ScoreGroups(16).fit(dm.train_deltas(), dm.delta_cap)
    assert f"{count} within-group training pairs differ by more than dataset.delta_cap={cap}" in (
        caplog.text
    )
    labels, _ = groups.encode(torch.tensor([dm.train_deltas().max()]))
    assert labels.tolist() == [15]


def test_no_dd_experiment_sets_up_on_a_split_with_a_failed_dive(tmp_path):
    # What training's setup does (datamodule, then the score groups from its cap), without the I3D.
    root = make_mtl_aqa(tmp_path / "data", train=FAILED_AND_HIGH)
    cfg = compose_cfg(
        tmp_path,
        "experiment=mtl_aqa_tpt_no_dd",
        *TINY_MODEL,
        f"dataset.root={root}",
        *TINY_TRAIN,
        "dataset.val_fraction=0",
        "model.num_queries=3",
        "model.encoder.weights=null",
        "require_encoder_weights=false",
    )
    assert cfg.dataset.delta_cap is None and not cfg.dataset.use_dd
    validate_config(cfg)
    dm = build_datamodule(cfg)
    groups = build_module(cfg).score_groups.fit(dm.train_deltas(), dm.delta_cap)
    assert groups.cap == 100.0 and dm.train_deltas().max() == pytest.approx(102.6)


def test_a_cap_of_the_wrong_scale_is_refused_with_a_value_that_works(tmp_path, release):
    cfg = compose_cfg(
        tmp_path,
        *TINY_MODEL,
        "dataset=mtl_aqa",
        f"dataset.root={release['dive_folders']}",
        *TINY_TRAIN,
        "dataset.use_dd=false",
        "dataset.delta_cap=3",
        "dataset.val_fraction=0",
        "model/encoder=i3d",
        "model.num_queries=3",
    )
    # Training finals 40, 50, 70.4, 64, 80, 30: the largest difference is 50.
    with pytest.raises(
        ConfigError, match=r"delta_cap=3 is below most .* pass dataset.delta_cap=50"
    ):
        train_entry.run(cfg)


@pytest.mark.parametrize("use_dd", [True, False])
def test_eval_exemplars(tmp_path, release, use_dd):
    overrides = [f"dataset.use_dd={use_dd}", "dataset.delta_cap=100", "dataset.num_exemplars=2"]
    dm = datamodule(tmp_path, release["dive_folders"], *overrides)
    t = dm.table
    train = set(t.rows("train"))
    for split in ("val", "test"):
        rows, chosen = t.rows(split), dm.eval_exemplars[split]
        assert len(rows) and chosen.shape == (len(rows), 2)
        for row, ex in zip(rows, chosen, strict=True):
            ex = ex[ex >= 0]
            assert set(ex) <= train and row not in ex
            assert (t.group[ex] == t.group[row]).all()
    again = datamodule(tmp_path, release["dive_folders"], *overrides)
    assert np.array_equal(again.eval_exemplars["test"], dm.eval_exemplars["test"])
    # M larger than every group: all of the group's training dives, padded with -1
    big = datamodule(tmp_path, release["dive_folders"], *overrides[:2], "dataset.num_exemplars=10")
    for row, ex in zip(big.table.rows("test"), big.eval_exemplars["test"], strict=True):
        members = [r for r in big.table.rows("train") if big.table.group[r] == t.group[row]]
        assert sorted(ex[ex >= 0]) == members and (ex == -1).sum() == 10 - len(members)


def test_test_difficulty_without_training_dives(tmp_path):
    root = make_mtl_aqa(tmp_path / "data")
    ann = {k: annotation(*v) for k, v in {**TRAIN, **TEST}.items()}
    ann[(4, 3)]["difficulty"] = 3.6
    write_pickle(root / ANNOTATION_FILES[0], ann)
    with pytest.raises(
        ConfigError,
        match=r"1 evaluated sample \(04_03\) is in exemplar groups \(dd3\.6\) that no "
        r"training sample has, so they have no exemplars; use the release's split files, or "
        r"dataset\.use_dd=false",
    ):
        datamodule(tmp_path, root)
    assert datamodule(tmp_path, root, "dataset.use_dd=false", "dataset.delta_cap=100").table


# -------------------------------------------------------------------------------- files and errors


def test_annotation_file_search(tmp_path):
    root = make_mtl_aqa(tmp_path / "data", name=ANNOTATION_FILES[2])
    dm = datamodule(tmp_path, root, setup=False)
    assert dm.annotation_path() == root / ANNOTATION_FILES[2]
    shutil.copy(root / ANNOTATION_FILES[2], root / ANNOTATION_FILES[1])
    assert dm.annotation_path() == root / ANNOTATION_FILES[1]  # searched in order
    dm.setup()
    assert len(dm.table) == 9
    renamed = root / "my_annotations.pkl"
    (root / ANNOTATION_FILES[1]).rename(renamed)
    assert datamodule(tmp_path, root, "dataset.annotation_file=my_annotations.pkl").table
    assert datamodule(tmp_path, root, f"dataset.annotation_file={renamed}").table  # a path
    with pytest.raises(
        FileNotFoundError, match=r"absent.pkl not found \(nor in .*info\): set dataset.annotation"
    ):
        datamodule(tmp_path, root, "dataset.annotation_file=absent.pkl")
    for name in ANNOTATION_FILES:
        (root / name).unlink(missing_ok=True)
    msg = r"no MTL-AQA annotation file in .*: looked for final_annotations_dict.pkl, augmented"
    with pytest.raises(FileNotFoundError, match=msg):
        datamodule(tmp_path, root)


def test_pickles_in_the_info_folder_are_found(tmp_path):
    """Public copies of MTL-AQA keep the annotation and split pickles in info/."""
    root = make_mtl_aqa(tmp_path / "data")
    (root / "info").mkdir()
    for name in (ANNOTATION_FILES[0], "train_split_0.pkl", "test_split_0.pkl"):
        (root / name).rename(root / "info" / name)
    dm = datamodule(tmp_path, root)
    assert dm.annotation_path() == root / "info" / ANNOTATION_FILES[0] and len(dm.table) == 9
    named = datamodule(tmp_path, root, f"dataset.annotation_file={ANNOTATION_FILES[0]}")
    assert named.annotation_path() == root / "info" / ANNOTATION_FILES[0]


def test_split_and_root_errors(tmp_path):
    root = make_mtl_aqa(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match=r"dataset.root=.*absent does not exist"):
        datamodule(tmp_path, tmp_path / "absent")
    with pytest.raises(
        FileNotFoundError, match=r"other.pkl not found \(nor in .*info\): set dataset.test_split"
    ):
        datamodule(tmp_path, root, "dataset.test_split=other.pkl")
    write_pickle(root / "more_test.pkl", [*TEST, (9, 1), (9, 2)])
    msg = r"list 2 dives that .*final_annotations_dict.pkl lacks \(e.g. \[\(9, 1\), \(9, 2\)\]"
    with pytest.raises(ConfigError, match=msg):
        datamodule(tmp_path, root, "dataset.test_split=more_test.pkl")
    write_pickle(root / "overlap.pkl", [*TEST, (1, 1)])
    with pytest.raises(ConfigError, match=r"1 dives are in both"):
        datamodule(tmp_path, root, "dataset.test_split=overlap.pkl")
    write_pickle(root / "empty.pkl", [])
    with pytest.raises(ConfigError, match=r"empty.pkl lists no dives"):
        datamodule(tmp_path, root, "dataset.train_split=empty.pkl")
    write_pickle(root / "bad.pkl", ["01_01"])
    with pytest.raises(ConfigError, match=r"bad.pkl: expected dives as \(video_no, clip_no\)"):
        datamodule(tmp_path, root, "dataset.test_split=bad.pkl")
    with pytest.raises(FileNotFoundError, match=r"frames folder .*nowhere does not exist.*"):
        datamodule(tmp_path, root, f"dataset.frames_root={tmp_path}/nowhere")
    with pytest.raises(FileNotFoundError, match=r"videos folder .*videos does not exist"):
        datamodule(tmp_path, root, "dataset.frames_layout=videos")
    with pytest.raises(ConfigError, match=r"frames_layout='reels': use one of dive_folders"):
        MTLAQADataModule(**parts(root), frames_layout="reels")


def test_malicious_pickle_is_refused(tmp_path):
    root = make_mtl_aqa(tmp_path / "data")
    marker = tmp_path / "pwned"
    write_pickle(root / ANNOTATION_FILES[0], {(1, 1): Evil(marker)})
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle (posix|os)\.system"):
        datamodule(tmp_path, root)
    write_pickle(root / ANNOTATION_FILES[0], {k: annotation(*v) for k, v in TRAIN.items()})
    write_pickle(root / "train_split_0.pkl", [Evil(marker)])
    with pytest.raises(UnsafePickleError, match=r"train_split_0.pkl: refusing"):
        datamodule(tmp_path, root)
    assert not marker.exists()


# ----------------------------------------------------------------------------------- dive folders


def test_config_defaults_are_the_released_ones(tmp_path, release):
    cfg = compose_cfg(tmp_path, "dataset=mtl_aqa", f"dataset.root={release['dive_folders']}")
    dm = instantiate(cfg.dataset)
    assert (dm.sampler.num_clips, dm.sampler.clip_len, dm.sampler.stride) == (20, 8, 5)
    assert dm.offsets == {"train": 6, "test": 0, "exemplar": 3} and dm.train_end_jitter == 3
    assert (dm.num_exemplars, dm.delta_cap, dm.use_dd) == (10, 30.0, True)
    train, test = dm.transforms["train"], dm.transforms["exemplar"]
    assert train.resize_size == test.resize_size == (256, 455)
    assert train.crop_size == test.crop_size == 224 and train.train and not test.train
    cfg.dataset.train_transform.reference_resize_quirk = True  # one key switches both views
    quirk = instantiate(cfg.dataset)
    assert quirk.transforms["train"].resize_size == quirk.transforms["test"].resize_size
    assert quirk.transforms["test"].resize_size == (455, 256)


def test_default_window_arithmetic(tmp_path):
    """The released numbers: 109-frame folders, 103-frame windows at offsets 0–6 / 0 / 3."""
    root = make_mtl_aqa(tmp_path / "data")
    frames = grey(2 * i for i in range(109))
    folder = root / "frames" / "01_01"
    shutil.rmtree(folder)
    write_frame_folder(folder, frames, "img_{:05d}.jpg")
    small = ["dataset.train_transform.resize=null", "dataset.train_transform.crop_size=16"]
    small.append("dataset.test_transform.crop_size=16")
    cfg = compose_cfg(tmp_path, "dataset=mtl_aqa", f"dataset.root={root}", *small)
    dm = instantiate(cfg.dataset)
    dm.setup()
    assert dm.num_clips == 20 and dm.window == 103
    assert max(dm.frame_span(0, view)[1] for view in ("train", "test", "exemplar")) == 109
    starts = 5 * np.arange(20)[:, None] + np.arange(8)[None, :]  # (20, 8): 0, 5, …, 95 (+ 0..7)
    row = dm.table.ids.index("01_01")
    for view, offset in (("test", 0), ("exemplar", 3)):
        source, index = dm.source(row), dm.clip_index(row, view)
        assert source == folder and np.array_equal(index, offset + starts)
        clips = dm.load_video(row, view)
        assert clips.shape == (20, 3, 8, 16, 16)
        assert np.abs(frame_levels(clips) - 2 * (offset + starts)).max() < 1  # files read
    assert index.max() == 105  # the exemplar window: img_00003 … img_00105
    torch.manual_seed(0)
    offsets = {int(dm.clip_index(row, "train")[0, 0]) for _ in range(200)}
    assert offsets == set(range(7))  # 0–6, the last window ending at img_00108
    torch.manual_seed(1)
    levels = frame_levels(dm.load_video(row, "train"))
    offset = round(levels[0, 0] / 2)
    assert np.abs(levels - 2 * (offset + starts)).max() < 1


def test_short_dive_folder(tmp_path):
    root = make_mtl_aqa(tmp_path / "data")
    folder = root / "frames" / "01_02"
    (folder / "00021.jpg").unlink()  # 21 frames: enough for test (20) and exemplar (21) only
    dm = datamodule(tmp_path, root)
    row = dm.table.ids.index("01_02")
    assert dm.load_video(row, "exemplar").shape == (4, 3, 8, 32, 32)
    msg = r"dive 01_02: .*01_02 has 21 frames but the train view needs 22.*tpt_aqa.prepare_frames"
    with pytest.raises(VideoReadError, match=msg):
        dm.load_video(row, "train")
    assert "has 21 frames but the train view needs 22" in dm.check_sample(row)[0]


def test_train_view_is_random_and_eval_views_fixed(tmp_path, release):
    dm = datamodule(tmp_path, release["dive_folders"])
    row = dm.table.rows("test")[0]
    assert torch.equal(dm.load_video(row, "test"), dm.load_video(row, "test"))
    test = frame_levels(dm.load_video(row, "test"))
    exemplar = frame_levels(dm.load_video(row, "exemplar"))
    assert np.allclose(exemplar - test, 2, atol=1)  # exemplar offset 1 = 2 grey levels
    torch.manual_seed(0)
    draws = {round(frame_levels(dm.load_video(row, "train"))[0, 0]) for _ in range(30)}
    assert len(draws) == 3  # offsets 0, 1, 2


def test_check_sample_dive_folders(tmp_path):
    root = make_mtl_aqa(tmp_path / "data")
    dm = datamodule(tmp_path, root)
    ids = dm.table.ids
    shutil.rmtree(root / "frames" / "02_01")
    (root / "frames" / "02_02" / "00021.jpg").write_bytes(b"not a jpeg")  # the last needed frame
    for name in ("00019.jpg", "00020.jpg", "00021.jpg"):
        (root / "frames" / "03_01" / name).unlink()
    problems = {vid: dm.check_sample(row) for row, vid in enumerate(ids)}
    assert "frame folder" in problems["02_01"][0] and "02_01 is missing" in problems["02_01"][0]
    assert "tpt_aqa.prepare_frames" in problems["02_01"][0]
    assert "00021.jpg is not a readable JPEG" in problems["02_02"][0]
    assert "has 19 frames but the train view needs 22" in problems["03_01"][0]
    assert all(not p for vid, p in problems.items() if vid not in ("02_01", "02_02", "03_01"))
    with pytest.raises(VideoReadError, match=r"dive 02_01: frame folder .*02_01 is missing"):
        dm.load_video(ids.index("02_01"), "train")
    with pytest.raises(VideoReadError, match=r"python -m tpt_aqa.verify dataset=mtl_aqa"):
        dm.load_video(ids.index("02_01"), "test")


# ------------------------------------------------------------------------------------ whole videos


@pytest.mark.parametrize("layout", ["video_folders", "videos"])
def test_whole_video_windows(tmp_path, release, layout):
    root = release.get(layout) or make_mtl_aqa(tmp_path / "data", layout)
    dm = datamodule(tmp_path, root, f"dataset.frames_layout={layout}")
    ids = dm.table.ids
    starts = 4 * np.arange(4)[:, None] + np.arange(8)[None, :]  # (4, 8), a 20-frame window
    for vid, end in (("01_01", 25), ("02_02", 45), ("04_03", 60)):
        row = ids.index(vid)
        source, index = dm.source(row), dm.clip_index(row, "test")
        video = vid[:2]
        assert source == (
            root / "videos" / f"{video}.mp4" if layout == "videos" else root / "frames" / video
        )
        # frame numbers end - 19 … end: dive 01_01 (frames 10–25) reaches back to frame 6
        assert np.array_equal(index + 1, end - 19 + starts)
        for view in ("test", "exemplar"):
            clips = dm.load_video(row, view)
            assert clips.shape == (4, 3, 8, 32, 32)
            assert np.abs(frame_levels(clips) - 4 * (end - 19 + starts)).max() <= 1.5
    torch.manual_seed(0)
    ends = {vid: set() for vid in ("01_01", "04_03")}
    for _ in range(100):
        for vid in ends:
            ends[vid].add(int(dm.clip_index(ids.index(vid), "train")[-1, -1]) + 1)
    assert ends["01_01"] == set(range(22, 29))  # 25 ± 3
    assert ends["04_03"] == {57, 58, 59, 60}  # never past the last frame of the video
    levels = frame_levels(dm.load_video(ids.index("01_01"), "train"))
    end = round(levels[-1, -1] / 4)
    assert 22 <= end <= 28 and np.abs(levels - 4 * (end - 19 + starts)).max() <= 1.5


@pytest.mark.parametrize("layout", ["video_folders", "videos"])
def test_whole_video_problems(tmp_path, layout):
    root = make_mtl_aqa(tmp_path / "data", layout)
    ann = {k: annotation(*v) for k, v in {**TRAIN, **TEST}.items()}
    ann[(1, 2)]["start_frame"], ann[(1, 2)]["end_frame"] = 2, 12  # window from frame -7
    ann[(3, 2)]["end_frame"] = 70  # past the 60 frames of video 03
    write_pickle(root / ANNOTATION_FILES[0], ann)
    dm = datamodule(tmp_path, root, f"dataset.frames_layout={layout}")
    ids = dm.table.ids
    if layout == "videos":
        (root / "videos" / "02.mp4").unlink()
        (root / "videos" / "04.mp4").write_bytes(b"\x00" * 100)
    else:
        shutil.rmtree(root / "frames" / "02")
        (root / "frames" / "04" / "00000025.jpg").write_bytes(b"garbage")
    problems = {vid: dm.check_sample(row) for row, vid in enumerate(ids)}
    assert "window would start 8 frame(s) before the first frame" in problems["01_02"][0]
    assert "has 60 frames" in problems["03_02"][0] or "index 69" in problems["03_02"][0]
    what = "video file" if layout == "videos" else "frame folder"
    assert f"{what} " in problems["02_01"][0] and "is missing" in problems["02_01"][0]
    assert problems["04_01"] and not problems["01_01"] and not problems["03_01"]
    with pytest.raises(VideoReadError, match=r"dive 01_02: it ends at frame 12.*start 8 frame"):
        dm.load_video(ids.index("01_02"), "test")
    with pytest.raises(VideoReadError, match=r"MTL-AQA dive 03_02: .*03"):
        dm.load_video(ids.index("03_02"), "test")


def test_end_before_start_is_rejected(tmp_path):
    root = make_mtl_aqa(tmp_path / "data", "video_folders")
    ann = {k: annotation(*v) for k, v in {**TRAIN, **TEST}.items()}
    ann[(2, 1)]["start_frame"] = 30
    ann[(2, 2)]["end_frame"] = 45.0  # an integral float is a frame number too
    write_pickle(root / ANNOTATION_FILES[0], ann)
    with pytest.raises(ConfigError, match=r"dive \(2, 1\) ends \(end_frame=25\) before it starts"):
        datamodule(tmp_path, root, "dataset.frames_layout=video_folders")
    # dive folders do not cut by frame numbers (this release has whole-video folders only)
    assert datamodule(tmp_path, root, setup=False).build_table()
    ann[(2, 1)]["start_frame"] = 3
    write_pickle(root / ANNOTATION_FILES[0], ann)
    dm = datamodule(tmp_path, root, "dataset.frames_layout=video_folders")
    assert dm.clip_index(dm.table.ids.index("02_02"), "test")[-1, -1] == 44


# -------------------------------------------------------------------------------- training runs


def test_fast_dev_run_i3d(tmp_path, release):
    cfg = compose_cfg(
        tmp_path,
        *TINY_MODEL,
        "dataset=mtl_aqa",
        f"dataset.root={release['dive_folders']}",
        *TINY_TRAIN,
        "model/encoder=i3d",
        "model.num_queries=3",
        "debug=fast_dev_run",
    )
    results = train_entry.run(cfg)
    assert -1 <= results["test/srcc"] <= 1


def test_extract_then_train_on_the_cache(tmp_path):
    root = make_mtl_aqa(tmp_path / "data")
    out = tmp_path / "cache"
    data = ["dataset=mtl_aqa", f"dataset.root={root}", *TINY_DATA]
    extract_cfg = compose_cfg(tmp_path, *data, f"out_dir={out}", "dtype=float32", config="extract")
    extract_features.run(extract_cfg)
    assert len(list(out.glob("*.npy"))) == 9 and np.load(out / "04_03.npy").shape == (4, 1024)
    assert (out / "annotations.csv").read_text().splitlines()[1].startswith("01_01,20.0,train,dd2")
    shutil.rmtree(root / "frames")  # training on the cache needs no frames
    cfg = compose_cfg(
        tmp_path,
        *TINY_MODEL,
        *data,
        "global_batch_size=2",
        "model/encoder=precomputed",
        "model.num_queries=3",
        f"dataset.features_root={out}",
        "debug=fast_dev_run",
    )
    assert "test/srcc" in train_entry.run(cfg)
    cfg.dataset.test_offset = 1
    with pytest.raises(CacheMismatchError, match=r"video.test_offset: cache has 0, requested 1"):
        train_entry.run(cfg)


def test_video_settings_record_the_test_view(tmp_path, release):
    dm = datamodule(tmp_path, release["dive_folders"], setup=False)
    s = dm.video_settings()
    assert s["sampler"] == {
        "scheme": "strided",
        "num_clips": 4,
        "clip_len": 8,
        "stride": 4,
        "allow_repeats": False,
    }
    assert s["test_transform"]["crop_size"] == 32 and "seed" not in s["test_transform"]
    assert s["test_offset"] == 0 and "exemplar_offset" not in s
    quirk = datamodule(
        tmp_path,
        release["dive_folders"],
        "dataset.train_transform.resize=[64,96]",
        "dataset.train_transform.reference_resize_quirk=true",
        "dataset.frames_layout=videos",
        setup=False,
    ).video_settings()
    assert quirk["test_transform"]["reference_resize_quirk"] is True  # follows the train key
    assert quirk["test_transform"]["resize"] == [64, 96]  # JSON-ready, as in the manifest
    assert quirk["frame_number_start"] == 1 and "test_offset" not in quirk
