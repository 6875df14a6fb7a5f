#!/usr/bin/env bash
# Issue 16's GPU figures in one device call of under 7 minutes (benchmarks/GPU.md, row 0):
#   device run, carry [".whl", ".gpu-data"], timeout_s 420:  bash benchmarks/gpu_batched.sh
# Writes under $OUT (at most 6 files, as the device returns them): gpu_batched.log, the three
# modes side by side in one process (batched-tinyimagenet-gpu.{md,json}), and the real
# study's aggregate images/s with batched folds and 2 recipes per step for 1 and 4 workers
# (recipes/throughput-tinyimagenet-gpu.{md,json,png}). Each part has its own time limit, so
# what finished comes back even when a later part is cut.
set -uo pipefail
OUT=${OUT:?run on the device machine, where \$OUT is set}
exec > >(tee "$OUT/gpu_batched.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=$PWD:/tmp/site KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # several worker processes share the GPU
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
date -u
# 1. sequential folds vs batched folds (5 copies) vs 2 recipes per step (2 x 5 copies),
#    same recipes and epochs, one process: seconds per trial, images/s, CV loss (< 3 min)
BENCH_OUT=$OUT timeout 180 python -m benchmarks.batched --study tinyimagenet --trials 4 \
    --epochs 3 --folds 5 --recipes-per-step 2 --data-dir .gpu-data
date -u
# 2. the study itself, batched folds and 2 recipes per step, 1 and 4 workers sharing the GPU:
#    aggregate images/s against the 200,000 goal (< 3.5 min; a run cut at 90 s still counts
#    what its trials trained)
BENCH_OUT=$OUT/recipes timeout 210 python -m benchmarks.throughput --study tinyimagenet \
    --workers 1 4 --precisions float32 --trials 8 --epochs 3 --folds 5 \
    --set search.fold_mode=batched --set search.recipes_per_step=2 --run-timeout 90 \
    --data-dir .gpu-data
date -u
