# syntax=docker/dockerfile:1
#
# Vigil: one image for `vigil serve` (the Grafana datasource, port 8080) and `vigil worker`
# (scheduled jobs, metrics on port 9108).
#
#   docker build -t vigil:dev .
#   docker run --rm -p 8080:8080 --read-only --tmpfs /tmp \
#       -v "$PWD/vigil.yaml:/etc/vigil/vigil.yaml:ro" vigil:dev vigil serve --config /etc/vigil/vigil.yaml
#
# The base is pinned by patch tag and by digest, in one place; both stages use the same
# interpreter so the virtualenv built in the first stage runs unchanged in the second.
# To move to a newer base, change the tag and the digest together
# (`docker buildx imagetools inspect python:<tag>` prints the digest).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:081075da77b2b55c23c088251026fb69a7b2bf92471e491ff5fd75c192fd38e5

# ---------------------------------------------------------------------------------------------
# builder: build Vigil's wheel, then install it and its dependencies (all from binary wheels)
# into a self-contained virtualenv at /opt/vigil.
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Metadata first, then the code: the copy is what a change to the code invalidates.
COPY pyproject.toml README.md ./
COPY backend ./backend

RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/vigil \
 && python -m pip --python /opt/vigil/bin/python install --only-binary=:all: /wheels/vigil-*.whl \
 && /opt/vigil/bin/python -m compileall -q /opt/vigil/lib \
 && /opt/vigil/bin/vigil --help > /dev/null

# ---------------------------------------------------------------------------------------------
# runtime: the interpreter and the virtualenv; no compiler, no pip, no source tree, no root.
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="vigil" \
      org.opencontainers.image.description="Anomaly detection for Prometheus and Loki series, served to Grafana" \
      org.opencontainers.image.licenses="Apache-2.0"

# pip/setuptools/wheel are install tools: the runtime image installs nothing after this line.
# The numeric uid/gid let Kubernetes verify runAsNonRoot without reading /etc/passwd.
RUN python -m pip uninstall -y -q pip setuptools wheel \
 && groupadd --system --gid 10001 vigil \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin vigil \
 && mkdir -p /etc/vigil /var/lib/vigil \
 && chown 10001:10001 /var/lib/vigil

COPY --from=builder /opt/vigil /opt/vigil

# Read-only root filesystem: bytecode was compiled at build time, nothing writes next to the
# code, temporary files go to /tmp (mount a tmpfs/emptyDir there) and the audit store to
# /var/lib/vigil (mount a volume there). BLAS/OpenMP thread pools default to one thread per
# *node* CPU, not per CPU limit; one thread per process keeps CPU use within the container's
# limit (gunicorn workers and threads give the parallelism). Override when you know better.
ENV PATH=/opt/vigil/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    HEALTHCHECK_URL=http://127.0.0.1:8080/healthz

WORKDIR /var/lib/vigil
USER 10001:10001

# 8080: the query service (`vigil serve`); 9108: the worker's metrics (`vigil worker`).
EXPOSE 8080 9108

# No curl in the image: the interpreter does the probe. For a worker container set
# HEALTHCHECK_URL=http://127.0.0.1:9108/metrics. (Kubernetes ignores HEALTHCHECK and uses the
# probes in k8s/; this one serves `docker run` and docker compose.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4).status == 200 else 1)"]

CMD ["vigil", "serve"]
