"""Garbage collection (ingest.gc): reachability, grace, dry run, crash recovery, and
every race of a concurrent push injected at every step of a sweep."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from ingest import gc, paths
from ingest.api import Ingest
from ingest.blobs import BlobStore
from ingest.commit import commit_upload
from ingest.digests import Digest, parse_digest
from ingest.errors import ArgumentInvalid, IngestError, ManifestBlobUnknown
from ingest.fsck import run_fsck
from ingest.manifests import OCI_INDEX, OCI_MANIFEST
from ingest.storage.base import PathNotFound, StorageDriver
from tests.support.s3fixtures import (
    S3_SERVERS,
    moto_s3_server,
    new_s3_driver,
    s3_server_of,
    seaweedfs_s3_server,
)
from tests.unit.fakes import (
    DRIVER_KINDS,
    make_driver,
    make_ingest,
    sha256,
    sha512,
    worker_settings,
)

__all__ = ["moto_s3_server", "seaweedfs_s3_server"]  # fixtures, for pytest

REPO = "team/app"
OTHER = "team/other"
#: Sweep steps at which a concurrent push is injected (``claimed`` is run on a thread:
#: the writer must wait for the deletion it collides with).
STEPS = ["marked", "flagged", "rescanned", "claimed"]


@pytest.fixture(params=[*DRIVER_KINDS, *(f"s3-{kind}" for kind in S3_SERVERS)])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    if request.param.startswith("s3-"):
        # Real S3 servers (moto, SeaweedFS): the claim must be sound without a rename.
        return new_s3_driver(s3_server_of(request, request.param.removeprefix("s3-")))
    return make_driver(request.param, tmp_path)


def tick(driver: StorageDriver) -> float:
    """A pause after which the storage's clock has moved on: S3 reports mtimes (HEAD's
    Last-Modified) in whole seconds, file systems to the nanosecond."""
    return 1.05 if driver.name == "s3" else 0.02


@pytest.fixture
def ing(driver: StorageDriver) -> Ingest:
    return make_ingest(driver)[0]


def blob(driver: StorageDriver, data: bytes, *repos: str, alias: bool = False) -> Digest:
    """Store ``data`` as a committed blob linked in ``repos`` (and a sha512 alias)."""
    d = parse_digest(sha256(data))
    driver.put_content(paths.blob_data_path(d), data)
    store = BlobStore(driver)
    for repo in repos:
        store.link(repo, d, d)
        if alias:
            store.link(repo, parse_digest(sha512(data)), d)
    return d


def image(
    ing: Ingest,
    repo: str,
    ref: str,
    config: Digest,
    layers: list[Digest],
    *,
    subject: Digest | None = None,
    subject_size: int = 0,
) -> Digest:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _desc(ing.driver, config, "application/vnd.oci.image.config.v1+json"),
        "layers": [_desc(ing.driver, d, "application/vnd.oci.image.layer.v1.tar") for d in layers],
    }
    if subject is not None:
        doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": str(subject), "size": subject_size}
        doc["artifactType"] = "application/example.signature"
    body = json.dumps(doc).encode()
    ing.manifests.put(repo, ref, body, OCI_MANIFEST)
    return parse_digest(sha256(body))


def index(ing: Ingest, repo: str, ref: str, children: list[Digest]) -> Digest:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": str(c), "size": 1} for c in children],
    }
    body = json.dumps(doc).encode()
    ing.manifests.put(repo, ref, body, OCI_INDEX)
    return parse_digest(sha256(body))


def _desc(driver: StorageDriver, d: Digest, media_type: str) -> dict[str, Any]:
    size = driver.stat(paths.blob_data_path(d)).size
    return {"mediaType": media_type, "digest": str(d), "size": size}


def present(driver: StorageDriver, d: Digest) -> bool:
    try:
        driver.stat(paths.blob_data_path(d))
    except PathNotFound:
        return False
    return True


def recording(waited: list[float]) -> Callable[[float], None]:
    """A ``sleep`` for retain_blob that records each wait."""

    def sleep(seconds: float) -> None:
        waited.append(seconds)
        time.sleep(seconds)

    return sleep


def present_path(driver: StorageDriver, path: str) -> bool:
    try:
        driver.stat(path)
    except PathNotFound:
        return False
    return True


def linked(driver: StorageDriver, repo: str, d: Digest) -> bool:
    try:
        driver.stat(paths.layer_link_path(repo, d))
    except PathNotFound:
        return False
    return True


def revisions(driver: StorageDriver) -> list[str]:
    return [
        fi.path
        for fi in driver.walk(paths.repositories_root())
        if (link := paths.parse_repository_link(fi.path)) is not None and link.kind == "manifest"
    ]


def collect(driver: StorageDriver, **kwargs: Any) -> gc.GcReport:
    """A run on the storage's clock with a grace of 0: what was written before it is
    old, what a concurrent push writes while it runs is young."""
    kwargs.setdefault("grace", 0.0)
    time.sleep(tick(driver))  # past the storage's timestamp granularity
    return gc.collect_garbage(driver, **kwargs)


def assert_intact(ing: Ingest) -> None:
    """Every blob every stored manifest references is present, linked in its repository,
    and hashes to its address; fsck finds nothing."""
    driver = ing.driver
    for fi in list(driver.walk(paths.repositories_root())):
        link = paths.parse_repository_link(fi.path)
        if link is None or link.kind != "manifest":
            continue
        m = ing.manifests.get(link.repository, str(link.digest))
        doc = json.loads(m.body)
        for desc in [doc.get("config"), *doc.get("layers", [])]:
            if desc:
                with ing.open(link.repository, desc["digest"]) as f:
                    assert sha256(f.read()) == desc["digest"]
        for desc in doc.get("manifests", []):
            ing.manifests.get(link.repository, desc["digest"])
    report = run_fsck(driver)
    assert report.clean, report.to_dict()["findings"]
    assert not list(driver.walk(paths.gc_verdicts_root()))
    assert not present_path(driver, paths.gc_sweep_path())


# -- reachability ------------------------------------------------------------------------


def test_marks_images_indexes_subjects_and_sweeps_the_rest_with_their_links(
    ing: Ingest, driver: StorageDriver
) -> None:
    config, layer, shared = (blob(driver, b, REPO) for b in (b"config", b"layer", b"shared"))
    tagged = image(ing, REPO, "v1", config, [layer, shared])
    child_cfg, child_layer = blob(driver, b"child-config", REPO), blob(driver, b"child", REPO)
    child = image(ing, REPO, "tmp", child_cfg, [child_layer])
    ing.manifests.delete(REPO, "tmp")  # an untagged child, reached through the index
    idx = index(ing, REPO, "multi", [child])
    sig_cfg = blob(driver, b"signature", REPO)
    sig = image(ing, REPO, "sig", sig_cfg, [], subject=tagged)
    ing.manifests.delete(REPO, "sig")  # untagged referrer: still a revision
    garbage = blob(driver, b"garbage" * 100, REPO, OTHER, alias=True)

    report = collect(driver)

    assert report.blobs_deleted == 1
    assert report.bytes_freed == 700
    assert report.links_deleted == 4  # a canonical link and an alias in each
    assert report.freed == [str(garbage)]
    assert not present(driver, garbage)
    assert not linked(driver, REPO, garbage)
    assert not linked(driver, OTHER, garbage)
    assert not linked(driver, REPO, parse_digest(sha512(b"garbage" * 100)))
    for d in (config, layer, shared, child_cfg, child_layer, sig_cfg, tagged, child, idx, sig):
        assert present(driver, d), d
    assert report.manifests == 4
    assert report.repositories == 2
    assert_intact(ing)
    # A second run has nothing left to do.
    again = collect(driver)
    assert again.blobs_deleted == 0
    assert again.candidates == 0


def test_delete_untagged_keeps_what_tags_reach_and_frees_the_rest(
    ing: Ingest, driver: StorageDriver
) -> None:
    cfg, layer = blob(driver, b"cfg", REPO), blob(driver, b"layer", REPO)
    tagged = image(ing, REPO, "v1", cfg, [layer])
    sig_cfg = blob(driver, b"sig-cfg", REPO)
    sig = image(ing, REPO, "s", sig_cfg, [], subject=tagged)
    ing.manifests.delete(REPO, "s")  # untagged referrer of a tagged image: kept
    c_cfg = blob(driver, b"child-cfg", REPO)
    child = image(ing, REPO, "c", c_cfg, [])
    ing.manifests.delete(REPO, "c")
    idx = index(ing, REPO, "multi", [child])  # untagged child of a tagged index: kept
    old_cfg, old_layer = blob(driver, b"old-cfg", REPO), blob(driver, b"old-layer", REPO)
    old = image(ing, REPO, "old", old_cfg, [old_layer])
    ing.manifests.delete(REPO, "old")  # untagged and unreached: removed
    old_sig_cfg = blob(driver, b"old-sig", REPO)
    old_sig = image(ing, REPO, "os", old_sig_cfg, [], subject=old)
    ing.manifests.delete(REPO, "os")  # a referrer of a removed image: removed

    dry = collect(driver, delete_untagged=True, dry_run=True)
    report = collect(driver, delete_untagged=True)

    assert report.manifests_deleted == 2 == dry.manifests_deleted
    for d in (old, old_sig):
        assert not ing.manifests._has_revision(REPO, d)
    for d in (old, old_sig, old_cfg, old_layer, old_sig_cfg):
        assert not present(driver, d)
    for d in (tagged, sig, idx, child, cfg, layer, sig_cfg, c_cfg):
        assert present(driver, d)
    assert report.blobs_deleted == 5 == dry.blobs_deleted
    assert report.bytes_freed == dry.bytes_freed
    assert ing.manifests.referrers(REPO, str(old))["manifests"] == []
    assert_intact(ing)


def test_the_grace_period_keeps_young_blobs_and_a_relink_makes_an_old_one_young(
    driver: StorageDriver, ing: Ingest
) -> None:
    old = blob(driver, b"old", REPO)
    relinked = blob(driver, b"relinked", REPO)
    time.sleep(2 * tick(driver))
    middle = time.time()
    time.sleep(2 * tick(driver))
    assert ing.mount(OTHER, REPO, relinked)  # a re-link: young again
    young = blob(driver, b"young", REPO)

    report = gc.collect_garbage(driver, grace=10.0, epoch=middle + 10.0)

    assert report.freed == [str(old)]
    assert present(driver, relinked)
    assert present(driver, young)
    assert linked(driver, REPO, relinked)
    assert linked(driver, OTHER, relinked)


def test_an_upload_in_flight_keeps_the_blob_it_names(driver: StorageDriver, ing: Ingest) -> None:
    data = b"in flight" * 10
    d = blob(driver, data)  # stored, no link yet: a commit between its move and its links
    up = ing.start_upload(REPO)
    up.write(data)
    up.finish(str(d))
    assert collect(driver).blobs_deleted == 0
    assert present(driver, d)


def test_dry_run_changes_nothing_and_reports_what_a_run_frees(
    driver: StorageDriver, ing: Ingest
) -> None:
    blob(driver, b"a" * 10, REPO, alias=True)
    blob(driver, b"b" * 20, REPO, OTHER)
    image(ing, REPO, "v1", blob(driver, b"cfg", REPO), [])

    def snapshot() -> list[tuple[str, int]]:
        return sorted(
            (fi.path, fi.size) for r in ("/blobs", "/repositories") for fi in driver.walk(r)
        )

    before = snapshot()
    dry = collect(driver, dry_run=True)
    assert snapshot() == before
    assert [fi.path for fi in driver.walk("/gc")] == [paths.gc_clock_path()]  # no flag
    real = collect(driver)
    keys = ("blobs_deleted", "bytes_freed", "links_deleted", "freed", "candidates")
    assert {k: dry.to_dict()[k] for k in keys} == {k: real.to_dict()[k] for k in keys}
    assert (real.blobs_deleted, real.bytes_freed, real.links_deleted) == (2, 30, 4)
    assert dry.dry_run
    assert "would free 2 blob(s), 30 bytes" in dry.summary_lines()[0]


def test_an_unreadable_manifest_stops_the_sweep(driver: StorageDriver, ing: Ingest) -> None:
    d = image(ing, REPO, "v1", blob(driver, b"cfg", REPO), [])
    garbage = blob(driver, b"garbage", REPO)
    driver.put_content(paths.blob_data_path(d), b"not json")  # damage fsck would find
    report = collect(driver)
    assert not report.swept
    assert report.unreadable == [str(d)]
    assert present(driver, garbage)


# -- crashes -----------------------------------------------------------------------------


class Crash(Exception):
    pass


@pytest.mark.parametrize("at", ["flagged", "rescanned", "claimed", "unlinked"])
def test_a_crash_at_any_step_leaves_nothing_broken_and_a_rerun_finishes(
    driver: StorageDriver, ing: Ingest, at: str
) -> None:
    cfg = blob(driver, b"cfg", REPO)
    image(ing, REPO, "v1", cfg, [])
    garbage = [blob(driver, bytes([i]) * 50, REPO, alias=True) for i in range(3)]

    def crash(step: str) -> None:
        if step == at:
            raise Crash(step)

    with pytest.raises(Crash):
        collect(driver, on_step=crash)
    # fsck sees nothing broken: links go before the blob.
    assert run_fsck(driver).clean
    # A writer reusing a blob the dead run had claimed is not stuck: the flag is gone.
    for d in garbage:
        gc.retain_blob(driver, d, wait=0.0)
    report = collect(driver)
    assert not any(present(driver, d) for d in garbage)
    assert report.blobs_deleted + (1 if at in ("unlinked",) else 0) >= 2
    assert_intact(ing)
    assert present(driver, cfg)


def test_a_stale_claim_fails_a_writer_with_unavailable_until_the_next_run(
    driver: StorageDriver,
) -> None:
    d = blob(driver, b"x", REPO)
    other = blob(driver, b"y", REPO)
    driver.put_content(paths.gc_sweep_path(), b"sweeping deadrun\n")
    driver.put_content(paths.gc_blob_verdict_path(d), b"claimed deadrun 0\n")
    from ingest.errors import StorageUnavailable

    waited: list[float] = []
    with pytest.raises(StorageUnavailable):
        gc.retain_blob(driver, d, wait=1.0, sleep=recording(waited))
    assert waited  # it waited for the claim, boundedly
    gc.retain_blob(driver, other, wait=0.0)  # a blob the dead run did not claim: no wait
    report = collect(driver, grace=3600.0, epoch=time.time())  # keeps everything
    assert report.recovered == 2  # the claim, and the other writer's verdict
    gc.retain_blob(driver, d, wait=0.0)
    assert present(driver, d)
    assert present(driver, other)
    assert not list(driver.walk(paths.gc_verdicts_root()))


def test_a_writer_and_the_claim_racing_on_one_blob_never_both_win(driver: StorageDriver) -> None:
    # The race the protocol rests on, with real threads: the collector's claim (S4) and
    # a writer's retain_blob (R2) on the same blob at the same instant. Exactly one
    # wins: either the claim succeeds and the writer waits for the deletion to end, or
    # the writer's verdict stands and the claim fails.
    def claim(collector: Any, verdict: str, start: threading.Barrier, claimed: list[bool]) -> None:
        start.wait()
        won = collector._claim(verdict)
        claimed.append(won)
        if won:
            time.sleep(0.05)  # "deleting": the writer must still be waiting
            driver.delete(verdict)

    def retain(d: Digest, start: threading.Barrier, waited: list[float]) -> None:
        start.wait()
        gc.retain_blob(driver, d, sleep=recording(waited))

    for i in range(12):
        d = parse_digest(sha256(b"contested %d" % i))
        report = gc.GcReport(dry_run=False, delete_untagged=False, grace=0.0, started_at=0.0)
        collector = gc._Collector(driver, report, 0.0, lambda: None, lambda _: None)
        collector.flag()
        start = threading.Barrier(2)
        claimed: list[bool] = []
        waited: list[float] = []
        verdict = paths.gc_blob_verdict_path(d)
        threads = [
            threading.Thread(target=claim, args=(collector, verdict, start, claimed)),
            threading.Thread(target=retain, args=(d, start, waited)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        (won,) = claimed
        assert won == bool(waited), (i, won, waited)
        collector.unflag(clear=True)
        assert not list(driver.walk(paths.gc_verdicts_root()))


# -- races: a push at every step of a sweep ------------------------------------------------


def during(step: str, action: Callable[[], object]) -> tuple[Callable[[str], None], list[Any]]:
    """A step hook that runs ``action`` once at ``step`` (on a thread for ``claimed``:
    the writer then waits for the deletion in progress), and the outcome list."""
    outcome: list[Any] = []
    threads: list[threading.Thread] = []

    def run() -> None:
        try:
            outcome.append(action())
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    def hook(name: str) -> None:
        if name != step or threads or outcome:
            return
        if step == "claimed":
            t = threading.Thread(target=run)
            threads.append(t)
            t.start()
            time.sleep(0.1)  # the writer is now waiting on the claim
        else:
            run()

    hook.threads = threads  # type: ignore[attr-defined]
    return hook, outcome


def _collect_with(driver: StorageDriver, hook: Callable[[str], None]) -> gc.GcReport:
    report = collect(driver, on_step=hook)
    for t in hook.threads:  # type: ignore[attr-defined]
        t.join(10)
    return report


@pytest.mark.parametrize("step", STEPS)
def test_a_manifest_pushed_during_the_sweep_never_loses_a_blob(
    driver: StorageDriver, ing: Ingest, step: str
) -> None:
    # Race (b): a client found an old unreferenced blob present and references it.
    cfg = blob(driver, b"cfg", REPO)
    image(ing, REPO, "base", cfg, [])  # only the old layer is garbage
    old = blob(driver, b"old layer" * 20, REPO)
    hook, outcome = during(step, lambda: image(ing, REPO, "new", cfg, [old]))

    report = _collect_with(driver, hook)

    (result,) = outcome
    if step == "claimed":
        # The blob was already being deleted: the push is refused, nothing is left.
        assert isinstance(result, ManifestBlobUnknown)
        assert not present(driver, old)
        assert len(revisions(driver)) == 1  # "base" only: the push withdrew its revision
        assert ing.manifests.tags(REPO) == ["base"]
    else:
        assert result == ing.manifests.resolve(REPO, "new")
        assert present(driver, old)
        assert report.rescued >= 1  # at "marked" the new manifest's own blob too
        assert report.blobs_deleted == 0
    assert_intact(ing)


@pytest.mark.parametrize("step", STEPS)
def test_a_commit_that_deduplicates_during_the_sweep_never_loses_its_blob(
    driver: StorageDriver, ing: Ingest, step: str
) -> None:
    # Race (a): an upload of bytes that are stored already, as old garbage.
    data = b"old bytes" * 30
    old = blob(driver, data, OTHER)
    up = ing.start_upload(REPO)
    up.write(data)  # staged before the sweep, finished and committed during it

    def finish_and_commit() -> dict[str, Any]:
        ticket = up.finish(str(old))
        return commit_upload(driver, up.id, old, task_id=ticket.task_id)

    hook, outcome = during(step, finish_and_commit)

    _collect_with(driver, hook)

    (result,) = outcome
    assert isinstance(result, dict), result
    assert result["status"] == "committed"
    with ing.open(REPO, old) as f:
        assert f.read() == data
    assert_intact(ing)


@pytest.mark.parametrize("step", STEPS)
def test_a_mount_during_the_sweep_is_whole_or_refused(
    driver: StorageDriver, ing: Ingest, step: str
) -> None:
    old = blob(driver, b"mounted" * 30, OTHER)
    hook, outcome = during(step, lambda: ing.mount(REPO, OTHER, old))

    _collect_with(driver, hook)

    (mounted,) = outcome
    if mounted is True:
        assert present(driver, old)
        assert linked(driver, REPO, old)
    else:
        assert mounted is False
        assert step == "claimed"
        assert not present(driver, old)
        assert not linked(driver, REPO, old)
    assert_intact(ing)


def test_an_untagged_manifest_tagged_during_its_sweep_is_kept_or_rewritten(
    driver: StorageDriver, ing: Ingest
) -> None:
    for step in STEPS:
        cfg = blob(driver, b"cfg", REPO)
        body_digest = image(ing, REPO, "t", cfg, [])
        ing.manifests.delete(REPO, "t")  # untagged and old: a candidate
        body = driver.get_content(paths.blob_data_path(body_digest))
        hook, outcome = during(
            step, functools.partial(ing.manifests.put, REPO, "t", body, OCI_MANIFEST)
        )
        collect(driver, delete_untagged=True, on_step=hook)
        for t in hook.threads:  # type: ignore[attr-defined]
            t.join(10)
        (result,) = outcome
        if isinstance(result, ManifestBlobUnknown):
            # Claimed: the revision went while the PUT waited, the PUT wrote it again,
            # but the blob phase that followed had already claimed its config: refused.
            assert step == "claimed"
            with pytest.raises(IngestError):
                ing.manifests.resolve(REPO, "t")
        else:
            assert ing.manifests.get(REPO, "t").body == body, step
            assert present(driver, cfg), step
        assert_intact(ing)
        with contextlib.suppress(IngestError):
            ing.manifests.delete(REPO, "t")


def test_without_the_writers_check_the_race_loses_a_blob(
    driver: StorageDriver, ing: Ingest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The harness can fail: with retain_blob disabled, a manifest pushed after the
    # rescan references a blob the sweep then deletes.
    monkeypatch.setattr(gc, "retain_blob", lambda *a, **k: None)
    cfg = blob(driver, b"cfg", REPO)
    old = blob(driver, b"old layer" * 20, REPO)
    hook, outcome = during("rescanned", lambda: image(ing, REPO, "new", cfg, [old]))
    _collect_with(driver, hook)
    assert not isinstance(outcome[0], Exception)
    assert not present(driver, old)
    with pytest.raises((AssertionError, IngestError)):  # whichever check trips first
        assert_intact(ing)


# -- the edges: task, CLI, beat ------------------------------------------------------------


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeServer:
    server = fakeredis.FakeServer()
    monkeypatch.setattr(
        "redis.Redis.from_url", lambda url, **kw: fakeredis.FakeRedis(server=server)
    )
    return server


@pytest.mark.parametrize(
    "kwargs", [{"grace": 1.0}, {"grace": "1h"}, {"dry_run": "yes"}, {"delete_untagged": 1}]
)
def test_the_task_refuses_a_grace_below_the_floor_and_bad_flags(
    tmp_path: Path, fake_redis: fakeredis.FakeServer, kwargs: dict[str, Any]
) -> None:
    from workers import tasks

    with worker_settings(tmp_path / "root") as driver:
        garbage = blob(driver, b"garbage", REPO)
        res = tasks.collect_garbage_task.apply(kwargs=kwargs)
        assert res.state == "FAILURE"
        assert isinstance(res.result, ArgumentInvalid)
        assert present(driver, garbage)


def test_the_task_collects_and_is_skipped_while_another_run_holds_the_lock(
    tmp_path: Path, fake_redis: fakeredis.FakeServer
) -> None:
    from workers import tasks

    with worker_settings(tmp_path / "root") as driver:
        garbage = blob(driver, b"garbage", REPO)
        past = time.time() - 7200
        os.utime(driver.root / paths.blob_data_path(garbage).lstrip("/"), (past, past))
        os.utime(driver.root / paths.layer_link_path(REPO, garbage).lstrip("/"), (past, past))
        dry = tasks.collect_garbage_task.apply(kwargs={"dry_run": True}).get()
        assert (dry["status"], dry["blobs_deleted"], dry["dry_run"]) == ("done", 1, True)
        assert present(driver, garbage)
        fakeredis.FakeRedis(server=fake_redis).set("ingest:v1:lock:gc", "other")
        skipped = tasks.collect_garbage_task.apply().get()
        assert skipped["status"] == "skipped"
        fakeredis.FakeRedis(server=fake_redis).delete("ingest:v1:lock:gc")
        done = tasks.collect_garbage_task.apply().get()
        assert (done["blobs_deleted"], done["bytes_freed"], done["freed"]) == (
            1,
            7,
            [str(garbage)],
        )
        assert not present(driver, garbage)


def test_the_cli_prints_the_report_and_refuses_a_tiny_grace(
    tmp_path: Path, fake_redis: fakeredis.FakeServer
) -> None:
    from click.testing import CliRunner

    from ingest.cli import Context, cli
    from ingest.config import Settings
    from ingest.storage.filesystem import FilesystemDriver

    driver = FilesystemDriver(tmp_path / "root")
    settings = Settings(storage_root=str(driver.root))
    garbage = blob(driver, b"garbage!", REPO)
    past = time.time() - 7200
    os.utime(driver.root / paths.blob_data_path(garbage).lstrip("/"), (past, past))
    os.utime(driver.root / paths.layer_link_path(REPO, garbage).lstrip("/"), (past, past))

    def run(*args: str) -> Any:
        obj = Context(settings, False)
        obj._ingest = make_ingest(driver, settings)[0]
        return CliRunner().invoke(cli, list(args), obj=obj)

    assert run("gc", "--grace", "1s").exit_code == 2
    dry = run("gc", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("would free 1 blob(s), 8 bytes, 1 link(s)")
    real = run("--json", "gc", "--grace", "1h")
    assert real.exit_code == 0, real.output
    assert json.loads(real.output)["freed"] == [str(garbage)]
    assert not present(driver, garbage)


def test_beat_runs_gc_only_when_an_interval_is_set() -> None:
    from ingest.config import Settings
    from workers.app import create_celery

    assert "garbage-collection" not in create_celery(Settings()).conf.beat_schedule
    on = create_celery(Settings(gc_interval=86400.0))
    assert on.conf.beat_schedule["garbage-collection"] == {
        "task": "ingest.gc",
        "schedule": 86400.0,
        "options": {"expires": 86400.0},
    }
    assert on.conf.task_routes["ingest.gc"] == {"queue": "maintenance"}
