#!/usr/bin/env python
"""Run JIGSAWS 4-fold cross-validation per task and pool the folds (docs/method.md §7, §10).

    python -m tpt_aqa.run_jigsaws_folds --tasks all --seeds 12 13 14 --out outputs/jigsaws \\
        -- dataset.root=/data/JIGSAWS model.encoder.weights=/weights/model_rgb.pth

(``--`` ends the options: everything after it is passed to every run as Hydra overrides.)

For every task T, fold F (0–3) and seed S it runs, one after another, in a subprocess::

    python -m tpt_aqa.train experiment=E dataset=jigsaws dataset.task=T dataset.fold=F seed=S \\
        hydra.run.dir=OUT/T/foldF/seedS [overrides]

A run whose folder already holds results.json is not run again (--rerun moves that folder aside to
``seedS.replaced-<time>`` and runs it again), so the command resumes after an interruption. Then it
pools the folds and writes OUT/jigsaws_results.md and OUT/jigsaws_results.json, with the paper's
numbers beside ours.

How folds are pooled. The original protocol is unpublished, so both usual readings are reported:

- ρ (Fisher-z over folds): each fold's Spearman ρ on its test trials, averaged through Fisher's z,
  tanh(mean(atanh ρ_f)) — the same average the paper uses across tasks and AQA-7 classes.
- ρ (pooled folds): one Spearman ρ over the test predictions of all four folds together (every trial
  of the task exactly once, each predicted by the model that did not train on it).

R-ℓ2 ×100 is the arithmetic mean of the four fold values (each fold normalised by the score range of
its own test trials). Across tasks: the Fisher-z mean of the per-task ρ (for either reading) and the
arithmetic mean of the per-task R-ℓ2. With several seeds every number is computed per seed and given
as mean ± sample std over seeds. A fold or task without a number (NaN, or a key missing from
results.json) leaves the average it belongs to empty instead of silently dropping out of it.

These are computed for the checkpoint each run selects on its validation carve (``test/*`` in
results.json, the headline). When the runs also report them, a second table gives the same fold
means for the last epoch (``last_epoch_test/*``) and for the release's optimistic pick of the best
test epoch (``paper_style_best_test/*``), clearly labelled as not model selection (docs/method.md §7).

Per-trial predictions come from each run's results.json (``predictions``: trial ids, predicted and
true scores of the selected checkpoint, written by ``tpt_aqa.train``). When a fold lacks them, the
pooled ρ of its task is left empty.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tpt_aqa.config import CONF_DIR
from tpt_aqa.core.startup import setup
from tpt_aqa.data.jigsaws import NUM_FOLDS, TASKS, resolve_task
from tpt_aqa.reporting.paper import PAPER as PAPER_NUMBERS
from tpt_aqa.scoring.metrics import fisher_z_mean, spearman

setup()  # resolver, warning filters, Lightning's tips (core.startup): before Hydra composes

# The paper's numbers (docs/method.md §10; R-ℓ2 ×100), from the package's shared table.
PAPER = {
    name: dict(zip(("srcc", "rl2"), PAPER_NUMBERS[("jigsaws_tpt", name)], strict=True))
    for name in (*TASKS, "average")
}
# What results.json reports per fold: the validation-selected checkpoint (test/, the headline, with
# per-trial predictions) and, for reference, the last epoch and the release's best-on-test pick.
SELECTIONS = {
    "": "test/",
    "last_epoch_": "last_epoch_test/",
    "paper_style_": "paper_style_best_test/",
}
RESULTS = "results.json"
RUN_DIR_RE = re.compile(r"(?P<task>[^/]+)/fold(?P<fold>\d+)/seed(?P<seed>-?\d+)$")
READINGS = (
    "srcc_fold_mean",
    "srcc_pooled",
    "rl2_fold_mean",
    *(f"{name}{metric}_fold_mean" for name in SELECTIONS if name for metric in ("srcc", "rl2")),
)


@dataclass
class FoldRun:
    """One finished training run: a task, test fold and seed."""

    task: str
    fold: int
    seed: int
    results: dict[str, Any]
    predictions: dict[str, list] | None  # {"ids", "pred", "target"}, or None when not saved


def run_dir(out: Path, task: str, fold: int, seed: int) -> Path:
    """Where the run of one task, fold and seed writes its Hydra outputs."""
    return out / task / f"fold{fold}" / f"seed{seed}"


def train_command(
    experiment: str, task: str, fold: int, seed: int, out: Path, overrides: list[str]
) -> list[str]:
    """The ``python -m tpt_aqa.train`` command of one run."""
    return [
        sys.executable,
        "-m",
        "tpt_aqa.train",
        f"experiment={experiment}",
        "dataset=jigsaws",
        f"dataset.task={task}",
        f"dataset.fold={fold}",
        f"seed={seed}",
        f"hydra.run.dir={run_dir(out, task, fold, seed)}",
        *overrides,
    ]


def load_runs(out: Path) -> list[FoldRun]:
    """Every finished run under ``out`` (``{task}/fold{f}/seed{s}/results.json``).

    Raises:
        SystemExit: when there is none.
    """
    runs = []
    for path in sorted(out.glob(f"*/fold*/seed*/{RESULTS}")):
        match = RUN_DIR_RE.search(path.parent.as_posix())
        if match is None:
            continue
        results = json.loads(path.read_text())
        predictions = results.get("predictions")
        runs.append(
            FoldRun(
                task=match["task"],
                fold=int(match["fold"]),
                seed=int(match["seed"]),
                results=results,
                predictions=predictions,
            )
        )
    if not runs:
        raise SystemExit(f"{out}: no {{task}}/fold{{f}}/seed{{s}}/{RESULTS}; run the folds first")
    return runs


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _mean_std(values: list[float]) -> dict[str, float | int]:
    """Mean and sample std over seeds, ignoring NaN; ``n`` counts the values used."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": statistics.fmean(finite), "std": std, "n": len(finite)}


