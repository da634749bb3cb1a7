"""The broker seam's failure bounds: a sender fails fast with UNAVAILABLE when Redis is
down (tests/integration/test_broker_down.py has the real thing); workers keep riding
out a Redis restart."""

from __future__ import annotations

import pytest
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError

from ingest.errors import StorageUnavailable
from ingest.queue import SENDER_RETRY_POLICY, CeleryTaskQueue, _broker_faults

URL = "redis://127.0.0.1:6399/0"


@pytest.mark.parametrize(
    "fault",
    [OperationalError("down"), RedisConnectionError("Connection refused"), OSError(111, "refused")],
)
def test_a_connection_fault_of_a_send_is_unavailable(fault: Exception) -> None:
    with pytest.raises(StorageUnavailable) as caught, _broker_faults():
        raise fault
    assert caught.value.code == "UNAVAILABLE"
    assert caught.value.http_status == 503
    assert caught.value.exit_code == 4


def test_celerys_give_up_runtime_error_is_unavailable_but_no_other_runtime_error_is() -> None:
    # What Celery's result consumer raises once it stops reconnecting.
    given_up = RuntimeError("Retry limit exceeded")
    given_up.__cause__ = RedisConnectionError("Error 111 connecting")
    with pytest.raises(StorageUnavailable, match="unreachable"), _broker_faults():
        raise given_up
    with pytest.raises(RuntimeError, match="a bug"), _broker_faults():
        raise RuntimeError("a bug")


def test_a_sender_retries_briefly_and_connects_with_a_timeout() -> None:
    conf = CeleryTaskQueue.from_urls(URL, URL, 120).app.conf
    policy = conf.result_backend_transport_options["retry_policy"]
    assert policy == SENDER_RETRY_POLICY
    # At most about a second of retrying, where Celery's default is about 20 s.
    assert policy["max_retries"] * policy["interval_max"] <= 1.0
    assert conf.result_backend_transport_options["visibility_timeout"] == 120  # kept
    assert conf.broker_transport_options["socket_connect_timeout"] == 5.0
    assert conf.redis_socket_connect_timeout == 5.0


def test_workers_keep_celerys_patient_result_retries() -> None:
    from workers.app import app

    assert "retry_policy" not in (app.conf.result_backend_transport_options or {})
