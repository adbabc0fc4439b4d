"""Check a prepared benchmark against its annotation and split files:
``python -m tpt_aqa.verify dataset=<benchmark> dataset.root=PATH``.

Every sample of every split is checked (frames or video present, enough frames for the clip
sampler, first and last needed frames readable); problems are printed with their path and fix,
followed by a summary per split. Exit status 1 when anything is wrong, so scripts can gate on it.
"""

from __future__ import annotations

import sys
from collections import Counter

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.progress import Progress

from tpt_aqa.cli import run_command
from tpt_aqa.config import CONF_DIR
from tpt_aqa.core.errors import ConfigError, exit_on_user_error
from tpt_aqa.core.startup import setup
from tpt_aqa.data.video_base import VideoDataModule

setup()  # resolver, warning filters, Lightning's tips (core.startup): before Hydra composes


def run(cfg: DictConfig) -> list[str]:
    """All problems found, one line each (empty when the dataset is ready)."""
    dm = instantiate(cfg.dataset)
    if not isinstance(dm, VideoDataModule):
        raise ConfigError(
            f"dataset {cfg.dataset._target_} reads no video files to verify: it takes clip "
            "features, checked when training reads them"
        )
    dm.setup("fit")
    table = dm.table
    problems: list[str] = []
    bad_per_split: Counter[str] = Counter()
    with Progress(transient=True) as progress:
        task = progress.add_task("verifying", total=len(table))
        for row, vid in enumerate(table.ids):
            found = dm.check_sample(row)
            if found:
                bad_per_split[dm.source_split[row]] += 1
                problems += [f"{vid}: {p}" for p in found]
            progress.advance(task)
    for line in problems[: cfg.max_problems]:
        print(line)
    if len(problems) > cfg.max_problems:
        print(f"... and {len(problems) - cfg.max_problems} more (max_problems={cfg.max_problems})")
    print("\nsplit   samples   with problems")
    for split, count in sorted(Counter(dm.source_split).items()):
        print(f"{split:<7} {count:>7}   {bad_per_split[split]:>13}")
    print("dataset is ready" if not problems else f"{len(problems)} problem(s) found")
    return problems


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="verify")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    if run(cfg):
        sys.exit(1)


if __name__ == "__main__":
    run_command(main, "verify")
