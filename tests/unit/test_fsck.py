"""fsck: finding corrupt blobs and wrong links, quarantining them, resumable shares."""

from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import fakeredis
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import fsck, locks, paths
from ingest.blobs import BlobStore
from ingest.config import ConfigError, Settings
from ingest.digests import Digest, VerifierLimits, parse_digest
from ingest.errors import ArgumentInvalid, BlobUnknown, ManifestUnknown, TooManyRequests
from ingest.manifests import OCI_MANIFEST, ManifestStore
from ingest.storage.base import FileInfo, StorageDriver
from ingest.storage.filesystem import FilesystemDriver
from tests.data import TARSUM_VECTORS
from tests.unit.fakes import DRIVER_KINDS, make_driver, make_ingest, sha256, sha512, worker_settings

ROOT = Path(__file__).resolve().parents[2]
LAYER = (
    TARSUM_VECTORS
    / "testdata/46af0962ab5afeb5ce6740d4d91652e69206fc991fd5328c1a94d364ad00e457/layer.tar"
)
LAYER_TARSUM = "tarsum.v1+sha256:41cd5c911333ee394776e432fc5a27cc82dfea313e5feff965e31c0fddd9213d"


@pytest.fixture(params=DRIVER_KINDS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    return make_driver(str(request.param), tmp_path)


@pytest.fixture
def fs(tmp_path: Path) -> FilesystemDriver:
    return FilesystemDriver(tmp_path / "root")


def push(driver: StorageDriver, repo: str, data: bytes, digest: str | None = None) -> str:
    """Commit ``data`` into ``repo`` through the real commit path; its canonical digest."""
    ing, _ = make_ingest(driver)
    up = ing.start_upload(repo)
    up.write(data)
    result = up.finish(digest or sha256(data)).wait()
    assert result["status"] == "committed"
    return str(result["canonical_digest"])


def blob_path(canonical: str) -> str:
    return paths.blob_data_path(parse_digest(canonical))


def corrupt(driver: StorageDriver, canonical: str, content: bytes) -> None:
    """Change a committed blob's bytes behind the service's back. On disk this writes
    into the same (possibly read-only, sealed) file, as a bad disk or a bug would."""
    path = blob_path(canonical)
    if isinstance(driver, FilesystemDriver):
        full = driver.root / path.lstrip("/")
        mode = full.stat().st_mode
        full.chmod(mode | stat.S_IWUSR)
        with open(full, "r+b") as f:
            f.truncate(0)
            f.write(content)
        full.chmod(0o440)  # committed blobs are read-only: the repair must cope
    else:
        driver.put_content(path, content)


def links_naming(driver: StorageDriver, canonical: str) -> list[str]:
    out = []
    for fi in driver.walk(paths.repositories_root()):
        if paths.parse_repository_link(fi.path) is None:
            continue
        if driver.get_content(fi.path).decode().strip() == canonical:
            out.append(fi.path)
    return sorted(out)


def records(driver: StorageDriver) -> list[dict[str, Any]]:
    return [
        json.loads(driver.get_content(fi.path))
        for fi in driver.walk(paths.quarantine_root())
        if fi.path.endswith("/record.json")
    ]


def kinds(report: fsck.FsckReport) -> list[str]:
    return sorted(f.kind for f in report.findings)


# -- finding -------------------------------------------------------------------------


def test_a_clean_store_has_no_findings(driver: StorageDriver) -> None:
    a, b = os.urandom(3000), os.urandom(70_000)
    push(driver, "lib/a", a)
    push(driver, "lib/b", a)  # the same blob in a second repository
    push(driver, "lib/b", b, sha512(b))  # canonical link + a sha512 alias
    push(driver, "lib/t", LAYER.read_bytes(), LAYER_TARSUM)  # a TarSum alias
    report = fsck.run_fsck(driver, chunk_size=4096)
    assert report.clean, [f.to_dict() for f in report.findings]
    assert report.complete
    assert report.blobs_checked == 3
    assert report.bytes_hashed == len(a) + len(b) + len(LAYER.read_bytes())
    assert report.aliases_checked == 2
    assert report.links_checked == 6
    assert records(driver) == []


@pytest.mark.parametrize("new_size", ["same size", "other size"])
def test_a_blob_whose_bytes_changed_is_found_and_left_alone_without_repair(
    driver: StorageDriver, new_size: str
) -> None:
    good = os.urandom(5000)
    other = push(driver, "lib/ok", os.urandom(100))
    canonical = push(driver, "lib/x", good)
    bad = bytearray(good) if new_size == "same size" else bytearray(good + b"tail")
    bad[17] ^= 0x01
    corrupt(driver, canonical, bytes(bad))
    report = fsck.run_fsck(driver)
    assert kinds(report) == [fsck.BLOB_MISMATCH]
    (f,) = report.findings
    assert f.path == blob_path(canonical)
    assert f.expected == canonical
    assert f.computed == sha256(bytes(bad))
    assert f.size == len(bad)
    assert f.action == "reported"
    assert report.blobs_checked == 2
    # Reporting changes nothing.
    assert driver.get_content(blob_path(canonical)) == bytes(bad)
    assert links_naming(driver, canonical) != []
    assert links_naming(driver, other) != []
    assert records(driver) == []


def test_repair_quarantines_the_blob_and_removes_every_link_naming_it(
    driver: StorageDriver,
) -> None:
    data = LAYER.read_bytes()
    canonical = push(driver, "lib/a", data)
    push(driver, "lib/b", data, sha512(data))
    push(driver, "lib/c/deep", data, LAYER_TARSUM)
    keep = os.urandom(1000)
    kept = push(driver, "lib/a", keep, sha512(keep))
    expected_links = links_naming(driver, canonical)
    assert len(expected_links) == 5  # 3 canonical, a sha512 and a TarSum alias
    bad = data[:-1] + bytes([data[-1] ^ 0xFF])
    corrupt(driver, canonical, bad)

    report = fsck.run_fsck(driver, repair=True)
    assert kinds(report) == [fsck.BLOB_MISMATCH]
    (f,) = report.findings
    assert f.action == "quarantined"
    assert f.quarantine is not None
    assert sorted(f.links_removed) == expected_links
    assert links_naming(driver, canonical) == []
    assert BlobStore(driver).exists(parse_digest(canonical)) is None
    # The quarantine holds exactly the bad bytes and says what was found.
    assert driver.get_content(paths.quarantine_data_path(f.quarantine)) == bad
    (record,) = records(driver)
    assert record["kind"] == "blob-mismatch"
    assert record["expected"] == canonical
    assert record["computed"] == sha256(bad)
    assert record["size"] == len(bad)
    assert record["data"] == paths.quarantine_data_path(f.quarantine)
    assert sorted(record["links_removed"]) == expected_links
    assert record["repaired_at"] > 0
    # Nothing else was touched; the store is clean now.
    assert len(links_naming(driver, kept)) == 2
    assert fsck.run_fsck(driver).clean
    ing, _ = make_ingest(driver)
    for repo, digest in (("lib/a", canonical), ("lib/b", sha512(data))):
        with pytest.raises(BlobUnknown):
            ing.stat(repo, digest)
    # The digest can be pushed again, and then it is good.
    assert push(driver, "lib/b", data, sha512(data)) == canonical
    assert driver.get_content(blob_path(canonical)) == data
    assert fsck.run_fsck(driver).clean


def test_a_corrupt_manifest_loses_its_revisions_but_keeps_its_tags(
    driver: StorageDriver,
) -> None:
    config, layer = b'{"architecture":"amd64"}', os.urandom(2000)
    push(driver, "app/web", config)
    push(driver, "app/web", layer)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    store = ManifestStore(driver)
    manifest = store.put("app/web", "v1", body, OCI_MANIFEST)
    store.put("app/web", sha512(body), body, OCI_MANIFEST)  # a sha512 revision alias
    assert fsck.run_fsck(driver).clean  # the manifest's blob and its alias are checked
    corrupt(driver, manifest.digest, body.replace(b'"schemaVersion": 2', b'"schemaVersion": 3'))

    report = fsck.run_fsck(driver, repair=True)
    (f,) = report.findings
    assert (f.kind, f.action) == (fsck.BLOB_MISMATCH, "quarantined")
    assert sorted(f.links_removed) == sorted(
        paths.manifest_revision_link_path("app/web", parse_digest(d))
        for d in (manifest.digest, sha512(body))
    )
    assert f.detail["tags"] == ["app/web:v1"]
    assert store.tags("app/web") == ["v1"]  # kept: it says what to push again
    with pytest.raises(ManifestUnknown):
        store.get("app/web", "v1")
    store.put("app/web", "v1", body, OCI_MANIFEST)
    assert store.get("app/web", "v1").body == body
    assert fsck.run_fsck(driver).clean


def test_a_wrong_alias_is_removed_alone(driver: StorageDriver) -> None:
    data, other = os.urandom(4000), os.urandom(4000)
    canonical = push(driver, "lib/good", data, sha512(data))
    push(driver, "lib/bad", data)
    d = parse_digest(canonical)
    blobs = BlobStore(driver)
    wrong = parse_digest(sha512(other))  # claims data's sha512 is other's
    blobs.link("lib/bad", wrong, d)
    wrong_tarsum = parse_digest("tarsum.v1+sha256:" + "0" * 64)
    blobs.link("lib/bad", wrong_tarsum, d)  # data is not even a tar

    report = fsck.run_fsck(driver)
    assert kinds(report) == [fsck.ALIAS_MISMATCH, fsck.ALIAS_MISMATCH]
    by_path = {f.path: f for f in report.findings}
    f = by_path[paths.layer_link_path("lib/bad", wrong)]
    assert (f.expected, f.computed, f.target) == (str(wrong), sha512(data), canonical)
    t = by_path[paths.layer_link_path("lib/bad", wrong_tarsum)]
    assert t.computed is None
    assert t.detail["error"]  # the tar error, named
    assert report.aliases_checked == 3

    repaired = fsck.run_fsck(driver, repair=True)
    assert {f.action for f in repaired.findings} == {"unlinked"}
    assert sorted(links_naming(driver, canonical)) == sorted(
        [
            paths.layer_link_path("lib/good", d),
            paths.layer_link_path("lib/good", parse_digest(sha512(data))),
            paths.layer_link_path("lib/bad", d),
        ]
    )
    assert driver.get_content(blob_path(canonical)) == data
    assert len(records(driver)) == 2
    assert all(r["data"] is None for r in records(driver))
    assert fsck.run_fsck(driver).clean


def test_an_alias_this_process_cannot_compute_is_reported_never_removed(
    driver: StorageDriver,
) -> None:
    data = gzip.compress(LAYER.read_bytes())  # TarSum reads through gzip, within caps
    canonical = push(driver, "lib/t", data, LAYER_TARSUM)
    limits = VerifierLimits(tarsum_max_bytes=10, tarsum_max_ratio=None)
    report = fsck.run_fsck(driver, repair=True, limits=limits)
    (f,) = report.findings
    assert (f.kind, f.action) == (fsck.ALIAS_UNVERIFIABLE, "reported")
    assert f.detail["error"] == "decompression-limit"
    assert len(links_naming(driver, canonical)) == 2


def test_links_naming_a_missing_blob_are_found_and_removed(driver: StorageDriver) -> None:
    kept = push(driver, "lib/a", os.urandom(100))
    ghost = parse_digest(sha256(b"never stored"))
    blobs = BlobStore(driver)
    blobs.link("lib/a", ghost, ghost)
    alias = parse_digest(sha512(b"never stored"))
    blobs.link("lib/b", alias, ghost)
    report = fsck.run_fsck(driver)
    assert kinds(report) == [fsck.LINK_MISSING_BLOB] * 2
    assert {f.path for f in report.findings} == {
        paths.layer_link_path("lib/a", ghost),
        paths.layer_link_path("lib/b", alias),
    }
    assert {f.target for f in report.findings} == {str(ghost)}
    repaired = fsck.run_fsck(driver, repair=True)
    assert {f.action for f in repaired.findings} == {"unlinked"}
    assert links_naming(driver, str(ghost)) == []
    assert links_naming(driver, kept) != []
    assert fsck.run_fsck(driver).clean


def test_links_with_a_wrong_or_unreadable_target_are_found(driver: StorageDriver) -> None:
    a = push(driver, "lib/a", os.urandom(100))
    b = push(driver, "lib/a", os.urandom(100))
    # A sha256 link must name itself: this one names another blob.
    driver.put_content(paths.layer_link_path("lib/a", parse_digest(a)), b.encode())
    garbage = paths.layer_link_path("lib/a", parse_digest(sha256(b"x")))
    driver.put_content(garbage, b"\xffnot a digest")
    report = fsck.run_fsck(driver, repair=True)
    assert kinds(report) == [fsck.LINK_INVALID, fsck.LINK_TARGET_MISMATCH]
    assert {f.action for f in report.findings} == {"unlinked"}
    assert links_naming(driver, b) == [paths.layer_link_path("lib/a", parse_digest(b))]
    assert fsck.run_fsck(driver).clean


def test_strays_under_blobs_are_reported_and_never_touched(driver: StorageDriver) -> None:
    push(driver, "lib/a", os.urandom(100))
    driver.put_content("/blobs/sha256/zz/junk", b"x")
    driver.put_content("/blobs/sha256/ab/not-a-digest/data", b"x")
    driver.put_content("/blobs/md5/00/x/data", b"x")
    report = fsck.run_fsck(driver, repair=True)
    assert kinds(report) == [fsck.STRAY_ENTRY] * 3
    assert {f.path for f in report.findings} == {
        "/blobs/sha256/zz",
        "/blobs/sha256/ab/not-a-digest",
        "/blobs/md5",
    }
    assert {f.action for f in report.findings} == {"reported"}
    assert driver.get_content("/blobs/sha256/zz/junk") == b"x"


# -- repair racing a commit ----------------------------------------------------------


def commit_lands(driver: StorageDriver, canonical: str, good: bytes) -> None:
    """What a commit does when it finds a blob of the wrong size at the address: rename
    verified bytes over it."""
    staged = "/uploads/racing-commit"
    driver.put_content(staged, good)
    driver.move(staged, blob_path(canonical))


def test_a_blob_replaced_by_good_bytes_after_it_was_hashed_is_not_quarantined(
    driver: StorageDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = os.urandom(3000)
    canonical = push(driver, "lib/a", good, sha512(good))
    corrupt(driver, canonical, good + b"!")
    links = links_naming(driver, canonical)
    real_stat, real_reader = driver.stat, driver.reader
    seen = {"read": False, "stats": 0}

    def reader(path: str, offset: int = 0) -> BinaryIO:
        seen["read"] = seen["read"] or path == blob_path(canonical)
        return real_reader(path, offset)

    def stat(path: str) -> FileInfo:
        if path == blob_path(canonical) and seen["read"]:
            seen["stats"] += 1
            if seen["stats"] == 2:  # read, stat after reading; now the repair looks again
                commit_lands(driver, canonical, good)
        return real_stat(path)

    real_move = driver.move
    moved: list[str] = []

    def move(source: str, dest: str) -> None:
        moved.append(source)
        real_move(source, dest)

    monkeypatch.setattr(driver, "stat", stat)
    monkeypatch.setattr(driver, "reader", reader)
    monkeypatch.setattr(driver, "move", move)
    report = fsck.run_fsck(driver, repair=True)
    (f,) = report.findings
    assert (f.kind, f.action) == (fsck.BLOB_MISMATCH, "kept")
    assert f.detail["kept"] == "replaced by good bytes meanwhile"
    assert blob_path(canonical) not in moved  # the re-check saw it: never taken away
    assert driver.get_content(blob_path(canonical)) == good
    assert links_naming(driver, canonical) == links
    assert list(driver.walk(paths.quarantine_root())) == []


def test_good_bytes_landing_just_before_the_move_are_moved_back(
    driver: StorageDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = os.urandom(3000)
    canonical = push(driver, "lib/a", good)
    corrupt(driver, canonical, bytes(3000))  # same size: stat alone cannot tell
    links = links_naming(driver, canonical)
    real_move = driver.move

    def move(source: str, dest: str) -> None:
        if source == blob_path(canonical) and dest.startswith(paths.quarantine_root()):
            commit_lands(driver, canonical, good)  # between the re-check and the move
        real_move(source, dest)

    monkeypatch.setattr(driver, "move", move)
    report = fsck.run_fsck(driver, repair=True)
    (f,) = report.findings
    assert (f.kind, f.action) == (fsck.BLOB_MISMATCH, "kept")
    assert driver.get_content(blob_path(canonical)) == good
    assert links_naming(driver, canonical) == links
    assert list(driver.walk(paths.quarantine_root())) == []


def test_links_removed_while_a_commit_places_good_bytes_are_put_back(
    driver: StorageDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = os.urandom(3000)
    canonical = push(driver, "lib/a", good)
    push(driver, "lib/b", good, sha512(good))
    bad = b"\0" * 10
    corrupt(driver, canonical, bad)
    links = links_naming(driver, canonical)
    real_delete = driver.delete

    def delete(path: str) -> None:
        real_delete(path)
        if path.startswith(paths.repositories_root()) and not BlobStore(driver).exists(
            parse_digest(canonical)
        ):
            commit_lands(driver, canonical, good)  # found the address empty: placed it

    monkeypatch.setattr(driver, "delete", delete)
    report = fsck.run_fsck(driver, repair=True)
    (f,) = report.findings
    assert f.action == "quarantined"
    assert f.links_removed == []
    assert links_naming(driver, canonical) == links
    assert driver.get_content(blob_path(canonical)) == good
    assert f.quarantine is not None
    assert driver.get_content(paths.quarantine_data_path(f.quarantine)) == bad
    assert fsck.run_fsck(driver).clean


def test_a_blob_that_changes_while_it_is_read_is_hashed_again(
    driver: StorageDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = os.urandom(3000)
    canonical = push(driver, "lib/a", good)
    corrupt(driver, canonical, good + b"!")
    real_reader = driver.reader
    reads = {"n": 0}

    def reader(path: str, offset: int = 0) -> BinaryIO:
        f = real_reader(path, offset)
        if path == blob_path(canonical):
            reads["n"] += 1
            if reads["n"] == 1:
                commit_lands(driver, canonical, good)  # renamed over it while we read
        return f

    monkeypatch.setattr(driver, "reader", reader)
    report = fsck.run_fsck(driver, repair=True)
    assert report.clean
    assert reads["n"] == 2
    assert driver.get_content(blob_path(canonical)) == good


# -- resumable shares ----------------------------------------------------------------


def recording_reads(driver: StorageDriver, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hex digests of the blobs read, in order."""
    reads: list[str] = []
    real = driver.reader

    def reader(path: str, offset: int = 0) -> BinaryIO:
        if path.startswith("/blobs/"):
            reads.append(path.split("/")[-2])
        return real(path, offset)

    monkeypatch.setattr(driver, "reader", reader)
    return reads


def test_shares_cover_every_blob_exactly_once_per_pass_and_wrap(
    driver: StorageDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    hexes = sorted(push(driver, "lib/s", os.urandom(1000 + i)).split(":")[1] for i in range(5))
    reads = recording_reads(driver, monkeypatch)
    results = [fsck.run_share(driver, budget_bytes=1 << 30, budget_blobs=2) for _ in range(4)]
    assert reads == hexes + hexes[:2]  # sorted, each once, then the next pass begins
    assert [r.pass_completed for r in results] == [False, False, True, False]
    assert [r.report.cursor for r in results] == [hexes[1], hexes[3], hexes[4], hexes[1]]
    state = fsck.load_state(driver)
    assert state.passes_completed == 1
    assert state.cursor == hexes[1]
    assert state.last_pass is not None
    assert state.last_pass["blobs"] == 5
    assert state.last_pass["links"] == 5
    assert state.last_pass["bytes"] == sum(1000 + i for i in range(5))
    assert state.last_pass["findings"] == 0


def test_a_byte_budget_smaller_than_a_blob_still_checks_one_blob_per_share(
    driver: StorageDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    hexes = sorted(push(driver, "lib/s", os.urandom(5000)).split(":")[1] for _ in range(3))
    reads = recording_reads(driver, monkeypatch)
    for _ in range(3):
        fsck.run_share(driver, budget_bytes=10, budget_blobs=100)
    assert reads == hexes
    assert fsck.load_state(driver).passes_completed == 1


def test_a_share_checks_the_links_and_aliases_of_its_own_range_only(
    driver: StorageDriver,
) -> None:
    datas = [os.urandom(500 + i) for i in range(4)]
    canon = sorted(
        (push(driver, "lib/r", d, sha512(d)), d) for d in datas
    )  # every blob has an alias
    bad_hex = canon[3][0]
    BlobStore(driver).link("lib/r", parse_digest(sha512(b"wrong")), parse_digest(bad_hex))
    first = fsck.run_share(driver, budget_bytes=1 << 30, budget_blobs=2)
    assert first.report.clean
    assert (first.report.links_checked, first.report.aliases_checked) == (4, 2)
    second = fsck.run_share(driver, budget_bytes=1 << 30, budget_blobs=2)
    assert kinds(second.report) == [fsck.ALIAS_MISMATCH]
    assert (second.report.links_checked, second.report.aliases_checked) == (5, 3)
    assert second.pass_completed
    assert second.state.last_pass is not None
    assert second.state.last_pass["findings"] == 1


def test_the_cursor_is_in_storage_and_a_new_process_continues_from_it(
    fs: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    hexes = sorted(push(fs, "lib/p", os.urandom(700 + i)).split(":")[1] for i in range(4))
    fsck.run_share(fs, budget_bytes=1 << 30, budget_blobs=3)
    saved = json.loads((fs.root / "maintenance" / "fsck.json").read_text())
    assert saved["cursor"] == hexes[2]
    code = (
        "import json, sys\n"
        "from ingest.fsck import run_share\n"
        "from ingest.storage.filesystem import FilesystemDriver\n"
        "r = run_share(FilesystemDriver(sys.argv[1]), budget_bytes=1 << 30, budget_blobs=3)\n"
        "print(json.dumps([r.report.after, r.report.cursor, r.report.blobs_checked,"
        " r.pass_completed]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(fs.root)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == [hexes[2], hexes[3], 1, True]
    assert fsck.load_state(FilesystemDriver(fs.root)).passes_completed == 1


def test_a_blob_a_dead_share_was_hashing_is_skipped_not_retried_forever(
    driver: StorageDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    hexes = sorted(push(driver, "lib/d", os.urandom(2000 + i)).split(":")[1] for i in range(3))
    monkeypatch.setattr(fsck, "IN_PROGRESS_MIN_SIZE", 0)  # every blob is "large"
    real = driver.reader

    def dies(path: str, offset: int = 0) -> BinaryIO:
        if path == blob_path("sha256:" + hexes[1]):
            raise MemoryError("worker killed")  # what a killed share looks like from here
        return real(path, offset)

    monkeypatch.setattr(driver, "reader", dies)
    with pytest.raises(MemoryError):
        fsck.run_share(driver, budget_bytes=1 << 30, budget_blobs=10)
    state = fsck.load_state(driver)
    assert state.in_progress is not None
    assert state.in_progress["blob"] == hexes[1]
    assert state.cursor == hexes[0]
    monkeypatch.setattr(driver, "reader", real)
    again = fsck.run_share(driver, budget_bytes=1 << 30, budget_blobs=10)
    assert again.skipped_in_progress is not None
    assert again.skipped_in_progress["blob"] == hexes[1]
    assert (again.report.after, again.report.blobs_checked) == (hexes[1], 1)
    assert again.pass_completed
    assert again.state.last_pass is not None
    assert again.state.last_pass["skipped"] == 1


def test_a_large_blob_checked_before_a_share_died_is_not_skipped(
    driver: StorageDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    while True:  # a large blob first in digest order, then a small one
        large, small = os.urandom(5000), os.urandom(100)
        if sha256(large) < sha256(small):
            break
    first, second = push(driver, "lib/l", large), push(driver, "lib/l", small)
    monkeypatch.setattr(fsck, "IN_PROGRESS_MIN_SIZE", 5000)
    real = driver.reader

    def dies(path: str, offset: int = 0) -> BinaryIO:
        if path == blob_path(second):
            raise MemoryError("worker killed")
        return real(path, offset)

    monkeypatch.setattr(driver, "reader", dies)
    with pytest.raises(MemoryError):
        fsck.run_share(driver, budget_bytes=1 << 30, budget_blobs=10)
    state = fsck.load_state(driver)
    assert (state.cursor, state.in_progress) == (first.split(":")[1], None)
    monkeypatch.setattr(driver, "reader", real)
    again = fsck.run_share(driver, budget_bytes=1 << 30, budget_blobs=10)
    assert again.skipped_in_progress is None
    assert again.report.blobs_checked == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=20,
)
state_like = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from([1, 2, "1", None]),
        "cursor": st.one_of(json_values, st.text("0123456789abcdef", min_size=64, max_size=64)),
        "in_progress": json_values,
        "counts": st.dictionaries(st.sampled_from(["blobs", "bytes", "x"]), json_values),
        "passes_completed": json_values,
        "last_pass": json_values,
        "pass_started_at": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(doc=st.one_of(json_values, state_like))
def test_any_stored_state_loads_into_a_usable_one(doc: object) -> None:
    state = fsck._state_from(doc)
    assert state.cursor is None or fsck._HEX64.fullmatch(state.cursor)
    if state.in_progress is not None:
        assert fsck._HEX64.fullmatch(state.in_progress["blob"])
    assert all(isinstance(v, int) and v >= 0 for v in state.counts.values())
    assert isinstance(state.passes_completed, int)
    json.dumps(state.to_dict())  # it can be saved again


def test_an_unreadable_state_file_restarts_the_pass(driver: StorageDriver) -> None:
    push(driver, "lib/a", os.urandom(10))
    driver.put_content(paths.fsck_state_path(), b"\x00{not json")
    result = fsck.run_share(driver, budget_bytes=1 << 30, budget_blobs=10)
    assert result.report.after is None
    assert result.pass_completed


# -- the link-path parser ------------------------------------------------------------

names = st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}", fullmatch=True)
digests = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: Digest("sha256", h)),
    st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: Digest("sha512", h)),
    st.text("0123456789abcdef", min_size=64, max_size=64).map(
        lambda h: Digest("tarsum.v1+sha256", h)
    ),
)


@given(name=names, digest=digests, kind=st.sampled_from(["layer", "manifest"]))
def test_a_link_path_parses_back_to_what_built_it(name: str, digest: Digest, kind: str) -> None:
    link = paths.RepositoryLink(name, kind, digest)
    assert paths.parse_repository_link(link.path) == link


@given(
    text=st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda a, b: f"/repositories/{a}/_layers/{b}/link",
            st.text(max_size=60),
            st.text(max_size=60),
        ),
        st.builds(
            lambda a, b: f"/repositories/{a}/_manifests/revisions/{b}/link",
            st.text(alphabet="abc/._-:", max_size=40),
            st.text(alphabet="sha256:/0f.+", max_size=80),
        ),
    )
)
def test_any_text_parses_to_none_or_to_a_link_that_maps_back_to_it(text: str) -> None:
    link = paths.parse_repository_link(text)
    assert link is None or link.path == text


def test_tags_media_types_and_temporary_files_are_not_links() -> None:
    d = parse_digest(sha256(b"x"))
    rev = paths.manifest_revision_dir("a/b", d)
    assert paths.parse_repository_link(rev + "/mediatype") is None
    assert paths.parse_repository_link(rev + "/.tmp-0123456789abcdef") is None
    assert paths.parse_repository_link("/repositories/a/_manifests/tags/v1/current/link") is None
    assert paths.parse_repository_link("/repositories/../x/_layers/sha256/ab/link") is None


# -- settings, the task, the CLI, the lock -------------------------------------------


def test_fsck_settings_parse_and_bad_values_name_the_variable() -> None:
    s = Settings.from_env(
        {
            "INGEST_FSCK_INTERVAL": "15m",
            "INGEST_FSCK_BUDGET": "2GiB",
            "INGEST_FSCK_BUDGET_BLOBS": "500",
            "INGEST_FSCK_REPAIR": "true",
        }
    )
    assert (s.fsck_interval, s.fsck_budget, s.fsck_budget_blobs, s.fsck_repair) == (
        900.0,
        2 << 30,
        500,
        True,
    )
    d = Settings()
    assert (d.fsck_interval, d.fsck_budget, d.fsck_budget_blobs, d.fsck_repair) == (
        600.0,
        1 << 30,
        10_000,
        False,
    )
    # One max-size blob (16 GiB) at 20 MiB/s, plus twice the base time.
    assert d.fsck_time_limit() == 2 * 60 + 820
    for var, value in (
        ("INGEST_FSCK_BUDGET", "0"),
        ("INGEST_FSCK_BUDGET", "lots"),
        ("INGEST_FSCK_BUDGET_BLOBS", "0"),
        ("INGEST_FSCK_REPAIR", "maybe"),
    ):
        with pytest.raises(ConfigError, match=var):
            Settings.from_env({var: value})


def test_beat_schedules_the_share_unless_the_interval_is_zero() -> None:
    from workers.app import create_celery

    on = create_celery(Settings(fsck_interval=120))
    assert on.conf.beat_schedule["fsck-share"] == {
        "task": "ingest.fsck",
        "schedule": 120.0,
        "options": {"expires": 120.0},  # a message no worker took in time is dropped
    }
    assert on.conf.task_routes["ingest.fsck"] == {"queue": "maintenance"}
    off = create_celery(Settings(fsck_interval=0))
    assert "fsck-share" not in off.conf.beat_schedule


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> fakeredis.FakeServer:
    server = fakeredis.FakeServer()
    monkeypatch.setattr(
        "redis.Redis.from_url", lambda url, **kw: fakeredis.FakeRedis(server=server)
    )
    return server


@pytest.fixture
def task_storage(tmp_path: Path) -> Iterator[FilesystemDriver]:
    with worker_settings(tmp_path / "root") as driver:
        yield driver


@pytest.mark.parametrize(
    "kwargs",
    [
        {"repair": "true"},
        {"repair": 1},
        {"budget": 0},
        {"budget": "1GiB"},
        {"budget": True},
        {"budget": 1 << 60},
        {"budget_blobs": -1},
        {"budget_blobs": 2.5},
        {"budget_blobs": 10**9},
    ],
)
def test_the_task_refuses_arguments_of_the_wrong_type_or_range(
    kwargs: dict[str, Any], task_storage: FilesystemDriver, fake_redis: fakeredis.FakeServer
) -> None:
    from workers import tasks

    push(task_storage, "lib/a", b"abc")
    res = tasks.fsck_share.apply(kwargs=kwargs)
    assert res.state == "FAILURE"
    assert isinstance(res.result, ArgumentInvalid)
    assert res.result.detail["argument"] in kwargs
    assert not (task_storage.root / "maintenance").exists()  # refused before any work


def test_the_task_runs_a_share_logs_findings_at_error_and_skips_when_locked(
    task_storage: FilesystemDriver,
    fake_redis: fakeredis.FakeServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from workers import tasks

    a = push(task_storage, "lib/a", b"a" * 100)
    b = push(task_storage, "lib/a", b"b" * 100)
    corrupt(task_storage, b, b"c" * 100)
    first = tasks.fsck_share.apply(kwargs={"budget_blobs": 1}).get()
    second = tasks.fsck_share.apply(kwargs={"budget_blobs": 1, "repair": True}).get()
    by_blob = {r["cursor"]: r for r in (first, second)}
    assert set(by_blob) == {a.split(":")[1], b.split(":")[1]}
    assert by_blob[a.split(":")[1]]["findings"] == []
    (finding,) = by_blob[b.split(":")[1]]["findings"]
    assert finding["kind"] == "blob-mismatch"
    assert finding["action"] == (
        "quarantined" if by_blob[b.split(":")[1]] is second else "reported"
    )
    assert second["pass_completed"] is True
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "blob-mismatch" in r.message]
    assert len(errors) == 1
    assert errors[0].fsck["expected"] == b  # type: ignore[attr-defined]
    with locks.exclusive("redis://x", "fsck", ttl=60):
        assert tasks.fsck_share.apply().get()["status"] == "skipped"


def test_the_lock_can_be_renewed_and_losing_it_aborts_the_run(
    driver: StorageDriver, fake_redis: fakeredis.FakeServer
) -> None:
    push(driver, "lib/a", os.urandom(100))
    with locks.exclusive("redis://x", "fsck", ttl=60) as renew:
        renew()
        fsck.run_fsck(driver, heartbeat=renew)
        fakeredis.FakeRedis(server=fake_redis).delete("ingest:v1:lock:fsck")  # expired
        with pytest.raises(TooManyRequests):
            fsck.run_fsck(driver, heartbeat=renew)


def test_throttled_calls_at_most_once_per_interval() -> None:
    now = {"t": 100.0}
    calls: list[float] = []
    beat = fsck.throttled(lambda: calls.append(now["t"]), 10, clock=lambda: now["t"])
    for t in (101, 105, 110, 111, 119, 121):
        now["t"] = t
        beat()
    assert calls == [110, 121]


def cli_run(
    tmp_path: Path, driver: FilesystemDriver, *args: str
) -> tuple[int, str, Callable[[], Any]]:
    from ingest.cli import Context, cli

    settings = Settings(storage_root=str(driver.root))
    obj = Context(settings, False)
    ing, _ = make_ingest(driver, settings)
    obj._ingest = ing
    result = CliRunner().invoke(cli, list(args), obj=obj)
    return result.exit_code, result.output, lambda: json.loads(result.output)


def test_the_cli_exits_0_when_clean_and_3_when_problems_were_found(
    tmp_path: Path, fs: FilesystemDriver, fake_redis: fakeredis.FakeServer
) -> None:
    good = push(fs, "lib/a", b"g" * 64)
    code, out, _ = cli_run(tmp_path, fs, "fsck")
    assert (code, out.startswith("checked 1 blob(s)"), "clean" in out) == (0, True, True)
    bad = push(fs, "lib/a", b"b" * 64)
    corrupt(fs, bad, b"x" * 64)
    code, out, _ = cli_run(tmp_path, fs, "fsck")
    assert code == 3
    assert f"blob-mismatch {blob_path(bad)} expected {bad} computed {sha256(b'x' * 64)}" in out
    code, out, doc = cli_run(tmp_path, fs, "--json", "fsck", "--repair")
    assert code == 3
    report = doc()
    assert report["findings_count"] == 1
    assert report["quarantined"] == [report["findings"][0]["quarantine"]]
    assert cli_run(tmp_path, fs, "fsck")[0] == 0
    assert links_naming(fs, good) != []
    with locks.exclusive("redis://x", "fsck", ttl=60):
        assert cli_run(tmp_path, fs, "fsck")[0] == 4  # another fsck runs: try later


def test_the_fsck_core_imports_no_celery_redis_or_click() -> None:
    from tests.unit.test_imports import _imported_forbidden

    assert _imported_forbidden("import ingest.fsck") == []
