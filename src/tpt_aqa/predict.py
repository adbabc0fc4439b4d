"""Score new videos with a trained checkpoint and show why.

``python -m tpt_aqa.predict ckpt_path=CKPT input=PATH [difficulty=3.2 | class=diving | group=NAME]``
(``USAGE``)

``input`` is a video file, a folder of JPEG frames, a ``.npy`` feature file (checkpoints trained on
cached features), or a folder of any of these (scored one after the other with a progress bar and a
CSV of results). The video is read, sampled and cropped exactly as the benchmark's test videos were
(the settings travel in the checkpoint's exemplar bank, ``tpt_aqa.scoring.bank``), encoded once, and
compared with the M fixed exemplars of its group (``exemplars=all``: every training video of the
group). For each input the command prints the score in the benchmark's units (× difficulty, and
de-normalised for benchmarks trained on a 0–100 scale), the spread over exemplars, the time it took,
and writes ``<name>.json`` and ``<name>.png``: the frames of the clip each query attends to most,
in temporal order (paper Fig. 3), above the per-layer query × clip attention map (Fig. 4).

``steps=FILE`` (a ``steps`` column of ``options_csv`` for a folder of inputs): the input's known
step label of every frame, in order (as FineDiving's ``frames_labels``), as a 1-D integer ``.npy``
array or a text file of whitespace- or comma-separated integers. The labels of the frames the clips
sampled go into the JSON record (``step_labels``) and are drawn under the attention maps.

Python: ``tpt_aqa.predictor`` (``Predictor(ckpt_path).predict(path, difficulty=3.2)``), whose
names this module re-exports.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from tpt_aqa.cli import run_command
from tpt_aqa.config import CONF_DIR, require_keys
from tpt_aqa.core.atomic import atomic_write_text
from tpt_aqa.core.errors import ConfigError, exit_on_user_error
from tpt_aqa.core.report import json_text, to_log_file
from tpt_aqa.core.startup import setup
from tpt_aqa.data.video import JPEG_SUFFIXES, VideoReadError

# the Python API; code written before tpt_aqa.predictor imports Predictor from here
from tpt_aqa.predictor import FEATURE_SUFFIX, Prediction, Predictor, figure

setup()  # resolver, warning filters, Lightning's tips (core.startup): before Hydra composes

log = logging.getLogger(__name__)

USAGE = "python -m tpt_aqa.predict ckpt_path=CKPT input=PATH [difficulty=3.2 | class=diving | group=NAME]"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def list_inputs(path: Path, kind: str) -> list[Path]:
    """The inputs under ``path``: itself when it is one input, else its entries that are."""
    if not path.exists():
        raise FileNotFoundError(f"input={path} does not exist")
    if path.is_file() or _is_frame_folder(path):
        return [path]
    inputs = sorted(
        p
        for p in path.iterdir()
        if (kind == "features" and p.suffix == FEATURE_SUFFIX)
        or (kind == "video" and (p.suffix.lower() in VIDEO_SUFFIXES or _is_frame_folder(p)))
    )
    if not inputs:
        wanted = (
            f"{FEATURE_SUFFIX} feature files"
            if kind == "features"
            else f"video files ({', '.join(VIDEO_SUFFIXES)}) or folders of JPEG frames"
        )
        raise ConfigError(f"input={path} is a folder without {wanted}")
    return inputs


OPTION_COLUMNS = {
    "difficulty": ("difficulty", float),
    "class": ("class_name", str),
    "group": ("group", str),
    "scale": ("scale", float),
    "start_frame": ("start_frame", int),
    "steps": ("frame_labels", str),
}


def read_options_csv(path: str | Path, inputs: list[Path]) -> dict[Path, dict[str, Any]]:
    """Per-input options from a CSV: a column ``input`` (a file or folder name among the inputs,
    with or without its suffix) and any of ``difficulty``, ``class``, ``group``, ``scale``,
    ``start_frame``, ``steps`` (a steps file, relative paths from the CSV's folder); an empty cell
    keeps the command line's value.

    Raises:
        ConfigError: naming the file, line and fix for a missing column, an unknown column or
            input, or a value that is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"options_csv={path} is not a file")
    names = {p.name: p for p in inputs} | {p.stem: p for p in inputs}
    with path.open(newline="", encoding="utf-8-sig") as f:  # spreadsheets write a BOM
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "input" not in columns:
            raise ConfigError(
                f"options_csv={path} has no column 'input' (columns: {', '.join(columns)}); "
                f"use input plus any of {', '.join(OPTION_COLUMNS)}"
            )
        unknown = sorted(set(columns) - set(OPTION_COLUMNS) - {"input"})
        if unknown:
            raise ConfigError(
                f"options_csv={path}: unknown columns {unknown}; use any of {', '.join(OPTION_COLUMNS)}"
            )
        options: dict[Path, dict[str, Any]] = {}
        for line, row in enumerate(reader, start=2):
            target = names.get(row["input"].strip())
            if target is None:
                raise ConfigError(
                    f"options_csv={path}, line {line}: {row['input']!r} is not among the inputs "
                    "(a file or folder name inside input=)"
                )
            parsed = {}
            for column, (key, kind) in OPTION_COLUMNS.items():
                cell = (row.get(column) or "").strip()
                if not cell:
                    continue
                try:
                    parsed[key] = kind(cell)
                except ValueError:
                    raise ConfigError(
                        f"options_csv={path}, line {line}: {column}={cell!r} is not a {kind.__name__}"
                    ) from None
            if "frame_labels" in parsed:
                parsed["frame_labels"] = path.parent / parsed["frame_labels"]
            options[target] = parsed
    return options


