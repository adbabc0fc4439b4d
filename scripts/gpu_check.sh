#!/usr/bin/env bash
# GPU check, run when a CUDA machine is at hand; everything within BUDGET seconds (default 450, so
# the whole script stays under 8 minutes; a step still running at the deadline is stopped, later
# ones are skipped; steps can also be skipped with SKIP="name ..."):
#   bash scripts/gpu_check.sh [OUT_DIR]
# 1. the speed measurement of issue 13 at the paper's per-GPU batch (3 pairs x 20 clips x 8x224^2):
#    `tpt_aqa.benchmark --device cuda` with every speed switch alone (--switches: compile, Adam's
#    update loops, BatchNorm folding at evaluation, cuDNN benchmark), training pairs/s with the
#    MFU, evaluation videos/s, and the peak memory with activation checkpointing + bf16 (--memory);
# 2. whether the GPU's bf16 conv3d weight gradient has the CPU's fault (models/i3d.py), and whether
#    the loader hands over pinned uint8 batches (data/batch.py);
# 3. the default synthetic experiment trained on the GPU in bf16-mixed (time, metrics);
# 4. the end-to-end video path (I3D) on the GPU in bf16-mixed (fast_dev_run);
# 5. the DDP strategy with NCCL on one device (the code path multi-GPU jobs take);
# 6. encode-once vs pair-by-pair evaluation through I3D; 7. predict on a 103-frame video.
# Writes a log and the JSON results into OUT_DIR (default outputs/gpu_check).
set -uo pipefail
OUT_DIR=${1:-outputs/gpu_check}
PY=${PY:-python3}
mkdir -p "$OUT_DIR"
# a second check into the same OUT_DIR starts its training runs over (tpt_aqa.train refuses a
# folder that holds a finished run)
rm -rf "$OUT_DIR"/train_bf16-mixed "$OUT_DIR"/video_bf16 "$OUT_DIR"/ddp_nccl
export PYTHONUNBUFFERED=1
status=0
DEADLINE=$((SECONDS + ${BUDGET:-450}))
step() {  # step NAME CMD...: run within the budget, time, keep going on failure
  local name=$1; shift
  if [[ " ${SKIP:-} " == *" $name "* ]]; then echo "=== $name skipped"; return; fi
  local left=$((DEADLINE - SECONDS))
  if ((left < 10)); then echo "=== $name skipped: the time budget is spent"; return; fi
  echo "=== $name: $*"
  local start=$SECONDS
  timeout "$left" "$@" || { echo "!!! $name failed or ran out of time (exit $?)"; status=1; }
  echo "=== $name took $((SECONDS - start)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"
step bench_paper $PY -m tpt_aqa.benchmark --device cuda --pairs 3 --clips 20 --clip-len 8 --size 224 \
  --repeats 3 --switches --memory 3 20 8 224 --out "$OUT_DIR/bench_paper_scale.json"
step conv_grad_bf16 $PY -c '
import torch, torch.nn.functional as F
for depth in (2, 4):
    w = (torch.randn(128, 64, 3, 3, 3, device="cuda") * 0.05).requires_grad_()
    x = torch.randn(8, 64, depth, 14, 14, device="cuda")
    g = torch.randn(8, 128, depth, 14, 14, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = F.conv3d(x, w, None, 1, 1)
    y.backward(g.to(y.dtype))
    w32 = w.detach().clone().requires_grad_()
    F.conv3d(x.bfloat16().float(), w32, None, 1, 1).backward(g.bfloat16().float())
    err = ((w.grad - w32.grad).abs().max() / w32.grad.abs().max()).item()
    print(f"bf16 conv3d weight gradient, depth {depth}: relative error {err:.2g} (rounding: ~4e-3)")
'
step pinned_batches $PY -c '
from hydra import compose, initialize_config_dir
from tpt_aqa.config import CONF_DIR, build_datamodule
from tpt_aqa.core.startup import setup
setup()
with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
    cfg = compose("train", overrides=["dataset=synthetic_video", "dataset.pin_memory=true",
                                      "paths.output_dir=unused"])
dm = build_datamodule(cfg)
dm.setup("fit")
b = next(iter(dm.train_dataloader()))
print("train batch:", b.query.video.dtype, "pinned:", b.query.video.is_pinned(), b.exemplar.target.is_pinned())
'
step train_bf16-mixed $PY -m tpt_aqa.train trainer=gpu trainer.precision=bf16-mixed \
  paths.output_dir="$OUT_DIR/train_bf16-mixed"
cp "$OUT_DIR/train_bf16-mixed/results.json" "$OUT_DIR/results_bf16-mixed.json" 2>/dev/null
step video_bf16 $PY -m tpt_aqa.train experiment=synthetic_video_tpt trainer=gpu \
  trainer.precision=bf16-mixed debug=fast_dev_run paths.output_dir="$OUT_DIR/video_bf16"
step ddp_nccl $PY -m tpt_aqa.train trainer=ddp trainer.devices=1 trainer.max_epochs=3 \
  paths.output_dir="$OUT_DIR/ddp_nccl"
# 6. encode-once against the reference's pair-by-pair evaluation through I3D (353 × 10 exemplars)
step eval_compare $PY -m tpt_aqa.benchmark --device cuda --eval-compare --eval-size 112 \
  --out "$OUT_DIR/bench_eval_compare.json"
# 7. predict: one 103-frame video at MTL-AQA shapes (20 clips of 8, 256×455 → 224²), twice (warm)
step demo_mtl $PY -m tpt_aqa.make_demo_checkpoint "$OUT_DIR/demo_mtl" --preset mtl_aqa_shape \
  --videos 1 trainer=gpu
mkdir -p "$OUT_DIR/videos"
for copy in a b; do cp -r "$OUT_DIR"/demo_mtl/videos/* "$OUT_DIR/videos/dive_$copy"; done
step predict_cuda $PY -m tpt_aqa.predict ckpt_path="$OUT_DIR/demo_mtl/checkpoint.ckpt" \
  input="$OUT_DIR/videos" difficulty=3 device=cuda output_dir="$OUT_DIR/predict_cuda"
exit $status
