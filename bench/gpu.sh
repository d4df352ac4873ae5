#!/usr/bin/env bash
# GPU benchmark (H100/H200 class), prepared on a CPU-only machine; see docs/BENCHMARKS.md.
#
#   bash bench/gpu.sh                 # everything, results in bench-gpu-<time>/
#   QUICK=1 bash bench/gpu.sh         # batches 1,8,64 and fp16 only (about 10 minutes)
#
# 1. each model service alone vs a bare PyTorch loop: images/s at batch 1..128,
#    fp32 / fp16 / bf16 (bench.gpu_bench);
# 2. the whole stack vs the original-style baseline on the same GPU and bundle
#    (spine bench --device cuda) at concurrency 1, 8, 32, 64.
# The bundle is the untrained one with the original's architectures and a YOLO11l
# (the original's best.pt), built once under $SPINE_CACHE_DIR; MODEL_DIR=... uses yours.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench-gpu-$(date +%Y%m%d-%H%M%S)}
YOLO=${YOLO:-yolo11l}
BATCHES=${BATCHES:-1,2,4,8,16,32,64,128}
PRECISIONS=${PRECISIONS:-fp32,fp16,bf16}
CONCURRENCY=${CONCURRENCY:-1,8,32,64}
REQUESTS=${REQUESTS:-64}
if [[ "${QUICK:-0}" == "1" ]]; then
  BATCHES=1,8,64; PRECISIONS=fp16; CONCURRENCY=1,32; REQUESTS=32
fi
MODEL_ARGS=()
if [[ -n "${MODEL_DIR:-}" ]]; then MODEL_ARGS=(--model-dir "$MODEL_DIR"); fi

[[ -x "$PY" ]] || scripts/setup.sh
mkdir -p "$OUT"
export YOLO_OFFLINE=1
{
  date; uname -a; nproc; free -g
  nvidia-smi || { echo "no NVIDIA GPU visible: this script is for a GPU machine" >&2; exit 2; }
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/machine.txt"

echo "== 1/2 model services alone vs bare PyTorch ($PRECISIONS, batches $BATCHES)"
"$PY" -m bench.gpu_bench "${MODEL_ARGS[@]}" --yolo "$YOLO" --device cuda \
  --batches "$BATCHES" --precisions "$PRECISIONS" --log-dir "$OUT/logs" \
  --json "$OUT/models.json" | tee "$OUT/models.md"

echo "== 2/2 whole stack vs the original-style baseline (concurrency $CONCURRENCY)"
# Large batches pay on a GPU: let the batcher wait a little for them.
"$PY" -m spine.cli bench "${MODEL_ARGS[@]}" --yolo "$YOLO" --device cuda \
  --concurrency "$CONCURRENCY" --requests "$REQUESTS" \
  --variant "ours:MAX_BATCH_SIZE=32,MAX_DELAY_MS=10" \
  --json "$OUT/stack.json" | tee "$OUT/stack.md"

echo "results in $OUT/ (models.md, stack.md, machine.txt)"
