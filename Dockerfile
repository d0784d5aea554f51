# syntax=docker/dockerfile:1
# The provisioner image: one image, three processes (choose with the command):
#   worker      provisioner worker                      (default; the Temporal worker)
#   api         provisioner api --host 0.0.0.0 --port 8000
#   git server  python /opt/provisioner/bin/git_server.py (serves the `local` Git provider's repositories)
# Secrets never enter the image: pass them at run time as files (*_FILE variables, Docker/Kubernetes secrets).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---- build: install the project from its own files, as the Makefile does (without the dev extra) --------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY provisioner ./provisioner
COPY workflows ./workflows
COPY activities ./activities
COPY worker.py ./
# Without extras: the `sandbox` extra (Temporal's dev server, kubectl, the simulator's dependencies) runs only the
# embedded stack of `provisioner up/demo`, and kubesim/ (the sandbox API server and Flux simulator) is not copied.
RUN /opt/venv/bin/python -m pip install .

# ---- runtime ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# git: push_template runs it (through GitPython). Nothing else beyond the Python venv is needed at run time.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
# A fixed, unprivileged uid/gid so volumes and Kubernetes securityContext can refer to it.
RUN groupadd --system --gid 10001 provisioner \
    && useradd --system --uid 10001 --gid provisioner --home-dir /home/provisioner --create-home \
        --shell /usr/sbin/nologin provisioner \
    && mkdir -p /data \
    && chown provisioner:provisioner /data
COPY --from=build /opt/venv /opt/venv
# Templates are read at run time and are not part of the Python package; the runtime helpers live beside them.
COPY templates /opt/provisioner/templates
COPY deploy/runtime /opt/provisioner/bin
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROVISIONER_TEMPLATES_DIR=/opt/provisioner/templates \
    PROVISIONER_DATA_DIR=/data
USER 10001:10001
WORKDIR /home/provisioner
# The worker's check (the default command); the API and the git server override it (compose, Kubernetes probes).
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["python", "/opt/provisioner/bin/worker_healthcheck.py"]
ENTRYPOINT ["provisioner"]
CMD ["worker"]
