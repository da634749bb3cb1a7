"""Online garbage collection: free blobs no manifest references, while pushes go on.

:func:`collect_garbage` marks every blob reachable from a manifest revision of any
repository (the manifest's own bytes, ``config``, ``layers``, an artifact's
``blobs``, an index's child manifests and a ``subject``), then sweeps: a blob that is
not marked, is older than the grace period and is not named by an upload in flight
is deleted together with every layer link (canonical and alias) that names it.
With ``delete_untagged`` it first removes manifest revisions that no tag reaches
(through index children, ``subject``, and the referrers of a reachable manifest) and
that are older than the grace period; the blob phase then finds their blobs unmarked.
Tags are never removed. The report (:class:`GcReport`) says what was freed.

There is no read-only window and no lock shared with pushes. The collector (one at a
time: the callers hold the cluster lock ``gc``) and the writers agree through a few
objects under ``/gc`` (:mod:`ingest.paths`) and the storage's ordering: every write
below is visible to every later read (a POSIX file system, or any store with read-
after-write consistency and an atomic rename; see "S3" below).

Clock
-----
Ages are measured on the storage's clock, not the collector's: the collector rewrites
``/gc/clock`` and takes its mtime as *E* (the epoch of the run). An object is *old*
if its mtime is before ``E - grace``. Every ``put_content`` gives a new mtime, so a
re-link (a commit that deduplicates, a mount) makes a link young again.

Who may reuse what is already stored (the *writers*)
----------------------------------------------------
Only three paths make an existing blob referenced without writing its bytes:

* a **commit** that finds the blob already stored (dedup) or just placed it:
  its *reference* is the upload's ``state.json`` (``finishing``/``verified``/``failed``,
  naming the digest), written before and kept until after the links;
* a **mount**: its reference is the new layer link;
* a **manifest PUT**: its reference is the new revision link (its manifest names the
  blobs, child manifests and subject).

Each writer, *after* its reference is visible and *before* it relies on the blob,
calls :func:`retain_blob` (or :func:`retain_revision` for a manifest revision):

  R1. if ``/gc/sweep`` is absent, return: no sweep is deciding;
  R2. delete the blob's tombstone; if that succeeded, return (the blob is kept);
  R3. while the blob's claim exists, wait (bounded); then the caller re-checks
      that the blob is present, and acts on its absence (a commit places its own
      bytes, a mount answers "not mounted", a manifest PUT is refused with
      ``MANIFEST_BLOB_UNKNOWN`` and removes the revision it wrote).

The sweep
---------
S1. Mark (read every revision and its manifest), list the unmarked old blobs, drop
    those an upload in flight names, walk the layer links: drop a blob with a young
    link, remember the old links of the others. These are the *candidates*.
S2. Write ``/gc/sweep``, then a tombstone per candidate.
S3. Rescan: the uploads in flight first, then every revision link the mark did not
    see (parsing its manifest), then every layer link that is new or changed, then
    each candidate's own stat. A candidate any of them names is *rescued*: its
    tombstone is deleted.
S4. For each remaining candidate: *claim* it by renaming its tombstone to its claim.
    If the tombstone is gone, a writer deleted it in R2: keep the blob. Else delete
    its links, then the blob, then the claim.
S5. Delete ``/gc/sweep``.

Why no writer loses a blob it references
----------------------------------------
Take a writer W that relies on blob B, and a sweep whose candidates include B.

* W's R1 finds no ``/gc/sweep``: S2 wrote it later, so S3 came after W's reference
  became visible, and S3 sees it (a new revision path, a new or rewritten layer
  link, an upload in flight; or, for a commit that already finished, its links,
  which are written before its ``result.json``: that is why S3 reads the uploads
  before the links). B is rescued.
* W's R2 deletes the tombstone: S4's rename then fails, and B is kept. This holds
  whatever the order of S3 and W's reference.
* R2 finds no tombstone while the sweep flag exists: either the tombstone was never
  written (then S3 comes after the reference: rescued, as in the first case), or
  it was renamed by S4: W waits for the claim to disappear, then sees B absent and
  acts on it. W has not answered its client yet; the commit still has its verified
  staged bytes to place, and the manifest PUT withdraws what it wrote.

And the two orders of each race the issue names:

(a) A blob uploaded or linked during the mark: it is young (its placement renames the
    staged file, and its links are written after, both after ``E - grace``), or, if
    the staged file is old, its upload is in flight until its links exist. Either
    S1 skips it, or S3 rescues it. A re-link of an old blob (dedup, mount) is a
    writer as above.
(b) A manifest pushed during the sweep that references a blob the mark saw as
    unreferenced (a client HEADed an old garbage blob and referenced it): if the
    revision link is visible before S3, S3 parses it and rescues the blob; if
    after, the PUT's :func:`retain_blob` runs after S2 and either deletes the
    tombstone (kept) or finds the claim (the PUT fails before it answers; the
    client uploads the blob again). A PUT before S1 is simply marked.

The grace period is what protects a blob between its upload and the manifest that
will reference it (a client's push is not atomic). Safety against the races above
does not depend on it: it holds with a grace of zero.

Untagged revisions (``delete_untagged``) follow the same protocol with per-revision
tombstones and claims; the manifest PUT that rewrites or references a revision calls
:func:`retain_revision`, and rewrites its own revision if it was deleted meanwhile
(it holds the bytes).

Crash safety
------------
Links go before the blob, so a crash never leaves a link naming a missing blob
(nothing fsck reports); a blob without links is garbage the next run finds again.
A run starts by deleting every tombstone and claim a dead run left (the lock says
no other run is alive): keeping a blob is always safe. Until then a stale claim
makes a writer that reuses exactly that blob wait and fail with ``UNAVAILABLE``
(503, retryable); a stale tombstone or sweep flag costs writers one delete each.

S3
--
The claim (S4) and R2 race on the tombstone: exactly one of a rename and a delete of
the same object may succeed. A file system gives that; an object store whose
``move`` is copy + delete does not, and needs a conditional write there.

This module imports no Celery, Redis or click: the callers bring the lock.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Set
from dataclasses import dataclass, field
from typing import Any

from ingest import paths
from ingest.digests import CANONICAL_ALGORITHM, Digest, parse_digest
from ingest.errors import IngestError, StorageUnavailable
from ingest.storage.base import PathNotFound, StorageDriver, is_temporary
from ingest.uploads import Staging, UploadState

__all__ = [
    "CLAIM_WAIT",
    "GcReport",
    "collect_garbage",
    "retain_blob",
    "retain_revision",
]

#: Longest a writer waits for a claimed blob's deletion to end (a claim covers a few
#: deletes; only a collector that died mid-claim makes it this long).
CLAIM_WAIT = 30.0
_POLL = 0.02
#: Digests of freed blobs listed in the report (the counts are complete).
REPORT_LIMIT = 100

#: ``on_step(name)``: called after each step of a sweep (a seam for tests that inject
#: races). Names: ``marked``, ``flagged``, ``tombstoned``, ``rescanned``, ``claimed``
#: (per blob or revision), ``unlinked`` (per blob), ``deleted`` (per blob or revision).
StepHook = Callable[[str], None]
Heartbeat = Callable[[], None]

_IN_FLIGHT = (UploadState.FINISHING, UploadState.VERIFIED, UploadState.FAILED)


def _nothing(*_: object) -> None:
    return None


# -- the writers' side ------------------------------------------------------------------


def retain_blob(
    driver: StorageDriver,
    digest: Digest,
    *,
    wait: float = CLAIM_WAIT,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Keep blob ``digest`` (canonical) from a sweep in progress, or wait until the
    sweep has deleted it. Call it after your reference to the blob is visible and
    before you rely on the blob; then check that the blob is present (R1-R3 of the
    module docstring). StorageUnavailable if a claim outlives ``wait``."""
    _retain(
        driver, paths.gc_blob_tombstone_path(digest), paths.gc_blob_claim_path(digest), wait, sleep
    )


