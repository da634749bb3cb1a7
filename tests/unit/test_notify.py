"""Registry events (ingest.notify): the envelope, the endpoint list, ignore rules, the
backoff schedule and retry budget, and the outbox's order and bound."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import paths
from ingest.api import Ingest
from ingest.backends import notifier as build_notifier
from ingest.config import ConfigError, Settings
from ingest.digests import parse_digest
from ingest.leases import Lease, write_lease
from ingest.notify import (
    BLOB_MEDIA_TYPE,
    MEDIA_TYPE,
    DeliveryFailed,
    DeliveryState,
    Endpoint,
    Notifier,
    Origin,
    Outbox,
    delivery_live,
    drain,
    envelope,
    load_endpoints,
    new_event,
    parse_endpoints,
)
from ingest.storage.memory import MemoryDriver
from tests.unit.fakes import RecordingQueue, sha256

SECRET = "Bearer do-not-print-me"  # noqa: S105 - a stand-in, checked never to be shown
DIGEST = sha256(b"layer")


def endpoint(**changes: Any) -> Endpoint:
    return replace(Endpoint("hook", "http://127.0.0.1:9/events"), **changes)


def committed(i: int, repository: str = "library/app") -> dict[str, Any]:
    return {
        "repository": repository,
        "digest": sha256(str(i).encode()),
        "size": i,
        "task_id": f"task-{i}",
    }


class Receiver:
    """A sender that records every envelope's events, failing while ``down``."""

    def __init__(self) -> None:
        self.down: str | None = None
        self.envelopes: list[list[dict[str, Any]]] = []

    def __call__(self, ep: Endpoint, body: bytes) -> None:
        if self.down is not None:
            raise DeliveryFailed(self.down)
        doc = json.loads(body)
        assert set(doc) == {"events"}
        self.envelopes.append(doc["events"])

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for env in self.envelopes for e in env]


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- the envelope ----------------------------------------------------------------------


def test_an_event_has_distributions_fields_and_the_envelope_wraps_them() -> None:
    origin = Origin("req-1", "10.0.0.1:5555", "reg.test", "PUT", "skopeo/1.0", "alice")
    event = new_event(
        "push",
        {"digest": DIGEST, "repository": "r"},
        origin=origin,
        source={"addr": "h", "instanceID": "i"},
        now=0.5,
    )
    assert set(event) == {"id", "timestamp", "action", "target", "request", "actor", "source"}
    assert event["timestamp"] == "1970-01-01T00:00:00.500000Z"
    assert event["request"] == {
        "id": "req-1",
        "addr": "10.0.0.1:5555",
        "host": "reg.test",
        "method": "PUT",
        "useragent": "skopeo/1.0",
    }
    assert event["actor"] == {"name": "alice"}
    assert new_event("pull", {}, origin=Origin())["actor"] == {}
    with pytest.raises(ValueError, match="unknown action"):
        new_event("tag", {})
    raw = [json.dumps(event).encode(), json.dumps(event).encode()]
    assert json.loads(envelope(raw)) == {"events": [event, event]}
    assert json.loads(envelope([])) == {"events": []}


def _stored(driver: MemoryDriver, name: str = "hook") -> list[dict[str, Any]]:
    box = Outbox(driver, name)
    return [json.loads(box.read(k) or b"null") for k in box.waiting()]