def _is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in JPEG_SUFFIXES for p in path.iterdir())


def _unique_stem(path: Path, taken: set[str]) -> str:
    stem = path.stem if path.is_file() else path.name
    name, k = stem, 1
    while name in taken:
        k += 1
        name = f"{stem}_{k}"
    taken.add(name)
    return name


def run(cfg: DictConfig) -> list[Prediction]:
    """Score ``cfg.input`` (one input or a folder of them) and write JSON, PNG and CSV."""
    from rich.progress import Progress

    from tpt_aqa.reporting.viz import save_figure

    predictor = Predictor(cfg.ckpt_path, device=cfg.device, exemplars=cfg.exemplars)
    options = {
        "difficulty": cfg.get("difficulty"),
        "class_name": cfg.get("class"),
        "group": cfg.get("group"),
        "scale": cfg.get("scale"),
    }
    inputs = list_inputs(Path(cfg.input), predictor.kind)
    per_input = read_options_csv(cfg.options_csv, inputs) if cfg.get("options_csv") else {}
    start_frame = cfg.get("start_frame")
    steps = cfg.get("steps")
    if steps is not None and len(inputs) > 1:
        raise ConfigError(
            f"steps={steps} labels the frames of one input, but input={cfg.input} holds "
            f"{len(inputs)}; give each input its steps file in a 'steps' column of options_csv"
        )
    for path in inputs:  # a wrong or missing option fails before any reading
        given = {**options, **per_input.get(path, {})}
        given.pop("start_frame", None)
        labels = given.pop("frame_labels", steps)
        try:
            predictor.bank.resolve_group(**given)
            if labels is not None:
                predictor.check_steps(path, labels)
        except ConfigError as err:
            where = f"{path.name}: " if len(inputs) > 1 else ""
            raise type(err)(f"{where}{err}") from None
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log.info("checkpoint loaded in %.2f s (%s)", predictor.load_seconds, predictor.device)
    results: list[Prediction] = []
    rows: list[dict[str, Any]] = []
    failed = 0
    taken: set[str] = set()
    with Progress(disable=len(inputs) == 1 or not sys.stderr.isatty(), transient=True) as bar:
        task = bar.add_task("scoring", total=len(inputs))
        for path in inputs:
            name = _unique_stem(path, taken)
            try:
                given = {"start_frame": start_frame, "frame_labels": steps, **options}
                given.update(per_input.get(path, {}))
                pred = predictor.predict(path, **given)
            except (VideoReadError, ConfigError, ValueError, OSError) as err:
                if len(inputs) == 1:
                    raise
                failed += 1
                print(f"failed: {path}: {err}", file=sys.stderr)
                to_log_file(f"failed: {path}: {err}")
                rows.append({"input": str(path), "error": str(err)})
                bar.advance(task)
                continue
            record = pred.record()
            record["checkpoint"] = predictor.ckpt_path
            atomic_write_text(out / f"{name}.json", json_text(record))
            png = ""
            if cfg.figure:
                fig = figure(pred)
                if fig is not None:
                    png = str(save_figure(fig, out / f"{name}.png"))
            results.append(pred)
            unit = f" (raw {pred.raw_score:.2f})" if pred.raw_score is not None else ""
            log.info(
                f"{path}: {pred.score:.3f} ± {pred.spread:.3f}{unit}  group {pred.group}, "
                f"{len(pred.exemplars)} exemplars, {pred.timings['total']:.2f} s "
                f"(read {pred.timings['read']:.2f}, encode {pred.timings['encode']:.2f}, "
                f"compare {pred.timings['compare']:.3f})"
            )
            rows.append(
                {
                    "input": str(path),
                    "score": f"{pred.score:.6f}",
                    "spread": f"{pred.spread:.6f}",
                    "raw_score": "" if pred.raw_score is None else f"{pred.raw_score:.6f}",
                    "group": pred.group,
                    "scale": f"{pred.scale:g}",
                    "seconds": f"{pred.timings['total']:.4f}",
                    "json": str(out / f"{name}.json"),
                    "png": png,
                    "error": "",
                }
            )
            bar.advance(task)
    if len(inputs) > 1:
        columns = ["input", "score", "spread", "raw_score", "group", "scale", "seconds"]
        columns += ["json", "png", "error"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out / "predictions.csv", buffer.getvalue())
        log.info("%d of %d scored; table: %s", len(results), len(inputs), out / "predictions.csv")
    log.info("records and figures in %s", out)
    if failed:
        raise PredictionFailures(
            f"{failed} of {len(inputs)} inputs could not be scored (see above)"
        )
    return results


class PredictionFailures(RuntimeError):
    """Some inputs of a folder could not be scored; the others were written."""


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    require_keys(cfg, USAGE)
    try:
        run(cfg)
    except PredictionFailures as err:
        print(f"error: {err}", file=sys.stderr)
        to_log_file(f"error: {err}")
        sys.exit(1)


if __name__ == "__main__":
    run_command(main, "predict")
