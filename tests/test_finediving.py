"""FineDiving annotation parsing on a fixture in the release's exact format (tests/finediving_fixture):
legacy numpy pickles, frames crossing 999 → 1000, inconsistent transitions counted not fatal, a
recurring sub-action, exemplar groups, the authors' 96-frame sampling, clear errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from tpt_aqa.data import finediving as fd
from tpt_aqa.data.safe_pickle import UnsafePickleError
from tpt_aqa.errors import ConfigError
from tpt_aqa.parsing import parse_video, step_runs

from .finediving_fixture import (
    CASES,
    DIVES,
    INCONSISTENT,
    SUB_ACTIONS,
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


def test_splits_coarse_and_sub_actions(root, dives):
    train = fd.read_split(root, "train", dives)
    test = fd.read_split(root, "test", dives)
    assert train == [k for k, v in DIVES.items() if v[-1] == "train"]  # file order
    assert test == [k for k, v in DIVES.items() if v[-1] == "test"]
    coarse = fd.read_coarse(root)
    assert coarse[CASES["crossing_1000"]]["start_frame"] == 995
    assert set(coarse[CASES["recurring"]]) == set(fd.COARSE_FIELDS)
    assert fd.read_sub_action_names(root) == SUB_ACTIONS


def test_coarse_annotation_is_optional(tmp_path):
    assert fd.read_coarse(tmp_path) is None


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


def test_exemplar_groups_by_dive_number(root, dives):
    train = fd.read_split(root, "train", dives)
    test = fd.read_split(root, "test", dives)
    groups, orphans = fd.exemplar_groups(dives, train, test)
    assert groups["407c"] == [(VIDEO, 0), (VIDEO, 1), (VIDEO, 2)]
    assert groups["6243d"] == [CASES["single_training_dive"]]  # a group of one
    assert orphans == [CASES["test_without_training_number"]]  # '107b' has no training dive


def test_frames_cross_999_to_1000_and_the_authors_sampling(root, dives):
    key = CASES["crossing_1000"]
    folder = fd.frame_folder(root, key)
    numbers = fd.frame_numbers(folder)
    assert numbers.tolist() == list(range(995, 1015))  # numeric order across 00999 → 01000
    assert fd.frame_path(folder, 999).name == "00999.jpg" and fd.frame_path(folder, 1000).is_file()
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