def test_each_kind_of_event_has_the_target_distribution_gives_it() -> None:
    driver = MemoryDriver()
    n = Notifier(driver, [endpoint()], pulls=True, base_url="https://reg.test/")
    who = Origin("r1", "1.2.3.4:1", "ignored.test", "GET", "ua", "bob", "http://ignored.test")
    n.blob_committed(committed(7))
    n.manifest_pushed("library/app", "v1", DIGEST, "application/x-m", 42, who)
    n.manifest_pushed("library/app", DIGEST, DIGEST, "application/x-m", 42, None)
    n.manifest_pulled("library/app", "v1", DIGEST, "application/x-m", 42, who)
    n.blob_pulled("library/app", DIGEST, 5, who)
    n.blob_mounted("library/app", "library/base", DIGEST, 5, who)
    n.blob_deleted("library/app", DIGEST, who)
    n.manifest_deleted("library/app", "v1", DIGEST, who)
    n.manifest_deleted("library/app", DIGEST, DIGEST, None)
    events = _stored(driver)
    assert [e["action"] for e in events] == [
        "push",
        "push",
        "push",
        "pull",
        "pull",
        "mount",
        "delete",
        "delete",
        "delete",
    ]
    blob = events[0]["target"]
    assert blob == {
        "mediaType": BLOB_MEDIA_TYPE,
        "digest": sha256(b"7"),
        "size": 7,
        "length": 7,
        "repository": "library/app",
        "url": f"https://reg.test/v2/library/app/blobs/{sha256(b'7')}",
    }
    assert events[0]["request"]["id"] == "task-7"  # the verification that committed it
    assert events[1]["target"] == {
        "mediaType": "application/x-m",
        "digest": DIGEST,
        "size": 42,
        "length": 42,
        "repository": "library/app",
        "url": f"https://reg.test/v2/library/app/manifests/{DIGEST}",
        "tag": "v1",
    }
    assert events[1]["actor"] == {"name": "bob"}
    assert "tag" not in events[2]["target"]
    assert events[5]["target"]["fromRepository"] == "library/base"
    assert events[6]["target"] == {"digest": DIGEST, "repository": "library/app"}
    assert events[7]["target"] == {"digest": DIGEST, "repository": "library/app", "tag": "v1"}
    assert len({e["id"] for e in events}) == len(events)
    assert len({json.dumps(e["source"]) for e in events}) == 1


def test_pulls_are_events_only_when_asked_for_and_urls_follow_the_request() -> None:
    driver = MemoryDriver()
    n = Notifier(driver, [endpoint()])
    who = Origin(base_url="http://127.0.0.1:5000")
    n.blob_pulled("r", DIGEST, 1, who)
    n.manifest_pulled("r", "v1", DIGEST, "m", 1, who)
    assert _stored(driver) == []
    n.blob_mounted("r", "s", DIGEST, 1, who)
    assert _stored(driver)[0]["target"]["url"] == f"http://127.0.0.1:5000/v2/r/blobs/{DIGEST}"
    n.blob_committed(committed(1))  # a worker: no request, no base URL
    assert "url" not in _stored(driver)[1]["target"]


def test_without_endpoints_nothing_is_written() -> None:
    driver = MemoryDriver()
    n = Notifier(driver, kick=lambda name: pytest.fail("kicked"))
    assert not n.enabled
    n.blob_committed(committed(1))
    n.manifest_pushed("r", "v1", DIGEST, "m", 1, None)
    assert list(driver.walk("/")) == []


def test_a_storage_failure_never_reaches_the_caller() -> None:
    class Broken(MemoryDriver):
        def put_content(self, path: str, content: bytes, *, durable: bool = True) -> None:
            raise OSError("disk full")

    n = Notifier(Broken(), [endpoint()])
    n.blob_committed(committed(1))
    n.blob_committed({"repository": "r"})  # a result without its fields: logged only
    assert n.errors == 1


# -- ignore rules -------------------------------------------------------------------------


def test_ignore_rules_filter_by_action_and_media_type_per_endpoint() -> None:
    driver = MemoryDriver()
    quiet = endpoint(
        name="quiet",
        ignore_actions=frozenset({"pull", "delete"}),
        ignore_media_types=frozenset({BLOB_MEDIA_TYPE}),
    )
    n = Notifier(driver, [endpoint(), quiet], pulls=True)
    assert quiet.wants("push", "application/x-m")
    assert not quiet.wants("push", BLOB_MEDIA_TYPE)
    assert not quiet.wants("delete", None)
    assert quiet.wants("mount", None)
    n.blob_committed(committed(1))
    n.manifest_pushed("r", "v1", DIGEST, "application/x-m", 1, None)
    n.manifest_pulled("r", "v1", DIGEST, "application/x-m", 1, Origin())
    n.blob_deleted("r", DIGEST, None)
    assert [e["action"] for e in _stored(driver, "hook")] == ["push", "push", "pull", "delete"]
    kept = _stored(driver, "quiet")
    assert [(e["action"], e["target"]["mediaType"]) for e in kept] == [("push", "application/x-m")]
    # The same event (same id) in both outboxes.
    assert kept[0]["id"] == _stored(driver, "hook")[1]["id"]


