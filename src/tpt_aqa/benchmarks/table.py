"""The benchmark's printed table, from its JSON report."""

from __future__ import annotations

from typing import Any


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    f, e, j = report["feature_mode"], report["end_to_end"], report["frame_loading"]
    fb = report["feature_mode_fast"]
    fps = {k: ("n/a" if v is None else f"{v:,.0f}") for k, v in j.items()}
    clip = f"{s['pairs']} pair(s) × {s['clips']} clips × {s['clip_len']}×{s['size']}²"
    lines = [
        f"tpt_aqa benchmark — {report['device']} — torch {report['torch']}, {report['threads']} threads",
        "",
        "feature mode, MTL-AQA scale (1,059 pairs, T=20, C=1024, D=512, K=5, batch 24; 353 × 10 eval)",
        "                     epoch   pairs/s   bare loop   overhead   eval   videos/s   "
        "epoch+eval   TFLOP/s    MFU",
        *(_feature_row(label, r) for label, r in (("default", f), ("speed=fast", fb))),
        f"  speed=fast         {f['epoch_plus_eval_s'] / fb['epoch_plus_eval_s']:.2f}× "
        f"(model FLOPs per pair: {f['flops_per_pair'] / 1e9:.2f} GFLOP, forward + backward)",
        "",
        f"end to end through I3D ({clip} per step)",
        "                     train pairs/s   eval videos/s",
        f"  fp32 contiguous    {e['fp32']['train_pairs_per_s']:13.3f}   {e['fp32']['eval_videos_per_s']:13.3f}",
        f"  bf16 + cl_3d       {e['bf16_channels_last']['train_pairs_per_s']:13.3f}   "
        f"{e['bf16_channels_last']['eval_videos_per_s']:13.3f}",
        f"  speed-up           {e['train_speedup']:12.2f}×   {e['eval_speedup']:12.2f}×",
        "",
        f"model FLOPs of one training step (forward + backward; peak: {report['peak_source']})",
        "                     GFLOP/step   GFLOP/pair   TFLOP/s    peak    MFU",
        *(_flops_row(label, e[key]) for label, key in _E2E_ROWS),
        "",
        "frame loading (decode + crop, 103 frames of 224², one core)",
        f"  PIL                {fps['pil']:>10} frames/s",
        f"  simplejpeg         {fps['simplejpeg']:>10} frames/s",
        "",
        f"peak memory          {report['peak_memory_mb']:,.0f} MiB",
    ]
    if "switches" in report:
        lines += ["", f"speed switches alone, bf16 + cl_3d ({clip} per step)"]
        lines.append("                     train pairs/s   eval videos/s")
        for name, r in report["switches"].items():
            lines.append(
                f"  {name:<18} {r['train_pairs_per_s']:13.3f}   {r['eval_videos_per_s']:13.3f}"
            )
    if "checkpointed_memory" in report:
        m = report["checkpointed_memory"]
        lines += [
            "",
            f"activation checkpointing + bf16, {m['pairs']} pairs × {m['clips']} clips × "
            f"{m['clip_len']}×{m['size']}²: peak {m['peak_memory_mb']:,.0f} MiB ({m['measure']})",
        ]
    if "eval_compare" in report:
        lines += ["", *_render_eval_compare(report["eval_compare"])]
    if "exemplar_protocols" in report:
        lines += ["", *_render_protocols(report["exemplar_protocols"])]
    return "\n".join(lines)


def _render_protocols(p: dict[str, Any]) -> list[str]:
    n, m = p["test_videos"], p["exemplars_per_video"]
    lines = [
        f"evaluation protocols after {p['epochs']} epochs (features at MTL-AQA scale, "
        f"{n} test videos, {p['groups']} groups, M = {m}; the release encodes 2M = {2 * m} per video)",
        "  eval_exemplars   passes   per video   fewer than 2M   test ρ    R-ℓ2",
    ]
    for name in ("per_video", "per_group"):
        r = p[name]
        lines.append(
            f"  {name:<15}{r['passes']:8,}   {r['passes'] / n:9.2f}   {2 * m * n / r['passes']:12.1f}×"
            f"   {r['srcc']:.4f}   {r['rl2']:.4f}"
        )
    return lines


_E2E_ROWS = (("fp32 contiguous", "fp32"), ("bf16 + cl_3d", "bf16_channels_last"))


def _feature_row(label: str, r: dict[str, Any]) -> str:
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.0f} %"
    return (
        f"  {label:<12} {r['epoch_s']:8.2f} s {r['train_pairs_per_s']:7,.0f}   "
        f"{r['bare_epoch_s']:7.2f} s   {100 * r['loop_overhead']:6.0f} %  {r['eval_s']:5.2f} s "
        f"{r['eval_videos_per_s']:8,.0f}   {r['epoch_plus_eval_s']:8.2f} s   "
        f"{r['achieved_tflops']:7.3f}   {mfu:>5}"
    )


def _flops_row(label: str, r: dict[str, Any]) -> str:
    peak = "n/a" if r["peak_tflops"] is None else f"{r['peak_tflops']:.3g}"
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
    return (
        f"  {label:<18} {r['step_flops'] / 1e9:10.1f}   {r['flops_per_pair'] / 1e9:10.1f}   "
        f"{r['achieved_tflops']:7.3f}   {peak:>5} {r['precision']:>4}   {mfu}"
    )


def _render_eval_compare(c: dict[str, Any]) -> list[str]:
    clip = f"{c['clips']} clips × {c['clip_len']}×{c['size']}²"
    naive_note = (
        f"  naive time: {c['naive_videos_timed']} of {c['test_videos']} test videos timed "
        f"({c['naive_s_timed']:.2f} s, {c['naive_passes_timed']:,} passes), scaled per video"
        if c["naive_s_extrapolated"]
        else f"  naive time: all {c['test_videos']} test videos timed"
    )
    return [
        f"evaluation through I3D (random init, {clip}): {c['test_videos']} test videos × "
        f"{c['exemplars_per_video']} exemplars from {c['train_videos']:,} training videos",
        "                     backbone passes   wall-clock",
        f"  encode once        {c['cached_passes']:15,}   {c['cached_s']:8.2f} s   "
        f"({c['test_videos']} videos + {c['distinct_exemplars']} distinct exemplars)",
        f"  naive (reference)  {c['naive_passes']:15,}   {c['naive_s']:8.2f} s   "
        "(2 per (video, exemplar) pair)",
        f"  ratio              {c['pass_ratio']:14.1f}×   {c['time_ratio']:7.1f}×",
        f"  passes per test video: {c['cached_passes'] / c['test_videos']:.2f} encode once "
        f"(1 + its share of the exemplar bank) vs {c['naive_passes'] / c['test_videos']:.0f} naive",
        naive_note,
        f"  max |Δ prediction| {c['max_abs_pred_diff']:.2e}"
        + ("" if c["targets_agree"] else "   (targets differ!)"),
    ]
