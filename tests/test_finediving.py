"""FineDiving on a fixture in the release's exact format (tests/finediving_fixture): annotation
parsing (legacy numpy pickles, frames crossing 999 → 1000, inconsistent transitions counted not
fatal, a recurring sub-action, the authors' 96-frame sampling, clear errors) and the datamodule
(table, exemplar groups, DD, sampled frames and their step labels, verify, export_table, the feature
cache, a training run reporting the parse_* metrics)."""

from __future__ import annotations

import csv
import json
import math
import pickle

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from tpt_aqa import export_table, extract_features, verify
from tpt_aqa import train as train_entry
from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data import ClipSampler
from tpt_aqa.data import finediving as fd
from tpt_aqa.data.labels import step_runs
from tpt_aqa.data.safe_pickle import UnsafePickleError
from tpt_aqa.data.video_base import MissingSourceError
from tpt_aqa.predictor import Predictor
from tpt_aqa.scoring.step_metrics import parse_video, parsing_metrics

from .conftest import TINY_MODEL, compose_cfg
from .finediving_fixture import (
    CASES,
    DIVES,
    INCONSISTENT,
    VIDEO,
    labels_of,
    legacy_pickle,
    write_finediving,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_finediving(tmp_path_factory.mktemp("finediving"))


@pytest.fixture(scope="module")
def dives(root):
    return fd.read_annotations(root)


def test_fixture_pickles_use_the_legacy_numpy_reference(root):
    data = (root / fd.ANNOTATION_FILE).read_bytes()
    assert b"numpy.core.multiarray\n_reconstruct" in data and b"numpy._core" not in data


def test_read_annotations_round_trip(dives):
    assert set(dives) == set(DIVES)
    for key, (number, score, difficulty, transit, *_rest) in DIVES.items():
        dive = dives[key]
        assert dive.dive_number == number and dive.final_score == score
        assert dive.difficulty == difficulty and dive.transitions.tolist() == transit
        np.testing.assert_array_equal(dive.frame_labels, labels_of(key))
        assert dive.frame_labels.dtype == np.int64
    assert dives[CASES["failed_zero"]].final_score == 0.0  # a failed dive is a valid record


def test_splits(root, dives):
    train = fd.read_split(root, "train", dives)
    test = fd.read_split(root, "test", dives)
    assert train == [k for k, v in DIVES.items() if v[-1] == "train"]  # file order
    assert test == [k for k, v in DIVES.items() if v[-1] == "test"]


def test_inconsistent_transitions_are_counted_with_reasons(dives):
    bad = fd.inconsistent_dives(dives.values())
    assert set(bad) == INCONSISTENT  # the datamodule warns once with len(bad) = 4
    assert "-1" in bad[CASES["minus_one"]]
    assert "out of order, [11, 5]" in bad[CASES["out_of_order"]]
    assert "outside the dive's 20 frames" in bad[CASES["out_of_range"]]
    assert bad[CASES["disagreeing"]] == (
        "has transitions [4, 10, 13, 16], but its label runs end steps at [4, 9, 13, 17]"
    )
    # the steps always come from the labels, whatever the transitions say
    assert dives[CASES["minus_one"]].step_ends().tolist() == [6, 13, 20]


def test_recurring_sub_action_is_its_own_step(dives):
    dive = dives[CASES["recurring"]]
    _, ends, ids = step_runs(dive.frame_labels)
    assert ids.tolist() == [1, 11, 12, 11, 20]  # A B C B D: five steps
    assert (ends[:-1] - 1).tolist() == dive.transitions.tolist()  # consistent as annotated


def test_frames_cross_999_to_1000_and_the_authors_sampling(root, dives):
    key = CASES["crossing_1000"]
    folder = fd.frame_folder(root, key)
    numbers = fd.frame_numbers(folder)
    assert numbers.tolist() == list(range(995, 1015))  # numeric order across 00999 → 01000
    assert (folder / "00999.jpg").is_file() and (folder / "01000.jpg").is_file()
    frames = fd.sample_frames(numbers[0], numbers[-1])
    assert len(frames) == fd.NUM_FRAMES and frames[0] == 995 and frames[-1] == 1014
    # linspace(995, 1014, 96) steps by 19/95 = 0.2 frames, truncated: frame 995 + ⌊0.2 i⌋
    np.testing.assert_array_equal(frames, 995 + (np.arange(96) * 19) // 95)
    labels = fd.sampled_labels(dives[key], frames, int(numbers[0]))
    # runs of 6, 6, 8 frames: positions < 6 → 3, < 12 → 11, else 20
    position = frames - 995
    np.testing.assert_array_equal(labels, np.select([position < 6, position < 12], [3, 11], 20))
    assert len(step_runs(labels)[0]) == 3


def test_sampled_labels_feed_the_parsing_metrics(root, dives):
    key = CASES["recurring"]
    numbers = fd.frame_numbers(fd.frame_folder(root, key))
    labels = fd.sampled_labels(dives[key], fd.sample_frames(numbers[0], numbers[-1]), numbers[0])
    # 12 clips × 8 frames; an attention map following the clips' majority step
    step_of_frame = np.searchsorted(step_runs(labels)[0], np.arange(96), side="right") - 1
    clip_step = step_of_frame[4::8]  # the step of each clip's middle frame
    attn = np.zeros((12, 5))
    for t, s in enumerate(clip_step):
        attn[t, s] = 1.0
    attn /= attn.sum(0, keepdims=True)
    p = parse_video(attn, labels, frames_per_clip=8)
    assert p.in_order and p.accuracy > 0.85  # steps end inside clips: clip-edge quantisation


def test_malformed_records_name_the_file_and_key(tmp_path):
    path = tmp_path / fd.ANNOTATION_FILE
    good = [
        "407c",
        np.float64(70.0),
        np.float64(3.2),
        np.array([2, 5]),
        np.array([1, 1, 1, 2, 2, 2, 3]),
    ]
    cases = {
        "expected a list": {("v", 0): good[:4]},
        "expected keys \\(video_name: str, instance: int\\)": {("v", "0"): good},
        "dive number 407": {("v", 0): [407, *good[1:]]},
        "final score nan": {("v", 0): [good[0], float("nan"), *good[2:]]},
        "frames_labels of dtype float64": {("v", 0): [*good[:4], np.array([1.0, 2.0])]},
        "difficulty 0.0; expected > 0": {("v", 0): [good[0], good[1], 0.0, *good[3:]]},
    }
    for message, data in cases.items():
        legacy_pickle(data, path)
        with pytest.raises(ConfigError, match=message) as err:
            fd.read_annotations(tmp_path)
        assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"set dataset\.root"):
        fd.read_annotations(tmp_path / "nowhere")


def test_split_errors(tmp_path, root, dives):
    split = tmp_path / fd.SPLIT_FILES["test"]
    legacy_pickle([("nobody", 3)], split)
    with pytest.raises(ConfigError, match=r"lists 1 dives that .* does not annotate.*'nobody', 3"):
        fd.read_split(tmp_path, "test", dives)
    legacy_pickle([CASES["recurring"]] * 2, split)
    with pytest.raises(ConfigError, match="more than once"):
        fd.read_split(tmp_path, "test", dives)
    with pytest.raises(FileNotFoundError, match=r"train_split\.pkl not found"):
        fd.read_split(tmp_path, "train", dives)


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / fd.ANNOTATION_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps({("v", 0): [print]}))
    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle builtins\.print"):
        fd.read_annotations(tmp_path)


