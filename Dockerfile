# syntax=docker/dockerfile:1.7
# ninefold images (BuildKit). One serving stage, two flavours, no torch in either:
#   docker build -t ninefold:0.1.0-gpu .                                  CUDA 13 + cuDNN 9 runtime, onnxruntime-gpu, TensorRT 10
#   docker build --build-arg FLAVOUR=cpu -t ninefold:0.1.0-cpu .          python slim + onnxruntime
#   docker build --target export -t ninefold:0.1.0-export .               torch side: `ninefold export --out DIR`
#   docker build --target repository -t ninefold:0.1.0-repository .       export image with the small families baked into /models
# Versions: base images by tag below, every Python package by docker/constraints.txt.

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG FLAVOUR=gpu

# ---- wheel: the ninefold distribution, built once for every stage --------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY contract/ contract/
COPY serving/ serving/
COPY clients/ clients/
COPY export/ export/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- export: the torch side; writes a model repository (k8s/base/export-job.yaml runs it) ---------
FROM ${PYTHON_IMAGE} AS export
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/ninefold/bin:${PATH}
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    --mount=type=bind,source=docker/constraints.txt,target=/tmp/constraints.txt \
    python -m venv /opt/ninefold \
    && /opt/ninefold/bin/pip install --no-cache-dir --constraint /tmp/constraints.txt \
       "$(ls /tmp/wheels/ninefold-*.whl)[cpu,export]" \
    && useradd --system --uid 10001 --user-group --home-dir /work --create-home --shell /usr/sbin/nologin ninefold \
    && install -d -o 10001 -g 10001 /models
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["ninefold", "export"]
CMD ["--out", "/models"]

# ---- repository: the small families trained and exported at build time, in /models ---------------
FROM export AS repository
RUN ninefold export --out /models

# ---- serving bases: what differs between the flavours -------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu-base
ENV NINEFOLD_EXTRA=cpu

FROM ${CUDA_IMAGE} AS gpu-base
# ONNX Runtime's TensorRT EP dlopens libnvinfer.so.10, which the pip package tensorrt-cu13-libs puts in
# site-packages/tensorrt_libs of the venv below. Nothing else puts that folder on the loader path, and
# without it the EP fails to load and ONNX Runtime silently runs the model on the CUDA EP instead.
ENV NINEFOLD_EXTRA=gpu TENSORRT_LIBS=/opt/ninefold/lib/python3.12/site-packages/tensorrt_libs
ENV LD_LIBRARY_PATH=${TENSORRT_LIBS}:${LD_LIBRARY_PATH}
# Ubuntu's archive keeps only the newest patch of python3.12; the CUDA image tag pins the rest.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3.12 /usr/local/bin/python

# ---- serving: the server, its health probe and the TensorRT engine-cache init step ---------------
# hadolint ignore=DL3006
FROM ${FLAVOUR}-base AS serving
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/ninefold/bin:${PATH} HOME=/tmp \
    NINEFOLD_HOST=0.0.0.0 NINEFOLD_PORT=8001 NINEFOLD_HTTP_PORT=8000 NINEFOLD_METRICS_PORT=8002 \
    NINEFOLD_MODEL_REPOSITORY=/models
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    --mount=type=bind,source=docker/constraints.txt,target=/tmp/constraints.txt \
    python -m venv /opt/ninefold \
    && /opt/ninefold/bin/pip install --no-cache-dir --constraint /tmp/constraints.txt \
       "$(ls /tmp/wheels/ninefold-*.whl)[${NINEFOLD_EXTRA}]" \
    && if /opt/ninefold/bin/python -c "import torch" 2>/dev/null; then echo "torch leaked into the serving image" >&2; exit 1; fi \
    && if [ -n "${TENSORRT_LIBS:-}" ] && [ ! -e "${TENSORRT_LIBS}/libnvinfer.so.10" ]; then \
         echo "libnvinfer.so.10 is not in ${TENSORRT_LIBS} (LD_LIBRARY_PATH)" >&2; exit 1; fi \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin ninefold
COPY scripts/ninefold_health.py scripts/engine_cache.py /opt/ninefold/libexec/
USER 10001:10001
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "/opt/ninefold/libexec/ninefold_health.py"]
ENTRYPOINT ["ninefold", "serve"]
