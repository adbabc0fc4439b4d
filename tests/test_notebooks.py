"""The notebooks run end to end on a demo checkpoint and draw their figures; git holds them
without outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# figures each notebook must show: 01 the prediction figure and the attention map (+ phases),
# 02 the scatter and the residual plot
FIGURES = {"01_attention_maps.ipynb": 2, "02_results.ipynb": 2}


def test_notebooks_are_stored_without_outputs():
    assert [p.name for p in NOTEBOOKS] == sorted(FIGURES)
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo checkpoint made by the script the notebooks tell users to run (one epoch)."""
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "tpt_aqa.make_demo_checkpoint", str(out), "--epochs=1"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # never silent: a line per stage with its time (it once ran 35 minutes printing nothing)
    assert "training the notebook demo (1 epochs" in proc.stdout
    assert "done in" in proc.stdout and "trained in" in proc.stdout
    return out


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_notebook_runs_and_draws_its_figures(name, demo, monkeypatch):
    monkeypatch.setenv("TPT_AQA_DEMO", str(demo))
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(REPO / "notebooks")}},
    ).execute()
    images = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if "image/png" in out.get("data", {})
    ]
    errors = [
        out for cell in nb.cells for out in cell.get("outputs", []) if out.output_type == "error"
    ]
    assert not errors
    assert len(images) == FIGURES[name]
