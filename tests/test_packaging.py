"""The package as users install it: a wheel that carries its Hydra configs and runs from anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "src" / "tpt_aqa" / "conf"


def build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the project's files (the checkout stays untouched)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    dist = tmp_path / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip_wheel, "-w", str(dist), str(source)], check=True, capture_output=True)
    (wheel,) = dist.glob("tpt_aqa-*.whl")
    return wheel


@pytest.mark.slow
def test_wheel_carries_the_configs_and_trains_outside_the_checkout(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"tpt_aqa/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*") if p.is_file()
    }
    assert expected and expected <= names, sorted(expected - names)[:5]

    # A fresh venv with the wheel; its dependencies are this environment's packages (a .pth line),
    # so the test installs nothing from the network. The checkout's own src/ is not on its path.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, str(wheel)],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run(
        [str(python), "-c", "import tpt_aqa; print(tpt_aqa.__file__)"],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert where.startswith(site), where
    run = subprocess.run(
        [str(python), "-m", "tpt_aqa.train", "debug=fast_dev_run", "logger=none"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert list(work.glob("outputs/train/runs/*/results.json")), sorted(work.rglob("*"))[:20]