def retain_revision(
    driver: StorageDriver,
    repository: str,
    digest: Digest,
    *,
    wait: float = CLAIM_WAIT,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """:func:`retain_blob` for manifest revision ``digest`` of ``repository``."""
    _retain(
        driver,
        paths.gc_revision_tombstone_path(repository, digest),
        paths.gc_revision_claim_path(repository, digest),
        wait,
        sleep,
    )


def _retain(
    driver: StorageDriver,
    tombstone: str,
    claim: str,
    wait: float,
    sleep: Callable[[float], None],
) -> None:
    if not _exists(driver, paths.gc_sweep_path()):
        return  # R1
    try:
        driver.delete(tombstone)  # R2: the collector's claim (a rename) now fails
        return
    except PathNotFound:
        pass
    deadline = time.monotonic() + wait
    while _exists(driver, claim):  # R3: being deleted; wait for the outcome
        if time.monotonic() >= deadline:
            raise StorageUnavailable(
                "garbage collection is deleting a blob this request reuses",
                {"claim": claim},
            )
        sleep(_POLL)


# -- the report ------------------------------------------------------------------------


@dataclass
class GcReport:
    """What one run found and freed (with ``dry_run``: would free)."""

    dry_run: bool
    delete_untagged: bool
    grace: float
    started_at: float
    epoch: float = 0.0  # the storage's clock at the start; old = mtime < epoch - grace
    duration: float = 0.0
    repositories: int = 0
    manifests: int = 0  # revisions read by the mark
    blobs_scanned: int = 0
    blobs_marked: int = 0  # stored blobs the mark reached
    candidates: int = 0  # unmarked old blobs, before the rescan
    rescued: int = 0  # candidates a concurrent push referenced
    blobs_deleted: int = 0
    bytes_freed: int = 0
    links_deleted: int = 0
    manifests_deleted: int = 0  # untagged revisions removed (delete_untagged)
    recovered: int = 0  # markers a dead run left, cleared
    unreadable: list[str] = field(default_factory=list)  # manifests the mark could not read
    freed: list[str] = field(default_factory=list)  # first REPORT_LIMIT digests

    @property
    def swept(self) -> bool:
        """False when the sweep was skipped because a manifest could not be read."""
        return not self.unreadable

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "delete_untagged": self.delete_untagged,
            "grace": self.grace,
            "started_at": self.started_at,
            "epoch": self.epoch,
            "duration": self.duration,
            "repositories": self.repositories,
            "manifests": self.manifests,
            "blobs_scanned": self.blobs_scanned,
            "blobs_marked": self.blobs_marked,
            "candidates": self.candidates,
            "rescued": self.rescued,
            "blobs_deleted": self.blobs_deleted,
            "bytes_freed": self.bytes_freed,
            "links_deleted": self.links_deleted,
            "manifests_deleted": self.manifests_deleted,
            "recovered": self.recovered,
            "swept": self.swept,
            "unreadable": self.unreadable,
            "freed": self.freed,
        }

    def summary_lines(self) -> list[str]:
        verb = "would free" if self.dry_run else "freed"
        lines = [
            f"{verb} {self.blobs_deleted} blob(s), {self.bytes_freed} bytes, "
            f"{self.links_deleted} link(s), {self.manifests_deleted} untagged manifest(s)",
            f"scanned {self.blobs_scanned} blob(s) in {self.repositories} repositor(ies), "
            f"{self.manifests} manifest(s); {self.blobs_marked} referenced, "
            f"{self.rescued} rescued from a concurrent push",
        ]
        if self.unreadable:
            lines.append(
                f"sweep skipped: {len(self.unreadable)} manifest(s) could not be read "
                "(run `ingest fsck`): " + ", ".join(self.unreadable[:5])
            )
        return lines


