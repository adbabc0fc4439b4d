"""Aggregate a Hydra multirun into a results table: ``python -m tpt_aqa.aggregate MULTIRUN_DIR``.

Each job folder holds ``results.json`` (written by ``tpt_aqa.train``) and ``.hydra/overrides.yaml``.
Jobs that differ only in ``seed`` form one row, named by the overrides that differ between rows
(the ones all jobs share are listed above the table); the table gives mean ± std (sample std) over
seeds of every test metric, and is written as ``results.md`` and ``results.csv`` in the folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from tpt_aqa.reporting.paper import paper_numbers
from tpt_aqa.scoring.step_metrics import METRICS as PARSING_METRICS

METRICS = (
    "test/srcc",
    "test/rl2",
    "test/srcc_avg",
    "test/rl2_avg",
    "last_epoch_test/srcc",
    "paper_style_best_test/srcc",
    "paper_style_best_test/rl2",
    *(f"test/{name}" for name in PARSING_METRICS),
)


def collect(
    multirun: Path,
) -> tuple[dict[str, list[dict[str, float]]], list[str], dict[str, list[str]]]:
    """Results per setting over the seeds, and the overrides that every job shares."""
    jobs = sorted(p.parent for p in multirun.glob("*/results.json"))
    if not jobs:
        raise SystemExit(
            f"{multirun}: no */results.json; is it a multirun folder of tpt_aqa.train?"
        )
    overrides = {}
    for job in jobs:
        path = job / ".hydra" / "overrides.yaml"
        found = list(OmegaConf.load(path)) if path.is_file() else []
        overrides[job] = [o for o in found if not o.startswith("seed=")]
    common = [o for o in overrides[jobs[0]] if all(o in v for v in overrides.values())]
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    full: dict[str, list[str]] = {}
    for job in jobs:
        setting = " ".join(o for o in overrides[job] if o not in common) or "(defaults)"
        rows[setting].append(json.loads((job / "results.json").read_text()))
        full[setting] = overrides[job]
    return rows, common, full


def summarise(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(
    rows: dict[str, list[dict[str, float]]], overrides: dict[str, list[str]] | None = None
) -> tuple[str, list[dict[str, object]]]:
    """Markdown table and CSV records, with the paper's numbers where the paper has them."""
    metrics = [m for m in METRICS if any(m in r for runs in rows.values() for r in runs)]
    paper = {k: paper_numbers(v) for k, v in (overrides or {}).items()}
    header = ["setting", "seeds", *metrics] + (["paper ρ / R-ℓ2"] if any(paper.values()) else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    records = []
    for setting, runs in rows.items():
        record: dict[str, object] = {"setting": setting, "seeds": len(runs)}
        cells = [setting, str(len(runs))]
        for m in metrics:
            values = [r.get(m, math.nan) for r in runs]
            mean, std = summarise(values)
            record[f"{m}_mean"], record[f"{m}_std"] = mean, std
            # an undefined value (null in results.json, e.g. ρ of constant predictions) is left
            # out of the mean, and the cell says over how many seeds it was taken
            defined = sum(v is not None and not math.isnan(v) for v in values)
            cell = "—" if math.isnan(mean) else f"{mean:.4f} ± {std:.4f}"
            if 0 < defined < len(values):
                cell += f" ({defined} of {len(values)} defined)"
            cells.append(cell)
        if any(paper.values()):
            found = paper.get(setting)
            record["paper_srcc"], record["paper_rl2"] = found if found else (None, None)
            cells.append(
                f"{found[0]:.4f} / {found[1] if found[1] is not None else '—'}" if found else "—"
            )
        lines.append("| " + " | ".join(cells) + " |")
        records.append(record)
    return "\n".join(lines), records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "multirun", type=Path, help="a multirun folder (outputs/train/multiruns/<time>)"
    )
    args = parser.parse_args(argv)
    rows, common, overrides = collect(args.multirun)
    markdown, records = table(rows, overrides)
    if common:
        markdown = f"Common overrides: `{' '.join(common)}`\n\n{markdown}"
    (args.multirun / "results.md").write_text(markdown + "\n")
    with open(args.multirun / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    print(markdown)


if __name__ == "__main__":
    main()
