#!/usr/bin/env bash
# GPU check, run when a CUDA machine is at hand (about 7 minutes on one H100; steps can be skipped with SKIP="name ..."):
#   bash scripts/gpu_check.sh [OUT_DIR]
# 1. `tpt_aqa.benchmark --device cuda` at the default and at paper-scale end-to-end sizes;
# 2. the default synthetic experiment trained on the GPU in fp32 and bf16-mixed (times, metrics);
# 3. the end-to-end video path (I3D) on the GPU in bf16-mixed (fast_dev_run);
# 4. the DDP strategy with NCCL on one device (the code path multi-GPU jobs take);
# 5. encode-once vs pair-by-pair evaluation through I3D; 6. predict on a 103-frame video.
# Writes a log and the JSON results into OUT_DIR (default outputs/gpu_check).
set -uo pipefail
OUT_DIR=${1:-outputs/gpu_check}
PY=${PY:-python3}
mkdir -p "$OUT_DIR"
# a second check into the same OUT_DIR starts its training runs over (tpt_aqa.train refuses a
# folder that holds a finished run)
rm -rf "$OUT_DIR"/train_32-true "$OUT_DIR"/train_bf16-mixed "$OUT_DIR"/video_bf16 "$OUT_DIR"/ddp_nccl
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME CMD...: run, time, keep going on failure
  local name=$1; shift
  if [[ " ${SKIP:-} " == *" $name "* ]]; then echo "=== $name skipped"; return; fi
  echo "=== $name: $*"
  local start=$SECONDS
  "$@" || { echo "!!! $name failed (exit $?)"; status=1; }
  echo "=== $name took $((SECONDS - start)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"
step bench_default $PY -m tpt_aqa.benchmark --device cuda --out "$OUT_DIR/bench_default.json"
step bench_paper $PY -m tpt_aqa.benchmark --device cuda --pairs 3 --clips 20 --clip-len 8 --size 224 \
  --out "$OUT_DIR/bench_paper_scale.json"
for precision in 32-true bf16-mixed; do
  step "train_$precision" $PY -m tpt_aqa.train trainer=gpu trainer.precision=$precision \
    paths.output_dir="$OUT_DIR/train_$precision"
  cp "$OUT_DIR/train_$precision/results.json" "$OUT_DIR/results_$precision.json" 2>/dev/null
done
step video_bf16 $PY -m tpt_aqa.train experiment=synthetic_video_tpt trainer=gpu \
  trainer.precision=bf16-mixed debug=fast_dev_run paths.output_dir="$OUT_DIR/video_bf16"
step ddp_nccl $PY -m tpt_aqa.train trainer=ddp trainer.devices=1 trainer.max_epochs=3 \
  paths.output_dir="$OUT_DIR/ddp_nccl"
# 5. encode-once against the reference's pair-by-pair evaluation through I3D (353 × 10 exemplars)
step eval_compare $PY -m tpt_aqa.benchmark --device cuda --eval-compare --eval-size 112 \
  --out "$OUT_DIR/bench_eval_compare.json"
# 6. predict: one 103-frame video at MTL-AQA shapes (20 clips of 8, 256×455 → 224²), twice (warm)
step demo_mtl $PY -m tpt_aqa.make_demo_checkpoint "$OUT_DIR/demo_mtl" --preset mtl_aqa_shape \
  --videos 1 trainer=gpu
mkdir -p "$OUT_DIR/videos"
for copy in a b; do cp -r "$OUT_DIR"/demo_mtl/videos/* "$OUT_DIR/videos/dive_$copy"; done
step predict_cuda $PY -m tpt_aqa.predict ckpt_path="$OUT_DIR/demo_mtl/checkpoint.ckpt" \
  input="$OUT_DIR/videos" difficulty=3 device=cuda output_dir="$OUT_DIR/predict_cuda"
exit $status