# -- reading the repositories ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Refs:
    """What one manifest references: blobs (config, layers, artifact blobs),
    manifests (index children) and its subject, as written in it."""

    blobs: tuple[Digest, ...]
    manifests: tuple[Digest, ...]
    subject: Digest | None


class _Unreadable(Exception):
    pass


def _digests(value: object) -> Iterator[Digest]:
    """The digests of a descriptor or a list of them; anything else is skipped (the
    manifest was validated when it was pushed)."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("digest"), str):
            with contextlib.suppress(IngestError):
                yield parse_digest(item["digest"])


def _parse_refs(body: bytes) -> _Refs:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _Unreadable("not JSON") from None
    if not isinstance(doc, dict):
        raise _Unreadable("not a JSON object")
    blobs = [*_digests(doc.get("config")), *_digests(doc.get("layers", []))]
    blobs += _digests(doc.get("blobs", []))  # artifact manifests (OCI 1.1 rc)
    subject = next(_digests(doc.get("subject")), None)
    return _Refs(tuple(blobs), tuple(_digests(doc.get("manifests", []))), subject)


def _link_target(raw: bytes) -> Digest | None:
    try:
        d = parse_digest(raw.decode("ascii").strip())
    except (UnicodeDecodeError, IngestError):
        return None
    return d if d.algorithm == CANONICAL_ALGORITHM else None


def _exists(driver: StorageDriver, path: str) -> bool:
    try:
        driver.stat(path)
    except PathNotFound:
        return False
    return True


@dataclass
class _Revision:
    path: str
    digest: Digest  # as linked (may be an alias)
    target: Digest  # the canonical manifest blob
    mtime: float


@dataclass
class _Repo:
    revisions: dict[str, _Revision] = field(default_factory=dict)  # str(digest) -> revision
    tags: set[Digest] = field(default_factory=set)


def _walk_repositories(driver: StorageDriver, beat: Heartbeat) -> dict[str, _Repo]:
    """Every repository's revisions and tag targets (no layer links)."""
    repos: dict[str, _Repo] = {}
    for fi in driver.walk(paths.repositories_root()):
        beat()
        link = paths.parse_repository_link(fi.path)
        if link is not None:
            repo = repos.setdefault(link.repository, _Repo())
            if link.kind != "manifest":
                continue
            with contextlib.suppress(PathNotFound):
                target = _link_target(driver.get_content(fi.path))
                if target is not None:
                    repo.revisions[str(link.digest)] = _Revision(
                        fi.path, link.digest, target, fi.mod_time
                    )
            continue
        tag = paths.parse_tag_link(fi.path)
        if tag is not None:
            repo = repos.setdefault(tag.repository, _Repo())
            with contextlib.suppress(PathNotFound):
                target = _link_target(driver.get_content(fi.path))
                if target is not None:
                    repo.tags.add(target)
    return repos


