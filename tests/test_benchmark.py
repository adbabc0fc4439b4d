"""The benchmark's FLOP counting, peak table and profile (numbers only; nothing is timed)."""

from __future__ import annotations

import pytest
import torch

from tpt_aqa.benchmarks import end_to_end, features, table
from tpt_aqa.benchmarks.measure import count_flops, device_peaks, gpu_peak_tflops, profile_table


def test_count_flops_forward_and_backward_of_a_linear_layer():
    # Forward (2×4)·(4×3): 2·(2·4·3) = 48 FLOP. Backward: grad wrt input (2×3)·(3×4) and wrt
    # weight (3×2)·(2×4), 48 each → 144 in all (the bias add is not a matmul and is not counted).
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4, requires_grad=True)
    assert count_flops(lambda: layer(x)) == 48
    assert count_flops(lambda: layer(x).sum().backward()) == 144


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
        ("NVIDIA H100 PCIe", "bf16", 756.5),
        ("NVIDIA H200", "tf32", 494.7),
        ("NVIDIA A100-SXM4-80GB", "fp32", 19.5),
        ("NVIDIA GeForce RTX 4090", "bf16", 165.2),
        ("NVIDIA L40S", "bf16", 362.0),
    ],
)
def test_gpu_peak_table(name, precision, peak):
    assert gpu_peak_tflops(name, precision) == peak


def test_unknown_gpu_has_no_peak_and_override_wins():
    assert gpu_peak_tflops("Some Future GPU", "bf16") is None
    peaks, source = device_peaks("cpu", 2.5)
    assert peaks == {"bf16": 2.5, "tf32": 2.5, "fp32": 2.5} and "--peak-tflops" in source


def test_profile_lists_the_ops_of_one_call():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    text, records = profile_table(lambda: torch.mm(a, b).relu(), "cpu", rows=5)
    ops = [r["op"] for r in records]
    assert "aten::mm" in ops and len(records) <= 5
    assert "aten::mm" in text


def test_switch_study_and_checkpointed_memory_run_at_a_tiny_size(monkeypatch):
    # compilation left out: Inductor compiling I3D takes minutes on a CPU (tests/test_speed.py
    # checks the compiled path on a small model)
    monkeypatch.setattr(
        end_to_end,
        "SWITCHES",
        {k: v for k, v in end_to_end.SWITCHES.items() if k in ("plain", "fold_bn_eval")},
    )
    study = end_to_end.switch_study("cpu", pairs=1, clips=2, clip_len=8, size=32, repeats=1)
    assert set(study) == {"plain", "fold_bn_eval"}
    assert all(r["train_pairs_per_s"] > 0 and r["eval_videos_per_s"] > 0 for r in study.values())
    memory = end_to_end.checkpointed_memory("cpu", pairs=1, clips=2, clip_len=8, size=32)
    assert memory["peak_memory_mb"] > 0 and memory["size"] == 32


def test_render_shows_bf16_feature_mode_switches_and_memory():
    fm = {
        "epoch_s": 3.0,
        "train_pairs_per_s": 353.0,
        "eval_s": 1.5,
        "eval_videos_per_s": 235.0,
        "epoch_plus_eval_s": 4.5,
        "bare_epoch_s": 2.4,
        "loop_overhead": 0.2,
        "flops_per_pair": 3.3e8,
        "achieved_tflops": 0.117,
        "mfu": 0.5,
    }
    row = {
        "train_pairs_per_s": 1.0,
        "eval_videos_per_s": 2.0,
        "step_flops": 1e9,
        "flops_per_pair": 5e8,
        "achieved_tflops": 0.5,
        "peak_tflops": None,
        "precision": "fp32",
        "mfu": None,
    }
    report = {
        "device": "cpu",
        "torch": "2",
        "threads": 2,
        "settings": {"pairs": 3, "clips": 20, "clip_len": 8, "size": 224},
        "feature_mode": fm,
        "feature_mode_fast": {
            **fm,
            "epoch_s": 2.0,
            "eval_s": 1.0,
            "epoch_plus_eval_s": 3.0,
            "mfu": None,
        },
        "end_to_end": {
            "fp32": row,
            "bf16_channels_last": row,
            "train_speedup": 1.0,
            "eval_speedup": 1.0,
        },
        "frame_loading": {"pil": 1000.0, "simplejpeg": None},
        "peak_source": "given",
        "peak_memory_mb": 100.0,
        "switches": {"compile": {"train_pairs_per_s": 48.5, "eval_videos_per_s": 130.25}},
        "checkpointed_memory": {
            "pairs": 3,
            "clips": 20,
            "clip_len": 8,
            "size": 224,
            "peak_memory_mb": 20480.0,
            "measure": "CUDA max allocated, this step",
        },
    }
    text = table.render(report)
    assert (
        "  default          3.00 s     353      2.40 s       20 %   1.50 s      235       4.50 s"
        "     0.117    50 %" in text
    )
    fast_row = next(line for line in text.splitlines() if line.startswith("  speed=fast   "))
    assert fast_row.startswith("  speed=fast       2.00 s") and fast_row.endswith("n/a")
    assert "speed=fast         1.50× (model FLOPs per pair: 0.33 GFLOP" in text
    assert "compile                   48.500         130.250" in text
    assert "3 pairs × 20 clips × 8×224²: peak 20,480 MiB" in text


def test_feature_mode_reports_the_bare_loop_and_the_mfu_of_its_epoch():
    tiny = ("dataset.num_train=30", "dataset.num_test=9", "dataset.feature_dim=16")
    r = features.feature_mode("cpu", tiny, peaks={"fp32": 0.5, "bf16": 1.0})
    assert (r["train_pairs"], r["eval_videos"], r["precision"]) == (30, 9, "32-true")
    assert r["epoch_s"] == sorted(r["epochs_s"])[1] and len(r["bare_epochs_s"]) == 3  # medians
    assert r["bare_epoch_s"] > 0 and r["loop_overhead"] == pytest.approx(
        1 - r["bare_epoch_s"] / r["epoch_s"]
    )
    # the epoch's model FLOPs are the step's per pair times the pairs, over the fit's time
    assert r["achieved_tflops"] * 1e12 * r["epoch_s"] == pytest.approx(30 * r["flops_per_pair"])
    assert r["peak_tflops"] == 0.5 and r["mfu"] == pytest.approx(r["achieved_tflops"] / 0.5)
    fast = features.feature_mode(
        "cpu", (*tiny, "speed=fast"), peaks={"fp32": 0.5, "bf16": 1.0}, repeats=1
    )
    assert fast["precision"] == "bf16-mixed" and fast["peak_tflops"] == 1.0  # the bf16 peak


def test_exemplar_protocols_count_passes_and_render():
    """Per-group lists encode each test video once plus each group's M exemplars once; per-video
    lists encode each distinct exemplar of every video's list, never fewer."""
    tiny = ("dataset.num_train=40", "dataset.num_test=12", "dataset.feature_dim=16")
    p = features.exemplar_protocols("cpu", 1, tiny)
    n, g, m = p["test_videos"], p["groups"], p["exemplars_per_video"]
    assert n == 12 and m == 10
    assert n < p["per_group"]["passes"] <= n + g * m
    assert p["per_video"]["passes"] >= p["per_group"]["passes"]
    for name in ("per_video", "per_group"):
        assert -1 <= p[name]["srcc"] <= 1
    lines = table._render_protocols(p)
    assert (
        lines[-1].startswith("  per_group") and f"{p['per_group']['passes'] / n:.2f}" in lines[-1]
    )
