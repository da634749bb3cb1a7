"""Arguments from the broker (a trust boundary) and the housekeeping floors.

Every task checks its arguments before it touches storage; purge and reconcile
refuse cut-offs below their floors whoever calls them (beat, a task message, the
CLI); a refusal is ArgumentInvalid (code UNSUPPORTED) and leaves storage as it was.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ingest.arguments import (
    MIN_PURGE_AGE,
    MIN_RECONCILE_GRACE,
    check_flag,
    check_purge_age,
    check_reconcile_grace,
    check_verify_arguments,
)
from ingest.cli import cli
from ingest.config import Settings
from ingest.errors import ArgumentInvalid, from_dict
from ingest.maintenance import purge_uploads, reconcile
from ingest.storage.filesystem import FilesystemDriver
from ingest.uploads import Staging, UploadState, UploadWriter
from tests.unit.fakes import make_ingest, sha256, worker_settings
from workers import tasks

UID = "0b6f3c1e-8a44-4d7e-9c55-3f1a2b4c5d6e"
DIGEST = "sha256:" + "ab" * 32
A_DAY_LATER = 86_400.0


# -- the checks themselves ------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [-1, -1.0, 0, 10, 3599.9, math.nan, math.inf, -math.inf, "3600", True, None, [3600]]
)
def test_a_purge_cut_off_below_the_floor_or_not_a_finite_number_is_refused(value: Any) -> None:
    with pytest.raises(ArgumentInvalid) as err:
        check_purge_age(value)
    assert err.value.code == "UNSUPPORTED"
    assert err.value.http_status == 400
    assert err.value.detail["argument"] == "older_than"


def test_the_purge_floor_is_an_hour_and_anything_from_it_passes() -> None:
    assert MIN_PURGE_AGE == 3600
    assert check_purge_age(3600) == 3600.0
    assert check_purge_age(86_400.0) == 86_400.0


@pytest.mark.parametrize("value", [-1, 0, 0.5, 59, math.nan, math.inf, "600", False])
def test_a_reconcile_grace_below_a_minute_or_not_a_finite_number_is_refused(value: Any) -> None:
    with pytest.raises(ArgumentInvalid) as err:
        check_reconcile_grace(value)
    assert err.value.detail["argument"] == "grace"


def test_the_reconcile_floor_is_a_minute() -> None:
    assert MIN_RECONCILE_GRACE == 60
    assert check_reconcile_grace(60) == 60.0


@pytest.mark.parametrize("value", ["false", "no", 0, 1, None, [True]])
def test_flags_must_be_real_booleans(value: Any) -> None:
    with pytest.raises(ArgumentInvalid) as err:
        check_flag("dry_run", value)
    assert err.value.detail == {"argument": "dry_run", "reason": "type", "value": repr(value)}
    assert check_flag("dry_run", True) is True
    assert check_flag("dry_run", False) is False


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (("../../etc", DIGEST, None, None), "upload_id"),
        ((UID.upper(), DIGEST, None, None), "upload_id"),
        ((42, DIGEST, None, None), "upload_id"),
        ((None, DIGEST, None, None), "upload_id"),
        ((UID, "sha256:xyz", None, None), "digest"),
        ((UID, "md5:" + "0" * 32, None, None), "digest"),
        ((UID, "sha256:" + "A" * 64, None, None), "digest"),
        ((UID, 1234, None, None), "digest"),
        ((UID, None, None, None), "digest"),
        ((UID, DIGEST, -1, None), "size"),
        ((UID, DIGEST, True, None), "size"),
        ((UID, DIGEST, 1.5, None), "size"),
        ((UID, DIGEST, "12", None), "size"),
        ((UID, DIGEST, 1 << 63, None), "size"),
        ((UID, DIGEST, None, "../x"), "repository"),
        ((UID, DIGEST, None, "Upper/Case"), "repository"),
        ((UID, DIGEST, None, ""), "repository"),
        ((UID, DIGEST, None, 5), "repository"),
    ],
)
def test_verify_arguments_follow_their_grammar(args: tuple[Any, ...], argument: str) -> None:
    with pytest.raises(ArgumentInvalid) as err:
        check_verify_arguments(*args)
    assert err.value.detail["argument"] == argument
    # The detail is JSON-safe (it travels through the result backend) and short.
    assert len(json.dumps(err.value.detail)) < 400


def test_well_formed_verify_arguments_pass() -> None:
    check_verify_arguments(UID, DIGEST, None, None)
    check_verify_arguments(UID, "tarsum.v1+sha256:" + "cd" * 32, 0, "library/ubuntu")
    check_verify_arguments(UID, "sha512:" + "ef" * 64, (1 << 63) - 1, "a/b-c/d_e")


def test_the_refusal_keeps_its_class_in_task_results_and_its_code_on_the_wire() -> None:
    err = ArgumentInvalid("older_than must be at least 3600 s", {"argument": "older_than"})
    rebuilt = from_dict(json.loads(json.dumps(err.to_dict())))
    assert rebuilt.code == "UNSUPPORTED"
    assert rebuilt.detail == {"argument": "older_than"}


# -- the floors in the core: every caller is protected --------------------------------


@pytest.fixture
def driver(tmp_path: Path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "root")


def idle_uploads(driver: FilesystemDriver, n: int) -> list[str]:
    staging = Staging(driver)
    ids = []
    for _ in range(n):
        info = staging.create("args/purge")
        w = UploadWriter(staging, info)
        w.write(b"live bytes")
        w.close()
        ids.append(info.id)
    return sorted(ids)


@pytest.mark.parametrize("older_than", [-1.0, 0.0, 60.0, math.nan])
def test_purge_refuses_a_hostile_cut_off_and_removes_nothing(
    driver: FilesystemDriver, older_than: float
) -> None:
    ids = idle_uploads(driver, 3)
    with pytest.raises(ArgumentInvalid):
        purge_uploads(driver, older_than=older_than)
    assert sorted(Staging(driver).list_ids()) == ids


def test_purge_refuses_a_dry_run_flag_that_is_not_a_boolean(driver: FilesystemDriver) -> None:
    ids = idle_uploads(driver, 2)
    with pytest.raises(ArgumentInvalid):
        purge_uploads(driver, older_than=3600, now=1e12, dry_run=0)  # type: ignore[arg-type]
    assert sorted(Staging(driver).list_ids()) == ids


@pytest.mark.parametrize("grace", [-1.0, 0.0, 59.0, math.nan])
def test_reconcile_refuses_a_hostile_grace_and_sends_nothing(
    driver: FilesystemDriver, grace: float
) -> None:
    ing, queue = make_ingest(driver)
    up = ing.start_upload("args/reconcile")
    up.write(b"queued")
    up.finish(sha256(b"queued"))
    sent = len(queue.calls)
    with pytest.raises(ArgumentInvalid):
        reconcile(driver, queue, Settings(), grace=grace, now=2e10)
    assert len(queue.calls) == sent


# -- the task shells: a refused message is a clean FAILURE with no storage effect ------


@pytest.fixture
def worker_storage(tmp_path: Path) -> Iterator[FilesystemDriver]:
    # An unreachable Redis: a refused purge must fail before it takes the lock.
    with worker_settings(tmp_path / "root", redis_url="redis://127.0.0.1:9/0") as driver:
        yield driver


@pytest.mark.parametrize(
    "kwargs",
    [
        {"older_than": -1},
        {"older_than": 0},
        {"older_than": math.nan},
        {"older_than": "1h"},
        {"older_than": 7200, "dry_run": "false"},
        {"older_than": 7200, "now": 1e12},  # not a parameter of the task
    ],
)
def test_a_hostile_purge_message_fails_cleanly_and_live_uploads_survive(
    worker_storage: FilesystemDriver, kwargs: dict[str, Any]
) -> None:
    ids = idle_uploads(worker_storage, 8)
    res = tasks.purge_abandoned_uploads.apply(kwargs=kwargs)
    assert res.state == "FAILURE"
    assert isinstance(res.result, ArgumentInvalid), res.result
    assert sorted(Staging(worker_storage).list_ids()) == ids


@pytest.mark.parametrize("kwargs", [{"grace": 0}, {"grace": -5}, {"grace": "10m"}, {"x": 1}])
def test_a_hostile_reconcile_message_fails_cleanly(
    worker_storage: FilesystemDriver, kwargs: dict[str, Any]
) -> None:
    res = tasks.reconcile_uploads.apply(kwargs=kwargs)
    assert res.state == "FAILURE"
    assert isinstance(res.result, ArgumentInvalid), res.result


def finishing(driver: FilesystemDriver, data: bytes) -> tuple[str, str]:
    """An upload in ``finishing`` whose recorded task id is the one returned."""
    ing, _ = make_ingest(driver)
    up = ing.start_upload("args/verify")
    up.write(data)
    ticket = up.finish(sha256(data))
    return up.id, ticket.task_id


@pytest.mark.parametrize(
    ("args", "kwargs", "argument"),
    [
        (("{uid}", "sha256:garbage"), {}, "digest"),
        (("{uid}", "{digest}", -5), {}, "size"),
        (("{uid}", "{digest}", None), {"repository": "../../etc"}, "repository"),
        (("{uid}", "{digest}", None), {"staged_size": "1"}, "staged_size"),
        (("{uid}", "{digest}", None), {"staged_size": -1}, "staged_size"),
        (("{uid}", "{digest}", None, None, "extra"), {}, "*"),
        (("{uid}", "{digest}"), {"now": 1}, "*"),
        (("{uid}",), {}, "*"),
    ],
)
def test_a_malformed_verify_message_is_refused_without_touching_the_upload(
    worker_storage: FilesystemDriver,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    argument: str,
) -> None:
    data = b"a live upload"
    uid, task_id = finishing(worker_storage, data)
    before = Staging(worker_storage).state(uid)
    filled = tuple(
        a.format(uid=uid, digest=sha256(data)) if isinstance(a, str) else a for a in args
    )
    # Under the upload's own task id: the one message that may record its outcome.
    res = tasks.verify_upload.apply(args=filled, kwargs=kwargs, task_id=task_id)
    assert res.state == "FAILURE"
    assert isinstance(res.result, ArgumentInvalid), res.result
    assert res.result.detail["argument"] == argument
    after = Staging(worker_storage).state(uid)
    assert after.state is UploadState.FINISHING
    assert after == before
    assert (worker_storage.root / "uploads" / uid / "data").read_bytes() == data
    assert not list((worker_storage.root).glob("blobs/**/data"))


def test_a_well_formed_verify_message_still_commits(worker_storage: FilesystemDriver) -> None:
    data = b"committed through the checks"
    uid, task_id = finishing(worker_storage, data)
    res = tasks.verify_upload.apply(
        args=(uid, sha256(data), len(data)),
        kwargs={"repository": "args/verify"},
        task_id=task_id,
    )
    assert res.state == "SUCCESS", res.result
    assert isinstance(res.result, dict)
    assert res.result["canonical_digest"] == "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("upload_id", ["../../x", 7, None])
def test_a_malformed_prehash_message_is_refused(
    worker_storage: FilesystemDriver, upload_id: Any
) -> None:
    res = tasks.prehash.apply(args=(upload_id,))
    assert res.state == "FAILURE"
    assert isinstance(res.result, ArgumentInvalid)
    assert res.result.detail["argument"] == "upload_id"


# -- the CLI: below the floor is a usage error (exit 2), before any Redis access -------


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    # Redis on a closed port: the refusal must come before the purge lock.
    return {"INGEST_STORAGE_ROOT": str(tmp_path / "root"), "REDIS_URL": "redis://127.0.0.1:9/0"}


@pytest.mark.parametrize("older_than", ["0s", "30m", "59m", "10"])
def test_cli_purge_below_the_floor_is_a_usage_error(
    cli_env: dict[str, str], older_than: str
) -> None:
    result = CliRunner().invoke(cli, ["purge", "--older-than", older_than], env=cli_env)
    assert result.exit_code == 2, result.output
    assert "older_than must be at least 3600 s" in result.output


def test_cli_purge_below_the_floor_reports_json_with_the_code(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["--json", "purge", "--older-than", "0s"], env=cli_env)
    assert result.exit_code == 2
    line = next(x for x in result.output.splitlines() if x.startswith("{"))
    assert json.loads(line)["error"]["code"] == "UNSUPPORTED"


def test_cli_reconcile_below_the_floor_is_a_usage_error(cli_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["reconcile", "--grace", "0"], env=cli_env)
    assert result.exit_code == 2, result.output
    assert "grace must be at least 60 s" in result.output


@pytest.mark.parametrize(
    ("variable", "value"), [("INGEST_PURGE_AGE", "10m"), ("INGEST_RECONCILE_GRACE", "0")]
)
def test_settings_below_the_floors_stop_the_process(
    cli_env: dict[str, str], variable: str, value: str
) -> None:
    result = CliRunner().invoke(cli, ["purge", "--dry-run"], env={**cli_env, variable: value})
    assert result.exit_code == 2
    assert variable in result.output
    assert "must be at least" in result.output
