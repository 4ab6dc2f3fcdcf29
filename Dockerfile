# syntax=docker/dockerfile:1.7
#
# emoserve images. Targets (the last stage, `cpu`, is the default):
#   cpu      the service on onnxruntime (CPU). No torch.           docker build -t emoserve:cpu .
#   gpu      the service on onnxruntime-gpu, nvidia/cuda base.      docker build --target gpu -t emoserve:gpu .
#   trainer  the offline training job (extra `train`, CPU torch).   docker build --target trainer -t emoserve:trainer .
#
# Models are pulled at build time through the catalog (`emoserve models pull`) into the model root
# baked into the image (EMOSERVE_MODEL_ROOT=/opt/emoserve/models), so a container starts offline.
# The pull looks in the `mirror` stage first. By default that stage is deploy/mirror/ of the build
# context (empty: the pull then downloads from the catalog's official source). To build air-gapped,
# replace the stage with a mirror folder (BuildKit named context):
#   docker buildx build --build-context mirror=../shared/models -t emoserve:cpu .
# or copy the mirror into deploy/mirror/ (ignored by git) before `docker build`.
# See docs/deployment.md.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# --- the model mirror (override with --build-context mirror=DIR) ------------------------------
FROM scratch AS mirror
COPY deploy/mirror/ /

# --- a wheel of emoserve (the package data includes model_store/shipped/, the default classifiers)
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY emoserve_cli/ emoserve_cli/
COPY service/ service/
COPY model_store/ model_store/
COPY training/ training/
COPY clients/ clients/
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- CPU virtualenv: emoserve[cpu] only, never torch ------------------------------------------
FROM ${PYTHON_IMAGE} AS venv-cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /wheels /wheels
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install "$(ls /wheels/emoserve-*.whl)[cpu]" \
 && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then echo "torch must not be in the service image" >&2; exit 1; fi \
 && rm -rf /wheels

# --- models: pulled through the catalog, mirror first -----------------------------------------
FROM venv-cpu AS models
# space-separated catalog names; the first detector is the default (EMOSERVE_DETECTOR)
ARG MODELS="yunet-2023mar"
ENV EMOSERVE_MODEL_ROOT=/opt/emoserve/models
COPY --from=mirror / /mirror
RUN for m in ${MODELS}; do /opt/venv/bin/emoserve models pull "$m" --mirror /mirror || exit 1; done \
 && /opt/venv/bin/emoserve models verify --all \
 && /opt/venv/bin/emoserve models list

# --- GPU service: onnxruntime-gpu on the CUDA + cuDNN runtime ---------------------------------
# Python 3.11 comes from uv's standalone builds (the CUDA base is Ubuntu, whose Python differs).
# Pick CUDA_IMAGE to match the CUDA/cuDNN major versions onnxruntime-gpu was built for.
FROM ghcr.io/astral-sh/uv:0.9.5 AS uv
FROM ${CUDA_IMAGE} AS gpu
ENV UV_PYTHON_INSTALL_DIR=/opt/python UV_NO_CACHE=1 UV_LINK_MODE=copy
COPY --from=uv /uv /usr/local/bin/uv
COPY --from=wheel /wheels /wheels
RUN uv python install 3.11 \
 && uv venv --python 3.11 /opt/venv \
 && uv pip install --python /opt/venv/bin/python "$(ls /wheels/emoserve-*.whl)" \
 && uv pip uninstall --python /opt/venv/bin/python onnxruntime \
 && uv pip install --python /opt/venv/bin/python onnxruntime-gpu==1.31.1 \
 && rm -rf /wheels /usr/local/bin/uv
RUN groupadd --system --gid 10001 emoserve \
 && useradd --system --uid 10001 --gid emoserve --home-dir /home/emoserve --create-home emoserve
COPY --from=models --chown=10001:10001 /opt/emoserve/models /opt/emoserve/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EMOSERVE_MODEL_ROOT=/opt/emoserve/models \
    EMOSERVE_HOST=0.0.0.0 \
    EMOSERVE_PORT=8000 \
    EMOSERVE_PROVIDERS='["CUDAExecutionProvider","CPUExecutionProvider"]' \
    EMOSERVE_REQUIRE_GPU=true
USER 10001:10001
WORKDIR /home/emoserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('EMOSERVE_PORT', '8000'), timeout=4)"]
CMD ["emoserve", "serve"]

# --- trainer: the offline job (torch CPU wheel, extra `train`) --------------------------------
FROM ${PYTHON_IMAGE} AS trainer
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /wheels /wheels
# torch first, from the CPU index, so pip never resolves a CUDA build
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && /opt/venv/bin/pip install "$(ls /wheels/emoserve-*.whl)[cpu,train]" \
 && rm -rf /wheels
RUN groupadd --system --gid 10001 emoserve \
 && useradd --system --uid 10001 --gid emoserve --home-dir /home/emoserve --create-home emoserve \
 && mkdir -p /data /opt/emoserve/models /runs && chown 10001:10001 /opt/emoserve/models /runs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EMOSERVE_MODEL_ROOT=/opt/emoserve/models
USER 10001:10001
WORKDIR /home/emoserve
ENTRYPOINT ["emoserve"]
CMD ["train", "--help"]

# --- CPU service (default target) -------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --system --gid 10001 emoserve \
 && useradd --system --uid 10001 --gid emoserve --home-dir /home/emoserve --create-home emoserve
COPY --from=venv-cpu /opt/venv /opt/venv
COPY --from=models --chown=10001:10001 /opt/emoserve/models /opt/emoserve/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EMOSERVE_MODEL_ROOT=/opt/emoserve/models \
    EMOSERVE_HOST=0.0.0.0 \
    EMOSERVE_PORT=8000 \
    EMOSERVE_PROVIDERS='["CPUExecutionProvider"]'
USER 10001:10001
WORKDIR /home/emoserve
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('EMOSERVE_PORT', '8000'), timeout=4)"]
CMD ["emoserve", "serve"]
