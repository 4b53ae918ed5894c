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

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY operator operator
RUN pip wheel --no-deps --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    TESSERA_DATA_DIR=/tmp/tessera
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir "$(ls /wheels/tessera-*.whl)[worker,operator,redis]" \
    && useradd --uid 1000 --user-group --no-create-home --home-dir /tmp tessera
USER 1000:1000
# 8000: the image API (`tessera serve`); 8080: a worker's health and metrics.
EXPOSE 8000 8080
ENTRYPOINT ["tessera"]
# `docker run -p 8000:8000 IMAGE` serves the CPU demo models; Kubernetes objects set their
# own command.
CMD ["serve", "--demo", "--host", "0.0.0.0"]
