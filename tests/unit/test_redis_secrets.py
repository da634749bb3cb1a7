"""Redis passwords never show, and TLS options reach every Redis client.

Every process that talks to Redis builds its connection from Settings: the Celery
broker (kombu, and Flower through ``broker_use_ssl``), the result backend
(``redis_backend_use_ssl``), the frontend's pub/sub waiter and the purge lock.
The integration tests (tests/integration/test_redis_security.py) run them for real.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from celery.app.utils import filter_hidden_settings

from ingest import locks
from ingest.config import ConfigError, Settings, mask_url, redis_tls_options
from ingest.errors import StorageUnavailable
from ingest.queue import CeleryTaskQueue, client_config
from workers.app import create_celery

SECRET = "s3cret-Pa55"  # noqa: S105 - a test value


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (f"redis://:{SECRET}@redis:6379/0", "redis://:***@redis:6379/0"),
        (f"rediss://default:{SECRET}@redis:6380/1", "rediss://default:***@redis:6380/1"),
        (f"redis://{SECRET}@redis", "redis://***@redis"),
        ("redis://:pa/ss@redis:6379/0", "redis://:***@redis:6379/0"),  # unencoded '/'
        ("redis://:p@ss@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("amqp://guest:guest@rabbit//", "amqp://guest:***@rabbit//"),
    ],
)
def test_mask_url_hides_the_password_and_keeps_the_rest(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_settings_repr_never_shows_the_password() -> None:
    s = Settings(redis_url=f"redis://:{SECRET}@redis:6379/0")
    assert s.broker_url == s.result_backend == f"redis://:{SECRET}@redis:6379/0"
    assert SECRET not in repr(s)
    assert "redis://:***@redis:6379/0" in repr(s)


def test_a_mangled_url_is_refused_without_echoing_the_password() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"REDIS_URL": "redis://:pa/ss-word@redis:6379/0"})
    assert "pa/ss" not in str(err.value)
    assert "percent-encode" in str(err.value)


def test_celerys_view_of_the_worker_configuration_hides_the_password() -> None:
    # What `celery inspect conf` and Flower's worker page show.
    app = create_celery(Settings(redis_url=f"redis://:{SECRET}@127.0.0.1:6379/0"))
    shown = repr(filter_hidden_settings(dict(app.conf)))
    assert SECRET not in shown
    assert "ingest_settings" in shown


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("ca", "cert", "key"):
        path = tmp_path / f"{name}.pem"
        path.write_text("not checked here\n")
        files[name] = str(path)
    return files


def test_tls_settings_become_verified_tls_options(tls_files: dict[str, str]) -> None:
    s = Settings.from_env(
        {
            "REDIS_URL": "rediss://:pw@redis:6380/0",
            "INGEST_REDIS_TLS_CA": tls_files["ca"],
            "INGEST_REDIS_TLS_CERT": tls_files["cert"],
            "INGEST_REDIS_TLS_KEY": tls_files["key"],
        }
    )
    assert s.redis_ssl_options() == {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": tls_files["ca"],
        "ssl_certfile": tls_files["cert"],
        "ssl_keyfile": tls_files["key"],
    }
    # Without files: still verified, against the system's CAs.
    assert redis_tls_options() == {"ssl_cert_reqs": "required", "ssl_check_hostname": True}


@pytest.mark.parametrize(
    ("env", "variable", "message"),
    [
        (
            {"REDIS_URL": "rediss://r:6380/0", "INGEST_REDIS_TLS_CA": "/no/such/ca.pem"},
            "INGEST_REDIS_TLS_CA",
            "no such file",
        ),
        (
            {"REDIS_URL": "redis://r:6379/0", "INGEST_REDIS_TLS_CA": "{ca}"},
            "INGEST_REDIS_TLS_CA",
            "no Redis URL uses rediss://",
        ),
        (
            {"REDIS_URL": "rediss://r:6380/0", "INGEST_REDIS_TLS_KEY": "{key}"},
            "INGEST_REDIS_TLS_KEY",
            "INGEST_REDIS_TLS_CERT",
        ),
    ],
)
def test_tls_settings_that_would_not_do_what_they_say_stop_the_process(
    tls_files: dict[str, str], env: dict[str, str], variable: str, message: str
) -> None:
    env = {k: v.format(**tls_files) for k, v in env.items()}
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert variable in str(err.value)
    assert message in str(err.value)


def test_client_config_sets_tls_only_for_rediss_urls(tls_files: dict[str, str]) -> None:
    tls = redis_tls_options(tls_files["ca"])
    both = client_config("rediss://:pw@r:6380/0", "rediss://:pw@r:6380/0", 100, tls)
    assert both["broker_use_ssl"] == both["redis_backend_use_ssl"] == tls
    plain = client_config("redis://r/0", "redis://r/0", 100, tls)
    assert "broker_use_ssl" not in plain
    assert "redis_backend_use_ssl" not in plain
    mixed = client_config("amqps://u:p@rabbit//", "rediss://r:6380/0", 100, tls)
    assert "broker_use_ssl" not in mixed  # kombu's amqp takes other ssl options
    assert mixed["redis_backend_use_ssl"] == tls


def test_the_worker_app_connects_its_broker_and_backend_over_verified_tls(
    tls_files: dict[str, str],
) -> None:
    s = Settings(redis_url=f"rediss://:{SECRET}@127.0.0.1:6380/0", redis_tls_ca=tls_files["ca"])
    app = create_celery(s)
    assert app.conf.broker_use_ssl == s.redis_ssl_options()
    assert app.conf.redis_backend_use_ssl == s.redis_ssl_options()
    # Celery's Redis backend accepts it (it refuses rediss:// without ssl_cert_reqs) and
    # builds TLS connections that verify against our CA.
    params: dict[str, Any] = app.backend.connparams  # type: ignore[attr-defined]
    assert issubclass(params["connection_class"], redis.SSLConnection)
    assert params["ssl_ca_certs"] == tls_files["ca"]
    assert params["ssl_check_hostname"] is True
    assert params["password"] == SECRET


def test_the_purge_lock_connects_with_the_tls_options(
    monkeypatch: pytest.MonkeyPatch, tls_files: dict[str, str]
) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def from_url(url: str, **kwargs: Any) -> Any:
        seen.append((url, kwargs))
        raise redis.exceptions.ConnectionError("stop here")

    monkeypatch.setattr(redis.Redis, "from_url", from_url)
    tls = redis_tls_options(tls_files["ca"])
    for url in ("rediss://:pw@r:6380/0", "redis://:pw@r:6379/0"):
        with (
            pytest.raises((StorageUnavailable, redis.exceptions.ConnectionError)),
            locks.exclusive(url, "purge", ttl=10, tls=tls),
        ):
            pass  # pragma: no cover
    assert seen == [("rediss://:pw@r:6380/0", tls), ("redis://:pw@r:6379/0", {})]


def test_the_frontends_result_waiter_connects_with_the_tls_options(
    monkeypatch: pytest.MonkeyPatch, tls_files: dict[str, str]
) -> None:
    seen: list[dict[str, Any]] = []

    def from_url(url: str, **kwargs: Any) -> Any:
        seen.append(kwargs)
        raise redis.exceptions.ConnectionError("stop here")

    monkeypatch.setattr(aioredis.Redis, "from_url", from_url)
    tls = redis_tls_options(tls_files["ca"])
    queue = CeleryTaskQueue.from_urls("rediss://r:6380/0", "rediss://r:6380/0", 100, tls)
    with pytest.raises(StorageUnavailable):
        asyncio.run(queue.wait_async("some-task", 1.0))
    assert seen == [tls]