# -- the endpoint list ---------------------------------------------------------------------

FULL = {
    "name": "audit-1",
    "url": "https://hooks.example.com:8443/registry?x=1",
    "headers": {"Authorization": SECRET, "X-Tags": ["a", "b"]},
    "timeout": "500ms",
    "threshold": 3,
    "backoff": 2,
    "max_backoff": "10m",
    "max_attempts": 7,
    "max_events": 500,
    "batch": 4,
    "ignore": {"mediatypes": ["application/octet-stream"], "actions": ["pull"]},
}


def test_a_full_endpoint_parses_to_its_values() -> None:
    (ep,) = parse_endpoints(
        json.dumps({"endpoints": [FULL, {**FULL, "name": "x", "disabled": True}]})
    )
    assert ep == Endpoint(
        "audit-1",
        "https://hooks.example.com:8443/registry?x=1",
        (("Authorization", SECRET), ("X-Tags", "a"), ("X-Tags", "b")),
        timeout=0.5,
        threshold=3,
        backoff=2.0,
        max_backoff=600.0,
        max_attempts=7,
        max_events=500,
        batch=4,
        ignore_media_types=frozenset({"application/octet-stream"}),
        ignore_actions=frozenset({"pull"}),
    )
    assert SECRET not in repr(ep)
    assert "Authorization" in repr(ep)
    assert parse_endpoints('[{"name": "a", "url": "http://h"}]') == (Endpoint("a", "http://h"),)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Audit"}, "endpoints[0].name"),
        ({"name": "../x"}, "endpoints[0].name"),
        ({"url": "ftp://h/x"}, "http(s) URL"),
        ({"url": "https://user:pw@h/x"}, "credentials"),
        ({"url": "https://h/x#frag"}, "fragment"),
        ({"url": "http://h:99999/"}, "http(s) URL"),
        ({"url": 5}, "http(s) URL"),
        ({"headers": {"Authorization": SECRET + "\r\nX-Evil: 1"}}, "header Authorization"),
        ({"headers": {"Bad Name": "v"}}, "invalid header name"),
        ({"headers": {"Content-Type": "text/plain"}}, "set by the sender"),
        ({"headers": ["Authorization"]}, "headers"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "61s"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"backoff": "2h"}, "backoff"),
        ({"max_backoff": "1s"}, "must not be below backoff"),
        ({"threshold": 0}, "threshold"),
        ({"max_attempts": 1.5}, "max_attempts"),
        ({"max_events": 0}, "max_events"),
        ({"batch": 101}, "batch"),
        ({"ignore": {"actions": ["tag"]}}, "unknown action"),
        ({"ignore": {"media": []}}, "ignore"),
        ({"ignore": {"mediatypes": "x"}}, "mediatypes"),
        ({"disabled": "no"}, "disabled"),
        ({"retries": 3}, "unknown field"),
    ],
)
def test_a_bad_field_is_named_and_its_secret_never_shown(
    change: dict[str, Any], message: str
) -> None:
    doc = [{**FULL, **change}]
    with pytest.raises(ConfigError, match="INGEST_NOTIFY_ENDPOINTS") as info:
        parse_endpoints(json.dumps(doc))
    assert message in str(info.value)
    assert "do-not-print-me" not in str(info.value)
    assert info.value.field == "notify_endpoints"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        '{"endpoint": []}',
        '{"endpoints": {}}',
        "[1]",
        '[{"url": "http://h"}]',
        '[{"name": "a"}]',
        '[{"name": "a", "url": "http://h"}, {"name": "a", "url": "http://i"}]',
    ],
)
def test_malformed_documents_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_endpoints(text)


def test_endpoints_come_from_a_file_or_inline(tmp_path: Path) -> None:
    f = tmp_path / "endpoints.json"
    f.write_text(json.dumps([FULL]))
    assert load_endpoints(str(f)) == parse_endpoints(json.dumps([FULL]))
    assert load_endpoints(" [] ") == ()
    assert load_endpoints("") == ()
    with pytest.raises(ConfigError, match="cannot read"):
        load_endpoints(str(tmp_path / "missing.json"))


