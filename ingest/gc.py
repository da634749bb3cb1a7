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
below is visible to every later read (a POSIX file system; S3, which is strongly
consistent since 2020), and ``put_if_absent`` is an exclusive create (see "The one
primitive" below).

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

  R1. read ``/gc/sweep``; if it is absent, return: no sweep is deciding;
  R2. create the blob's *verdict* ``/gc/verdicts/blobs/<hex>`` holding "retained"
      (``put_if_absent``); if this call created it, return (the blob is kept);
  R3. else read the verdict that stands. "retained" (another writer's): return.
      "claimed" (the collector's): wait (bounded) until the verdict is gone (the
      claim's last step); then the caller re-checks that the blob is present, and
      acts on its absence (a commit places its own bytes, a mount answers "not
      mounted", a manifest PUT is refused with ``MANIFEST_BLOB_UNKNOWN`` and removes
      the revision it wrote).

The sweep
---------
S1. Mark (read every revision and its manifest), list the unmarked old blobs, drop
    those an upload in flight names, walk the layer links: drop a blob with a young
    link, remember the old links of the others. These are the *candidates*.
S2. Write ``/gc/sweep`` (holding the run's id).
S3. Rescan: the uploads in flight first, then every revision link the mark did not
    see (parsing its manifest), then every layer link that is new or changed, then
    each candidate's own stat. A candidate any of them names is *rescued*.
S4. For each remaining candidate: *claim* it by creating its verdict holding "claimed"
    (``put_if_absent``). If a verdict was there, a writer got there first in R2: keep
    the blob. Else delete its links, then the blob, then the verdict.
S5. Delete ``/gc/sweep``, then the verdicts writers left.

The one primitive: ``put_if_absent``
------------------------------------
R2 and S4 race to create the same object, and of racing creators exactly one
succeeds (the driver contract): ``link(2)`` of a complete temporary file on a file
system, a check under a lock in memory, and ``PutObject`` with ``If-None-Match: *``
on an object store, which the server decides. (Steps S1-S5 are not the store.) No
rename, so nothing depends on ``move`` being atomic: the S3 driver's ``move`` is a
copy and a delete, and an earlier version of this protocol (a rename of a tombstone
racing its deletion) let both sides "win" there.
The loser reads the winner's verdict and acts on it. A verdict holds a token unique
to its writer, so a side whose create was retried after a lost response (the driver
then answers False) recognises its own verdict when it reads it back.

Why no writer loses a blob it references
----------------------------------------
Take a writer W that relies on blob B, and a sweep whose candidates include B.

* W's R1 finds no ``/gc/sweep``: S2 wrote it later, so S3 came after W's reference
  became visible, and S3 sees it (a new revision path, a new or rewritten layer
  link, an upload in flight; or, for a commit that already finished, its links,
  which are written before its ``result.json``: that is why S3 reads the uploads
  before the links). B is rescued: S4 never touches it.
* W's R1 finds the flag. Then W's R2 and S4's claim of B (if B is not rescued) both
  try to create B's verdict, and exactly one creates it:

  - W first: the claim fails, S4 reads "retained" and keeps B. This holds whatever
    the order of S3 and W's reference.
  - S4 first: W's R2 fails and reads "claimed" (or finds the verdict gone, when the
    deletion already ended: W then decides again, wins "retained" over a blob that
    is gone, and the caller sees the absence). W waits until the verdict is gone,
    i.e. S4's deletion is over, then sees B absent and acts on it. W has
    not answered its client yet; the commit still has its verified staged bytes to
    place, and the manifest PUT withdraws what it wrote.
  - B rescued: no claim; W's verdict is harmless.

  Both orders of each race are therefore covered, on any driver that meets the
  contract: the outcome is decided by which create the store serialised first.

And the two orders of each race the issue names:

(a) A blob uploaded or linked during the mark: it is young (its placement renames the
    staged file, and its links are written after, both after ``E - grace``), or, if
    the staged file is old, its upload is in flight until its links exist. Either
    S1 skips it, or S3 rescues it. A re-link of an old blob (dedup, mount) is a
    writer as above.
(b) A manifest pushed during the sweep that references a blob the mark saw as
    unreferenced (a client HEADed an old garbage blob and referenced it): if the
    revision link is visible before S3, S3 parses it and rescues the blob; if
    after, the PUT's :func:`retain_blob` runs after S2 and either creates the
    verdict first (kept) or finds the claim (the PUT fails before it answers; the
    client uploads the blob again). A PUT before S1 is simply marked.

The grace period is what protects a blob between its upload and the manifest that
will reference it (a client's push is not atomic). Safety against the races above
does not depend on it: it holds with a grace of zero.

Untagged revisions (``delete_untagged``) follow the same protocol with per-revision
verdicts; the manifest PUT that rewrites or references a revision calls
:func:`retain_revision`, and rewrites its own revision if it was deleted meanwhile
(it holds the bytes).

Crash safety
------------
Links go before the blob, so a crash never leaves a link naming a missing blob
(nothing fsck reports); a blob without links is garbage the next run finds again.
A run starts by deleting every verdict and the flag a dead run left (the lock says
no other run is alive): keeping a blob is always safe. Until then a dead run's flag
costs each writer one conditional create, and its one "claimed" verdict (the blob
it was deleting when it died) makes a writer that reuses exactly that blob wait at
most :data:`CLAIM_WAIT` and fail with ``UNAVAILABLE`` (503, retryable); a retry
after the next run started succeeds. (The writer cannot go on earlier: only the lock
knows that the run is dead, and a live claim may still be deleting.) A run that
stops on an error (or because its heartbeat raised) deletes its flag, so later
writers skip R1 at once, but leaves its verdicts for the next run to clear, for the
same reason. A verdict a writer creates after S5 (it read the flag just before)
keeps its blob for one more run at most.

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
_RETAINED = b"retained"
_CLAIMED = b"claimed"
#: Digests of freed blobs listed in the report (the counts are complete).
REPORT_LIMIT = 100

#: ``on_step(name)``: called after each step of a sweep (a seam for tests that inject
#: races). Names: ``marked``, ``flagged``, ``rescanned``, ``claimed``
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
    _retain(driver, paths.gc_blob_verdict_path(digest), wait, sleep)


def retain_revision(
    driver: StorageDriver,
    repository: str,
    digest: Digest,
    *,
    wait: float = CLAIM_WAIT,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """:func:`retain_blob` for manifest revision ``digest`` of ``repository``."""
    _retain(driver, paths.gc_revision_verdict_path(repository, digest), wait, sleep)


def _verdict(kind: bytes, run: str) -> bytes:
    """A verdict's content: its kind, the run it belongs to, and a token unique to
    its writer (so the writer recognises its own after a retried create)."""
    return b"%s %s %s\n" % (kind, run.encode("ascii"), uuid.uuid4().hex.encode("ascii"))


def _run_of(flag: bytes) -> str:
    parts = flag.split()
    run = parts[1].decode("ascii", "replace") if len(parts) > 1 else ""
    return run if run.isalnum() else "unknown"


def _retain(
    driver: StorageDriver,
    verdict: str,
    wait: float,
    sleep: Callable[[float], None],
) -> None:
    """R1-R3 of the module docstring, for the object ``verdict`` decides about."""
    try:
        flag = driver.get_content(paths.gc_sweep_path())
    except PathNotFound:
        return  # R1: no sweep is deciding
    mine = _verdict(_RETAINED, _run_of(flag))
    deadline = time.monotonic() + wait
    pause = _POLL
    claimed = False
    while True:
        if not claimed and driver.put_if_absent(verdict, mine, durable=False):
            return  # R2: the collector's claim of this object now fails
        try:
            standing = driver.get_content(verdict)
        except PathNotFound:
            if claimed:
                return  # R3: the claimed deletion is over; the caller sees the absence
            continue  # a claim ended between our create and our read: decide again
        if not standing.startswith(_CLAIMED):
            return  # R3: retained (by another writer, or by us after a lost response)
        # Being deleted: wait for the verdict to go, the claim's last step (not for the
        # object to go: the claim may still be deleting around it).
        claimed = True
        if time.monotonic() >= deadline:
            raise StorageUnavailable(
                "garbage collection is deleting a blob this request reuses",
                {"verdict": verdict},
            )
        sleep(pause)
        pause = min(pause * 2, 0.25)


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
        self.run = uuid.uuid4().hex

    def flag(self) -> None:
        if not self.flagged:
            self.driver.put_content(
                paths.gc_sweep_path(), f"sweeping {self.run}\n".encode(), durable=False
            )
            self.flagged = True
            self.step("flagged")

    def unflag(self, *, clear: bool) -> None:
        """S5: the flag first (no writer records a verdict after it), then, with
        ``clear``, the verdicts. A run that stops early keeps them: a claim it left
        may have deleted links of a blob still present, and a writer waiting on it
        must not take the blob for kept (it waits, then answers UNAVAILABLE; the next
        run clears the verdicts)."""
        if self.flagged:
            with contextlib.suppress(PathNotFound):
                self.driver.delete(paths.gc_sweep_path())
            self.flagged = False
            if clear:
                _clear_verdicts(self.driver)

    def _claim(self, verdict: str) -> bool:
        """S4: create the verdict "claimed"; False if a writer's verdict stands (keep
        the object). After it, delete the object, then the verdict."""
        mine = _verdict(_CLAIMED, self.run)
        if self.driver.put_if_absent(verdict, mine, durable=False):
            return True
        try:
            return self.driver.get_content(verdict) == mine  # ours, after a lost response
        except PathNotFound:
            return False  # keeping is always safe

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
            if (name, key) in keep:
                self.report.rescued += 1
                continue
            verdict = paths.gc_revision_verdict_path(name, rev.digest)
            if not self._claim(verdict):
                self.report.rescued += 1  # a writer's retain_revision got there first
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
                self.driver.delete(verdict)
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
        # S2: the flag.
        self.flag()
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
            if hexd in rescued:
                report.rescued += 1
                continue
            verdict = paths.gc_blob_verdict_path(digest)
            if not self._claim(verdict):
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
                driver.delete(verdict)

    def _count_freed(self, hexd: str, size: int, links: int) -> None:
        self.report.blobs_deleted += 1
        self.report.bytes_freed += size
        self.report.links_deleted += links
        if len(self.report.freed) < REPORT_LIMIT:
            self.report.freed.append(f"{CANONICAL_ALGORITHM}:{hexd}")


def _clear_verdicts(driver: StorageDriver) -> int:
    """Delete the verdicts one by one (a writer may be creating one meanwhile: that
    one stays, and keeps its object for one run at most)."""
    cleared = 0
    for fi in list(driver.walk(paths.gc_verdicts_root())):
        if is_temporary(fi.path):
            continue
        with contextlib.suppress(PathNotFound):
            driver.delete(fi.path)
            cleared += 1
    return cleared


def _recover(driver: StorageDriver) -> int:
    """Clear what a dead run left: keeping a blob is always safe (module docstring)."""
    with contextlib.suppress(PathNotFound):
        driver.delete(paths.gc_sweep_path())
    return _clear_verdicts(driver)


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
    finished = False
    try:
        gone = collector.sweep_revisions(dry_run) if delete_untagged else set()
        if report.swept:
            collector.sweep_blobs(dry_run, gone)
        finished = True
    finally:
        collector.unflag(clear=finished)
    report.duration = round(time.monotonic() - started, 6)
    return report