def test_frame_folder_errors(tmp_path, dives):
    folder = tmp_path / "dive"
    with pytest.raises(FileNotFoundError, match="not found"):
        fd.frame_numbers(folder)
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no \.jpg"):
        fd.frame_numbers(folder)
    for name in ("00010.jpg", "00012.jpg"):
        (folder / name).write_bytes(b"")
    with pytest.raises(ConfigError, match="frames 10–12 should be 3 files, found 2"):
        fd.frame_numbers(folder)
    (folder / "cover.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match="named by frame number"):
        fd.frame_numbers(folder)
    dive = dives[CASES["crossing_1000"]]  # 20 labelled frames
    with pytest.raises(ConfigError, match=r"spans 25 frames from 0, but .* labels 20"):
        fd.sampled_labels(dive, fd.sample_frames(0, 24), 0)


# ---- the datamodule (dataset=finediving) -------------------------------------------------------
ORPHAN = CASES["test_without_training_number"]
# the fixture's frames are 8×8 pixels: no resize, 8-pixel crops; 12 clips of 8 as configured
SMALL = [
    "dataset=finediving",
    "dataset.train_transform.resize=null",
    "dataset.train_transform.crop_size=8",
    "dataset.test_transform.crop_size=8",
    "dataset.num_workers=0",
    "dataset.eval_batch_size=4",
]
MODEL = [*TINY_MODEL, "model/encoder=i3d", "global_batch_size=2"]  # train config only


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    """The fixture without its test dive of a dive number no training dive has."""
    root = write_finediving(tmp_path_factory.mktemp("finediving_complete"))
    test = [k for k, v in DIVES.items() if v[-1] == "test" and k != ORPHAN]
    legacy_pickle(test, root / fd.SPLIT_FILES["test"])
    return root


def datamodule(tmp_path, root, *overrides) -> fd.FineDivingDataModule:
    cfg = compose_cfg(tmp_path, *MODEL, *SMALL, f"dataset.root={root}", *overrides)
    dm = instantiate(cfg.dataset)
    dm.setup()
    return dm


def test_no_group_with_two_training_dives_is_refused_clearly(tmp_path, complete):
    """The 5 training dives span 4 dive numbers; carving one more into validation leaves every
    number with one training dive: no within-group pair to fit the score groups on."""
    dm = datamodule(tmp_path, complete, "dataset.val_fraction=0.5")
    rows = dm.table.rows("train")
    assert len(np.unique(dm.table.group[rows])) == len(rows)  # the case: all groups lone
    with pytest.raises(ConfigError, match="no exemplar group has two training samples") as err:
        dm.train_deltas()
    assert "dataset.exemplar_groups" in str(err.value) and "dataset.val_fraction" in str(err.value)
    assert len(datamodule(tmp_path, complete, "dataset.val_fraction=0").train_deltas()) > 0


def row_of(dm, key) -> int:
    return dm.table.ids.index(fd.dive_id(key))


def test_table_with_and_without_dd(tmp_path, complete):
    dm = datamodule(tmp_path, complete, "dataset.val_fraction=0")
    keys = [k for k, v in DIVES.items() if v[-1] == "train"]
    keys += [k for k, v in DIVES.items() if v[-1] == "test" and k != ORPHAN]
    assert dm.table.ids == [f"{VIDEO}_{k[1]}" for k in keys]  # train then test, in file order
    assert dm.table.split.tolist() == ["train"] * 5 + ["test"] * 2
    row = row_of(dm, CASES["crossing_1000"])
    assert dm.table.target[row] == pytest.approx(70.5 / 3.2) and dm.table.scale[row] == 3.2
    assert dm.table.target[row_of(dm, CASES["failed_zero"])] == 0.0
    assert dm.delta_cap == 30.0  # raw scores, w/ DD
    no_dd = datamodule(tmp_path, complete, "dataset.val_fraction=0", "dataset.use_dd=false")
    assert no_dd.table.target[row] == 70.5 and no_dd.table.scale[row] == 1.0
    assert no_dd.delta_cap == 100.0
    capped = datamodule(tmp_path, complete, "dataset.use_dd=false", "dataset.delta_cap=40")
    assert capped.delta_cap == 40.0


@pytest.mark.parametrize(
    ("grouping", "names", "of_recurring", "option"),
    [
        ("dive_number", ["407c", "5253b", "6243d"], "5253b", "group"),
        ("difficulty", ["dd3.2", "dd3.4", "dd3.5"], "dd3.4", "difficulty"),
        ("none", ["all"], "all", None),
    ],
)
def test_exemplar_groups(tmp_path, complete, grouping, names, of_recurring, option):
    dm = datamodule(tmp_path, complete, f"dataset.exemplar_groups={grouping}")
    t = dm.table
    assert t.group_names == names
    assert t.group_names[t.group[row_of(dm, CASES["recurring"])]] == of_recurring
    for split in ("val", "test"):  # every evaluated dive's exemplars share its group
        for row, exemplars in zip(t.rows(split), dm.eval_exemplars[split], strict=True):
            real = exemplars[exemplars >= 0]
            assert len(real) and (t.group[real] == t.group[row]).all()
            assert (t.split[real] == "train").all()
    assert dm.group_option()["option"] == option
    if option == "difficulty":
        assert dm.group_option()["values"] == [3.2, 3.4, 3.5]


def test_a_lone_training_dive_is_its_own_exemplar(tmp_path, complete, caplog):
    # dive numbers 5253b and 6243d have one training dive (407c has three, kept: no carve)
    dm = datamodule(tmp_path, complete, "dataset.val_fraction=0")
    assert "exemplar groups 5253b, 6243d have a single training video" in caplog.text
    assert "dataset.exemplar_groups=difficulty or none" in caplog.text
    t = dm.table
    lone = {row_of(dm, CASES["recurring"]), row_of(dm, CASES["single_training_dive"])}
    pairs = list(dm.train_dataloader().sampler)
    assert {(q, e) for q, e in pairs if q in lone} == {(r, r) for r in lone}
    assert all(q != e for q, e in pairs if q not in lone)  # the others meet another dive
    test_row = list(t.rows("test")).index(row_of(dm, CASES["disagreeing"]))  # a 5253b test dive
    exemplars = dm.eval_exemplars["test"][test_row]
    assert exemplars[0] == row_of(dm, CASES["recurring"]) and (exemplars[1:] == -1).all()


@pytest.mark.parametrize("grouping", ["dive_number", "difficulty"])
def test_a_test_dive_without_exemplars_is_refused(tmp_path, root, grouping):
    # '107b' (difficulty 3.0) has no training dive, under either grouping
    with pytest.raises(ConfigError) as err:
        datamodule(tmp_path, root, f"dataset.exemplar_groups={grouping}")
    group = "107b" if grouping == "dive_number" else "dd3"
    assert str(err.value) == (
        f"1 evaluated sample ({VIDEO}_7) is in exemplar groups ({group}) that no training sample "
        "has, so they have no exemplars; pool dive numbers with dataset.exemplar_groups=difficulty "
        "or none, or use the release's split files"
    )
    dm = datamodule(tmp_path, root, "dataset.exemplar_groups=none")  # every training dive serves
    assert (dm.eval_exemplars["test"] >= 0).sum(1).tolist() == [3, 3, 3]  # 5 train less 2 val


def test_inconsistent_transitions_warn_once_with_the_count(tmp_path, root, caplog):
    dm = datamodule(tmp_path, root, "dataset.exemplar_groups=none")
    lines = [r.getMessage() for r in caplog.records if "steps_transit_frames" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("FineDiving: 4 of 8 dives have")
    assert f"{VIDEO}_1 has a transition of -1" in lines[0]
    assert set(dm.inconsistent) == INCONSISTENT
    # their steps come from the labels: the -1 dive's sampled labels are its label runs
    labels = dm.clip_labels(row_of(dm, CASES["minus_one"])).numpy()
    assert [int(x) for x in step_runs(labels)[2]] == [3, 11, 20]


def test_sampled_frames_hand_checked(tmp_path, complete):
    dm = datamodule(tmp_path, complete)
    row = row_of(dm, CASES["crossing_1000"])  # frames 995…1014, labels 3 ×6, 11 ×6, 20 ×8
    index = dm.clip_index(row)
    assert index.shape == (12, 8)
    # linspace(995, 1014, 96) steps by 0.2 frame: position ⌊0.2 i⌋ of the folder
    assert index[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert index[6].tolist() == [9, 9, 10, 10, 10, 10, 10, 11]
    assert index[11].tolist() == [17, 17, 18, 18, 18, 18, 18, 19]
    for view in ("train", "exemplar"):  # no temporal jitter: one index for every view
        np.testing.assert_array_equal(dm.clip_index(row, view), index)
    labels = dm.clip_labels(row)
    assert labels.shape == (96,) and labels.dtype == torch.int64
    assert labels[:30].eq(3).all() and labels[30:60].eq(11).all() and labels[60:].eq(20).all()
    # the frames read are those labelled: the fixture paints a frame grey level 12 × its label
    video = dm.load_video(row, "test")  # (T, 3, L, H, W)
    assert video.shape == (12, 3, 8, 8, 8)
    grey = video.float().mean((1, 3, 4)).flatten()  # (T·L,) in clip order
    np.testing.assert_allclose(grey.numpy(), 12 * labels.numpy(), atol=3)


def test_sampling_follows_the_file_numbers(tmp_path):
    """The authors' linspace(first, last) of the file numbers, truncated, is not always the same
    as linspace(0, n − 1) of the positions: with 134 frames from number 7, sample 45 is 63 − ε
    from 0 (position 62) but exactly 70 from 7 (position 63)."""
    root = write_finediving(tmp_path / "fd")
    folder = fd.frame_folder(root, CASES["crossing_1000"])
    for path in folder.iterdir():
        path.unlink()
    for number in range(7, 7 + 134):
        Image.new("RGB", (8, 8)).save(folder / f"{number:05d}.jpg")
    dm = datamodule(tmp_path, root, "dataset.exemplar_groups=none")
    row = row_of(dm, CASES["crossing_1000"])
    assert dm.clip_index(row).ravel()[45] == 63
    assert dm.sampler.indices(134).ravel()[45] == 62  # the shared sampler, as predict reads a video
    # its 134 frames outrun the dive's 20 labels: verify says so, naming the annotation file
    (problem,) = dm.check_sample(row)
    assert (
        "spans 134 frames from 7, but Annotations/fine-grained_annotation_aqa.pkl labels 20"
        in problem
    )


def test_samples_carry_the_step_labels_of_their_frames(tmp_path, complete):
    dm = datamodule(tmp_path, complete)
    batch = next(iter(dm.test_dataloader()))
    labels = batch.query.clip_labels
    assert labels.shape == (len(dm.table.rows("test")), 96)  # per frame: frames_per_clip = 96 / 12
    for i, row in enumerate(batch.query.index.tolist()):
        key = dm.keys[row]
        numbers = fd.frame_numbers(fd.frame_folder(complete, key))
        frames = fd.sample_frames(numbers[0], numbers[-1])
        np.testing.assert_array_equal(
            labels[i], fd.sampled_labels(dm.dives[key], frames, numbers[0])
        )
    # the 407c test dive: sampled labels 3 ×30, 11 ×30, 20 ×36. Queries that take the clips whose
    # middle frame is in their step (clips 0–3, 4–6, 7–11) get every frame right but frames 30–31
    # (in clip 3) and 56–59 (in clip 7): accuracy 90/96, in order, every step IoU ≥ 0.75
    i = batch.query.index.tolist().index(row_of(dm, CASES["out_of_order"]))
    steps = np.repeat([0, 1, 2], [4, 3, 5])
    attn = np.zeros((12, 3))
    attn[np.arange(12), steps] = 1.0
    parse = parse_video(attn / attn.sum(0), labels[i].numpy(), frames_per_clip=8)
    assert parse.accuracy == 90 / 96 and parse.in_order and parse.min_iou >= 0.75
    metrics = parsing_metrics(torch.as_tensor(attn / attn.sum(0))[None], labels[i : i + 1])
    assert metrics["parse_acc"] == 90 / 96  # frames_per_clip inferred: 96 labels / 12 clips


def test_verify_and_export_table(tmp_path, complete, capsys):
    args = [*SMALL, f"dataset.root={complete}"]
    assert verify.run(compose_cfg(tmp_path, *args, config="verify")) == []
    assert "dataset is ready" in capsys.readouterr().out
    out = tmp_path / "table.csv"
    export_table.run(compose_cfg(tmp_path, *args, f"out={out}", config="export_table"))
    rows = {r["id"]: r for r in csv.DictReader(out.open())}
    assert len(rows) == 7
    first = rows[fd.dive_id(CASES["crossing_1000"])]
    assert float(first["score"]) == pytest.approx(70.5 / 3.2) and float(first["scale"]) == 3.2
    assert first["group"] == "407c" and first["split"] == "train"  # as annotated, not carved
    assert rows[fd.dive_id(CASES["disagreeing"])]["split"] == "test"


def test_verify_lists_broken_folders(tmp_path, capsys):
    root = write_finediving(tmp_path / "fd")
    test = [k for k, v in DIVES.items() if v[-1] == "test" and k != ORPHAN]
    legacy_pickle(test, root / fd.SPLIT_FILES["test"])
    gap = fd.frame_folder(root, CASES["crossing_1000"])
    (gap / "01000.jpg").unlink()  # a hole in the numbering
    empty = fd.frame_folder(root, CASES["recurring"])
    for path in empty.iterdir():
        path.unlink()
    problems = verify.run(compose_cfg(tmp_path, *SMALL, f"dataset.root={root}", config="verify"))
    assert len(problems) == 2
    assert f"{gap}: frames 995–1014 should be 20 files, found 19" in problems[0]
    assert (
        f"FineDiving frame folder {empty} holds no .jpg frames; extract the release's"
        in problems[1]
    )
    assert "2 problem(s) found" in capsys.readouterr().out


def test_missing_frames_and_root_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset\.root=.* does not exist"):
        datamodule(tmp_path, tmp_path / "nowhere")
    root = write_finediving(tmp_path / "fd", frames=False)
    with pytest.raises(MissingSourceError, match=r"FineDiving frames folder .*FINADiving_MTL_256s"):
        datamodule(tmp_path, root, "dataset.exemplar_groups=none")
    dataset = compose_cfg(tmp_path, *MODEL, *SMALL, f"dataset.root={root}").dataset
    parts = {k: instantiate(dataset[k]) for k in ("sampler", "train_transform", "test_transform")}
    with pytest.raises(ConfigError, match=r"dataset\.exemplar_groups='video': use one of"):
        fd.FineDivingDataModule(root=str(root), exemplar_groups="video", **parts)
    parts["sampler"] = ClipSampler(scheme="strided", num_clips=12, clip_len=8, stride=8)
    with pytest.raises(ConfigError, match="use scheme=linspace"):
        fd.FineDivingDataModule(root=str(root), **parts)


def test_prediction_input_reads_a_new_dive_like_the_benchmark(tmp_path, complete):
    dm = datamodule(tmp_path, complete)
    spec = dm.prediction_input()
    assert spec["kind"] == "video" and spec["start_frame"] == 0
    assert spec["sampler"] == {
        "scheme": "linspace",
        "num_clips": 12,
        "clip_len": 8,
        "stride": 5,
        "allow_repeats": True,  # dives of 63 frames are sampled 96 times
    }
    assert spec["transform"] == dm.transforms["test"].settings()


def test_feature_cache_keeps_the_step_labels(tmp_path, complete):
    out = tmp_path / "cache"
    args = [*SMALL, f"dataset.root={complete}"]
    extract_features.run(
        compose_cfg(tmp_path, *args, f"out_dir={out}", "dtype=float32", config="extract")
    )
    assert np.load(out / f"{fd.dive_id(CASES['crossing_1000'])}.npy").shape == (12, 1024)
    dm = datamodule(tmp_path, complete, f"dataset.features_root={out}")
    sample = dm.sample(row_of(dm, CASES["recurring"]), "test")
    assert sample["video"].shape == (12, 1024) and sample["clip_labels"].shape == (96,)
    # train on the cache (fast_dev_run): the step labels reach the parsing metrics
    overrides = [
        *args,
        f"dataset.features_root={out}",
        "model/encoder=precomputed",
        "dataset.val_fraction=0",
    ]
    cfg = compose_cfg(
        tmp_path, *TINY_MODEL, *overrides, "debug=fast_dev_run", "model.num_queries=3"
    )
    results = train_entry.run(cfg)
    assert 0 <= results["test/parse_acc"] <= 1 and "test/srcc" in results
    folders = tmp_path / "moved"
    (complete / fd.FRAMES_DIR).rename(folders)
    try:
        with pytest.raises(
            MissingSourceError, match="with a feature cache only the names are read"
        ):
            datamodule(tmp_path, complete, f"dataset.features_root={out}")
    finally:
        folders.rename(complete / fd.FRAMES_DIR)


@pytest.mark.slow  # ~25-35 s on two shared CPU cores: I3D on 12 clips per dive
def test_train_end_to_end_reports_the_parsing_metrics_and_predicts(tmp_path, complete):
    # no validation carve: the fixture's 407c has three training dives, the only group with pairs
    overrides = [f"dataset.root={complete}", "dataset.val_fraction=0", "model.num_queries=3"]
    cfg = compose_cfg(tmp_path, *MODEL, *SMALL, *overrides, "model.encoder.freeze_backbone=true")
    results = train_entry.run(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert math.isfinite(saved["test/srcc"]) and -1 <= saved["test/srcc"] <= 1
    for name in ("parse_order", "parse_boundary", "parse_acc", "parse_aiou50", "parse_aiou75"):
        assert f"test/{name}" in saved, sorted(saved)
    assert 0 <= saved["test/parse_acc"] <= 1 and saved["test/parse_boundary"] >= 0
    assert results["test/parse_acc"] == saved["test/parse_acc"]
    # a new dive, named by its dive number; its steps drawn under the attention
    key = CASES["out_of_order"]
    predictor = Predictor(results["checkpoint"], device="cpu")
    pred = predictor.predict(
        fd.frame_folder(complete, key), group="407c", frame_labels=labels_of(key)
    )
    assert math.isfinite(pred.score) and pred.scale == pytest.approx(3.2)  # 407c's difficulty
    assert pred.attn.shape[-2:] == (12, 3)
    expected = labels_of(key)[predictor.sampler.indices(20).ravel()]  # 96 of its 20 frames
    np.testing.assert_array_equal(pred.step_labels, expected)
