"""The Python API of prediction: a checkpoint ready to score videos, and what it says of one.

    from tpt_aqa.predictor import Predictor

    predictor = Predictor("checkpoint.ckpt")           # a checkpoint with an exemplar bank
    pred = predictor.predict("dive.mp4", difficulty=3.2)
    pred.score, pred.spread, pred.record()             # figure(pred): Fig. 3 above Fig. 4

The input is read, sampled and cropped exactly as the benchmark's test videos were (the settings
travel in the checkpoint's exemplar bank, ``tpt_aqa.scoring.bank``), encoded once, and compared
with the M fixed exemplars of its group (``exemplars="all"``: every training video of the group).
``python -m tpt_aqa.predict`` is the command on top (folders of inputs, per-input options, records
and figures on disk); it re-exports these names.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpt_aqa.config import build_module
from tpt_aqa.core.errors import ConfigError
from tpt_aqa.data.clips import ClipSampler
from tpt_aqa.data.features import read_feature_file
from tpt_aqa.data.transforms import VideoTransform
from tpt_aqa.data.video import (
    VideoReadError,
    count_frames,
    load_clips,
    without_dataset_hint,
)
from tpt_aqa.scoring.bank import ExemplarBank, bank_from_checkpoint, score_parts
from tpt_aqa.training.runtime import autocast, load_checkpoint, without_pretrained_file

log = logging.getLogger(__name__)
FEATURE_SUFFIX = ".npy"


@dataclass
class Prediction:
    """The score of one video and what explains it.

    Attributes:
        input: the scored file or folder.
        score: predicted score in the benchmark's reported units (× scale).
        spread: standard deviation of the per-exemplar predictions, same units.
        group: exemplar group name.
        scale: multiplier from the training scale (difficulty, or 1).
        raw_score: the score on the raw scale for benchmarks trained on 0–100, else ``None``.
        exemplars: per exemplar: id, its score and the prediction through it (reported units).
        attn: cross-attention of every decoder layer ``(Y,T,K)``, ``None`` for pooling parsers.
        frames: the middle frame of every clip as the model saw it ``(T,H,W,3)`` uint8, ``None``
            for feature inputs.
        timings: seconds spent reading, encoding and comparing.
        step_labels: the input's known steps at the frames the model saw, one label per sampled
            frame ``(T·L,)`` (per clip ``(T,)`` for feature inputs), ``None`` when unknown; drawn
            under the attention maps.
    """

    input: str
    score: float
    spread: float
    group: str
    scale: float
    raw_score: float | None
    exemplars: list[dict[str, Any]]
    attn: torch.Tensor | None
    frames: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)
    step_labels: np.ndarray | None = None

    def record(self) -> dict[str, Any]:
        """JSON-ready summary (attention included, frames left out)."""
        from tpt_aqa.reporting.viz import top_clips

        rec: dict[str, Any] = {
            "input": self.input,
            "score": self.score,
            "spread": self.spread,
            "group": self.group,
            "scale": self.scale,
        }
        if self.raw_score is not None:
            rec["raw_score"] = self.raw_score
        rec["exemplars"] = self.exemplars
        if self.attn is not None:
            rec["top_clips"] = top_clips(self.attn[-1])
            rec["attention"] = [[[round(x, 6) for x in r] for r in y] for y in self.attn.tolist()]
        if self.step_labels is not None:
            rec["step_labels"] = self.step_labels.tolist()
        rec["timings_s"] = {k: round(v, 4) for k, v in self.timings.items()}
        return rec


class Predictor:
    """A checkpoint ready to score videos.

    Args:
        ckpt_path: a checkpoint with an exemplar bank (``tpt_aqa.train`` writes one into the
            checkpoint it selects).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        exemplars: ``"fixed"`` (the bank's M exemplars of the group, as in evaluation) or ``"all"``.

    Raises:
        BankError: when the checkpoint has no exemplar bank.
    """

    def __init__(self, ckpt_path: str | Path, device: str = "auto", exemplars: str = "fixed"):
        start = time.perf_counter()
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.ckpt_path = str(ckpt_path)
        ckpt, run_cfg = load_checkpoint(ckpt_path)
        self.bank: ExemplarBank = bank_from_checkpoint(ckpt, self.ckpt_path)
        without_pretrained_file(run_cfg)
        self.module = build_module(run_cfg)
        self.module.load_state_dict(ckpt["state_dict"])
        self.module.eval().to(self.device)
        self.precision = str(run_cfg.trainer.get("precision", "32-true"))
        self.exemplars = exemplars
        self.bank.exemplar_rows(0, exemplars)  # reject an unknown ``exemplars`` now
        spec = self.bank.input
        self.kind = spec["kind"]
        if self.kind == "video":
            self.sampler = ClipSampler(**spec["sampler"])
            self.transform = VideoTransform(**spec["transform"])
            self.start_frame = int(spec.get("start_frame", 0))
        self.load_seconds = time.perf_counter() - start

    # ---- reading ---------------------------------------------------------------------------------
    def read(
        self, source: str | Path, start_frame: int | None = None
    ) -> tuple[torch.Tensor, np.ndarray | None]:
        """One input as the model takes it, and the clip frames for the figure.

        Returns:
            clips ``(T,3,L,H,W)`` uint8 or features ``(T,C)``; frames ``(T,H,W,3)`` or ``None``.
        """
        return self._load(source, start_frame)[:2]

    def check_steps(self, source: str | Path, steps: str | Path) -> None:
        """Refuse a steps file where it cannot apply: a feature input has no frames to label."""
        if self.kind == "features":
            raise ConfigError(
                f"steps={steps}: input={source} is a feature file, which has no frames to label "
                "(this checkpoint was trained on cached features); drop steps=, or score the "
                "video with a checkpoint that encodes videos"
            )

    def _load(
        self, source: str | Path, start_frame: int | None
    ) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray | None, int | None]:
        """``read``, plus the frame index of every clip frame ``(T,L)`` and the input's frame
        count (both ``None`` for feature inputs)."""
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"input={source} does not exist")
        if self.kind == "features":
            if source.suffix != FEATURE_SUFFIX:
                raise ConfigError(
                    f"input={source}: this checkpoint was trained on cached features, so it scores "
                    f"{FEATURE_SUFFIX} feature files ((T, C) arrays written by python -m "
                    "tpt_aqa.extract_features), not videos"
                )
            width = self.module.model.encoder.out_dim
            features, cast = read_feature_file(
                source,
                num_clips=self.bank.input["num_clips"],
                feature_dim=width,
                clips_fix=f"this checkpoint takes T={self.bank.input['num_clips']} clips per video",
                width_fix=f"this checkpoint takes C={width} (the width of the features it was "
                "trained on)",
            )
            if cast:
                log.info("%s holds float64 features: cast to float32", source)
            features = torch.from_numpy(features).float()
            return features, None, None, None
        if source.suffix == FEATURE_SUFFIX:
            raise ConfigError(
                f"input={source} is a feature file, but this checkpoint encodes videos: pass a "
                "video file or a folder of JPEG frames"
            )
        start = self.start_frame if start_frame is None else int(start_frame)
        try:
            n = count_frames(source)
            index = self.sampler.indices(n, start)  # (T, L)
            clips = load_clips(source, index, self.transform)  # (T, 3, L, H, W)
        except VideoReadError as err:
            raise VideoReadError(
                f"{without_dataset_hint(err)} (input={source} must be a readable video file or a "
                "folder of JPEG frames of one size)"
            ) from None
        except ValueError as err:
            raise VideoReadError(
                f"{source}: {err} (the checkpoint samples {self.sampler.num_clips} clips of "
                f"{self.sampler.clip_len} frames from frame {start}; pass start_frame= to move the "
                "window)"
            ) from None
        middle = clips[:, :, clips.shape[2] // 2]  # (T, 3, H, W)
        return clips, middle.permute(0, 2, 3, 1).numpy(), index, n

    # ---- scoring ---------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        source: str | Path,
        difficulty: float | None = None,
        class_name: str | None = None,
        group: str | None = None,
        scale: float | None = None,
        start_frame: int | None = None,
        frame_labels: np.ndarray | str | Path | None = None,
    ) -> Prediction:
        """Score one input (see the module docstring); the group options as in
        ``ExemplarBank.resolve_group``. ``frame_labels``: the input's known step label of every
        frame ``(n,)``, as an array or a steps file (``read_step_labels``); for feature inputs an
        array with one label per clip ``(T,)``. Drawn in the figure.

        Raises:
            ConfigError: for a steps file with a feature input, an unreadable steps file, or
                labels whose count is not the input's frame (clip) count.
        """
        bank = self.bank
        gid, scale = bank.resolve_group(difficulty, class_name, group, scale)
        rows = bank.exemplar_rows(gid, self.exemplars)
        labels_name = "frame_labels"
        if isinstance(frame_labels, (str, Path)):
            self.check_steps(source, frame_labels)
            labels_name = f"steps={frame_labels}"
            frame_labels = read_step_labels(frame_labels)
        t0 = time.perf_counter()
        video, frames, index, num_frames = self._load(source, start_frame)
        t1 = time.perf_counter()
        with autocast(self.precision, self.device):
            parsed = self.module.model.encode(video.unsqueeze(0).to(self.device))
            t2 = time.perf_counter()
            out = score_parts(self.module, bank, parsed.parts[0], rows, scale)
        t3 = time.perf_counter()
        per, score = out["per_exemplar"], float(out["score"])  # (M,) training scale; reported
        exemplars = [
            {
                "id": bank.ids[int(r)],
                "score": float(bank.target[r]) * scale,
                "delta": float(d) * scale,
                "prediction": float(p) * scale,
            }
            for r, d, p in zip(rows, out["delta"], per, strict=True)
        ]
        attn = None if parsed.attn is None else parsed.attn[0].float().cpu()  # (Y, T, K)
        steps = None
        if frame_labels is not None:
            steps = np.asarray(frame_labels)
            if index is not None:  # the labels of the frames each clip took
                steps = labels_at_frames(steps, index, num_frames, labels_name, source)
        return Prediction(
            input=str(source),
            score=score,
            spread=float(per.std(unbiased=False)) * scale,
            group=bank.group_names[gid],
            scale=scale,
            raw_score=bank.raw_score(gid, score),
            exemplars=exemplars,
            attn=attn,
            frames=frames,
            timings={"read": t1 - t0, "encode": t2 - t1, "compare": t3 - t2, "total": t3 - t0},
            step_labels=steps,
        )


STEPS_FORMAT = (
    "one integer step label per frame of the input, in order: a 1-D integer .npy array, or a "
    "text file of whitespace- or comma-separated integers"
)


def read_step_labels(path: str | Path) -> np.ndarray:
    """A steps file: the step label of every frame of an input, in order (``STEPS_FORMAT``).

    Returns:
        Labels ``(n,)`` int64 (negative: unknown, left blank in the figure).

    Raises:
        ConfigError: naming the file and the format for a missing, unreadable or empty file, a
            ``.npy`` array that is not 1-D integers, or text that is not integers.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"steps={path} is not a file; give {STEPS_FORMAT}")
    if path.suffix == FEATURE_SUFFIX:
        try:
            labels = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ConfigError(
                f"steps={path} is not a readable .npy array ({err}); give {STEPS_FORMAT}"
            ) from None
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(
                f"steps={path} holds a {labels.dtype} array of shape {labels.shape}; give "
                f"{STEPS_FORMAT} (np.save(path, labels.astype(np.int64)))"
            )
    else:
        try:
            tokens = path.read_text(encoding="utf-8").replace(",", " ").split()
        except (UnicodeDecodeError, OSError) as err:
            raise ConfigError(f"steps={path} is not a readable text file ({err})") from None
        values = []
        for position, token in enumerate(tokens):
            try:
                values.append(int(token))
            except ValueError:
                raise ConfigError(
                    f"steps={path}: label {position} is {token!r}, not an integer; give "
                    f"{STEPS_FORMAT}"
                ) from None
        labels = np.asarray(values, dtype=np.int64)
    if len(labels) == 0:
        raise ConfigError(f"steps={path} holds no labels; give {STEPS_FORMAT}")
    return labels.astype(np.int64)


