"""Pictures of what a TPT model does: attention maps, top-attention frames, predicted vs. true.

``attention_map`` draws the paper's Fig. 4 (the query × clip cross-attention of every decoder
layer), ``top_frames`` its Fig. 3 (for each query, a frame of the clip it attends to most), and
``prediction_figure`` both for one video under its predicted score. ``scatter`` plots the predicted
against the true scores of an evaluated split with ρ and R-ℓ2.

Every function builds a ``matplotlib.figure.Figure`` on its own Agg canvas and never touches
``pyplot``'s global state, so figures can be made from threads, callbacks and notebooks alike;
``save_figure`` writes one to a PNG atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, SubFigure

from tpt_aqa.core.atomic import atomic_write
from tpt_aqa.data.labels import step_runs
from tpt_aqa.scoring.metrics import relative_l2, spearman

ATTENTION_CMAP = "viridis"
PHASE_CMAP = "tab10"


def _numpy(x: Any, name: str) -> np.ndarray:
    """``x`` (tensor, array or sequence) as a NumPy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy() if x.is_floating_point() else x.cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a tensor or an array, got {type(x).__name__}") from exc


def _attention(attn: Any) -> np.ndarray:
    """Attention maps as ``(Y,T,K)`` floats; a single layer ``(T,K)`` gets Y = 1."""
    a = _numpy(attn, "attn")
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or 0 in a.shape:
        raise ValueError(
            f"attn must have shape (Y,T,K) (decoder layers, clips, queries) or (T,K) (one layer), "
            f"got {tuple(a.shape)}; for a batch (B,Y,T,K) pass one video, e.g. attn[0]"
        )
    return a.astype(np.float64)


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # an Agg canvas of its own: no pyplot, no global backend
    return fig


def _top_pairs(a: np.ndarray) -> list[tuple[int, int]]:
    """``(query, clip)`` of each query's most attended clip in the last layer, in temporal order."""
    clips = a[-1].argmax(axis=0)  # (K,) argmax over T
    return sorted(((k, int(t)) for k, t in enumerate(clips)), key=lambda kt: (kt[1], kt[0]))


def top_clips(attn: Any) -> list[int]:
    """The clip each query attends to most in the last decoder layer, in temporal order.

    For each of the K queries, the argmax over the T clips of the last layer's attention; the K
    clip indices are returned sorted ascending (one entry per query, so two queries peaking on the
    same clip give that clip twice). Ties within a query go to the earliest clip.

    Args:
        attn: attention ``(Y,T,K)`` (the last layer is used) or ``(T,K)``.

    Returns:
        K clip indices, ascending.
    """
    return [t for _, t in _top_pairs(_attention(attn))]


def _clip_labels(clip_labels: Any, num_clips: int) -> np.ndarray:
    """Known step labels per clip ``(T,)`` or per frame ``(T·L,)`` (L frames per clip)."""
    labels = _numpy(clip_labels, "clip_labels")
    if labels.ndim != 1 or len(labels) == 0 or len(labels) % num_clips:
        raise ValueError(
            f"clip_labels must have shape (T,) = ({num_clips},) to match attn, or one label per "
            f"frame (T·L,), got {tuple(labels.shape)}"
        )
    return labels.astype(np.int64)


def _frames(frames: Any, num_clips: int) -> np.ndarray:
    f = _numpy(frames, "frames")
    if f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(
            f"frames must have shape (T,H,W,3) (one RGB frame per clip), got {tuple(f.shape)}"
        )
    if f.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 RGB in [0, 255], got dtype {f.dtype}")
    if f.shape[0] != num_clips:
        raise ValueError(
            f"frames has {f.shape[0]} clips but attn has T = {num_clips}: pass one frame per clip"
        )
    return f


