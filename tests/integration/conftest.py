"""Real services for integration tests: a private redis-server and celery workers.

They skip when no Redis can be started locally, and fail instead when CI=true,
so CI can never pass by skipping them; every other missing prerequisite (a tool, a
mount) goes through :func:`unavailable` and is treated the same way.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis

from devtools.devstack import Frontend, Worker
from devtools.localredis import LocalRedis, RedisNotFound, free_port
from ingest.api import Ingest
from ingest.config import Settings

#: The repository root: the working directory of subprocesses that run ``devtools``
#: (a checkout-only package, importable from here; see devtools/__init__.py).
REPO_ROOT = Path(__file__).resolve().parents[2]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """A prerequisite of the test is missing: skip locally, but fail under CI=true, where
    scripts/test.sh provides every prerequisite and a skip would hide a broken setup."""
    if in_ci():
        pytest.fail(f"integration prerequisite unavailable in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    try:
        server = LocalRedis().start()
    except (RedisNotFound, RuntimeError) as exc:
        unavailable(str(exc))
    try:
        yield server.url
    finally:
        server.stop()


_db_numbers = itertools.count()


def _isolated(redis_url: str) -> str:
    # Each stack gets its own Redis database, so a worker of one stack never takes
    # a task meant for another stack's storage.
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url.rstrip("/")
    return f"{base}/{1 + next(_db_numbers) % 15}"


class Stack:
    """A storage root, the env for processes using it, and an Ingest client."""

    def __init__(self, redis_url: str, root: Path, **extra_env: str) -> None:
        redis_url = _isolated(redis_url)
        self.redis_url = redis_url
        self.root = root
        self.storage = root / "storage"
        self.env = {"REDIS_URL": redis_url, "INGEST_STORAGE_ROOT": str(self.storage), **extra_env}
        self.settings = Settings.from_env(self.env)
        # rediss:// (extra_env names the CA and client certificate): connect as the stack does.
        tls = self.settings.redis_ssl_options() if redis_url.startswith("rediss://") else {}
        with redis.Redis.from_url(redis_url, **tls) as r:
            r.flushdb()  # leftovers of an earlier stack on this database
        self.ingest = Ingest.from_settings(self.settings)
        self.workers: list[Worker] = []
        self.frontends: list[Frontend] = []

    def worker(self, **kwargs: object) -> Worker:
        w = Worker(self.env, self.root / f"worker-{len(self.workers)}.log", **kwargs)  # type: ignore[arg-type]
        self.workers.append(w)
        return w.start()

    def frontend(
        self, processes: int = 1, *, env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> Frontend:
        """An ``ingest serve`` on this stack's storage and Redis. ``env`` adds to (or
        overrides) the stack's environment, e.g. another ``INGEST_AUTH``; ``kwargs`` go
        to :class:`~devtools.devstack.Frontend` (``tls_cert``, ``tls_key``, ``ca``,
        ``debug``). Without ``INGEST_AUTH`` anywhere the frontend is open (``none``)."""
        f = Frontend(
            {**self.env, **(env or {})},
            self.root / "frontend.log",
            port=free_port(),
            processes=processes,
            **kwargs,
        )
        self.frontends.append(f)
        return f.start()

    def new_client(self) -> Ingest:
        return Ingest.from_settings(self.settings)

    def close(self) -> None:
        for f in self.frontends:
            f.stop()
        for w in self.workers:
            w.stop()


@pytest.fixture(scope="module")
def shared_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker for a whole module (tests use distinct repositories)."""
    stack = Stack(redis_url, tmp_path_factory.mktemp("stack"))
    stack.worker()
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """A private storage root; start workers with ``stack.worker()``."""
    s = Stack(redis_url, tmp_path)
    try:
        yield s
    finally:
        s.close()


def stage_large(ing: Ingest, repo: str, size: int) -> tuple[str, str, str]:
    """Stage ``size`` random-ish bytes; returns (upload id, sha512 claim, sha256)."""
    up = ing.start_upload(repo)
    chunk = os.urandom(1 << 20)
    h512, h256 = hashlib.sha512(), hashlib.sha256()
    for i in range(size >> 20):
        piece = i.to_bytes(8, "big") + chunk[8:]
        up.write(piece)
        h512.update(piece)
        h256.update(piece)
    up.close()
    return up.id, "sha512:" + h512.hexdigest(), "sha256:" + h256.hexdigest()


def wait_for_progress(ing: Ingest, task_id: str, timeout: float = 60) -> None:
    """Wait until the task reports PROGRESS: the worker is mid-verification."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ing.queue.info(task_id).state == "PROGRESS":
            return
        time.sleep(0.005)
    pytest.fail("verification never reported progress")
