"""The multirun results table: rows per setting, mean ± sample std over seeds."""

from __future__ import annotations

import csv
import json
import math

import pytest

from tpt_aqa.aggregate import main
from tpt_aqa.core.report import json_text


def write_job(root, num, overrides, results):
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "results.json").write_text(json.dumps(results))


def test_aggregate_groups_by_setting(tmp_path, capsys):
    runs = [
        ("none", 1, 0.90, 0.5),
        ("none", 2, 0.94, 0.7),
        ("baseline_pool", 1, 0.70, 2.0),
        ("baseline_pool", 2, 0.80, 3.0),
    ]
    for num, (ablation, seed, srcc, rl2) in enumerate(runs):
        overrides = ["sweep=grid", f"seed={seed}", f"ablation={ablation}"]
        write_job(tmp_path, num, overrides, {"test/srcc": srcc, "test/rl2": rl2})
    main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "Common overrides: `sweep=grid`" in out
    assert "| ablation=none | 2 | 0.9200 ± 0.0283 | 0.6000 ± 0.1414 |" in out
    assert "| ablation=baseline_pool | 2 | 0.7500 ± 0.0707 | 2.5000 ± 0.7071 |" in out
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[1]["test/srcc_mean"]) == pytest.approx(0.75)
    assert (tmp_path / "results.md").read_text().startswith("Common overrides")


def test_aggregate_rejects_a_folder_without_runs(tmp_path):
    with pytest.raises(SystemExit, match=r"no \*/results\.json"):
        main([str(tmp_path)])


def test_aggregate_puts_the_paper_beside_known_experiments(tmp_path, capsys):
    for num, (ablation, seed) in enumerate([("none", 1), ("none", 2), ("baseline_pool", 1)]):
        overrides = ["experiment=mtl_aqa_tpt", f"seed={seed}", f"ablation={ablation}"]
        write_job(tmp_path, num, overrides, {"test/srcc": 0.95, "test/rl2": 0.25})
    main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| ablation=none | 2 | 0.9500 ± 0.0000 | 0.2500 ± 0.0000 | 0.9607 / 0.2378 |" in out
    assert (
        "| ablation=baseline_pool | 1 | 0.9500 ± 0.0000 | 0.2500 ± 0.0000 | 0.9498 / 0.2893 |"
        in out
    )


def test_aggregate_reads_undefined_metrics_written_as_null(tmp_path, capsys):
    # results.json writes an undefined ρ as null (strict JSON); the mean is over the defined seeds.
    for num, (seed, srcc) in enumerate([(1, 0.90), (2, None), (3, 0.94)]):
        write_job(tmp_path, num, [f"seed={seed}"], {"test/srcc": srcc, "test/rl2": 0.5})
    main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| (defaults) | 3 | 0.9200 ± 0.0283 (2 of 3 defined) | 0.5000 ± 0.0000 |" in out


def test_results_json_text_is_strict_json():
    text = json_text({"test/srcc": math.nan, "x": [1.0, math.inf, {"y": -math.inf}], "ok": 0.5})
    assert json.loads(text) == {"test/srcc": None, "x": [1.0, None, {"y": None}], "ok": 0.5}
    assert "NaN" not in text and "Infinity" not in text