def pooled_srcc(runs: list[FoldRun]) -> tuple[float, int]:
    """Spearman ρ over the concatenated test predictions of a task's folds.

    Returns:
        ``(ρ, number of trials)``; NaN when a fold has no saved predictions.

    Raises:
        ValueError: when a trial is predicted by two folds (the folds overlap).
    """
    if any(r.predictions is None for r in runs):
        return math.nan, 0
    ids = [i for r in runs for i in r.predictions["ids"]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"folds overlap: trials predicted twice in {runs[0].task}")
    pred = torch.tensor([p for r in runs for p in r.predictions["pred"]], dtype=torch.float64)
    target = torch.tensor([t for r in runs for t in r.predictions["target"]], dtype=torch.float64)
    return spearman(pred, target), len(ids)


def _pool(key: str, values: list[float]) -> float:
    """ρ's through Fisher's z, R-ℓ2's arithmetically; NaN if any value is NaN, so that a fold or
    task without the number never silently drops out of the average."""
    if not values or any(math.isnan(v) for v in values):
        return math.nan
    return fisher_z_mean(values) if "srcc" in key else statistics.fmean(values)


def fold_readings(runs: list[FoldRun]) -> dict[str, Any]:
    """The readings of one task and seed from its folds (see the module docstring).

    Args:
        runs: the task's runs of one seed, one per fold.

    Returns:
        Per-fold metrics under ``folds``, ``num_folds``, ``pooled_trials`` and every reading of
        ``READINGS`` (NaN where a fold lacks the number).
    """
    runs = sorted(runs, key=lambda r: r.fold)
    folds = {str(r.fold): {} for r in runs}
    entry: dict[str, Any] = {"folds": folds, "num_folds": len(runs)}
    for name, prefix in SELECTIONS.items():
        for metric in ("srcc", "rl2"):
            values = [_number(r.results.get(f"{prefix}{metric}")) for r in runs]
            for r, v in zip(runs, values, strict=True):
                folds[str(r.fold)][f"{name}{metric}"] = v
            entry[f"{name}{metric}_fold_mean"] = _pool(metric, values)
    entry["srcc_pooled"], entry["pooled_trials"] = pooled_srcc(runs)
    return entry