class _Manifests:
    """Manifest bodies read once per canonical digest and reduced to their references."""

    def __init__(self, driver: StorageDriver) -> None:
        self.driver = driver
        self._refs: dict[Digest, _Refs | None] = {}
        self.unreadable: list[str] = []

    def refs(self, target: Digest) -> _Refs | None:
        """None if the manifest's bytes are gone (fsck quarantined them: it can be
        pushed again, but references nothing now)."""
        if target not in self._refs:
            try:
                body = self.driver.get_content(paths.blob_data_path(target))
                self._refs[target] = _parse_refs(body)
            except PathNotFound:
                self._refs[target] = None
            except _Unreadable:
                self.unreadable.append(str(target))
                self._refs[target] = None
        return self._refs[target]


def _resolve_manifest(repo: _Repo, digest: Digest) -> Digest | None:
    rev = repo.revisions.get(str(digest))
    if rev is not None:
        return rev.target
    return digest if digest.algorithm == CANONICAL_ALGORITHM else None


def _resolve_blob(driver: StorageDriver, repository: str, digest: Digest) -> Digest | None:
    if digest.algorithm == CANONICAL_ALGORITHM:
        return digest
    try:  # an alias (sha512, tarsum): its layer link in the repository names the blob
        return _link_target(driver.get_content(paths.layer_link_path(repository, digest)))
    except (PathNotFound, ValueError):
        return None


