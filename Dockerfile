# syntax=docker/dockerfile:1
#
# One recipe for export and serving (deploy/README.md walks through it):
#
#   docker build --target export -t longdoc-export:0.1.0 .          # checkpoint -> /models
#   docker build --target serve  -t longdoc-triton:0.1.0 .          # Triton, /models mounted
#   docker build --target serve-bundled --build-arg MODEL_REPOSITORY=build/models \
#       -t longdoc-triton:0.1.0-bundled .                            # Triton + models baked in
#
# `serve` is the last stage, so a plain `docker build .` builds it.

# ---------------------------------------------------------------------------------------
# wheel: the longdoc package as one pure-Python wheel, built once for both images.
# ---------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS wheel
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
WORKDIR /src
COPY pyproject.toml ./
COPY longdoc ./longdoc
COPY export ./export
COPY client ./client
COPY bench ./bench
# the Python-backend model.py files, shipped in the wheel as longdoc.model_sources
COPY model_repository ./model_repository
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------
# export: the full project with CPU-only torch; turns a checkpoint mounted at /checkpoint
# into a Triton model repository in /models (FP16 parity is checked on the CPU, see
# DESIGN.md). Arguments after the image name replace the CMD defaults, e.g.
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/ckpt:/checkpoint:ro" \
#     -v "$PWD/build/models:/models" longdoc-export:0.1.0 \
#     --checkpoint /checkpoint --head logits-mean --precision fp16 --profile gpu --tensorrt
# (or `--preset bert-large-uncased` instead of --checkpoint, for latency work).
# ---------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS export
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/hf-home \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /opt/longdoc
# Package mirrors: --build-arg PIP_INDEX_URL=... (pip reads it from the environment) and
# TORCH_INDEX_URL. No credentials in build args: they show in `docker history`.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# CPU torch first, from PyTorch's CPU index: the project's `torch==2.13.0` is then already
# satisfied (2.13.0+cpu) and pip does not pull the multi-GB CUDA build from PyPI.
RUN python -m pip install --no-cache-dir torch==2.13.0 --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml ./
COPY longdoc ./longdoc
COPY export ./export
COPY client ./client
COPY bench ./bench
# The committed Python-backend sources that `longdoc export` copies into a repository.
COPY model_repository ./model_repository
# Editable: export finds model_repository/ next to its own sources, as in a checkout.
RUN python -m pip install --no-cache-dir -e ".[export]" \
    && longdoc export --help > /dev/null \
    && useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin longdoc \
    && mkdir -p /models /checkpoint \
    && chown 1000:1000 /models
USER 1000:1000
# The head defaults to the checkpoint's head.json, else logits-mean for a classifier.
ENTRYPOINT ["longdoc", "export", "--output", "/models"]
CMD ["--checkpoint", "/checkpoint", "--precision", "fp16", "--profile", "gpu"]

# ---------------------------------------------------------------------------------------
# serve-base: NVIDIA's Triton image plus longdoc[serve]; the entrypoint is `longdoc serve`.
#
# Pinned to 24.10, which ships Triton 2.51.0: the same server version as the tritonserver
# in the nvidia-pytriton wheel that the tests run, so behaviour measured locally
# (ensemble/batcher facts in DESIGN.md, flag syntax of the restricted APIs) holds here.
# Its Python is 3.10 (Ubuntu 22.04); the longdoc wheel is pure Python and needs >= 3.10.
# For bit-for-bit rebuilds, pin the digest too: nvcr.io/nvidia/tritonserver:24.10-py3@sha256:...
#
# The server is `longdoc serve`, the launcher every other way of running longdoc uses
# (ports, lock-down, allocator, supervision); the LONGDOC_* variables below are its flags'
# defaults (`longdoc serve --help` lists them all): on every interface, tritonserver's log
# on stdout, no start without an admin key, minutes for bert-large to load (and TensorRT
# engines to build), 30 s to drain on SIGTERM.
# ---------------------------------------------------------------------------------------
FROM nvcr.io/nvidia/tritonserver:24.10-py3 AS argv-secret
# The library that keeps the admin key out of tritonserver's command line, compiled against
# the serving image's own C library, in a stage of its own (no compiler in the image).
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY longdoc/server/argv_secret.c /src/argv_secret.c
RUN gcc -shared -fPIC -O2 -o /argv_secret.so /src/argv_secret.c

