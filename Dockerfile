# verified-ingest: one image for every role (frontend, worker, beat, flower);
# docker-compose.yml picks the role with `command`.
#
# Reproducible: an exact base image tag, and every Python package from the lock files
# in requirements/ (pinned, hash-checked, wheels only; `bash scripts/lock.sh`
# regenerates them). To pin the base by digest as well, append the one
# `docker buildx imagetools inspect python:3.11.17-slim-bookworm` prints:
# --build-arg PYTHON_IMAGE=python:3.11.17-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.17-slim-bookworm

# Stage 1: the project's wheel, built by the pinned backend (requirements/build.txt)
# with nothing unpinned fetched (--no-build-isolation).
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/build.txt ./requirements/
RUN pip install --require-hashes --only-binary :all: -r requirements/build.txt
# Only what the wheel is built from (see .dockerignore): no tests, no venv.
COPY pyproject.toml README.md ./
COPY ingest ./ingest
COPY workers ./workers
# The commit ingest_build_info reports (docs/operations.md, "Metrics and logs"):
# docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD) .
ARG GIT_COMMIT=""
RUN if [ -n "$GIT_COMMIT" ]; then printf '%s\n' "$GIT_COMMIT" > ingest/BUILD_COMMIT; fi
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# Stage 2: the image.
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    INGEST_STORAGE_ROOT=/var/lib/ingest/storage

# Flower, uvicorn and the rest are runtime dependencies of the project: exactly the
# runtime lock (no dev tools), installed before the code so that a code change
# reuses this layer. Then the project's wheel alone (its dependencies are all there).
COPY requirements/runtime.txt /tmp/runtime.txt
RUN pip install --require-hashes --only-binary :all: -r /tmp/runtime.txt \
    && rm /tmp/runtime.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps --no-index /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels

# Non-root. The storage directory exists in the image, owned by that user, so a
# named volume mounted there is created with the same ownership.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/ingest ingest \
    && mkdir -p /var/lib/ingest/storage \
    && chown -R ingest:ingest /var/lib/ingest
USER ingest
WORKDIR /home/ingest

# No authentication default on purpose: `ingest serve` refuses to start until
# INGEST_AUTH says how clients authenticate (htpasswd, token; none only for demos),
# as docker-compose.yml does. The debug listener (/metrics, /health) stays on the
# container's loopback (INGEST_DEBUG_ADDR=127.0.0.1:5001) and is not exposed.
EXPOSE 5000
CMD ["ingest", "serve", "--host", "0.0.0.0", "--port", "5000"]