def test_settings_check_the_shape_and_never_print_inline_secrets(tmp_path: Path) -> None:
    inline = json.dumps([FULL])
    s = Settings.from_env({"INGEST_NOTIFY_ENDPOINTS": inline})
    assert "do-not-print-me" not in repr(s)
    with pytest.raises(ConfigError, match="INGEST_NOTIFY_ENDPOINTS"):
        Settings.from_env({"INGEST_NOTIFY_ENDPOINTS": str(tmp_path / "nope.json")})
    with pytest.raises(ConfigError, match="INGEST_NOTIFY_BASE_URL"):
        Settings.from_env({"INGEST_NOTIFY_BASE_URL": "https://u:p@reg.test"})
    # The full check happens where a process builds its notifier, at start-up.
    with pytest.raises(ConfigError, match="timeout"):
        build_notifier(
            Settings(notify_endpoints=json.dumps([{**FULL, "timeout": 0}])), MemoryDriver()
        )


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["a", "b-1", "Bad", "", "x" * 70]) | st.text(max_size=8),
        "url": st.sampled_from(["http://h", "https://h:1/p", "ftp://h", "http://u@h", "//h"])
        | st.text(max_size=10),
        "headers": st.dictionaries(st.text(max_size=8), st.text(max_size=8) | _json, max_size=3),
        "timeout": st.floats(allow_nan=True) | st.text(max_size=6) | st.integers(),
        "backoff": st.floats() | st.sampled_from(["1s", "500ms", "-1s", "1h1s"]),
        "max_backoff": st.integers(-5, 7200),
        "threshold": _json,
        "max_attempts": st.integers(-1, 200_000),
        "max_events": _json,
        "batch": st.integers(-1, 200),
        "ignore": _json,
        "disabled": _json,
        "extra": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_fields, max_size=3) | _json)
def test_any_document_parses_or_raises_config_error_naming_the_variable(doc: Any) -> None:
    try:
        text = json.dumps(doc)
    except ValueError:
        return
    try:
        endpoints = parse_endpoints(text)
    except ConfigError as exc:
        message = str(exc)
        endpoints = ()
    else:
        message = "INGEST_NOTIFY_ENDPOINTS: "
    assert message.startswith("INGEST_NOTIFY_ENDPOINTS: ")
    for ep in endpoints:
        # What it accepted is safe to use as it stands.
        assert paths.validate_endpoint_name(ep.name) == ep.name
        assert ep.url.startswith(("http://", "https://"))
        assert 0 < ep.timeout <= 60
        assert 0 < ep.backoff <= ep.max_backoff <= 3600
        assert all("\n" not in v and "\r" not in v for _, v in ep.headers)


@settings(max_examples=100, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "name": st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True),
            "url": st.sampled_from(["http://127.0.0.1:1/e", "https://hooks.test/a/b?c=d"]),
            "timeout": st.floats(0.001, 60),
            "backoff": st.floats(0.001, 100),
            "max_attempts": st.integers(1, 100_000),
            "batch": st.integers(1, 100),
            "headers": st.dictionaries(
                st.from_regex(r"X-[A-Za-z0-9-]{1,10}", fullmatch=True),
                st.from_regex(r"[ -~]{0,20}", fullmatch=True),
                max_size=3,
            ),
        }
    )
)
def test_a_valid_endpoint_keeps_every_value(raw: dict[str, Any]) -> None:
    (ep,) = parse_endpoints(json.dumps([raw]))
    assert (ep.name, ep.url, ep.timeout, ep.backoff) == (
        raw["name"],
        raw["url"],
        raw["timeout"],
        raw["backoff"],
    )
    assert (ep.max_attempts, ep.batch) == (raw["max_attempts"], raw["batch"])
    assert ep.headers == tuple(raw["headers"].items())


# -- backoff and budget ----------------------------------------------------------------------