def aggregate(runs: list[FoldRun]) -> dict[str, Any]:
    """Pool folds per task and seed, then tasks per seed, then summarise over seeds.

    Args:
        runs: finished runs (any tasks, folds and seeds).

    Returns:
        ``{"tasks": {task: {...}}, "average": {...}}``. Per task, ``seeds`` maps each seed to
        ``fold_readings``; each reading of ``READINGS`` is summarised as ``{"mean", "std", "n"}``
        over seeds; ``paper`` holds the paper's numbers. ``average`` is the same across tasks (per
        seed: Fisher-z mean of the task ρ's, arithmetic mean of the task R-ℓ2's).
    """
    by_task_seed: dict[str, dict[int, list[FoldRun]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by_task_seed[r.task][r.seed].append(r)
    order = [t for t in TASKS if t in by_task_seed] + sorted(set(by_task_seed) - set(TASKS))
    tasks: dict[str, Any] = {}
    across: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for task in order:
        seeds = {str(s): fold_readings(r) for s, r in sorted(by_task_seed[task].items())}
        for seed, entry in seeds.items():
            for key in READINGS:
                across[int(seed)][key].append(entry[key])
        tasks[task] = {
            "seeds": seeds,
            **{key: _mean_std([s[key] for s in seeds.values()]) for key in READINGS},
            "paper": PAPER.get(task),
        }
    per_seed = {
        str(seed): {
            "num_tasks": len(values["srcc_fold_mean"]),
            **{key: _pool(key, values[key]) for key in READINGS},
        }
        for seed, values in sorted(across.items())
    }
    average = {
        "seeds": per_seed,
        **{key: _mean_std([s[key] for s in per_seed.values()]) for key in READINGS},
        "paper": PAPER["average"],
    }
    return {"tasks": tasks, "average": average}


def _cell(stat: dict[str, float | int], digits: int) -> str:
    if stat["n"] == 0:
        return "—"
    if stat["n"] == 1:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = list(summary["tasks"].items())
    return [*rows, (f"average ({len(rows)} tasks)", summary["average"])]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as Markdown: the validation-selected checkpoint with the paper's numbers beside
    it, then (when the runs report them) the last epoch and the paper-style best on test."""
    rows = []
    for name, entry in _rows(summary):
        seeds = entry["seeds"]
        if name in summary["tasks"]:
            folds = "/".join(map(str, sorted({s["num_folds"] for s in seeds.values()})))
        else:
            folds = "—"
        paper = entry.get("paper") or {}
        rows.append(
            [
                name,
                f"{folds} × {len(seeds)}",
                _cell(entry["srcc_fold_mean"], 4),
                _cell(entry["srcc_pooled"], 4),
                _cell(entry["rl2_fold_mean"], 3),
                f"{paper['srcc']:.2f}" if paper else "—",
                f"{paper['rl2']:.3f}" if paper else "—",
            ]
        )
    header = ["task", "folds × seeds", "ρ (Fisher-z over folds)", "ρ (pooled folds)"]
    header += ["R-ℓ2 ×100 (fold mean)", "paper ρ", "paper R-ℓ2"]
    text = _table(header, rows)
    reference = [k for k in READINGS[3:] if any(e[k]["n"] for _, e in _rows(summary))]
    if reference:
        names = {"last_epoch_": "last epoch", "paper_style_": "paper-style best on test"}
        header = ["task"]
        for key in reference:
            name = next(n for n in names if key.startswith(n))
            metric = "ρ" if "srcc" in key else "R-ℓ2 ×100"
            header.append(f"{metric}, {names[name]}")
        rows = [
            [name] + [_cell(entry[k], 4 if "srcc" in k else 3) for k in reference]
            for name, entry in _rows(summary)
        ]
        note = "fold means as above"
        if any(k.startswith("paper_style_") for k in reference):
            note += (
                "; the paper-style numbers pick the best test epoch per fold, ρ and R-ℓ2 "
                "independently, as the release did"
            )
        text += f"\n\nFor reference, not model selection ({note}):\n\n" + _table(header, rows)
    return text


def write_summary(out: Path, summary: dict[str, Any]) -> str:
    """Write ``jigsaws_results.md`` and ``.json`` into ``out``; returns the Markdown."""
    markdown = (
        "JIGSAWS, 4-fold cross-validation per task (ρ: Spearman; mean ± std over seeds). "
        "Pooling: see python -m tpt_aqa.run_jigsaws_folds --help.\n\n" + markdown_table(summary)
    )
    (out / "jigsaws_results.md").write_text(markdown + "\n")
    # NaN is not JSON: missing numbers are written as null
    clean = json.loads(json.dumps(summary), parse_constant=lambda _: None)
    (out / "jigsaws_results.json").write_text(json.dumps(clean, indent=2, allow_nan=False))
    return markdown


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides passed to every run, e.g. dataset.root=/data/JIGSAWS",
    )
    parser.add_argument(
        "--tasks", nargs="+", default=["all"], help=f"{', '.join(TASKS)} or all (default)"
    )
    parser.add_argument(
        "--folds", nargs="+", type=int, default=list(range(NUM_FOLDS)), help="default: 0 1 2 3"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[12], help="default: 12")
    parser.add_argument(
        "--experiment", default="jigsaws_tpt", help="conf/experiment/<name>.yaml (jigsaws_tpt)"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/jigsaws"), help="output root")
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="run again where results exist (the earlier run is moved aside)",
    )
    parser.add_argument(
        "--aggregate-only", action="store_true", help="only pool the runs already under --out"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    args.tasks = list(TASKS) if args.tasks == ["all"] else [resolve_task(t) for t in args.tasks]
    bad = [f for f in args.folds if not 0 <= f < NUM_FOLDS]
    if bad:
        parser.error(f"--folds {bad}: folds are 0–{NUM_FOLDS - 1}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    failed: list[str] = []
    if not args.aggregate_only:
        if not (Path(CONF_DIR) / "experiment" / f"{args.experiment}.yaml").is_file():
            names = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
            raise SystemExit(
                f"--experiment {args.experiment}: no conf/experiment/{args.experiment}.yaml; "
                f"available: {', '.join(names)}"
            )
        jobs = [(t, f, s) for t in args.tasks for f in args.folds for s in args.seeds]
        for n, (task, fold, seed) in enumerate(jobs, start=1):
            folder = run_dir(out, task, fold, seed)
            command = train_command(args.experiment, task, fold, seed, out, args.overrides)
            print(f"[{n}/{len(jobs)}] {task} fold {fold} seed {seed}: {folder}", flush=True)
            if args.dry_run:
                print("  " + " ".join(command))
                continue
            if (folder / RESULTS).is_file() and not args.rerun:
                print(f"  {RESULTS} exists: skipped (--rerun runs it again)")
                continue
            if (folder / RESULTS).is_file():  # tpt_aqa.train refuses a finished run's folder
                aside = folder.with_name(f"{folder.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
                folder.rename(aside)
                print(f"  the earlier run moved to {aside}")
            if subprocess.run(command).returncode != 0:
                failed.append(f"{task} fold {fold} seed {seed}")
        if args.dry_run:
            return 0
        if failed:
            print(f"{len(failed)} run(s) failed: {'; '.join(failed)}", file=sys.stderr)
    summary = aggregate(load_runs(out))
    print(write_summary(out, summary))
    print(f"written: {out / 'jigsaws_results.md'}, {out / 'jigsaws_results.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
