"""Extract clip features once, train on them in minutes:
``python -m tpt_aqa.extract_features dataset=<benchmark> model/encoder=i3d out_dir=PATH``.

Writes the ``dataset=features`` format: ``{id}.npy`` per video (``(T, C)``, float16 by default) and
``annotations.csv`` (id, score, split as annotated, group, scale, class), plus ``manifest.json``
recording what produced them (encoder settings and checkpoint SHA-256, clip sampling and
transforms, the view). Every file is written atomically; running the command again resumes, skipping
videos whose features are already there, provided the manifest matches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from tpt_aqa.cli import run_command
from tpt_aqa.config import CONF_DIR
from tpt_aqa.core.atomic import atomic_save_array, atomic_write_text
from tpt_aqa.core.cache import FORMAT, MANIFEST, file_sha256, flatten, read_manifest
from tpt_aqa.core.errors import ConfigError, exit_on_user_error
from tpt_aqa.core.pretrained import resolve_weights
from tpt_aqa.core.startup import setup
from tpt_aqa.data.features import write_annotations

setup()  # resolver, warning filters, Lightning's tips (core.startup): before Hydra composes

# Settings that change speed or training, not the features.
ENCODER_KEYS_IGNORED = (
    "clip_chunk",
    "checkpointing",
    "channels_last",
    "freeze_bn_stats",
    "freeze_backbone",
    "fold_bn",
)


def build_manifest(cfg: DictConfig, dm, view: str, num_clips: int, dim: int) -> dict[str, Any]:
    """What determines the cached features."""
    encoder = OmegaConf.to_container(cfg.model.encoder, resolve=True)
    for key in ENCODER_KEYS_IGNORED:
        encoder.pop(key, None)
    weights = encoder.get("weights")
    encoder["weights_sha256"] = file_sha256(resolve_weights(weights)) if weights else None
    if not weights:  # random init: the features are a function of the seed
        encoder["init_seed"] = cfg.seed
    return {
        "format": FORMAT,
        "dataset": cfg.dataset._target_,
        "encoder": encoder,
        "video": dm.video_settings(),
        "view": view,
        "num_clips": num_clips,
        "feature_dim": dim,
        "dtype": cfg.dtype,
    }


def finished(path: Path, shape: tuple[int, int]) -> bool:
    """Whether a cached array exists with the expected shape (a resume skips it)."""
    if not path.is_file():
        return False
    try:
        return tuple(np.load(path, mmap_mode="r").shape) == shape
    except (ValueError, OSError):
        return False


@torch.no_grad()
def run(cfg: DictConfig) -> Path:
    """Extract features of every video of the dataset; returns the output folder."""
    if cfg.get("out_dir") in (None, "???"):
        raise ConfigError("out_dir is not set: pass out_dir=/path/to/cache")
    out = Path(cfg.out_dir)
    dm = instantiate(cfg.dataset)
    dm.setup("fit")
    torch.manual_seed(cfg.seed)  # a random-init encoder (weights=null) is then reproducible
    encoder = instantiate(cfg.model.encoder).eval()
    device = torch.device(
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    encoder.to(device)
    dtype = {"float16": np.float16, "float32": np.float32}[cfg.dtype]
    rows = range(len(dm.table))
    num_clips = dm.num_clips
    manifest = build_manifest(cfg, dm, cfg.view, num_clips, encoder.out_dim)
    out.mkdir(parents=True, exist_ok=True)
    old = read_manifest(out)
    if old is not None and flatten(old) != flatten(manifest) and not cfg.overwrite:
        diffs = [
            k
            for k in set(flatten(old)) | set(flatten(manifest))
            if flatten(old).get(k) != flatten(manifest).get(k)
        ]
        raise ConfigError(
            f"{out / MANIFEST} was written with other settings ({', '.join(sorted(diffs))}): "
            "choose a new out_dir, or pass overwrite=true to re-extract everything"
        )
    if old is None or cfg.overwrite:
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    shape = (num_clips, encoder.out_dim)
    todo = [r for r in rows if cfg.overwrite or not finished(out / f"{dm.table.ids[r]}.npy", shape)]
    autocast = torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16-mixed"
    )
    with Progress(transient=False) as progress:
        task = progress.add_task("extracting", total=len(todo))
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start : start + cfg.batch_size]
            clips = torch.stack([dm.load_video(r, cfg.view) for r in chunk]).to(device)
            with autocast:
                feats = encoder(clips).float().cpu().numpy()  # (b, T, C)
            for r, f in zip(chunk, feats, strict=True):
                atomic_save_array(out / f"{dm.table.ids[r]}.npy", f.astype(dtype))
            progress.advance(task, len(chunk))
    write_annotations(out / "annotations.csv", dm)
    print(
        f"{len(todo)} extracted, {len(rows) - len(todo)} already there, {len(rows)} videos in {out}"
    )
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="extract")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    run_command(main, "extract")