def test_the_backoff_waits_threshold_times_then_doubles_up_to_the_cap() -> None:
    ep = endpoint(threshold=2, backoff=0.5, max_backoff=5.0)
    assert [ep.delay(n) for n in range(1, 9)] == [0.5, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert endpoint().delay(10**6) == 300.0


def test_a_failure_stops_the_run_keeps_the_events_and_schedules_the_backoff() -> None:
    driver, clock, rx = MemoryDriver(), Clock(), Receiver()
    ep = endpoint(backoff=2.0, max_backoff=8.0, batch=2)
    n = Notifier(driver, [ep])
    for i in range(5):
        n.blob_committed(committed(i))
    rx.down = "HTTP 503"
    results = []
    for _ in range(4):
        r = drain(driver, ep, rx, scheduled=True, now=clock)
        results.append((r.failed, r.failures, r.retry_in, r.reason))
    assert results == [
        (True, 1, 2.0, "HTTP 503"),
        (True, 2, 4.0, "HTTP 503"),
        (True, 3, 8.0, "HTTP 503"),
        (True, 4, 8.0, "HTTP 503"),
    ]
    assert len(Outbox(driver, "hook").waiting()) == 5
    state = DeliveryState.read(driver, "hook")
    assert (state.failures, state.failed_attempts, state.next_at) == (4, 4, clock.t + 8.0)
    assert state.last_error == "HTTP 503"

    # A kick before the backoff is over sends nothing; the scheduled run does.
    r = drain(driver, ep, rx, now=clock)
    assert (r.waiting, r.failed, r.retry_in, rx.envelopes) == (True, False, 8.0, [])
    rx.down = None
    r = drain(driver, ep, rx, scheduled=True, now=clock)
    assert (r.delivered, r.failures, r.failed) == (5, 0, False)
    assert [e["target"]["size"] for e in rx.events] == [0, 1, 2, 3, 4]
    assert [len(env) for env in rx.envelopes] == [2, 2, 1]
    state = DeliveryState.read(driver, "hook")
    assert (state.failures, state.next_at, state.delivered, state.failed_attempts) == (0, 0.0, 5, 4)
    assert Outbox(driver, "hook").waiting() == []


def test_when_the_retry_budget_runs_out_the_oldest_batch_is_given_up() -> None:
    driver, clock, rx = MemoryDriver(), Clock(), Receiver()
    ep = endpoint(max_attempts=3, batch=2, backoff=1.0)
    n = Notifier(driver, [ep])
    for i in range(3):
        n.blob_committed(committed(i))
    rx.down = "timed out after 5 s"
    outcomes = [drain(driver, ep, rx, scheduled=True, now=clock) for _ in range(3)]
    assert [o.expired for o in outcomes] == [0, 0, 2]
    assert (outcomes[-1].failures, outcomes[-1].retry_in) == (0, 1.0)
    assert len(Outbox(driver, "hook").waiting()) == 1
    rx.down = None
    drain(driver, ep, rx, scheduled=True, now=clock)
    assert [e["target"]["size"] for e in rx.events] == [2]
    state = DeliveryState.read(driver, "hook")
    assert (state.expired, state.delivered, state.failed_attempts) == (2, 1, 3)


# -- the outbox ------------------------------------------------------------------------------


def test_the_outbox_is_oldest_first_whatever_the_keys_random_part() -> None:
    driver = MemoryDriver()
    box = Outbox(driver, "hook")
    keys = [box.append(b'{"n": %d}' % i) for i in range(50)]
    assert box.waiting() == keys == sorted(keys)
    box.append(b"{}", "00000000000000000001-ffffffff")  # an older time sorts first
    assert box.waiting()[0] == "00000000000000000001-ffffffff"
    # Driver temporary files and strangers are not events.
    driver.put_content(paths.notify_outbox_dir("hook") + "/.tmp-abc", b"{}")
    driver.put_content(paths.notify_outbox_dir("hook") + "/note", b"{}")
    assert len(box.waiting()) == 51
    assert paths.parse_notify_event(paths.notify_event_path("hook", keys[0])) == keys[0]
    for bad in ("", "0-0", "01700000000000000000-0A1B2C3D", "x/../y", 5):
        assert paths.parse_notify_event(bad) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="endpoint"):
        paths.notify_outbox_dir("../x")
    with pytest.raises(ValueError, match="event key"):
        paths.notify_event_path("hook", "../../blobs")


def test_a_full_outbox_drops_its_oldest_events_and_counts_them() -> None:
    driver, rx = MemoryDriver(), Receiver()
    ep = endpoint(max_events=3, batch=10)
    n = Notifier(driver, [ep])
    for i in range(7):
        n.blob_committed(committed(i))
    r = drain(driver, ep, rx)
    assert (r.dropped, r.delivered) == (4, 3)
    assert [e["target"]["size"] for e in rx.events] == [4, 5, 6]
    assert DeliveryState.read(driver, "hook").dropped == 4