def labels_at_frames(
    labels: np.ndarray, index: np.ndarray, num_frames: int, name: str, source: str | Path
) -> np.ndarray:
    """The labels of the frames the clips sampled: ``labels[index]`` flattened ``(T·L,)``.

    Args:
        labels: one label per frame of the input ``(num_frames,)``.
        index: frame index of every clip frame ``(T, L)`` (``ClipSampler.indices``).
        num_frames: frames of the input.
        name: what the labels came from, for the error (``steps=FILE``).
        source: the input, for the error.

    Raises:
        ConfigError: when there is not exactly one label per frame.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != num_frames:
        raise ConfigError(
            f"{name} has {labels.size} step labels {tuple(labels.shape)} but input={source} has "
            f"{num_frames} frames; give one label per frame of the input, in order (a labels file "
            "of a whole video does not fit a folder holding only the action, and vice versa)"
        )
    return labels[index].reshape(-1)


def figure(pred: Prediction):
    """Fig. 3 above Fig. 4 for video inputs; the attention map alone for feature inputs."""
    from tpt_aqa.reporting import viz

    title = f"{Path(pred.input).name} ({pred.group})"
    if pred.attn is None:
        return None
    if pred.frames is None:
        return viz.attention_map(
            pred.attn,
            clip_labels=pred.step_labels,
            title=f"{title}: {pred.score:.2f} ± {pred.spread:.2f}",
        )
    return viz.prediction_figure(
        pred.frames,
        pred.attn,
        score=pred.score,
        spread=pred.spread,
        title=title,
        clip_labels=pred.step_labels,
    )