def _mark_revision(
    driver: StorageDriver,
    manifests: _Manifests,
    repository: str,
    repo: _Repo,
    target: Digest,
    marked: set[str],
) -> None:
    """Mark manifest ``target`` of ``repository`` and everything it references."""
    marked.add(target.encoded)
    refs = manifests.refs(target)
    if refs is None:
        return
    for d in refs.blobs:
        canonical = _resolve_blob(driver, repository, d)
        if canonical is not None:
            marked.add(canonical.encoded)
    for d in (*refs.manifests, *((refs.subject,) if refs.subject else ())):
        canonical = _resolve_manifest(repo, d)
        if canonical is not None:
            marked.add(canonical.encoded)


def _in_flight(driver: StorageDriver) -> set[str]:
    """Blobs (sha256 hex) that uploads not yet committed are verifying, placing or may
    retry: a commit relies on them without a link yet."""
    staging = Staging(driver)
    out: set[str] = set()
    for upload_id in staging.list_ids():
        if is_temporary(upload_id):
            continue
        try:
            paths.validate_upload_id(upload_id)
            record = staging.state(upload_id)
            if record.state not in _IN_FLIGHT or staging.result(upload_id) is not None:
                continue
        except (IngestError, ValueError, KeyError, TypeError):
            continue
        if record.verified is not None:
            out.add(record.verified.canonical.encoded)
        if record.claimed_digest:
            with contextlib.suppress(IngestError):
                d = parse_digest(record.claimed_digest)
                if d.algorithm == CANONICAL_ALGORITHM:
                    out.add(d.encoded)
    return out


def _layer_links(
    driver: StorageDriver, targets: set[str], beat: Heartbeat
) -> dict[str, dict[str, float]]:
    """For each target blob (hex): its layer links in every repository, path → mtime."""
    out: dict[str, dict[str, float]] = {}
    for fi in driver.walk(paths.repositories_root()):
        beat()
        link = paths.parse_repository_link(fi.path)
        if link is None or link.kind != "layer":
            continue
        if link.digest.algorithm == CANONICAL_ALGORITHM:
            hexd: str | None = link.digest.encoded
        else:
            try:
                target = _link_target(driver.get_content(fi.path))
            except PathNotFound:
                continue
            hexd = target.encoded if target is not None else None
        if hexd in targets:
            out.setdefault(hexd, {})[fi.path] = fi.mod_time
    return out


def _stored_blobs(driver: StorageDriver, beat: Heartbeat) -> Iterator[str]:
    """The hex digests of the stored canonical blobs, one shard at a time."""
    try:
        shards = driver.list(paths.blobs_root(CANONICAL_ALGORITHM))
    except PathNotFound:
        return
    for shard in shards:
        beat()
        try:
            names = driver.list(shard)
        except PathNotFound:
            continue
        for path in names:
            name = paths.entry_name(path)
            if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
                yield name


# -- the collector ----------------------------------------------------------------------