def test_unreadable_events_are_skipped_and_counted() -> None:
    driver, rx = MemoryDriver(), Receiver()
    ep = endpoint()
    box = Outbox(driver, "hook")
    box.append(b"not json")
    box.append(b"[1]")
    box.append(json.dumps(new_event("push", {"size": 1})).encode())
    r = drain(driver, ep, rx)
    assert (r.dropped, r.delivered) == (2, 1)
    assert box.waiting() == []


def test_a_run_stops_on_its_time_budget_and_says_there_is_more() -> None:
    driver, rx = MemoryDriver(), Receiver()
    ep = endpoint(batch=1)
    n = Notifier(driver, [ep])
    for i in range(3):
        n.blob_committed(committed(i))
    ticks = iter(range(100))
    r = drain(driver, ep, rx, budget=1.5, clock=lambda: float(next(ticks)))
    assert (r.delivered, r.more) == (2, True)
    assert drain(driver, ep, rx).delivered == 1


def test_events_emitted_while_a_run_sends_are_delivered_by_it_in_order() -> None:
    driver = MemoryDriver()
    ep = endpoint(batch=1)
    n = Notifier(driver, [ep])
    seen: list[int] = []

    def send(endpoint_: Endpoint, body: bytes) -> None:
        sizes = [e["target"]["size"] for e in json.loads(body)["events"]]
        seen.extend(sizes)
        if sizes[-1] < 4:
            n.blob_committed(committed(sizes[-1] + 1))

    n.blob_committed(committed(0))
    assert drain(driver, ep, send).delivered == 5
    assert seen == [0, 1, 2, 3, 4]


# -- kicks -------------------------------------------------------------------------------------


def test_a_kick_is_sent_only_when_no_run_is_live_or_scheduled() -> None:
    driver, kicks = MemoryDriver(), list[str]()
    n = Notifier(driver, [endpoint(), endpoint(name="other")], kick=kicks.append)
    n.blob_committed(committed(1))
    assert kicks == ["hook", "other"]
    lease = paths.notify_lease_path("hook")
    write_lease(driver, lease, Lease("t", 1e12))  # renewed "now": a run is live
    n.blob_committed(committed(2))
    assert kicks == ["hook", "other", "other"]
    write_lease(driver, lease, Lease("t", 0.0, detail={"until": 1e12}))  # backing off
    assert delivery_live(driver, "hook", 1e9)
    n.blob_committed(committed(3))
    write_lease(driver, lease, Lease("t", 0.0, detail={"until": 1.0}))  # a run that was lost
    assert not delivery_live(driver, "hook", 1e9)
    n.blob_committed(committed(4))
    assert kicks.count("hook") == 2

    def broken(name: str) -> None:
        raise RuntimeError("broker down")

    Notifier(driver, [endpoint()], kick=broken).blob_committed(committed(5))  # no raise


# -- the facade and the worker's hook -----------------------------------------------------------


def test_the_facade_emits_for_manifests_mounts_and_deletes() -> None:
    driver = MemoryDriver()
    ing = Ingest(driver, RecordingQueue(driver), Settings(), Notifier(driver, [endpoint()]))
    assert ing.notifier.enabled
    layer, config = b"layer-bytes", b"{}"
    for blob in (layer, config):
        up = ing.start_upload("a/src")
        up.write(blob)
        up.finish(sha256(blob)).wait()
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "c", "digest": sha256(config), "size": len(config)},
        "layers": [{"mediaType": "l", "digest": sha256(layer), "size": len(layer)}],
    }
    body = json.dumps(doc).encode()
    m = ing.put_manifest("a/src", "v1", body, None)
    assert ing.mount("a/dst", "a/src", parse_digest(sha256(layer)))
    ing.delete_manifest("a/src", "v1")
    events = _stored(driver)
    # The blob commits ran in RecordingQueue.wait, which is not a worker: no events.
    assert [(e["action"], e["target"].get("tag")) for e in events] == [
        ("push", "v1"),
        ("mount", None),
        ("delete", "v1"),
    ]
    assert events[0]["target"]["digest"] == m.digest == events[2]["target"]["digest"]
    assert events[1]["target"]["fromRepository"] == "a/src"
    assert [s.endpoint for s in ing.notification_stats()] == ["hook"]
    assert ing.notification_stats()[0].waiting == 3


