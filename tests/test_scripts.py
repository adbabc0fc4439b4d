"""Data preparation scripts on tiny fixtures, and the verify / export_table entry points."""

from __future__ import annotations

import importlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import tomllib
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    return importlib.import_module(f"tpt_aqa.{name}")


def write_video(path: Path, num_frames: int, size=(48, 64)) -> None:
    """Frame i is a flat grey of value 8·i, so decoded frames can be told apart."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0"}
        for i in range(num_frames):
            rgb = np.full((*size, 3), 8 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# every tool users are told to run is a module of the package (python -m tpt_aqa.<tool>)
ARGPARSE_TOOLS = [
    "prepare_frames",
    "export_synthetic",
    "run_jigsaws_folds",
    "make_demo_checkpoint",
    "weights",
    "benchmark",
    "aggregate",
    "convert",
]


# Runs each tool as ``python -m`` would (runpy, as __main__) in one interpreter: one torch import
# for all of them instead of one per tool.
HELP_ALL = """
import contextlib, io, json, runpy, sys
out = {}
for tool in sys.argv[1:]:
    sys.argv = [tool, "--help"]
    buf = io.StringIO()
    code = None
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_module(f"tpt_aqa.{tool}", run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            code = exit.code
    out[tool] = [code, buf.getvalue()]
print(json.dumps(out))
"""


def test_tools_are_package_modules_with_help(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", HELP_ALL, *ARGPARSE_TOOLS],
        cwd=tmp_path,  # not the checkout: the installed package alone
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-1000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert sorted(result) == sorted(ARGPARSE_TOOLS)
    for tool, (code, text) in result.items():
        assert code == 0 and text.startswith("usage: "), (tool, code, text[:200])


def test_console_scripts_point_at_entry_points():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    modules = {target.split(":")[0].removeprefix("tpt_aqa.") for target in scripts.values()}
    assert (
        set(ARGPARSE_TOOLS) | {"train", "eval", "predict", "verify", "extract_features"} <= modules
    )
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        assert name.startswith("tpt-aqa-") and callable(
            getattr(importlib.import_module(module), func)
        )


def test_prepare_whole_videos_and_resume(tmp_path, capsys):
    prepare = load_script("prepare_frames")
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "01.mp4", 12)
    write_video(videos / "02.mp4", 7)
    out = tmp_path / "frames"
    assert prepare.main([str(videos), str(out), "--pattern", "{:08d}.jpg"]) == 0
    assert "2 written, 0 already there, 0 failed" in capsys.readouterr().out
    files = sorted((out / "01").iterdir())
    assert [f.name for f in files[:2]] == ["00000000.jpg", "00000001.jpg"] and len(files) == 12
    assert len(list((out / "02").iterdir())) == 7

    assert abs(np.asarray(Image.open(files[5])).mean() - 40) < 4  # frame 5 is grey 8·5
    assert prepare.main([str(videos), str(out)]) == 0
    assert "0 written, 2 already there" in capsys.readouterr().out
    assert not list(out.glob(".*partial"))


def test_prepare_a_file_that_is_not_a_video_says_so_and_leaves_nothing(tmp_path, capsys):
    prepare = load_script("prepare_frames")
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"these bytes are not a video" * 20)
    write_video(videos / "good.mp4", 5)
    out = tmp_path / "frames"
    assert prepare.main([str(videos), str(out)]) == 1
    printed = capsys.readouterr().out
    assert f"broken: {videos / 'broken.mp4'} is not a readable video (" in printed
    assert "1 written, 0 already there, 1 failed" in printed
    assert sorted(p.name for p in out.iterdir()) == ["good"]  # no .broken.partial left behind
    # one file given: a video is prepared alone, anything else is a usage error
    assert prepare.main([str(videos / "good.mp4"), str(tmp_path / "one")]) == 0
    assert len(list((tmp_path / "one" / "good").iterdir())) == 5
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        prepare.main([str(notes), str(tmp_path / "two")])
    assert exit_info.value.code == 2
    assert f"{notes} is a file, not a folder of videos nor a video" in capsys.readouterr().err


def test_prepare_mtl_dives(tmp_path, capsys):
    prepare = load_script("prepare_frames")
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "01.mp4", 30)
    annotations = {
        # frame numbers count from 1: frame n is decoded frame n - 1
        (1, 1): {"start_frame": 11, "end_frame": 26},  # 16 frames, longer than min 12: as is
        (1, 2): {"start_frame": 21, "end_frame": 25},  # 5 frames: extended back to 14..25
        (2, 1): {"start_frame": 1, "end_frame": 6},  # no video 02.mp4
    }
    ann = tmp_path / "ann.pkl"
    ann.write_bytes(pickle.dumps(annotations))
    out = tmp_path / "dives"
    code = prepare.main(
        [str(videos), str(out), "--mtl-annotations", str(ann), "--min-frames", "12"]
    )
    text = capsys.readouterr().out
    assert code == 1 and "02_01: video" in text and "2 written, 0 already there, 1 failed" in text
    first = sorted((out / "01_01").iterdir())
    assert len(first) == 16
    assert abs(np.asarray(Image.open(first[0])).mean() - 8 * 10) < 4  # frame 11 = decoded 10
    second = sorted((out / "01_02").iterdir())
    assert len(second) == 12

    assert abs(np.asarray(Image.open(second[0])).mean() - 8 * 13) < 4  # frame 14 = decoded 13


def test_prepare_refuses_a_malicious_annotation_pickle(tmp_path):
    prepare = load_script("prepare_frames")
    (tmp_path / "videos").mkdir()
    ann = tmp_path / "evil.pkl"
    ann.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    from tpt_aqa.data.safe_pickle import UnsafePickleError

    with pytest.raises(UnsafePickleError, match=r"refusing to unpickle os\.system"):
        prepare.main([str(tmp_path / "videos"), str(tmp_path / "o"), "--mtl-annotations", str(ann)])


def test_verify_lists_planted_problems_and_export_table(tmp_path, capsys):
    from tpt_aqa import export_table, verify

    from .conftest import compose_cfg
    from .test_aqa7 import AQA7_CLASSES, FAST, make_aqa7

    root = make_aqa7(tmp_path / "aqa7")
    diving = root / "frames" / f"{AQA7_CLASSES[0]}-out"
    frames = sorted((diving / "001").iterdir())
    frames[-1].write_bytes(b"not a jpeg")  # corrupt last frame
    for f in sorted((diving / "002").iterdir())[3:]:
        f.unlink()  # a folder with too few frames
    args = [*FAST, f"dataset.root={root}", "dataset=aqa7"]
    problems = verify.run(compose_cfg(tmp_path, "dataset=aqa7", *args, config="verify"))
    out = capsys.readouterr().out
    assert any(p.startswith("diving_001:") for p in problems)
    assert any(p.startswith("diving_002:") for p in problems)
    assert not any(p.startswith("diving_003:") for p in problems)
    assert "problem(s) found" in out and "split" in out
    table = tmp_path / "table.csv"
    export_table.run(compose_cfg(tmp_path, *args, f"out={table}", config="export_table"))
    lines = table.read_text().splitlines()
    assert lines[0] == "id,score,split,group,scale,class" and len(lines) > 5
