"""Exemplar bank in the checkpoint and ``tpt_aqa.predict``: scoring new videos from a checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tpt_aqa import eval as eval_entry
from tpt_aqa import predict as predict_entry
from tpt_aqa import predictor as predictor_api
from tpt_aqa import train as train_entry
from tpt_aqa.config import build_datamodule, build_module
from tpt_aqa.data.clips import ClipSampler
from tpt_aqa.data.features import FeatureDataError
from tpt_aqa.data.video import VideoReadError, read_frames, write_frame_folder
from tpt_aqa.scoring.bank import BankError, ExemplarBank, build_bank, score_parts
from tpt_aqa.scoring.stage import group_exemplars
from tpt_aqa.training.runtime import load_checkpoint

from .conftest import TINY, TINY_MODEL, compose_cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny synthetic-features run: its results, selected checkpoint and rebuilt datamodule."""
    tmp = tmp_path_factory.mktemp("bank")
    results = train_entry.run(compose_cfg(tmp, *TINY))
    ckpt, cfg = load_checkpoint(results["checkpoint"])
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    return results, ckpt, dm, module, tmp


def predict_cfg(tmp, results, out, *overrides):
    """The ``tpt_aqa.predict`` config for a run's selected checkpoint, writing to ``out``."""
    return compose_cfg(
        tmp, f"ckpt_path={results['checkpoint']}", f"output_dir={out}", *overrides, config="predict"
    )


def test_selected_checkpoint_carries_the_bank(trained):
    results, ckpt, dm, module, _ = trained
    bank = ExemplarBank.from_state(ckpt["tpt_aqa"]["bank"])
    train_rows = dm.table.rows("train")
    assert len(bank) == len(train_rows) and bank.parts.dtype == torch.float16
    assert bank.parts.shape[1:] == (module.model.num_queries, 32)  # (N, K, D) with D=32
    assert bank.ids == [dm.table.ids[r] for r in train_rows]
    assert torch.allclose(bank.target.double(), torch.as_tensor(dm.table.target[train_rows]))
    assert bank.group_option == "difficulty" and bank.group_values == [2.0, 2.6, 3.2]
    assert bank.input == {"kind": "features", "num_clips": dm.num_clips}
    # each group's fixed exemplars are M members of that group: the list eval_exemplars=per_group uses
    fixed = group_exemplars(dm.table, dm.num_exemplars, dm.seed)
    assert np.array_equal(train_rows[bank.exemplars.numpy()], fixed)
    for gid in range(len(bank.group_names)):
        rows = bank.exemplar_rows(gid)
        assert len(rows) == dm.num_exemplars and len(set(rows.tolist())) == len(rows)
        assert bool((bank.group[rows] == gid).all())
    assert results["bank_mib"] == pytest.approx(bank.nbytes / 2**20, abs=1e-3)
    # the checkpoint loads with weights_only (no pickled objects in the bank)
    torch.load(results["checkpoint"], map_location="cpu", weights_only=True)


def test_bank_scores_reproduce_test_predictions(trained):
    """Through a float32 bank and the evaluation exemplar lists, scoring cached parts gives the
    test predictions of the selected checkpoint; through the float16 bank, nearly."""
    results, ckpt, dm, module, _ = trained
    preds = dict(zip(results["predictions"]["ids"], results["predictions"]["pred"], strict=True))
    train_rows = dm.table.rows("train")
    bank32 = build_bank(module, dm, dtype=torch.float32)
    bank16 = ExemplarBank.from_state(ckpt["tpt_aqa"]["bank"])
    test_rows = dm.table.rows("test")
    for i, row in enumerate(test_rows[:8]):
        ex = dm.eval_exemplars["test"][i]
        rows = torch.as_tensor(np.searchsorted(train_rows, ex[ex >= 0]))
        with torch.no_grad():
            parts = module.model.encode(dm.sample(int(row), "test")["video"][None]).parts[0]
        scale = float(dm.table.scale[row])
        got32 = float(score_parts(module, bank32, parts, rows, scale)["score"])
        got16 = float(score_parts(module, bank16, parts, rows, scale)["score"])
        assert got32 == pytest.approx(preds[dm.table.ids[row]], abs=1e-4)
        assert got16 == pytest.approx(preds[dm.table.ids[row]], abs=0.05 * scale)


