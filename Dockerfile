# syntax=docker/dockerfile:1
# Build: make docker   (= docker build -t counterfeit-scan:latest .)
# Run:   docker run -p 8000:8000 -v counterfeit-scan-data:/data counterfeit-scan:latest
# Key:   docker run --rm -v counterfeit-scan-data:/data counterfeit-scan:latest counterfeit-scan keys create --role admin
# Installs the same pins as development (constraints.txt) from plain PyPI; torch 2.14.1 from PyPI is the CUDA build,
# so the image is large but also serves on a GPU host (docker run --gpus all ...).
ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: a venv with the pinned dependencies and the project installed (not editable) ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies get their own layer, rebuilt only when pyproject.toml or constraints.txt change.
COPY pyproject.toml constraints.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --upgrade -c constraints.txt pip \
    && pip install -c constraints.txt -r /tmp/requirements.txt

COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -c constraints.txt . \
    && pip check

# ---- runtime: the venv only (it holds the installed code), run as a non-root user ----
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    COUNTERFEIT_SCAN_DATA_DIR=/data \
    COUNTERFEIT_SCAN_HOST=0.0.0.0 \
    COUNTERFEIT_SCAN_PORT=8000
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /data \
    && chown app:app /data
COPY --from=builder /opt/venv /opt/venv

USER app
WORKDIR /home/app
# Catalog database, image blobs, index files and model exports; a new named volume inherits /data's owner.
VOLUME ["/data"]
EXPOSE 8000
# Liveness only (no curl in slim); /readyz says when the model and index are loaded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('COUNTERFEIT_SCAN_PORT', '8000'), timeout=4)"]
CMD ["counterfeit-scan", "serve"]