class _Collector:
    def __init__(
        self,
        driver: StorageDriver,
        report: GcReport,
        cutoff: float,
        beat: Heartbeat,
        on_step: StepHook,
    ) -> None:
        self.driver = driver
        self.report = report
        self.cutoff = cutoff
        self.beat = beat
        self.step = on_step
        self.flagged = False

    def flag(self) -> None:
        if not self.flagged:
            self.driver.put_content(paths.gc_sweep_path(), b"sweeping\n", durable=False)
            self.flagged = True
            self.step("flagged")

    def unflag(self) -> None:
        if self.flagged:
            with contextlib.suppress(PathNotFound):
                self.driver.delete(paths.gc_sweep_path())
            self.flagged = False

    def _claim(self, tombstone: str, claim: str) -> bool:
        """S4's rename; False if a writer deleted the tombstone (keep the object)."""
        try:
            self.driver.move(tombstone, claim)
        except PathNotFound:
            return False
        return True

    # -- untagged revisions ---------------------------------------------------------

    def _live(
        self, repo: _Repo, manifests: _Manifests, extra_roots: Iterable[Digest]
    ) -> set[Digest]:
        """Manifests a tag reaches (through children, subject, and the referrers of a
        live manifest), plus young revisions and ``extra_roots`` with what they reach."""
        live: set[Digest] = set(repo.tags) | set(extra_roots)
        live |= {r.target for r in repo.revisions.values() if r.mtime >= self.cutoff}
        subjects: dict[Digest, list[Digest]] = {}
        for target in {r.target for r in repo.revisions.values()}:
            refs = manifests.refs(target)
            if refs is not None and refs.subject is not None:
                s = _resolve_manifest(repo, refs.subject)
                if s is not None:
                    subjects.setdefault(s, []).append(target)
        todo = list(live)
        while todo:
            m = todo.pop()
            reached: list[Digest] = list(subjects.get(m, []))
            refs = manifests.refs(m)
            if refs is not None:
                for d in (*refs.manifests, *((refs.subject,) if refs.subject else ())):
                    c = _resolve_manifest(repo, d)
                    if c is not None:
                        reached.append(c)
            for c in reached:
                if c not in live:
                    live.add(c)
                    todo.append(c)
        return live

    def sweep_revisions(self, dry_run: bool) -> set[str]:
        """Remove the untagged revisions nothing live reaches; with ``dry_run``, the
        paths of those it would remove (the blob phase then treats them as gone)."""
        manifests = _Manifests(self.driver)
        repos = _walk_repositories(self.driver, self.beat)
        doomed: dict[tuple[str, str], _Revision] = {}
        for name, repo in repos.items():
            live = self._live(repo, manifests, ())
            for key, rev in repo.revisions.items():
                if rev.target not in live:
                    doomed[(name, key)] = rev
        if manifests.unreadable:
            self.report.unreadable += manifests.unreadable
            return set()
        if dry_run:
            self.report.manifests_deleted = len({(n, r.target) for (n, _), r in doomed.items()})
            return {r.path for r in doomed.values()}
        if not doomed:
            return set()
        self.flag()
        for (name, _), rev in doomed.items():
            self.driver.put_content(
                paths.gc_revision_tombstone_path(name, rev.digest), b"", durable=False
            )
        self.step("tombstoned")
        # Rescan: what is tagged now, and every revision that is new or rewritten,
        # counts as a root.
        manifests = _Manifests(self.driver)
        now = _walk_repositories(self.driver, self.beat)
        keep: set[tuple[str, str]] = set()
        for name in {n for n, _ in doomed}:
            repo = now.get(name, _Repo())
            before = repos.get(name, _Repo())
            changed = [
                r.target
                for k, r in repo.revisions.items()
                if k not in before.revisions or before.revisions[k].mtime != r.mtime
            ]
            live = self._live(repo, manifests, changed)
            for (n, key), rev in doomed.items():
                if n == name and (rev.target in live or manifests.unreadable):
                    keep.add((n, key))
        self.step("rescanned")
        deleted: set[tuple[str, Digest]] = set()
        for (name, key), rev in doomed.items():
            self.beat()
            tombstone = paths.gc_revision_tombstone_path(name, rev.digest)
            if (name, key) in keep:
                self.report.rescued += 1
                with contextlib.suppress(PathNotFound):
                    self.driver.delete(tombstone)
                continue
            claim = paths.gc_revision_claim_path(name, rev.digest)
            if not self._claim(tombstone, claim):
                self.report.rescued += 1
                continue
            self.step("claimed")
            refs = manifests.refs(rev.target)
            if refs is not None and refs.subject is not None:
                with contextlib.suppress(PathNotFound, ValueError):
                    self.driver.delete(
                        paths.manifest_referrer_link_path(name, refs.subject, rev.target)
                    )
            with contextlib.suppress(PathNotFound):
                self.driver.delete(paths.manifest_revision_dir(name, rev.digest))
            deleted.add((name, rev.target))
            self.step("deleted")
            with contextlib.suppress(PathNotFound):
                self.driver.delete(claim)
        self.report.manifests_deleted += len(deleted)
        return set()

    # -- blobs ----------------------------------------------------------------------

    def sweep_blobs(self, dry_run: bool, gone: Set[str] = frozenset()) -> None:
        """``gone``: revision paths a dry run of the revision phase would remove."""
        driver, report = self.driver, self.report
        # S1: mark.
        manifests = _Manifests(driver)
        repos = _walk_repositories(driver, self.beat)
        report.repositories = len(repos)
        marked: set[str] = set()
        seen: set[str] = set()
        for name, repo in repos.items():
            for rev in repo.revisions.values():
                self.beat()
                seen.add(rev.path)
                if rev.path in gone:
                    continue
                report.manifests += 1
                _mark_revision(driver, manifests, name, repo, rev.target, marked)
        self.step("marked")
        if manifests.unreadable:
            report.unreadable += manifests.unreadable
            return
        candidates: dict[str, tuple[int, float]] = {}
        for hexd in _stored_blobs(driver, self.beat):
            report.blobs_scanned += 1
            if hexd in marked:
                report.blobs_marked += 1
                continue
            try:
                fi = driver.stat(paths.blob_data_path(Digest(CANONICAL_ALGORITHM, hexd)))
            except PathNotFound:
                continue  # an emptied directory
            if fi.mod_time < self.cutoff:
                candidates[hexd] = (fi.size, fi.mod_time)
        for hexd in _in_flight(driver):
            candidates.pop(hexd, None)
        links = _layer_links(driver, set(candidates), self.beat)
        for hexd, found in links.items():
            if any(mtime >= self.cutoff for mtime in found.values()):
                candidates.pop(hexd, None)
        report.candidates = len(candidates)
        if dry_run:
            for hexd, (size, _) in sorted(candidates.items()):
                self._count_freed(hexd, size, len(links.get(hexd, {})))
            return
        if not candidates:
            return
        # S2: the flag, then the tombstones.
        self.flag()
        for hexd in candidates:
            self.beat()
            driver.put_content(
                paths.gc_blob_tombstone_path(Digest(CANONICAL_ALGORITHM, hexd)), b"", durable=False
            )
        self.step("tombstoned")
        # S3: rescan. Uploads first: a commit's links are visible before its result.
        rescued: set[str] = set()
        rescued |= _in_flight(driver) & candidates.keys()
        names = set(candidates)
        for name, repo in _walk_repositories(driver, self.beat).items():
            for rev in repo.revisions.values():
                if rev.path in seen:
                    continue  # its references were marked
                self.beat()
                hit: set[str] = set()
                _mark_revision(driver, manifests, name, repo, rev.target, hit)
                rescued |= hit & names
        now = _layer_links(driver, names, self.beat)
        for hexd, found in now.items():
            before = links.get(hexd, {})
            if any(before.get(path) != mtime for path, mtime in found.items()):
                rescued.add(hexd)
        for hexd, (size, mtime) in candidates.items():
            try:
                fi = driver.stat(paths.blob_data_path(Digest(CANONICAL_ALGORITHM, hexd)))
            except PathNotFound:
                rescued.add(hexd)  # gone already: nothing to do
                continue
            if (fi.size, fi.mod_time) != (size, mtime):
                rescued.add(hexd)  # replaced by a commit
        if manifests.unreadable:
            rescued |= names
        self.step("rescanned")
        # S4: claim and delete, one blob at a time.
        for hexd in sorted(candidates):
            self.beat()
            digest = Digest(CANONICAL_ALGORITHM, hexd)
            tombstone = paths.gc_blob_tombstone_path(digest)
            if hexd in rescued:
                report.rescued += 1
                with contextlib.suppress(PathNotFound):
                    driver.delete(tombstone)
                continue
            claim = paths.gc_blob_claim_path(digest)
            if not self._claim(tombstone, claim):
                report.rescued += 1  # a writer's retain_blob got there first
                continue
            self.step("claimed")
            removed = 0
            for path in now.get(hexd, {}):
                link = paths.parse_repository_link(path)
                if link is None:
                    continue
                with contextlib.suppress(PathNotFound):
                    if _link_target(driver.get_content(path)) != digest:
                        continue  # rewritten to name another blob
                    driver.delete(link.dir)
                    removed += 1
            self.step("unlinked")
            size = candidates[hexd][0]
            with contextlib.suppress(PathNotFound):
                driver.delete(paths.blob_dir(digest))
            self._count_freed(hexd, size, removed)
            self.step("deleted")
            with contextlib.suppress(PathNotFound):
                driver.delete(claim)

    def _count_freed(self, hexd: str, size: int, links: int) -> None:
        self.report.blobs_deleted += 1
        self.report.bytes_freed += size
        self.report.links_deleted += links
        if len(self.report.freed) < REPORT_LIMIT:
            self.report.freed.append(f"{CANONICAL_ALGORITHM}:{hexd}")


