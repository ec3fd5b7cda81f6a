#!/usr/bin/env bash
# The GPU session in one script (the GPU time lent is short: run it once, as it is):
# the CUDA tests, then bench.run on CUDA for resnet18 and resnet50 (ceiling, GPU-decode
# ceiling and pipeline in one run each). Results go to $OUT (or bench/results).
#   bash bench/gpu_check.sh [images]      # default 20000
set -uo pipefail
images=${1:-20000}
out=${OUT:-bench/results}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
# GPU utilisation, sampled once a second for the whole session.
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 \
  > "$out/gpu-utilisation.csv" 2>/dev/null &
smi=$!
python -m pytest -q -m cuda tests/unit/worker/test_batch_decode.py -rs 2>&1 | tail -5 | tee "$out/cuda-tests.txt"
for model in resnet18 resnet50; do
  batch=256; files=64
  [ "$model" = resnet50 ] && { batch=128; files=32; }
  python -m bench.run --device cuda --model "$model" --images "$images" --repeat 1 \
    --no-naive --no-scale-out --no-sweep --idle 20 --out "$out" \
    --set BATCH_SIZE=$batch --set FILES_PER_MESSAGE=$files --set DECODE_THREADS=8 \
    2>&1 | tail -40 | tee "$out/bench-$model.txt"
done
kill $smi 2>/dev/null
