# verified-ingest: one image for every role (frontend, worker, beat, flower);
# docker-compose.yml picks the role with `command`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    INGEST_STORAGE_ROOT=/var/lib/ingest/storage

WORKDIR /src
# Only what the wheel is built from (see .dockerignore): no tests, no venv.
COPY pyproject.toml README.md ./
COPY ingest ./ingest
COPY workers ./workers
# Flower, uvicorn and the rest are runtime dependencies of the project.
RUN pip install . \
    && rm -rf /src

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