# ---------------------------------------------------------------------------------------
FROM nvcr.io/nvidia/tritonserver:24.10-py3 AS serve-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    LONGDOC_MODEL_REPOSITORY=/models \
    LONGDOC_HOST=0.0.0.0 \
    LONGDOC_HTTP_PORT=8000 \
    LONGDOC_GRPC_PORT=8001 \
    LONGDOC_METRICS_PORT=8002 \
    LONGDOC_LOG=- \
    LONGDOC_REQUIRE_ADMIN_KEY=true \
    LONGDOC_READY_TIMEOUT=1800 \
    LONGDOC_EXIT_TIMEOUT=30
# longdoc with the `serve` extra, at the project's pins (numpy 1.26: this Triton's Python
# backend crashes on TYPE_STRING inputs under numpy 2). The tritonserver on PATH (this
# image's) is the one `longdoc serve` runs. The image's `triton-server` user is uid/gid
# 1000 (NVIDIA's non-root convention); check it.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    python3 -m pip install --no-cache-dir --find-links /tmp/wheels "longdoc[serve]==0.1.0" \
    && python3 -c "import numpy, tokenizers, longdoc.chunking, longdoc.server.cli; \
assert numpy.__version__ == '1.26.4', numpy.__version__" \
    && longdoc serve --help > /dev/null \
    && [ "$(id -u triton-server)" = 1000 ] && [ "$(id -g triton-server)" = 1000 ] \
    && mkdir -p /models /opt/longdoc
# The admin key never appears in tritonserver's command line (/proc/<pid>/cmdline is
# readable by every local user): a preloaded constructor hands it over from the
# environment (longdoc/server/argv_secret.py looks for the library here).
COPY --from=argv-secret --chmod=0755 /argv_secret.so /opt/longdoc/argv_secret.so
COPY --chmod=0755 docker/entrypoint.sh /opt/longdoc/entrypoint.sh
USER 1000:1000
EXPOSE 8000 8001 8002
# Model loading (and a TensorRT engine build on first start) takes minutes for bert-large.
# (With LONGDOC_RESTRICT_API=health this probe, and any orchestrator's, needs the key.)
HEALTHCHECK --start-period=600s --interval=15s --timeout=5s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LONGDOC_HTTP_PORT', '8000') + '/v2/health/ready', timeout=4)"]
ENTRYPOINT ["/opt/longdoc/entrypoint.sh"]
CMD []

# ---------------------------------------------------------------------------------------
# serve-bundled: the same server with an exported model repository baked in (immutable
# image per model release). MODEL_REPOSITORY is relative to the build context; only
# build/models passes .dockerignore, so export there (or adjust .dockerignore).
# ---------------------------------------------------------------------------------------
FROM serve-base AS serve-bundled
ARG MODEL_REPOSITORY=build/models
# World-readable whatever the modes on the build host were; owned by root, so read-only
# for the server user.
COPY --chmod=0755 ${MODEL_REPOSITORY} /models

# ---------------------------------------------------------------------------------------
# serve (default target): the model repository is mounted at /models, read-only.
#   docker run --gpus all --shm-size=1g -p 8000-8002:8000-8002 \
#     -e LONGDOC_ADMIN_KEY="$(openssl rand -hex 32)" -v "$PWD/build/models:/models:ro" \
#     longdoc-triton:0.1.0
# ---------------------------------------------------------------------------------------
FROM serve-base AS serve