def test_predict_cli_scores_feature_files(trained):
    results, ckpt, dm, module, tmp = trained
    inputs = tmp / "inputs"
    inputs.mkdir()
    rows = [r for r in dm.table.rows("test") if dm.table.scale[r] == 3.2][:2]
    for r in rows:
        np.save(inputs / f"{dm.table.ids[r]}.npy", dm.sample(int(r), "test")["video"].numpy())
    out = tmp / "predicted"
    cfg = predict_cfg(tmp, results, out, f"input={inputs}", "difficulty=3.2")
    preds = predict_entry.run(cfg)
    assert len(preds) == 2
    bank = ExemplarBank.from_state(ckpt["tpt_aqa"]["bank"])
    fixed = {bank.ids[int(r)] for r in bank.exemplar_rows(bank.group_names.index("dd3.2"))}
    with open(out / "predictions.csv") as f:
        table = list(csv.DictReader(f))
    assert [Path(t["input"]).stem for t in table] == [dm.table.ids[r] for r in rows]
    for row, pred in zip(rows, preds, strict=True):
        record = json.loads((out / f"{dm.table.ids[row]}.json").read_text())
        # the score is the mean of (exemplar score + Δ̂) × difficulty over the group's fixed M
        assert {e["id"] for e in record["exemplars"]} == fixed
        per = [e["prediction"] for e in record["exemplars"]]
        assert record["score"] == pytest.approx(np.mean(per), rel=1e-6)
        assert all(
            e["prediction"] == pytest.approx(e["score"] + e["delta"], rel=1e-6)
            for e in record["exemplars"]
        )
        assert record["spread"] == pytest.approx(np.std(per), rel=1e-5)
        assert record["scale"] == 3.2 and record["group"] == "dd3.2"
        y, t, k = np.asarray(record["attention"]).shape
        assert (t, k) == (dm.num_clips, module.model.num_queries) and y >= 1
        assert len(record["top_clips"]) == k and record["top_clips"] == sorted(record["top_clips"])
        assert (out / f"{dm.table.ids[row]}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert float(table[list(rows).index(row)]["score"]) == pytest.approx(pred.score, rel=1e-5)


def test_predict_all_exemplars_of_the_group(trained):
    results, _, dm, _, tmp = trained
    row = dm.table.rows("test")[0]
    path = tmp / "one.npy"
    np.save(path, dm.sample(int(row), "test")["video"].numpy())
    difficulty = float(dm.table.scale[row])
    predictor = predictor_api.Predictor(results["checkpoint"], device="cpu", exemplars="all")
    pred = predictor.predict(path, difficulty=difficulty)
    gid = predictor.bank.group_names.index(f"dd{difficulty:g}")
    train = dm.table.rows("train")
    assert len(pred.exemplars) == int((dm.table.group[train] == gid).sum()) > dm.num_exemplars


def test_group_options_are_checked_with_the_valid_values(trained):
    _, ckpt, *_ = trained
    bank = ExemplarBank.from_state(ckpt["tpt_aqa"]["bank"])
    with pytest.raises(BankError, match=r"pass difficulty=<value>.*2, 2\.6, 3\.2"):
        bank.resolve_group()
    with pytest.raises(BankError, match=r"difficulty=3\.3 is not in the training data"):
        bank.resolve_group(difficulty=3.3)
    with pytest.raises(BankError, match=r"class= does not apply"):
        bank.resolve_group(difficulty=3.2, class_name="diving")
    assert bank.resolve_group(difficulty=2.6) == (1, 2.6)
    assert bank.resolve_group(difficulty=2.6, scale=1.0) == (1, 1.0)
    with pytest.raises(BankError, match="exemplars=some is unknown"):
        bank.exemplar_rows(0, "some")


def _class_bank() -> ExemplarBank:
    """An AQA-7-like bank: groups are classes, scores on 0–100."""
    return ExemplarBank(
        parts=torch.zeros(4, 2, 3, dtype=torch.float16),
        target=torch.tensor([10.0, 20.0, 30.0, 40.0]),
        scale=torch.ones(4),
        group=torch.tensor([0, 0, 1, 1]),
        exemplars=torch.tensor([[0, 1, -1], [2, 3, -1]]),
        ids=["a", "b", "c", "d"],
        group_names=["diving", "snowboard"],
        group_option="class",
        group_values=["diving", "snowboard"],
        class_names=["diving", "snowboard"],
        score_ranges={"diving": [21.6, 102.6], "snowboard": [8.0, 50.0]},
        input={"kind": "features", "num_clips": 2},
        dataset="test",
    )


def test_class_banks_denormalise():
    bank = _class_bank()
    assert bank.resolve_group(class_name="snowboard") == (1, 1.0)
    with pytest.raises(BankError, match=r"class=skiing is unknown.*diving, snowboard"):
        bank.resolve_group(class_name="skiing")
    assert bank.exemplar_rows(1).tolist() == [2, 3]  # padding dropped
    assert bank.raw_score(0, 50.0) == pytest.approx(21.6 + 0.5 * 81.0)
    state = ExemplarBank.from_state(bank.to_state()).to_state()
    assert state.keys() == bank.to_state().keys()
    del state["parts"]
    with pytest.raises(BankError, match=r"lacks \['parts'\]"):
        ExemplarBank.from_state(state)


def test_checkpoint_without_bank_explains_the_fix(trained, tmp_path):
    results, *_ = trained
    last = Path(results["checkpoint"]).with_name("last.ckpt")
    assert "bank" not in torch.load(last, map_location="cpu", weights_only=True)["tpt_aqa"]
    with pytest.raises(BankError, match="write_bank=true"):
        predictor_api.Predictor(last, device="cpu")
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(last.read_bytes())
    eval_entry.run(
        compose_cfg(tmp_path, f"ckpt_path={copy}", "write_bank=true", "logger=none", config="eval")
    )
    assert len(predictor_api.Predictor(copy, device="cpu").bank) > 0


def test_eval_switches_to_the_banks_per_group_exemplars(trained, tmp_path, monkeypatch):
    """``tpt_aqa.eval eval_exemplars=per_group``: the test videos are scored against their group's
    fixed M, the bank's list, so evaluation encodes those exemplars and no other."""
    from tpt_aqa.scoring import stage as score_stage

    results, ckpt, dm, *_ = trained
    encoded = []
    original = score_stage.row_loader
    monkeypatch.setattr(
        score_stage, "row_loader", lambda d, rows: encoded.append(rows) or original(d, rows)
    )
    cfg = compose_cfg(
        tmp_path,
        f"ckpt_path={results['checkpoint']}",
        "eval_exemplars=per_group",
        "logger=none",
        config="eval",
    )
    metrics = eval_entry.run(cfg)
    assert -1 <= metrics["test/srcc"] <= 1
    bank = ExemplarBank.from_state(ckpt["tpt_aqa"]["bank"])
    test_groups = np.unique(dm.table.group[dm.table.rows("test")])
    bank_rows = bank.exemplars[test_groups].flatten().numpy()
    assert len(encoded) == 1
    assert np.array_equal(encoded[0], np.unique(dm.table.rows("train")[bank_rows[bank_rows >= 0]]))


def test_predict_rejects_wrong_inputs(trained, tmp_path):
    results, *_ = trained
    predictor = predictor_api.Predictor(results["checkpoint"], device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predictor.read(tmp_path / "missing.npy")
    (tmp_path / "v.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="trained on cached features"):
        predictor.read(tmp_path / "v.mp4")
    np.save(tmp_path / "bad.npy", np.zeros((3, 16), dtype=np.float32))
    with pytest.raises(ValueError, match=r"has T=3 clips, this checkpoint takes T=20"):
        predictor.read(tmp_path / "bad.npy")


def test_predict_checks_feature_files_as_training_does(trained, tmp_path, caplog, monkeypatch):
    """NaN is refused as in training; a wrong width names the checkpoint's width (not a training
    key); float64 is cast; the JSON record is strict JSON even for an undefined score."""
    results, _, dm, *_ = trained
    predictor = predictor_api.Predictor(results["checkpoint"], device="cpu")
    np.save(tmp_path / "nan.npy", np.full((20, 16), np.nan, dtype=np.float32))
    with pytest.raises(FeatureDataError, match=r"nan\.npy: contains NaN or infinite values"):
        predictor.read(tmp_path / "nan.npy")
    np.save(tmp_path / "wide.npy", np.zeros((20, 8), dtype=np.float32))
    with pytest.raises(FeatureDataError, match=r"has C=8 channels, this checkpoint takes C=16 \("):
        predictor.read(tmp_path / "wide.npy")
    row = int(dm.table.rows("test")[0])
    video = dm.sample(row, "test")["video"].numpy()
    np.save(tmp_path / "f32.npy", video)
    np.save(tmp_path / "f64.npy", video.astype(np.float64))
    scale = float(dm.table.scale[row])
    with caplog.at_level("INFO", logger="tpt_aqa"):
        got = predictor.predict(tmp_path / "f64.npy", difficulty=scale).score
    assert got == pytest.approx(predictor.predict(tmp_path / "f32.npy", difficulty=scale).score)
    assert "f64.npy holds float64 features: cast to float32" in caplog.text

    original = predictor_api.Predictor.predict

    def undefined(self, *args, **kwargs):
        pred = original(self, *args, **kwargs)
        pred.score = pred.spread = float("nan")
        return pred

    out = tmp_path / "out"
    cfg = predict_cfg(
        tmp_path,
        results,
        out,
        f"input={tmp_path / 'f32.npy'}",
        f"difficulty={scale}",
        "figure=false",
    )
    monkeypatch.setattr(predictor_api.Predictor, "predict", undefined)
    predict_entry.run(cfg)

    def refuse(name):
        raise AssertionError(f"{name} in the JSON")

    record = json.loads((out / "f32.json").read_text(), parse_constant=refuse)
    assert record["score"] is None and record["spread"] is None


VIDEO = [
    "dataset=synthetic_video",
    "model/encoder=i3d",
    "dataset.num_train=12",
    "dataset.num_test=4",
    "dataset.val_fraction=0.25",
    "model.num_queries=3",
    "trainer.max_epochs=1",
]


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """A tiny rendered-video run (5 clips of 8 frames at stride 8 over 40 frames): its results."""
    return train_entry.run(compose_cfg(tmp_path_factory.mktemp("video"), *TINY_MODEL, *VIDEO))


def test_predict_a_frame_folder_end_to_end(video_run, tmp_path):
    """Video path: the bank records how videos are read; a JPEG folder of a rendered test video
    is sampled and cropped like the test view, and the figure shows the top frames."""
    results = video_run
    ckpt, cfg = load_checkpoint(results["checkpoint"])
    bank = ExemplarBank.from_state(ckpt["tpt_aqa"]["bank"])
    assert bank.input["kind"] == "video" and bank.input["sampler"]["num_clips"] == 5
    assert bank.input["transform"]["crop_size"] == 32 and not bank.input["transform"]["train"]
    dm = build_datamodule(cfg)
    row = int(dm.table.rows("test")[0])
    folder = tmp_path / "dive"
    write_frame_folder(folder, dm._frames[row], quality=95)
    predictor = predictor_api.Predictor(results["checkpoint"], device="cpu")
    clips, frames = predictor.read(folder)
    assert clips.shape == dm.load_video(row, "test").shape  # (T, 3, L, 32, 32)
    # JPEG is lossy: the clips differ from the in-memory ones about as much as the frames do
    jpeg_error = (read_frames(folder, range(40)).float() - dm._frames[row].float()).abs().mean()
    diff = (clips.float() - dm.load_video(row, "test").float()).abs().mean()
    assert diff < 1.2 * jpeg_error
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.uint8
    pred = predictor.predict(folder, difficulty=float(dm.table.scale[row]))
    assert np.isfinite(pred.score) and pred.attn.shape[1:] == (5, 3)
    fig = predictor_api.figure(pred)
    assert len(fig.axes) >= 3 + pred.attn.shape[0]  # K top frames + one map per layer
    # the video's known phases, one per frame, taken at the frames its clips sampled
    phases = np.asarray(dm.data.phases[row])  # (40,)
    pred = predictor.predict(folder, difficulty=float(dm.table.scale[row]), frame_labels=phases)
    sampled = phases[predictor.sampler.indices(len(phases), predictor.start_frame)].ravel()
    np.testing.assert_array_equal(pred.step_labels, sampled)  # (T·L,)
    assert pred.record()["step_labels"] == sampled.tolist()
    fig = predictor_api.figure(pred)
    assert ["steps"] in [[t.get_text() for t in ax.get_yticklabels()] for ax in fig.axes]
    too_short = tmp_path / "short"
    write_frame_folder(too_short, dm._frames[row][:10])
    with pytest.raises(ValueError, match="start_frame="):
        predictor.read(too_short)
    # a broken frame: the message is about the video given, not a dataset's preparation tools
    (folder / sorted(p.name for p in folder.iterdir())[7]).write_bytes(b"not a jpeg")
    with pytest.raises(VideoReadError) as err:
        predictor.read(folder)
    assert "is not a readable JPEG" in str(err.value)
    assert f"input={folder} must be a readable video file or a folder of JPEG frames" in str(
        err.value
    )
    assert "prepare_frames" not in str(err.value) and "verify" not in str(err.value)


def test_predict_folder_with_per_input_options(trained, tmp_path):
    results, _, dm, _, _ = trained
    folder = tmp_path / "dives"
    folder.mkdir()
    rows = {}
    for d in (2.0, 3.2):
        row = next(r for r in dm.table.rows("test") if dm.table.scale[r] == d)
        rows[d] = dm.table.ids[row]
        np.save(folder / f"{rows[d]}.npy", dm.sample(int(row), "test")["video"].numpy())
    table = tmp_path / "options.csv"
    table.write_text(f"input,difficulty\n{rows[2.0]}.npy,2.0\n{rows[3.2]},\n")
    out = tmp_path / "out"

    def cfg(*extra):
        return predict_cfg(
            tmp_path, results, out, f"input={folder}", f"options_csv={table}", *extra
        )

    # the empty cell keeps the command line's difficulty; without one, the error names the input
    with pytest.raises(BankError, match=f"{rows[3.2]}.npy: pass difficulty="):
        predict_entry.run(cfg())
    predict_entry.run(cfg("difficulty=3.2"))
    for d, vid in rows.items():
        record = json.loads((out / f"{vid}.json").read_text())
        assert record["scale"] == d and record["group"] == f"dd{d:g}"
    # a CSV saved by a spreadsheet program starts with a byte-order mark
    table.write_text(f"input,difficulty\n{rows[2.0]},2.0\n", encoding="utf-8-sig")
    predict_entry.run(cfg("difficulty=3.2"))
    table.write_text("input,difficulty\nnot_there,2.0\n")
    with pytest.raises(ValueError, match="line 2: 'not_there' is not among the inputs"):
        predict_entry.run(cfg())
    table.write_text("input,level\nx,1\n")
    with pytest.raises(ValueError, match=r"unknown columns \['level'\]"):
        predict_entry.run(cfg())


def test_step_labels_files_and_their_mapping_to_the_sampled_frames(tmp_path):
    """Text (spaces, commas, newlines) and .npy steps files read to the same labels; the labels
    of the frames a linspace sampler takes, by hand; a count that is not the input's is refused."""
    labels = np.repeat([0, 1, 2, 3], 10)  # 40 frames, steps of 10
    text = tmp_path / "steps.txt"
    text.write_text(", ".join(map(str, labels[:20])) + "\n" + " ".join(map(str, labels[20:])))
    np.save(tmp_path / "steps.npy", labels)
    for path in (text, tmp_path / "steps.npy"):
        np.testing.assert_array_equal(predictor_api.read_step_labels(path), labels)
    # linspace(0, 39, 8) = 0, 5.57, 11.1, 16.7, 22.3, 27.9, 33.4, 39 → frames 0 5 11 16 22 27 33 39
    index = ClipSampler(num_clips=2, clip_len=4, scheme="linspace").indices(40)
    assert index.tolist() == [[0, 5, 11, 16], [22, 27, 33, 39]]
    got = predictor_api.labels_at_frames(labels, index, 40, "steps=x", "dive")
    assert got.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(
        ValueError,
        match=r"s\.txt has 39 step labels \(39,\) but input=dive has 40 frames; give one label",
    ):
        predictor_api.labels_at_frames(labels[:39], index, 40, "steps=s.txt", "dive")
    bad = tmp_path / "bad.txt"
    bad.write_text("0 0 1 x 2")
    with pytest.raises(ValueError, match=r"bad\.txt: label 3 is 'x', not an integer"):
        predictor_api.read_step_labels(bad)
    np.save(tmp_path / "float.npy", labels.astype(np.float32))
    with pytest.raises(ValueError, match=r"float\.npy holds a float32 array of shape \(40,\)"):
        predictor_api.read_step_labels(tmp_path / "float.npy")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"empty\.txt holds no labels"):
        predictor_api.read_step_labels(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match=r"missing\.txt is not a file"):
        predictor_api.read_step_labels(tmp_path / "missing.txt")


def test_predict_cli_draws_the_steps_of_a_frame_folder(video_run, tmp_path):
    """``steps=FILE`` end to end: the labels of a 43-frame folder, sampled from start_frame=3 by
    5 clips of 8 at stride 8 (frames 3..42), land in the JSON record; a steps file of another
    length is refused naming both counts; a folder takes steps from its options CSV."""
    _, cfg = load_checkpoint(video_run["checkpoint"])
    dm = build_datamodule(cfg)
    row = int(dm.table.rows("test")[0])
    frames = dm._frames[row]  # (40, 3, H, W)
    inputs = tmp_path / "inputs"
    folder = inputs / "dive"
    write_frame_folder(folder, torch.cat([frames[:3], frames]), quality=95)  # 43 frames
    labels = np.repeat([0, 1, 2, 3], [7, 13, 11, 12])  # runs over the 43 frames
    steps = tmp_path / "dive_steps.txt"
    steps.write_text(" ".join(map(str, labels)))
    difficulty = float(dm.table.scale[row])
    out = tmp_path / "out"

    def cfg_with(*extra):
        return predict_cfg(
            tmp_path, video_run, out, f"difficulty={difficulty}", "start_frame=3", *extra
        )

    (pred,) = predict_entry.run(cfg_with(f"input={folder}", f"steps={steps}"))
    expected = [0] * 4 + [1] * 13 + [2] * 11 + [3] * 12  # labels[3:43], the 40 frames sampled
    record = json.loads((out / "dive.json").read_text())
    assert record["step_labels"] == expected == pred.step_labels.tolist()
    assert (out / "dive.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    np.save(tmp_path / "short.npy", labels[:40])
    with pytest.raises(
        ValueError, match=r"short\.npy has 40 step labels \(40,\) but input=.*dive has 43 frames"
    ):
        predict_entry.run(cfg_with(f"input={folder}", f"steps={tmp_path / 'short.npy'}"))
    # a folder of inputs: one steps= for all is refused; the CSV's steps column, relative to it
    write_frame_folder(inputs / "other", frames[:3].repeat(15, 1, 1, 1)[:43], quality=95)
    with pytest.raises(
        ValueError, match=r"holds 2; give each input its steps file in a 'steps' column"
    ):
        predict_entry.run(cfg_with(f"input={inputs}", f"steps={steps}"))
    table = tmp_path / "options.csv"
    table.write_text("input,steps\ndive,dive_steps.txt\nother,\n")
    predict_entry.run(cfg_with(f"input={inputs}", f"options_csv={table}"))
    assert json.loads((out / "dive.json").read_text())["step_labels"] == expected
    assert "step_labels" not in json.loads((out / "other.json").read_text())


def test_steps_are_refused_for_feature_inputs(trained, tmp_path):
    results, _, dm, *_ = trained
    row = int(dm.table.rows("test")[0])
    np.save(tmp_path / "clip.npy", dm.sample(row, "test")["video"].numpy())
    (tmp_path / "steps.txt").write_text("0 1 2")
    cfg = predict_cfg(
        tmp_path,
        results,
        tmp_path / "out",
        f"input={tmp_path / 'clip.npy'}",
        f"difficulty={float(dm.table.scale[row])}",
        f"steps={tmp_path / 'steps.txt'}",
    )
    with pytest.raises(
        ValueError, match=r"clip\.npy is a feature file, which has no frames to label"
    ):
        predict_entry.run(cfg)
    assert not (tmp_path / "out" / "clip.json").exists()


def test_the_command_re_exports_the_api():
    """``from tpt_aqa.predict import Predictor`` (code written before ``tpt_aqa.predictor``) gets
    the API's own objects."""
    for name in ("Prediction", "Predictor", "figure"):
        assert getattr(predict_entry, name) is getattr(predictor_api, name), name
