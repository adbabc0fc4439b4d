#!/usr/bin/env python
"""Write the embedded synthetic benchmark in the `dataset=features` format.

    python -m tpt_aqa.export_synthetic OUT_DIR [--dataset synthetic_hard] [--num-train 600 ...] [--force]

OUT_DIR (new or empty; one that holds files only with --force) then holds {id}.npy clip features (T, C) and annotations.csv (id, score, split, group,
scale, class); train on it with
    python -m tpt_aqa.train experiment=features_tpt dataset.root=OUT_DIR dataset.feature_dim=64
``--dataset`` names the config whose generator settings are written (``synthetic``, the default,
or ``synthetic_hard``, the hard variant of docs/parsing.md); the other flags override them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tpt_aqa.cli import at_least
from tpt_aqa.config import dataset_settings
from tpt_aqa.core.atomic import check_output
from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data.synthetic import FeatureSettings, export_features, generate

DATASETS = ("synthetic", "synthetic_hard")
# the fewest of each that make a benchmark: a training video, and no test split at all
MINIMUM = {"num_train": 1, "num_test": 0, "num_clips": 1, "feature_dim": 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument(
        "--force", action="store_true", help="write into OUT_DIR even if it holds files"
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, default="synthetic", help="which config's settings"
    )
    for name in ("num_train", "num_test", "num_clips", "feature_dim"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag, type=at_least(MINIMUM[name]), default=None, help="default: the config's"
        )
    parser.add_argument(
        "--seed", type=int, default=None, help="the generator's seed (dataset.data_seed)"
    )
    args = parser.parse_args(argv)
    settings = dataset_settings(args.dataset)
    for name in ("num_train", "num_test", "num_clips", "feature_dim", "seed"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    try:
        settings = FeatureSettings(**settings)
    except ValueError as exc:  # e.g. too few clips for the phases: a usage error, no traceback
        parser.error(str(exc))
    try:  # a file, or a folder of the user's files, is refused before anything is written
        check_output(args.out_dir, "OUT_DIR", "folder", force=args.force)
    except ConfigError as exc:
        parser.error(str(exc))
    data = generate(settings)
    table = export_features(data, args.out_dir)
    print(
        f"wrote {len(data.raw)} videos ({settings.num_train} train, {settings.num_test} test) "
        f"of dataset={args.dataset} and {table}"
    )


if __name__ == "__main__":
    main()