def _draw_attention(fig: Figure | SubFigure, a: np.ndarray, labels: np.ndarray | None) -> list[Any]:
    """One heatmap per layer (queries × clips), the true steps under them when known (per clip
    or per frame, with their transitions marked on the maps), one colour bar."""
    num_layers, num_clips, num_queries = a.shape
    ratios = [num_queries + 1.0] * num_layers + ([0.8] if labels is not None else [])
    axes = list(
        fig.subplots(len(ratios), 1, sharex=True, height_ratios=ratios, squeeze=False)[:, 0]
    )
    if labels is not None:
        strip = axes.pop()
        shown = np.ma.masked_less(labels[None], 0)  # (1, F); -1 (unknown step) left blank
        strip.imshow(
            shown,
            aspect="auto",
            cmap=PHASE_CMAP,
            vmin=0,
            vmax=9,
            interpolation="nearest",
            extent=(-0.5, num_clips - 0.5, 0.5, -0.5),  # frames spread over the clip axis
        )
        starts, ends, ids = step_runs(labels)
        per_clip = num_clips / len(labels)
        for start, end, label in zip(starts, ends, ids, strict=True):
            if label >= 0 and len(starts) <= 40:
                centre = (start + end) / 2 * per_clip - 0.5
                strip.text(centre, 0, str(label), ha="center", va="center", fontsize=7)
        for ax in axes:  # the true transitions across the maps
            for start in starts[1:]:
                ax.axvline(start * per_clip - 0.5, color="white", lw=0.8, ls="--")
        strip.set_yticks([0], ["steps"])
        strip.set_xlabel("clip")
    vmax = float(a.max()) if a.max() > 0 else 1.0
    image = None
    for y, ax in enumerate(axes):
        image = ax.imshow(
            a[y].T,  # (K, T): queries as rows, clips as columns
            aspect="auto",
            cmap=ATTENTION_CMAP,
            vmin=0.0,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.set_yticks(range(num_queries), [f"q{k + 1}" for k in range(num_queries)])
        ax.set_ylabel(f"layer {y + 1}" if num_layers > 1 else "query")
    if labels is None:
        axes[-1].set_xlabel("clip")
    if num_clips <= 30:
        axes[-1].set_xticks(range(num_clips))
    fig.colorbar(image, ax=axes, label="attention", shrink=0.9)
    return axes


def attention_map(attn: Any, *, clip_labels: Any = None, title: str | None = None) -> Figure:
    """Query × clip cross-attention of every decoder layer (paper Fig. 4).

    Args:
        attn: attention weights ``(Y,T,K)`` or one layer ``(T,K)`` (tensor or array).
        clip_labels: known step label of every clip ``(T,)`` or frame ``(T·L,)``, drawn as a strip
            under the maps with the transitions marked on them; negative values (unknown) are left
            blank.
        title: figure title.

    Returns:
        A figure with one panel per layer (queries q1..qK as rows, clips as columns), the steps
        strip when given, and a colour bar.

    Raises:
        ValueError: on an attention or label shape that does not fit.
    """
    a = _attention(attn)
    num_layers, num_clips, num_queries = a.shape
    labels = None if clip_labels is None else _clip_labels(clip_labels, num_clips)
    height = num_layers * (0.3 * num_queries + 0.6) + (0.5 if labels is not None else 0) + 0.8
    fig = _new_figure(max(4.0, 0.25 * num_clips + 2.0), max(2.5, height))
    _draw_attention(fig, a, labels)
    if title:
        fig.suptitle(title)
    return fig


def _draw_frames(fig: Figure | SubFigure, frames: np.ndarray, a: np.ndarray) -> None:
    pairs = _top_pairs(a)
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    for ax, (k, t) in zip(axes, pairs, strict=True):
        ax.imshow(frames[t])
        ax.set_title(f"q{k + 1} · clip {t}", fontsize=9)
        ax.set_axis_off()


def top_frames(frames: Any, attn: Any, *, title: str | None = None) -> Figure:
    """For each query, the frame of the clip it attends to most, in temporal order (paper Fig. 3).

    Args:
        frames: one representative RGB frame per clip ``(T,H,W,3)``, uint8.
        attn: attention ``(Y,T,K)`` (the last layer is used) or ``(T,K)``.
        title: figure title.

    Returns:
        A figure with K images, left to right by clip, each titled ``q{k} · clip {t}``.

    Raises:
        ValueError: on a frame or attention shape that does not fit.
    """
    a = _attention(attn)
    f = _frames(frames, a.shape[1])
    num_queries = a.shape[2]
    aspect = f.shape[2] / f.shape[1]
    fig = _new_figure(max(4.0, 2.2 * num_queries * aspect), 2.6)
    _draw_frames(fig, f, a)
    if title:
        fig.suptitle(title)
    return fig


def prediction_figure(
    frames: Any,
    attn: Any,
    *,
    score: float,
    spread: float | None = None,
    title: str | None = None,
    clip_labels: Any = None,
) -> Figure:
    """One video's prediction: top-attention frames (Fig. 3) above the attention maps (Fig. 4).

    Args:
        frames: one representative RGB frame per clip ``(T,H,W,3)``, uint8.
        attn: attention ``(Y,T,K)`` or ``(T,K)``.
        score: predicted score, shown in the title.
        spread: spread of the prediction (e.g. std over exemplars), shown as ``± spread``.
        title: prefix of the title, e.g. the video id.
        clip_labels: known step label of every clip ``(T,)`` or frame ``(T·L,)``, drawn under the
            maps.

    Returns:
        A figure with K frame panels, the attention panels (and steps strip) and a colour bar.
    """
    a = _attention(attn)
    num_layers, num_clips, num_queries = a.shape
    f = _frames(frames, num_clips)
    labels = None if clip_labels is None else _clip_labels(clip_labels, num_clips)
    frames_height = 2.4
    maps_height = num_layers * (0.3 * num_queries + 0.6) + (0.5 if labels is not None else 0) + 0.8
    width = max(6.0, 0.25 * num_clips + 2.0, 2.2 * num_queries * f.shape[2] / f.shape[1])
    fig = _new_figure(width, frames_height + maps_height + 0.5)
    top, bottom = fig.subfigures(2, 1, height_ratios=[frames_height, maps_height])
    _draw_frames(top, f, a)
    _draw_attention(bottom, a, labels)
    text = f"predicted score {score:.2f}" + (f" ± {spread:.2f}" if spread is not None else "")
    fig.suptitle(f"{title}: {text}" if title else text)
    return fig


def scatter(
    pred: Any,
    target: Any,
    *,
    class_ids: Any = None,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Predicted against true scores, with the identity line, Spearman's ρ and R-ℓ2.

    Args:
        pred: predicted scores ``(N,)``.
        target: true scores ``(N,)``.
        class_ids: class of every sample ``(N,)``: one colour per class.
        class_names: name of each class id, for the legend.
        title: first line of the title; the second gives ρ, R-ℓ2 and N.

    Returns:
        A figure with one axes.

    Raises:
        ValueError: when the inputs are not 1-D of one length.
    """
    p = _numpy(pred, "pred").astype(np.float64)
    g = _numpy(target, "target").astype(np.float64)
    if p.ndim != 1 or p.shape != g.shape:
        raise ValueError(
            f"pred and target must be 1-D of the same length, got {p.shape} and {g.shape}"
        )
    classes = None
    if class_ids is not None:
        classes = _numpy(class_ids, "class_ids").astype(np.int64)
        if classes.shape != p.shape:
            raise ValueError(f"class_ids must have shape {p.shape} like pred, got {classes.shape}")
    n = len(p)
    rho = spearman(p, g)
    rl2 = relative_l2(torch.from_numpy(p), torch.from_numpy(g))

    fig = _new_figure(4.8, 4.6)
    ax = fig.subplots()
    if classes is None:
        ax.scatter(g, p, s=14, alpha=0.7)
    else:
        for c in np.unique(classes):
            sel = classes == c
            name = class_names[c] if class_names is not None and c < len(class_names) else f"{c}"
            ax.scatter(g[sel], p[sel], s=14, alpha=0.7, label=name)
    if n:
        lo, hi = float(min(p.min(), g.min())), float(max(p.max(), g.max()))
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="identity")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("true score")
    ax.set_ylabel("predicted score")
    ax.legend(loc="upper left", fontsize=8)
    stats = f"ρ = {rho:.4f}, R-ℓ2 = {rl2:.4f} (N = {n})"
    ax.set_title(f"{title}\n{stats}" if title else stats)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG, atomically: readers see the old file or the whole new one.

    Args:
        fig: the figure.
        path: destination; missing parent folders are created.

    Returns:
        The path written.
    """
    path = Path(path)
    atomic_write(path, lambda out: fig.savefig(out, format="png"))
    return path