def test_the_worker_emits_a_commit_once_not_for_another_attempts_result() -> None:
    from workers import events

    driver = MemoryDriver()
    s = Settings(notify_endpoints=json.dumps([{"name": "hook", "url": "http://127.0.0.1:9/"}]))
    sent: list[str] = []

    class App:
        def send_task(self, name: str, **options: Any) -> None:
            sent.append(options["args"][0])

    app: Any = App()
    events.committed(s, driver, app, committed(1), "task-1")
    events.committed(s, driver, app, committed(2), "another-task")  # a no-op rerun
    events.committed(Settings(), driver, app, committed(3), "task-3")  # notifications off
    assert [e["target"]["size"] for e in _stored(driver)] == [1]
    assert sent == ["hook"]


# -- the HTTP sender ---------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]], list[int]]]:
    got: list[tuple[dict[str, str], bytes]] = []
    statuses: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((dict(self.headers), body))
            self.send_response(statuses.pop(0) if statuses else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/events", got, statuses
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_sender_posts_the_envelope_with_the_headers_and_reports_failures(
    server: tuple[str, list[tuple[dict[str, str], bytes]], list[int]],
) -> None:
    from devtools.localredis import free_port
    from workers.events import post

    url, got, statuses = server
    ep = endpoint(url=url, headers=(("Authorization", SECRET),), timeout=2.0)
    post(ep, envelope([b'{"id":"1"}']))
    headers, body = got[0]
    assert headers["Content-Type"] == MEDIA_TYPE
    assert headers["Authorization"] == SECRET
    assert json.loads(body) == {"events": [{"id": "1"}]}
    statuses.append(503)
    with pytest.raises(DeliveryFailed, match=r"^HTTP 503$"):
        post(ep, envelope([]))
    statuses.append(302)
    with pytest.raises(DeliveryFailed, match=r"^HTTP 302$"):
        post(ep, envelope([]))
    with pytest.raises(DeliveryFailed, match="ConnectError") as info:
        post(replace(ep, url=f"http://127.0.0.1:{free_port()}/"), envelope([]))
    assert "do-not-print-me" not in str(info.value)


def test_a_blob_push_names_the_request_that_finished_the_upload() -> None:
    # The push event is emitted by the worker that commits, long after the request:
    # the finishing request is kept in the upload's record for it.
    driver = MemoryDriver()
    queue = RecordingQueue(driver)
    ing = Ingest(driver, queue, notifier=Notifier(driver, [endpoint()]))
    up = ing.start_upload("library/app")
    up.write(b"layer")
    who = Origin(
        request_id="req-1",
        addr="10.1.2.3:5555",
        host="registry.example",
        method="PUT",
        useragent="skopeo/1.16",
        actor="alice",
        base_url="https://registry.example",
    )
    ticket = ing.finish("library/app", up.id, DIGEST, origin=who)
    recorded = ing.staging.state(up.id).origin
    assert recorded is not None
    assert Origin.from_dict(recorded) == who
    result = ticket.wait()
    ing.notifier.blob_committed(result, Origin.from_dict(recorded))
    (event,) = _stored(driver)
    assert event["request"] == {
        "id": ticket.task_id,  # the verification's, as for a push without an origin
        "addr": "10.1.2.3:5555",
        "host": "registry.example",
        "method": "PUT",
        "useragent": "skopeo/1.16",
    }
    assert event["actor"] == {"name": "alice"}
    assert event["target"]["url"] == f"https://registry.example/v2/library/app/blobs/{DIGEST}"


def test_without_endpoints_no_request_is_kept_in_the_upload_record() -> None:
    driver = MemoryDriver()
    ing = Ingest(driver, RecordingQueue(driver))
    up = ing.start_upload("library/app")
    up.write(b"layer")
    ing.finish("library/app", up.id, DIGEST, origin=Origin(addr="10.1.2.3:1"))
    assert ing.staging.state(up.id).origin is None
