"""Figures: accepted and rejected shapes, top-attention clips, panel counts, atomic PNG writing."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from tpt_aqa.reporting import viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _attn(layers: int = 2, clips: int = 8, queries: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(layers, clips, queries, generator=g), dim=1)  # (Y, T, K)


def _frames(clips: int = 8, h: int = 12, w: int = 16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(clips, h, w, 3), dtype=np.uint8)


def test_top_clips_hand_made_map():
    # (T=5, K=4): q1 peaks at clip 3, q2 at clip 0, q3 at clip 3, q4 at clip 1
    attn = np.zeros((5, 4))
    attn[3, 0] = attn[0, 1] = attn[3, 2] = attn[1, 3] = 1.0
    assert viz.top_clips(attn) == [0, 1, 3, 3]
    # the last layer decides: an earlier layer peaking elsewhere changes nothing
    first = np.zeros((5, 4))
    first[4] = 1.0
    assert viz.top_clips(np.stack([first, attn])) == [0, 1, 3, 3]
    assert viz.top_clips(torch.from_numpy(attn)) == [0, 1, 3, 3]


def test_top_frames_titles_follow_time():
    attn = np.zeros((5, 3))
    attn[4, 0] = attn[2, 1] = attn[0, 2] = 1.0  # q1 → clip 4, q2 → clip 2, q3 → clip 0
    frames = _frames(clips=5)
    fig = viz.top_frames(frames, attn, title="video 7")
    assert [ax.get_title() for ax in fig.axes] == ["q3 · clip 0", "q2 · clip 2", "q1 · clip 4"]
    # each panel shows the frame of its clip
    shown = fig.axes[0].get_images()[0].get_array()
    np.testing.assert_array_equal(np.asarray(shown), frames[0])


@pytest.mark.parametrize(
    ("attn", "labels", "expected_axes"),
    [
        (_attn(2), None, 2 + 1),  # two layers + colour bar
        (_attn(3), np.arange(8) % 3, 3 + 1 + 1),  # three layers + phase strip + colour bar
        (_attn(1)[0], None, 1 + 1),  # a single (T, K) layer
    ],
)
def test_attention_map_panels(attn, labels, expected_axes):
    fig = viz.attention_map(attn, clip_labels=labels, title="attention")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == expected_axes
    heat = [ax for ax in fig.axes if ax.get_ylabel().startswith(("layer", "query"))]
    assert len(heat) == (attn.shape[0] if attn.ndim == 3 else 1)
    # queries on the y axis (K rows q1..qK), clips on the x axis (T columns)
    assert [t.get_text() for t in heat[0].get_yticklabels()] == ["q1", "q2", "q3"]
    assert heat[0].get_images()[0].get_array().shape == (3, 8)
    last = np.asarray(attn[-1] if attn.ndim == 3 else attn)  # (T, K)
    np.testing.assert_allclose(heat[-1].get_images()[0].get_array(), last.T, rtol=1e-6)


def test_attention_map_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(Y,T,K\).*got \(2, 2, 8, 3\).*attn\[0\]"):
        viz.attention_map(torch.rand(2, 2, 8, 3))
    with pytest.raises(ValueError, match=r"got \(8,\)"):
        viz.attention_map(np.ones(8))
    with pytest.raises(
        ValueError, match=r"clip_labels must have shape \(T,\) = \(8,\).*got \(7,\)"
    ):
        viz.attention_map(_attn(), clip_labels=np.zeros(7))


def test_frames_checked_against_attention():
    with pytest.raises(ValueError, match="frames has 6 clips but attn has T = 8"):
        viz.top_frames(_frames(clips=6), _attn())
    with pytest.raises(ValueError, match=r"\(T,H,W,3\).*got \(8, 12, 16\)"):
        viz.top_frames(_frames()[..., 0], _attn())
    with pytest.raises(ValueError, match="uint8"):
        viz.prediction_figure(_frames().astype(np.float32), _attn(), score=1.0)


def test_prediction_figure_layout_and_title():
    fig = viz.prediction_figure(
        _frames(), _attn(2), score=84.25, spread=1.5, title="dive 3", clip_labels=np.arange(8) % 4
    )
    assert len(fig.axes) == 3 + 2 + 1 + 1  # K frames, Y layers, phase strip, colour bar
    assert fig.get_suptitle() == "dive 3: predicted score 84.25 ± 1.50"
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 3 and all(t.startswith("q") for t in titles)
    assert viz.prediction_figure(_frames(), _attn(1), score=7.0).get_suptitle() == (
        "predicted score 7.00"
    )


def test_scatter_stats_and_classes():
    target = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    pred = np.array([1.0, 3.0, 2.0, 4.0, 6.0])
    # ρ: rank differences (0, 1, -1, 0, 0) → 1 − 6·2/(5·24) = 0.9; R-ℓ2: 100·mean(d²)/4² = 100·3/5/16
    fig = viz.scatter(pred, target, title="val")
    assert len(fig.axes) == 1
    assert fig.axes[0].get_title() == "val\nρ = 0.9000, R-ℓ2 = 3.7500 (N = 5)"
    fig = viz.scatter(
        torch.from_numpy(pred),
        torch.from_numpy(target),
        class_ids=[0, 1, 1, 0, 1],
        class_names=["pike", "tuck"],
    )
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["pike", "tuck", "identity"]
    with pytest.raises(ValueError, match="same length"):
        viz.scatter(pred, target[:4])
    with pytest.raises(ValueError, match="class_ids"):
        viz.scatter(pred, target, class_ids=[0, 1])


def test_save_figure_writes_png_atomically(tmp_path):
    fig = viz.attention_map(_attn(), clip_labels=np.arange(8) % 3)
    path = viz.save_figure(fig, tmp_path / "a" / "b" / "attn.png")
    assert path == tmp_path / "a" / "b" / "attn.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    width, height = fig.get_size_inches() * fig.dpi
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (round(width), round(height))
    viz.save_figure(viz.scatter([1.0, 2.0], [2.0, 1.0]), path)  # replaces the old file
    with Image.open(path) as image:
        assert image.size != (round(width), round(height))
    assert sorted(p.name for p in path.parent.iterdir()) == ["attn.png"]  # no temp file left


def test_failed_save_leaves_nothing(tmp_path):
    fig = viz.scatter([1.0, 2.0], [2.0, 1.0])
    fig.savefig = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full"))
    with pytest.raises(RuntimeError, match="disk full"):
        viz.save_figure(fig, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_figures_from_threads(tmp_path):
    """No pyplot state: figures drawn and saved concurrently are all complete."""
    errors: list[BaseException] = []

    def draw(i: int) -> None:
        try:
            fig = viz.attention_map(_attn(seed=i), title=f"t{i}")
            viz.save_figure(fig, tmp_path / f"{i}.png")
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=draw, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(4):
        assert (tmp_path / f"{i}.png").read_bytes()[:8] == PNG_MAGIC


def test_true_steps_drawn_under_the_maps_per_frame():
    labels = np.repeat([0, 1, 2, 1], [5, 3, 4, 4])  # 16 frames = 8 clips × 2; B recurs
    fig = viz.attention_map(_attn(2), clip_labels=labels)
    heat = [ax for ax in fig.axes if ax.get_ylabel().startswith("layer")]
    strip = next(ax for ax in fig.axes if [t.get_text() for t in ax.get_yticklabels()] == ["steps"])
    # under the maps: the strip is the lowest panel, and its image spans the 8 clips
    assert strip.get_position().y0 < min(ax.get_position().y0 for ax in heat)
    assert strip.get_images()[0].get_array().shape == (1, 16)
    assert strip.get_images()[0].get_extent() == [-0.5, 7.5, 0.5, -0.5]
    # the three true transitions (frames 5, 8, 12 → clip positions 2.5, 4, 6, less half a clip)
    for ax in heat:
        assert [line.get_xdata()[0] for line in ax.get_lines()] == [2.0, 3.5, 5.5]
    assert [t.get_text() for t in strip.texts] == ["0", "1", "2", "1"]
    with pytest.raises(ValueError, match=r"one label per frame \(T·L,\), got \(12,\)"):
        viz.attention_map(_attn(), clip_labels=np.zeros(12))
