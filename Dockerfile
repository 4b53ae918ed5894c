# syntax=docker/dockerfile:1
# The one Tessera image: `tessera worker` for the Deployments the operator renders,
# `hf download` for its weights loader Jobs, and `tessera operator` / `tessera serve`.
#
#   docker build -t REGISTRY/tessera:0.1.0 . && docker push REGISTRY/tessera:0.1.0
#   tessera operator --worker-image REGISTRY/tessera:0.1.0
#
# PyPI's torch for Linux x86_64 brings its own CUDA runtime libraries (the nvidia-* wheels),
# so no CUDA base image is needed: the GPU driver comes from the node through the NVIDIA
# container runtime. The operator runs the worker as uid 1000 with a read-only root
# filesystem and a writable /tmp, which is where HOME and the Hugging Face cache point.

# The base, pinned to a patch release (tests/chart/test_image.py holds every FROM to
# one). To pin its digest as well, for a build that never changes under you:
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm   # prints Digest: sha256:...
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:... .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY operator operator
RUN pip wheel --no-deps --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    TESSERA_DATA_DIR=/tmp/tessera
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(ls /wheels/tessera-*.whl)[worker,operator,gateway]" \
    && useradd --uid 1000 --user-group --no-create-home --home-dir /tmp tessera
USER 1000:1000
# 8000: the image API (`tessera serve`); 8080: a worker's health and metrics.
EXPOSE 8000 8080
ENTRYPOINT ["tessera"]
# `docker run -p 8000:8000 IMAGE` serves the CPU demo models; Kubernetes objects set their
# own command.
CMD ["serve", "--demo", "--host", "0.0.0.0"]
