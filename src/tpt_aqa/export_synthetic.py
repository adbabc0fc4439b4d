#!/usr/bin/env python
"""Write the embedded synthetic benchmark in the `dataset=features` format.

    python -m tpt_aqa.export_synthetic OUT_DIR [--dataset synthetic_hard] [--num-train 600 ...]

OUT_DIR then holds {id}.npy clip features (T, C) and annotations.csv (id, score, split, group,
scale, class); train on it with
    python -m tpt_aqa.train experiment=features_tpt dataset.root=OUT_DIR dataset.feature_dim=64
``--dataset`` names the config whose generator settings are written (``synthetic``, the default,
or ``synthetic_hard``, the hard variant of docs/parsing.md); the other flags override them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tpt_aqa.config import CONF_DIR
from tpt_aqa.data.synthetic import FeatureSettings, export_features, generate

DATASETS = ("synthetic", "synthetic_hard")


def dataset_settings(name: str) -> dict:
    """The generator settings of ``conf/dataset/<name>.yaml`` (the one home of each variant's
    values, shared with ``dataset=<name>``), ``data_seed`` as ``seed``."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={name}"])
    given = OmegaConf.to_container(cfg.dataset, resolve=True)
    return vars(FeatureSettings.pop_from(given))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument(
        "--dataset", choices=DATASETS, default="synthetic", help="which config's settings"
    )
    for name in ("num_train", "num_test", "num_clips", "feature_dim"):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=None, help="default: the config's")
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
    data = generate(settings)
    table = export_features(data, args.out_dir)
    print(
        f"wrote {len(data.raw)} videos ({settings.num_train} train, {settings.num_test} test) "
        f"of dataset={args.dataset} and {table}"
    )


if __name__ == "__main__":
    main()
