"""Write a benchmark's annotations as the package's annotation table (``dataset=features`` CSV):
``python -m tpt_aqa.export_table dataset=<benchmark> dataset.root=PATH out=table.csv``.

Columns: id, score (training scale), split (as annotated), group (exemplar group), scale
(multiplier to the reported score), class. Useful to inspect a benchmark, and to pair your own
features with the benchmark's annotations.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from tpt_aqa.cli import run_command
from tpt_aqa.config import CONF_DIR
from tpt_aqa.core.errors import ConfigError, exit_on_user_error
from tpt_aqa.core.startup import setup
from tpt_aqa.data.features import write_annotations

setup()  # resolver, warning filters, Lightning's tips (core.startup): before Hydra composes


def run(cfg: DictConfig) -> Path:
    if cfg.get("out") in (None, "???"):
        raise ConfigError("out is not set: pass out=/path/to/annotations.csv")
    dm = instantiate(cfg.dataset)
    dm.setup("fit")
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_annotations(out, dm)
    splits, counts = np.unique(dm.source_split, return_counts=True)
    per_split = ", ".join(f"{n} {s}" for s, n in zip(splits, counts, strict=True))
    print(f"wrote {len(dm.table)} rows ({per_split}) to {out}")
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export_table")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    run_command(main, "export_table")
