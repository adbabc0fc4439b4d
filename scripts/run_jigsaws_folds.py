#!/usr/bin/env python
"""Run JIGSAWS 4-fold cross-validation per task and pool the folds (SPEC §7, §10).

    python scripts/run_jigsaws_folds.py --tasks all --seeds 12 13 14 --out outputs/jigsaws \\
        dataset.root=/data/JIGSAWS model.encoder.weights=/weights/model_rgb.pth

For every task T, fold F (0–3) and seed S it runs, one after another, in a subprocess::

    python -m tpt_aqa.train experiment=E dataset=jigsaws dataset.task=T dataset.fold=F seed=S \\
        hydra.run.dir=OUT/T/foldF/seedS [overrides]

A run whose folder already holds results.json is not run again (--rerun forces it), so the command
resumes after an interruption. Then it pools the folds and writes OUT/jigsaws_results.md and
OUT/jigsaws_results.json, with the paper's numbers beside ours.

How folds are pooled. The original protocol is unpublished, so both usual readings are reported:

- ρ (Fisher-z over folds): each fold's Spearman ρ on its test trials, averaged through Fisher's z,
  tanh(mean(atanh ρ_f)) — the same average the paper uses across tasks and AQA-7 classes.
- ρ (pooled folds): one Spearman ρ over the test predictions of all four folds together (every trial
  of the task exactly once, each predicted by the model that did not train on it).

R-ℓ2 ×100 is the arithmetic mean of the four fold values (each fold normalised by the score range of
its own test trials). Across tasks: the Fisher-z mean of the per-task ρ (for either reading) and the
arithmetic mean of the per-task R-ℓ2. With several seeds every number is computed per seed and given
as mean ± sample std over seeds.

Per-trial predictions: ``tpt_aqa.train`` writes only metrics to results.json. When a run folder has
no predictions.json, this script tests the run's chosen checkpoint again, in this process (one GPU or
the CPU), and writes predictions.json (trial ids, predicted and true scores). A run without a
checkpoint (e.g. fast_dev_run) has no predictions; the pooled ρ of its task is then left empty.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tpt_aqa.config import CONF_DIR
from tpt_aqa.data.jigsaws import NUM_FOLDS, TASKS, resolve_task
from tpt_aqa.metrics import fisher_z_mean, spearman

# SPEC §10 (R-ℓ2 ×100).
PAPER = {
    "Suturing": {"srcc": 0.88, "rl2": 2.722},
    "Needle_Passing": {"srcc": 0.88, "rl2": 5.259},
    "Knot_Tying": {"srcc": 0.91, "rl2": 3.022},
    "average": {"srcc": 0.89, "rl2": 3.668},
}
RESULTS = "results.json"
PREDICTIONS = "predictions.json"
RUN_DIR_RE = re.compile(r"(?P<task>[^/]+)/fold(?P<fold>\d+)/seed(?P<seed>-?\d+)$")
READINGS = ("srcc_fold_mean", "srcc_pooled", "rl2_fold_mean")


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
        preds = path.parent / PREDICTIONS
        predictions = results.get("predictions")  # should tpt_aqa.train ever save them itself
        if predictions is None and preds.is_file():
            predictions = json.loads(preds.read_text())
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


def aggregate(runs: list[FoldRun]) -> dict[str, Any]:
    """Pool folds per task and seed, then tasks per seed, then summarise over seeds.

    Args:
        runs: finished runs (any tasks, folds and seeds).

    Returns:
        ``{"tasks": {task: {...}}, "average": {...}}``. Per task: ``seeds`` maps each seed to its
        fold metrics and the three readings (``srcc_fold_mean``, ``srcc_pooled``,
        ``rl2_fold_mean``), and every reading has ``{"mean", "std", "n"}`` over seeds, with the
        paper's numbers under ``paper``. ``average`` is the same across tasks (per seed: Fisher-z
        mean of the task ρ's, arithmetic mean of the task R-ℓ2's).
    """
    by_task_seed: dict[str, dict[int, list[FoldRun]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by_task_seed[r.task][r.seed].append(r)
    order = [t for t in TASKS if t in by_task_seed] + sorted(set(by_task_seed) - set(TASKS))
    tasks: dict[str, Any] = {}
    across: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for task in order:
        seeds = {}
        for seed, fold_runs in sorted(by_task_seed[task].items()):
            fold_runs = sorted(fold_runs, key=lambda r: r.fold)
            rhos = [_number(r.results.get("test/srcc")) for r in fold_runs]
            rl2s = [_number(r.results.get("test/rl2")) for r in fold_runs]
            finite_rl2 = [v for v in rl2s if not math.isnan(v)]
            pooled, trials = pooled_srcc(fold_runs)
            entry = {
                "folds": {
                    str(r.fold): {"srcc": rho, "rl2": rl2}
                    for r, rho, rl2 in zip(fold_runs, rhos, rl2s, strict=True)
                },
                "num_folds": len(fold_runs),
                "srcc_fold_mean": fisher_z_mean(rhos),
                "srcc_pooled": pooled,
                "pooled_trials": trials,
                "rl2_fold_mean": statistics.fmean(finite_rl2) if finite_rl2 else math.nan,
            }
            seeds[str(seed)] = entry
            for key in READINGS:
                across[seed][key].append(entry[key])
        tasks[task] = {
            "seeds": seeds,
            **{key: _mean_std([s[key] for s in seeds.values()]) for key in READINGS},
            "paper": PAPER.get(task),
        }
    per_seed = {}
    for seed, values in sorted(across.items()):
        rl2 = [v for v in values["rl2_fold_mean"] if not math.isnan(v)]
        pooled = values["srcc_pooled"]
        per_seed[str(seed)] = {
            "num_tasks": len(values["srcc_fold_mean"]),
            "srcc_fold_mean": fisher_z_mean(values["srcc_fold_mean"]),
            # a task without predictions would silently drop out of the pooled average
            "srcc_pooled": math.nan
            if any(math.isnan(v) for v in pooled)
            else fisher_z_mean(pooled),
            "rl2_fold_mean": statistics.fmean(rl2) if rl2 else math.nan,
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


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table with the paper's numbers beside ours."""
    header = [
        "task",
        "folds × seeds",
        "ρ (Fisher-z over folds)",
        "ρ (pooled folds)",
        "R-ℓ2 ×100 (fold mean)",
        "paper ρ",
        "paper R-ℓ2",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = list(summary["tasks"].items())
    num_tasks = len(rows)
    rows.append((f"average ({num_tasks} tasks)", summary["average"]))
    for name, entry in rows:
        seeds = entry["seeds"]
        if "num_folds" in next(iter(seeds.values()), {}):
            folds = sorted({s["num_folds"] for s in seeds.values()})
            size = f"{'/'.join(map(str, folds))} × {len(seeds)}"
        else:
            size = f"— × {len(seeds)}"
        paper = entry.get("paper") or {}
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    size,
                    _cell(entry["srcc_fold_mean"], 4),
                    _cell(entry["srcc_pooled"], 4),
                    _cell(entry["rl2_fold_mean"], 3),
                    f"{paper['srcc']:.2f}" if paper else "—",
                    f"{paper['rl2']:.3f}" if paper else "—",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def write_summary(out: Path, summary: dict[str, Any]) -> str:
    """Write ``jigsaws_results.md`` and ``.json`` into ``out``; returns the Markdown."""
    markdown = (
        "JIGSAWS, 4-fold cross-validation per task (ρ: Spearman; mean ± std over seeds). "
        "Pooling: see scripts/run_jigsaws_folds.py.\n\n" + markdown_table(summary)
    )
    (out / "jigsaws_results.md").write_text(markdown + "\n")
    # NaN is not JSON: missing numbers are written as null
    clean = json.loads(json.dumps(summary), parse_constant=lambda _: None)
    (out / "jigsaws_results.json").write_text(json.dumps(clean, indent=2, allow_nan=False))
    return markdown


def predict_checkpoint(ckpt_path: Path) -> dict[str, Any]:
    """Test a checkpoint again and return its per-trial test predictions.

    Rebuilds data and model from the configuration stored in the checkpoint (so the split and the
    exemplar lists are those of training), on one device, without callbacks or loggers.
    """
    import lightning as L
    from omegaconf import OmegaConf

    from tpt_aqa.config import build_datamodule, build_module
    from tpt_aqa.eval import load_checkpoint
    from tpt_aqa.train import build_trainer

    ckpt, cfg = load_checkpoint(ckpt_path)
    single = {"devices": 1, "num_nodes": 1, "strategy": "auto", "fast_dev_run": False}
    cfg.trainer = OmegaConf.merge(cfg.trainer, single)
    # replaced, not merged: merging {} would keep the run's checkpoint callback and loggers
    cfg.callbacks, cfg.logger = None, None
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_module(cfg)
    module.load_state_dict(ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    trainer = build_trainer(cfg, has_val=False)
    trainer.test(module, datamodule=dm, verbose=False)
    rec = module.last_predictions
    return {
        "checkpoint": str(ckpt_path),
        "ids": [dm.table.ids[int(i)] for i in rec["index"]],
        "pred": rec["pred"].double().tolist(),
        "target": rec["target"].double().tolist(),
    }


def write_predictions(folder: Path) -> bool:
    """Write ``predictions.json`` for a finished run from its chosen checkpoint.

    Returns:
        Whether the file exists afterwards (a run without a checkpoint has none).
    """
    results = json.loads((folder / RESULTS).read_text())
    if (folder / PREDICTIONS).is_file() or "predictions" in results:
        return True
    ckpt = results.get("checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        print(f"  no checkpoint in {folder / RESULTS}: no per-trial predictions for this fold")
        return False
    predictions = predict_checkpoint(Path(ckpt))
    (folder / PREDICTIONS).write_text(json.dumps(predictions, indent=2))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return True


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
    parser.add_argument("--rerun", action="store_true", help="run again where results exist")
    parser.add_argument(
        "--no-predictions",
        action="store_true",
        help="do not re-test checkpoints for per-trial predictions (no pooled ρ)",
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
            elif subprocess.run(command).returncode != 0:
                failed.append(f"{task} fold {fold} seed {seed}")
                continue
            if not args.no_predictions:
                write_predictions(folder)
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