def _recover(driver: StorageDriver) -> int:
    """Clear what a dead run left: keeping a blob is always safe (module docstring)."""
    cleared = 0
    for root in (paths.gc_tombstones_root(), paths.gc_claims_root()):
        cleared += sum(1 for _ in driver.walk(root))
        with contextlib.suppress(PathNotFound):
            driver.delete(root)
    with contextlib.suppress(PathNotFound):
        driver.delete(paths.gc_sweep_path())
    return cleared


def storage_clock(driver: StorageDriver) -> float:
    """The storage's "now": the mtime of an object written for the purpose."""
    driver.put_content(paths.gc_clock_path(), uuid.uuid4().hex.encode(), durable=False)
    return driver.stat(paths.gc_clock_path()).mod_time


def collect_garbage(
    driver: StorageDriver,
    *,
    grace: float,
    dry_run: bool = False,
    delete_untagged: bool = False,
    heartbeat: Heartbeat | None = None,
    on_step: StepHook | None = None,
    epoch: float | None = None,
) -> GcReport:
    """Mark and sweep (see the module docstring); safe while pushes continue.

    ``grace``: seconds an unreferenced blob (or untagged revision) is kept after it was
    last written or linked. ``dry_run``: report what would be freed, change nothing.
    ``heartbeat`` is called often (to renew the caller's lock; it may raise to stop
    the run, which is safe at any point). ``epoch`` replaces the storage's clock (tests).
    Callers hold the cluster-wide ``gc`` lock: one run at a time."""
    if not grace >= 0:  # also refuses NaN
        raise ValueError(f"grace must be a number of seconds >= 0, not {grace!r}")
    started = time.monotonic()
    report = GcReport(
        dry_run=dry_run, delete_untagged=delete_untagged, grace=grace, started_at=time.time()
    )
    beat = heartbeat or _nothing
    if not dry_run:
        report.recovered = _recover(driver)
    report.epoch = storage_clock(driver) if epoch is None else epoch
    collector = _Collector(driver, report, report.epoch - grace, beat, on_step or _nothing)
    try:
        gone = collector.sweep_revisions(dry_run) if delete_untagged else set()
        if report.swept:
            collector.sweep_blobs(dry_run, gone)
    finally:
        collector.unflag()
    report.duration = round(time.monotonic() - started, 6)
    return report
