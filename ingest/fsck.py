"""fsck: re-hash stored blobs and alias links against their addresses; quarantine damage.

A blob lives at ``/blobs/sha256/<hex[:2]>/<hex>/data`` and must hash to ``<hex>``. A
link ``/repositories/<name>/_layers/<alg>/<hex>/link`` (or a manifest revision
``…/_manifests/revisions/<alg>/<hex>/link``) names a canonical blob; when ``<alg>`` is
not sha256 it is an *alias*, and the blob it names must hash to ``<alg>:<hex>`` under
that algorithm (TarSum included, within :class:`~ingest.digests.VerifierLimits`).
Manifests are stored as blobs too (``ingest.manifests``), so the blob walk covers them.

What one run does
-----------------
1. **Plan** the blobs to check: the canonical digests in sorted order, after a cursor,
   up to a budget of bytes and blobs (unbounded for ``ingest fsck``: then the listing
   is streamed, never held). The run covers the digest range ``(after, until]``.
2. **Walk the links** of every repository once. A sha256 link is checked if its
   digest is in the range: it must name itself and its blob must exist. An alias is
   read (its target is only in its content) and kept, grouped by target, if its
   target is in the range. Memory: the aliases of the range, and the repository names.
3. **Hash each blob once**, in one streaming pass with one reused buffer: sha256 plus
   one verifier per alias algorithm that names it. A blob that changed while it was
   hashed (stat before and after differ) is hashed again, and skipped if it keeps
   changing. If sha256 differs from the address the aliases are not judged (their
   blob is wrong; they go with it); otherwise each alias is compared.
4. Aliases whose target was not hashed: if the target blob is missing the link is
   reported (``link-missing-blob``); if it exists it was committed after the listing
   and is left for the next pass.

Finding kinds (stable names, in the report, the logs and the quarantine records):

========================  =====================================================  ==========
kind                      meaning                                                 repair
========================  =====================================================  ==========
``blob-mismatch``         the blob's bytes do not hash to its address             quarantine
``alias-mismatch``        the blob an alias names does not hash to the alias     unlink alias
``alias-unverifiable``    the alias cannot be computed here (TarSum engine       none
                          missing, or over the gzip-bomb caps)
``link-missing-blob``     a link names a blob that is not stored                  unlink
``link-target-mismatch``  a sha256 link names a different blob than itself        unlink
``link-invalid``          a link's content is not a sha256 digest                 unlink
``stray-entry``           something under ``/blobs`` that is not a blob           none
========================  =====================================================  ==========

Repair, and why it is safe while uploads commit
-----------------------------------------------
Commits take no lock (``ingest.commit``), and fsck cannot make them: it must be right
whatever a commit does meanwhile. A commit of blob ``H`` either finds a blob of the
same size at ``H`` and keeps it ("dedup"), or renames its freshly verified bytes over
``H``; then it writes its links. Quarantining ``H`` is:

a. **Re-check.** Stat ``H`` again: if size or mtime moved since it was hashed (a
   commit renamed good bytes over it), hash it again; if it is good now, keep it.
b. **Move it out** atomically to ``/quarantine/<id>/data`` (a rename: works on the
   read-only 0440 files of committed blobs, which only need a writable directory).
c. **Judge what was moved.** Hash the quarantined bytes. A commit may have renamed
   good bytes over ``H`` between (a) and (b): then those good bytes are what we moved,
   the hash matches, and they go straight back (unless another commit already put a
   copy in place). So what ends up in quarantine is exactly what was proven bad: no
   window between the check and the act.
d. **Record** ``record.json`` (expected, computed, size, when), then **unlink**: every
   link naming ``H`` in every repository, canonical and alias, layer and manifest
   revision, each removed only if it still names ``H`` and only while ``H`` is still
   absent. If ``H`` reappears meanwhile (a commit found it absent and placed verified
   bytes), the links removed are put back: they name good bytes again.

What no ordering can prevent, without a lock shared with commits: a commit that
deduplicated against the corrupt blob just before (b) writes its link after (d). That
link names an absent blob, which every reader treats as unknown (404,
``BLOB_UNKNOWN``) — never as the corrupt bytes — so the client pushes again, which
commits fresh bytes; and the next pass reports and removes the link if it is still
dangling. A run interrupted between (b) and (d) leaves the same state.

Manifests: a quarantined manifest blob loses its revision links (so an index can no
longer reference it and ``GET`` by digest is 404); **tags and referrer links are
kept**. A tag says which digest it points at, which is not what is corrupt, and
removing it would lose the information needed to push the manifest again; until then
the tag resolves to ``MANIFEST_UNKNOWN``. The record lists the tags that name it.

Other repairs (an alias, a dangling or invalid link) remove only that link, again
only if it is unchanged, and also leave a ``record.json`` under ``/quarantine/<id>``:
one directory per repair, ``data`` only when bytes were moved. Nothing under
``/quarantine`` is read again by the service; delete it when it has been looked at.

Resumable shares
----------------
:func:`run_share` is the scheduled form: it checks the next budgeted range after the
cursor in ``/maintenance/fsck.json`` (storage, not Redis: it survives a flush), saves
the cursor as it goes (at least every few seconds) and, at the end of the store,
records the completed pass and starts over. Before hashing a large blob it records
that blob as *in progress*: if the share dies there (time limit, OOM), the next share
skips that one blob with a warning instead of dying on it forever.

This module imports no Celery, Redis or click: the callers (``ingest fsck``, the
``ingest.fsck`` task) bring the lock and report the findings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ingest import paths
from ingest.digests import (
    CANONICAL_ALGORITHM,
    Digest,
    Hasher,
    VerifierLimits,
    new_hasher,
    new_verifier,
    parse_digest,
)
from ingest.errors import IngestError
from ingest.storage.base import FileInfo, PathNotFound, StorageDriver, is_temporary

__all__ = [
    "ALIAS_MISMATCH",
    "ALIAS_UNVERIFIABLE",
    "BLOB_MISMATCH",
    "KINDS",
    "LINK_INVALID",
    "LINK_MISSING_BLOB",
    "LINK_TARGET_MISMATCH",
    "REPAIRABLE",
    "STRAY_ENTRY",
    "Finding",
    "FsckReport",
    "FsckState",
    "load_state",
    "run_fsck",
    "run_share",
    "throttled",
]

BLOB_MISMATCH = "blob-mismatch"
ALIAS_MISMATCH = "alias-mismatch"
ALIAS_UNVERIFIABLE = "alias-unverifiable"
LINK_MISSING_BLOB = "link-missing-blob"
LINK_TARGET_MISMATCH = "link-target-mismatch"
LINK_INVALID = "link-invalid"
STRAY_ENTRY = "stray-entry"
KINDS = (
    BLOB_MISMATCH,
    ALIAS_MISMATCH,
    ALIAS_UNVERIFIABLE,
    LINK_MISSING_BLOB,
    LINK_TARGET_MISMATCH,
    LINK_INVALID,
    STRAY_ENTRY,
)
REPAIRABLE = frozenset(
    {BLOB_MISMATCH, ALIAS_MISMATCH, LINK_MISSING_BLOB, LINK_TARGET_MISMATCH, LINK_INVALID}
)

#: Read size of the hashing pass (one buffer for the whole run).
CHUNK = 4 << 20
#: A blob this large is recorded as in progress before a share hashes it.
IN_PROGRESS_MIN_SIZE = 64 << 20
#: Seconds between two saves of a share's cursor.
SAVE_INTERVAL = 5.0
#: Hashing attempts of a blob that changes while it is read.
_ATTEMPTS = 3

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX2 = re.compile(r"[0-9a-f]{2}")
_HEX12 = re.compile(r"[0-9a-f]{12}")

Heartbeat = Callable[[], None]


def throttled(
    fn: Callable[[], None], every: float, clock: Callable[[], float] = time.monotonic
) -> Heartbeat:
    """``fn`` called at most once per ``every`` seconds, however often the result is."""
    last = clock()

    def beat() -> None:
        nonlocal last
        now = clock()
        if now - last >= every:
            last = now
            fn()

    return beat


def _noop() -> None:
    return None


@dataclass
class Finding:
    """One problem: what was expected at ``path``, what the bytes really hash to, and
    (with repair) what was done about it."""

    kind: str
    path: str
    expected: str | None = None
    computed: str | None = None
    size: int | None = None
    repository: str | None = None
    target: str | None = None  # the canonical blob a link names
    detail: dict[str, Any] = field(default_factory=dict)
    #: ``reported`` (no repair asked or possible), ``quarantined``, ``unlinked``, or
    #: ``kept`` (repair found it fine after all; ``detail["kept"]`` says why)
    action: str = "reported"
    quarantine: str | None = None
    links_removed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "expected": self.expected,
            "computed": self.computed,
            "size": self.size,
            "repository": self.repository,
            "target": self.target,
            "detail": self.detail,
            "action": self.action,
            "quarantine": self.quarantine,
            "links_removed": self.links_removed,
        }


@dataclass
class FsckReport:
    """What a run checked and found."""

    repair: bool
    started_at: float
    after: str | None = None  # the range checked: (after, cursor]
    cursor: str | None = None  # the last blob checked
    complete: bool = False  # the range reached the end of the store
    blobs_checked: int = 0
    bytes_hashed: int = 0
    links_checked: int = 0
    aliases_checked: int = 0
    skipped: int = 0  # blobs that kept changing while read, or appeared after the listing
    duration: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "repair": self.repair,
            "started_at": self.started_at,
            "after": self.after,
            "cursor": self.cursor,
            "complete": self.complete,
            "blobs_checked": self.blobs_checked,
            "bytes_hashed": self.bytes_hashed,
            "links_checked": self.links_checked,
            "aliases_checked": self.aliases_checked,
            "skipped": self.skipped,
            "duration": self.duration,
            "clean": self.clean,
            "findings": [f.to_dict() for f in self.findings],
            "findings_count": len(self.findings),
            "quarantined": [f.quarantine for f in self.findings if f.action == "quarantined"],
        }

    def summary_lines(self) -> list[str]:
        """The human report of ``ingest fsck``."""
        lines = [
            f"checked {self.blobs_checked} blob(s), {self.bytes_hashed} bytes hashed, "
            f"{self.links_checked} link(s), {self.aliases_checked} alias(es): "
            + ("clean" if self.clean else f"{len(self.findings)} problem(s)")
        ]
        for f in self.findings:
            line = f"  {f.kind} {f.path}"
            if f.expected or f.computed:
                line += f" expected {f.expected} computed {f.computed}"
            if f.target and f.target != f.expected:
                line += f" (names {f.target})"
            if f.size is not None:
                line += f" ({f.size} bytes)"
            if "error" in f.detail:
                line += f" error {f.detail['error']}"
            if f.action == "quarantined":
                line += f": quarantined as {f.quarantine}, {len(f.links_removed)} link(s) removed"
            elif f.action == "unlinked":
                line += f": unlinked (record {f.quarantine})"
            elif f.action == "kept":
                line += f": kept ({f.detail.get('kept')})"
            lines.append(line)
        return lines


@dataclass(frozen=True, slots=True)
class _Entry:
    """A blob directory under /blobs/sha256 (``name`` is its hex digest), or a stray."""

    name: str
    path: str
    stray: str | None = None  # why it is not a blob
    size: int | None = None  # when planned


@dataclass(frozen=True, slots=True)
class _Alias:
    link: paths.RepositoryLink
    target: Digest


@dataclass(frozen=True, slots=True)
class _Hashed:
    sha256: str
    size: int
    others: dict[str, str]  # algorithm -> computed digest
    errors: dict[str, dict[str, Any]]  # algorithm -> error dict


@dataclass(frozen=True, slots=True)
class _Removed:
    link: str
    files: dict[str, bytes]  # every file of the link's directory, to put back if needed


class _Run:
    """One fsck run over the range ``(after, until]`` of canonical digests."""

    def __init__(
        self,
        driver: StorageDriver,
        *,
        repair: bool,
        limits: VerifierLimits | None,
        chunk_size: int,
        heartbeat: Heartbeat | None,
        on_finding: Callable[[Finding], None] | None,
        clock: Callable[[], float],
        checkpoint: Callable[[FsckReport, tuple[str, int] | None], None] | None = None,
    ) -> None:
        self.driver = driver
        self.repair = repair
        self.limits = limits
        self.buf = bytearray(max(1, chunk_size))
        self.beat = heartbeat or _noop
        self.on_finding = on_finding
        self.clock = clock
        self.checkpoint = checkpoint
        self.report = FsckReport(repair=repair, started_at=clock())
        self.repositories: set[str] = set()
        self.aliases: dict[str, list[_Alias]] = {}

    # -- the run ---------------------------------------------------------------------

    def run(self, after: str | None, max_bytes: int | None, max_blobs: int | None) -> FsckReport:
        started = time.monotonic()
        self.report.after = after
        self.report.cursor = after
        entries = self._blob_entries(after)
        if max_bytes is None and max_blobs is None:
            until: str | None = None
            planned: Iterator[_Entry] = entries
        else:
            plan, exhausted = self._plan(entries, max_bytes, max_blobs)
            until = None if exhausted else plan[-1].name
            planned = iter(plan)
        self._walk_links(after, until)
        for entry in planned:
            self.beat()
            if entry.stray is not None:
                self._add(Finding(STRAY_ENTRY, entry.path, detail={"reason": entry.stray}))
                continue
            size = entry.size
            if self.checkpoint is not None and size is not None and size >= IN_PROGRESS_MIN_SIZE:
                self.checkpoint(self.report, (entry.name, size))
            self._check_blob(entry.name)
            self.report.cursor = entry.name
            if self.checkpoint is not None:
                self.checkpoint(self.report, None)
        self._leftover_aliases()
        self.report.complete = until is None
        self.report.duration = round(time.monotonic() - started, 6)
        return self.report

    def _add(self, finding: Finding) -> None:
        self.report.findings.append(finding)
        if self.on_finding is not None:
            self.on_finding(finding)

    @staticmethod
    def _in_range(key: str, after: str | None, until: str | None) -> bool:
        return (after is None or key > after) and (until is None or key <= until)

    # -- 1. the blobs, in digest order -------------------------------------------------

    def _blob_entries(self, after: str | None) -> Iterator[_Entry]:
        """The stored canonical blobs after ``after`` in digest order, streamed one
        shard directory at a time, with what does not belong under /blobs (strays) at
        its place in the same order, so each is reported once per pass."""
        try:
            kinds = self.driver.list(paths.blob_store_root())
        except PathNotFound:
            return
        root = paths.blobs_root(CANONICAL_ALGORITHM)
        if after is None:  # at the start of a pass
            for k in kinds:
                if k != root:
                    yield _Entry("", k, "not the canonical blob directory")
        try:
            shards = self.driver.list(root)
        except PathNotFound:
            return
        for shard in shards:
            prefix = paths.entry_name(shard)
            if after is not None and prefix < after[:2]:
                continue
            if not _HEX2.fullmatch(prefix):
                if after is None or prefix > after:
                    yield _Entry(prefix, shard, "not a two-hex-digit shard")
                continue
            try:
                names = self.driver.list(shard)
            except PathNotFound:
                continue
            for path in names:
                name = paths.entry_name(path)
                if after is not None and name <= after:
                    continue
                if not _HEX64.fullmatch(name) or not name.startswith(prefix):
                    yield _Entry(name, path, "not a sha256 blob directory of this shard")
                    continue
                yield _Entry(name, path)

    def _plan(
        self, entries: Iterator[_Entry], max_bytes: int | None, max_blobs: int | None
    ) -> tuple[list[_Entry], bool]:
        """The next blobs within the budget (always at least one, and the strays among
        them); whether the listing ended with them."""
        plan: list[_Entry] = []
        blobs = total = 0
        for entry in entries:
            self.beat()
            if entry.stray is not None:
                plan.append(entry)
                continue
            try:
                size = self.driver.stat(paths.blob_data_path(Digest("sha256", entry.name))).size
            except PathNotFound:
                size = 0  # an emptied directory (quarantined): costs nothing to look at
            full = (max_blobs is not None and blobs >= max_blobs) or (
                max_bytes is not None and blobs > 0 and total + size > max_bytes
            )
            if full:
                # Strays after the last blob belong to the next share's range.
                while plan and plan[-1].stray is not None:
                    plan.pop()
                return plan, False
            plan.append(_Entry(entry.name, entry.path, size=size))
            blobs += 1
            total += size
        return plan, True

    # -- 2. the links ------------------------------------------------------------------

    def _walk_links(self, after: str | None, until: str | None) -> None:
        for fi in self.driver.walk(paths.repositories_root()):
            self.beat()
            link = paths.parse_repository_link(fi.path)
            if link is None:
                continue  # tags, referrers: not checked (see the module docstring)
            self.repositories.add(link.repository)
            canonical = link.digest.algorithm == CANONICAL_ALGORITHM
            if canonical and not self._in_range(link.digest.encoded, after, until):
                continue
            try:
                raw = self.driver.get_content(fi.path)
            except PathNotFound:
                continue
            target = _link_target(raw)
            if target is None:
                if self._in_range(link.digest.encoded, after, until):
                    self.report.links_checked += 1
                    self._bad_link(link, raw, LINK_INVALID)
                continue
            if not canonical:
                if self._in_range(target.encoded, after, until):
                    self.report.links_checked += 1
                    self.aliases.setdefault(target.encoded, []).append(_Alias(link, target))
                continue
            self.report.links_checked += 1
            if target != link.digest:
                self._bad_link(link, raw, LINK_TARGET_MISMATCH, target)
            elif not self._present(target):
                self._dangling(link, target)

    def _bad_link(
        self,
        link: paths.RepositoryLink,
        raw: bytes,
        kind: str,
        target: Digest | None = None,
    ) -> None:
        f = Finding(
            kind,
            link.path,
            expected=str(link.digest),
            repository=link.repository,
            target=str(target) if target else None,
            detail={} if target else {"content": raw[:100].decode("ascii", "replace")},
        )
        if self.repair:
            removed = self._remove_link(link, lambda content: content == raw)
            if removed is None:
                f.action, f.detail["kept"] = "kept", "the link changed or vanished meanwhile"
            else:
                self._record_unlink(f, [removed])
        self._add(f)

    def _dangling(self, link: paths.RepositoryLink, target: Digest) -> None:
        f = Finding(
            LINK_MISSING_BLOB,
            link.path,
            expected=str(link.digest),
            repository=link.repository,
            target=str(target),
        )
        if self.repair:
            removed = self._remove_link(link, _names(target))
            if removed is not None and self._present(target):
                # A commit placed the blob (and rewrote this link) meanwhile.
                self._restore([removed])
                removed = None
            if removed is None:
                f.action, f.detail["kept"] = "kept", "the blob or the link changed meanwhile"
            else:
                self._record_unlink(f, [removed])
        self._add(f)

    # -- 3. hashing --------------------------------------------------------------------

    def _check_blob(self, hexd: str) -> None:
        digest = Digest(CANONICAL_ALGORITHM, hexd)
        path = paths.blob_data_path(digest)
        aliases = self.aliases.pop(hexd, [])
        algorithms = sorted({a.link.digest.algorithm for a in aliases})
        checked = self._hash_stable(path, algorithms)
        if checked is None:
            if self._present(digest):
                self.report.skipped += 1  # kept changing while read
            else:
                self.aliases[hexd] = aliases  # emptied (quarantined): dangling aliases
            return
        hashed, stamp = checked
        self.report.blobs_checked += 1
        self.report.bytes_hashed += hashed.size
        if hashed.sha256 != str(digest):
            f = Finding(
                BLOB_MISMATCH, path, expected=str(digest), computed=hashed.sha256, size=hashed.size
            )
            if self.repair:
                self._quarantine(f, digest, stamp, aliases)
            self._add(f)
            return
        for alias in aliases:
            self.report.aliases_checked += 1
            self._judge_alias(alias, hashed)

    def _hash_stable(
        self, path: str, algorithms: list[str]
    ) -> tuple[_Hashed, tuple[int, float]] | None:
        """Hash ``path``; retry if it changed while read. None if missing or unstable."""
        for _ in range(_ATTEMPTS):
            try:
                before = self.driver.stat(path)
                hashed = self._hash(path, algorithms)
                after = self.driver.stat(path)
            except PathNotFound:
                return None
            if _stamp(before) == _stamp(after) and hashed.size == after.size:
                return hashed, _stamp(after)
        return None

    def _hash(self, path: str, algorithms: list[str]) -> _Hashed:
        """One streaming pass: sha256 plus one verifier per algorithm."""
        sha = new_hasher(CANONICAL_ALGORITHM)
        others: dict[str, Hasher] = {}
        errors: dict[str, dict[str, Any]] = {}
        for alg in algorithms:
            try:
                others[alg] = new_verifier(Digest(alg, "0"), self.limits)
            except IngestError as exc:
                errors[alg] = exc.to_dict()
        view = memoryview(self.buf)
        size = 0
        f = self.driver.reader(path)
        try:
            readinto = f.readinto  # type: ignore[attr-defined]
            while n := readinto(view):
                chunk = view[:n]
                sha.update(chunk)
                for alg, h in list(others.items()):
                    try:
                        h.update(chunk)
                    except IngestError as exc:
                        errors[alg] = exc.to_dict()
                        del others[alg]
                size += n
                self.beat()
        finally:
            f.close()
        computed: dict[str, str] = {}
        for alg, h in others.items():
            try:
                computed[alg] = h.result()
            except IngestError as exc:
                errors[alg] = exc.to_dict()
        return _Hashed(sha.result(), size, computed, errors)

    def _judge_alias(self, alias: _Alias, hashed: _Hashed) -> None:
        alg = alias.link.digest.algorithm
        computed = hashed.others.get(alg)
        if computed == str(alias.link.digest):
            return
        error = hashed.errors.get(alg)
        f = Finding(
            ALIAS_MISMATCH,
            alias.link.path,
            expected=str(alias.link.digest),
            computed=computed,
            size=hashed.size,
            repository=alias.link.repository,
            target=str(alias.target),
        )
        if error is not None:
            f.detail["error"] = (error.get("detail") or {}).get("error") or error.get("code")
            if _unverifiable(error):
                # Not evidence against the alias: this process cannot compute it.
                f.kind = ALIAS_UNVERIFIABLE
                self._add(f)
                return
        if self.repair:
            removed = self._remove_link(alias.link, _names(alias.target))
            if removed is None:
                f.action, f.detail["kept"] = "kept", "the link changed or vanished meanwhile"
            else:
                self._record_unlink(f, [removed])
        self._add(f)

    def _leftover_aliases(self) -> None:
        """Aliases whose target was not hashed: dangling, or committed after the listing."""
        for hexd in sorted(self.aliases):
            target = Digest(CANONICAL_ALGORITHM, hexd)
            if self._present(target):
                self.report.skipped += 1
                continue
            for alias in self.aliases[hexd]:
                self._dangling(alias.link, target)
        self.aliases.clear()

    # -- 4. repair ---------------------------------------------------------------------

    def _present(self, digest: Digest) -> bool:
        try:
            self.driver.stat(paths.blob_data_path(digest))
        except PathNotFound:
            return False
        return True

    def _new_id(self, hint: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
        head = hint[:12]
        if not _HEX12.fullmatch(head):
            head = hashlib.sha256(hint.encode()).hexdigest()[:12]
        return paths.validate_quarantine_id(f"{stamp}-{head}-{secrets.token_hex(4)}")

    def _quarantine(
        self, f: Finding, digest: Digest, stamp: tuple[int, float], aliases: list[_Alias]
    ) -> None:
        blob = paths.blob_data_path(digest)
        # (a) Has a commit replaced the bytes since they were hashed?
        try:
            now = _stamp(self.driver.stat(blob))
        except PathNotFound:
            f.action, f.detail["kept"] = "kept", "the blob vanished meanwhile"
            return
        if now != stamp:
            again = self._hash_stable(blob, [])
            if again is None:
                f.action, f.detail["kept"] = "kept", "the blob changed meanwhile"
                return
            if again[0].sha256 == str(digest):
                f.action, f.detail["kept"] = "kept", "replaced by good bytes meanwhile"
                return
        # (b) Move it out, then (c) judge exactly the bytes that were moved.
        qid = self._new_id(digest.encoded)
        qdata = paths.quarantine_data_path(qid)
        try:
            self.driver.move(blob, qdata)
        except PathNotFound:
            f.action, f.detail["kept"] = "kept", "the blob vanished meanwhile"
            return
        moved = self._hash(qdata, [])
        if moved.sha256 == str(digest):
            # Good bytes landed just before the move: put them back.
            if self._present(digest):
                self.driver.delete(paths.quarantine_dir(qid))
            else:
                self.driver.move(qdata, blob)
                with contextlib.suppress(PathNotFound):
                    self.driver.delete(paths.quarantine_dir(qid))
            f.action, f.detail["kept"] = "kept", "replaced by good bytes meanwhile"
            return
        f.computed, f.size = moved.sha256, moved.size
        f.action, f.quarantine = "quarantined", qid
        # (d) Record, then unlink everywhere.
        self._write_record(f, data=qdata)
        removed = self._unlink_everywhere(digest, aliases)
        f.links_removed = [r.link for r in removed]
        if any(_is_revision(r.link) for r in removed):
            f.detail["tags"] = self._tags_naming(digest)
        self._write_record(f, data=qdata)

    def _unlink_everywhere(self, digest: Digest, aliases: list[_Alias]) -> list[_Removed]:
        candidates: list[paths.RepositoryLink] = []
        for repo in sorted(self.repositories):
            candidates.append(paths.RepositoryLink(repo, "layer", digest))
            candidates.append(paths.RepositoryLink(repo, "manifest", digest))
        candidates += [a.link for a in aliases]
        removed: list[_Removed] = []
        names = _names(digest)
        for link in candidates:
            self.beat()
            if self._present(digest):
                break
            r = self._remove_link(link, names)
            if r is not None:
                removed.append(r)
        if self._present(digest):
            # A commit found the address empty and placed verified bytes: every link
            # naming it is right again.
            self._restore(removed)
            return []
        return removed

    def _tags_naming(self, digest: Digest) -> list[str]:
        tags = []
        for repo in sorted(self.repositories):
            for fi in self.driver.walk(paths.manifest_tags_dir(repo)):
                link = paths.parse_tag_link(fi.path)
                if link is not None:
                    with contextlib.suppress(PathNotFound):
                        if _link_target(self.driver.get_content(fi.path)) == digest:
                            tags.append(f"{repo}:{link.tag}")
        return tags

    def _remove_link(
        self, link: paths.RepositoryLink, still: Callable[[bytes], bool]
    ) -> _Removed | None:
        """Delete the link's directory if its content still satisfies ``still``;
        what it held, so it can be put back."""
        path, directory = link.path, link.dir
        try:
            if not still(self.driver.get_content(path)):
                return None
        except PathNotFound:
            return None
        files: dict[str, bytes] = {}
        for fi in self.driver.walk(directory):
            if is_temporary(fi.path):
                continue  # a temporary file of a write in progress
            with contextlib.suppress(PathNotFound):
                files[fi.path] = self.driver.get_content(fi.path)
        try:
            self.driver.delete(directory)
        except PathNotFound:
            return None
        return _Removed(path, files)

    def _restore(self, removed: list[_Removed]) -> None:
        for r in removed:
            for p, content in r.files.items():
                self.driver.put_content(p, content)

    def _record_unlink(self, f: Finding, removed: list[_Removed]) -> None:
        f.action = "unlinked"
        f.quarantine = self._new_id((f.target or f.expected or f.path).split(":")[-1])
        f.links_removed = [r.link for r in removed]
        self._write_record(f, data=None)

    def _write_record(self, f: Finding, *, data: str | None) -> None:
        assert f.quarantine is not None
        record = {
            "id": f.quarantine,
            "repaired_at": self.clock(),
            "data": data,
            **f.to_dict(),
        }
        self.driver.put_content(
            paths.quarantine_record_path(f.quarantine),
            json.dumps(record, sort_keys=True, indent=1).encode(),
        )


def _stamp(fi: FileInfo) -> tuple[int, float]:
    return fi.size, fi.mod_time


def _link_target(raw: bytes) -> Digest | None:
    """The canonical digest a link's content names, or None if it names none."""
    try:
        d = parse_digest(raw.decode("ascii").strip())
    except (UnicodeDecodeError, IngestError):
        return None
    return d if d.algorithm == CANONICAL_ALGORITHM else None


def _is_revision(path: str) -> bool:
    link = paths.parse_repository_link(path)
    return link is not None and link.kind == "manifest"


def _names(target: Digest) -> Callable[[bytes], bool]:
    return lambda content: _link_target(content) == target


def _unverifiable(error: dict[str, Any]) -> bool:
    detail = error.get("detail") or {}
    return detail.get("reason") == "tarsum-unsupported" or detail.get("error") in (
        "decompression-limit",
    )


def run_fsck(
    driver: StorageDriver,
    *,
    repair: bool = False,
    limits: VerifierLimits | None = None,
    chunk_size: int = CHUNK,
    after: str | None = None,
    max_bytes: int | None = None,
    max_blobs: int | None = None,
    heartbeat: Heartbeat | None = None,
    on_finding: Callable[[Finding], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> FsckReport:
    """Check the blobs after ``after`` (all by default) and the links naming them.

    With ``max_bytes``/``max_blobs`` the run stops after that share (at least one
    blob); ``report.cursor`` is where the next share starts and ``report.complete``
    says whether the end of the store was reached. ``heartbeat`` is called often (to
    keep a lock; it may raise to abort). ``on_finding`` gets each finding once it is
    final (after its repair)."""
    if after is not None and not _HEX64.fullmatch(after):
        raise ValueError(f"cursor must be a sha256 hex digest, not {after[:80]!r}")
    run = _Run(
        driver,
        repair=repair,
        limits=limits,
        chunk_size=chunk_size,
        heartbeat=heartbeat,
        on_finding=on_finding,
        clock=clock,
    )
    return run.run(after, max_bytes, max_blobs)


# -- resumable shares ------------------------------------------------------------------

_COUNTERS = ("blobs", "bytes", "links", "aliases", "findings", "repaired", "skipped")


@dataclass
class FsckState:
    """``/maintenance/fsck.json``: where the scheduled pass is, and the last one done."""

    cursor: str | None = None
    in_progress: dict[str, Any] | None = None  # {"blob": hex, "size": n, "since": t}
    pass_started_at: float | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    passes_completed: int = 0
    last_pass: dict[str, Any] | None = None
    updated_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "cursor": self.cursor,
            "in_progress": self.in_progress,
            "pass_started_at": self.pass_started_at,
            "counts": self.counts,
            "passes_completed": self.passes_completed,
            "last_pass": self.last_pass,
            "updated_at": self.updated_at,
        }


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def load_state(driver: StorageDriver) -> FsckState:
    """The stored state; a fresh one if missing or unreadable (the pass restarts)."""
    try:
        doc = json.loads(driver.get_content(paths.fsck_state_path()))
    except (PathNotFound, ValueError, UnicodeDecodeError, RecursionError):
        return FsckState()
    return _state_from(doc)


def _state_from(doc: object) -> FsckState:
    if not isinstance(doc, dict) or doc.get("version") != 1:
        return FsckState()
    state = FsckState()
    cursor = doc.get("cursor")
    if isinstance(cursor, str) and _HEX64.fullmatch(cursor):
        state.cursor = cursor
    ip = doc.get("in_progress")
    if (
        isinstance(ip, dict)
        and isinstance(ip.get("blob"), str)
        and _HEX64.fullmatch(ip["blob"])
        and (state.cursor is None or ip["blob"] > state.cursor)
    ):
        state.in_progress = {
            "blob": ip["blob"],
            "size": _number(ip.get("size")),
            "since": _number(ip.get("since")),
        }
    state.pass_started_at = _number(doc.get("pass_started_at"))
    counts = doc.get("counts")
    if isinstance(counts, dict):
        for k in _COUNTERS:
            v = counts.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                state.counts[k] = v
    n = doc.get("passes_completed")
    if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
        state.passes_completed = n
    last = doc.get("last_pass")
    if isinstance(last, dict):
        state.last_pass = last
    state.updated_at = _number(doc.get("updated_at"))
    return state


def _save_state(driver: StorageDriver, state: FsckState, now: float) -> None:
    state.updated_at = now
    driver.put_content(paths.fsck_state_path(), json.dumps(state.to_dict()).encode())


@dataclass
class ShareResult:
    report: FsckReport
    state: FsckState
    pass_completed: bool
    skipped_in_progress: dict[str, Any] | None  # a blob a dead share was hashing


def run_share(
    driver: StorageDriver,
    *,
    budget_bytes: int,
    budget_blobs: int,
    repair: bool = False,
    limits: VerifierLimits | None = None,
    chunk_size: int = CHUNK,
    heartbeat: Heartbeat | None = None,
    on_finding: Callable[[Finding], None] | None = None,
    clock: Callable[[], float] = time.time,
) -> ShareResult:
    """Check the next share of the store after the stored cursor, save the cursor, and
    at the end of the store record the completed pass and start the next from the
    beginning. Callers must hold the fsck lock (one share at a time)."""
    state = load_state(driver)
    skipped = state.in_progress
    if skipped is not None:
        # The last share died while hashing this blob: do not die on it again.
        state.cursor = skipped["blob"]
        state.in_progress = None
        state.counts["skipped"] += 1
    if state.pass_started_at is None:
        state.pass_started_at = clock()
    base = dict(state.counts)
    last_save = time.monotonic()

    def counts_with(report: FsckReport) -> dict[str, int]:
        return {
            "blobs": base["blobs"] + report.blobs_checked,
            "bytes": base["bytes"] + report.bytes_hashed,
            "links": base["links"] + report.links_checked,
            "aliases": base["aliases"] + report.aliases_checked,
            "findings": base["findings"] + len(report.findings),
            "repaired": base["repaired"]
            + sum(f.action in ("quarantined", "unlinked") for f in report.findings),
            "skipped": base["skipped"] + report.skipped,
        }

    def checkpoint(report: FsckReport, starting: tuple[str, int] | None) -> None:
        nonlocal last_save
        marked = state.in_progress is not None  # a large blob just finished: clear it now
        if starting is None and not marked and time.monotonic() - last_save < SAVE_INTERVAL:
            return
        state.cursor = report.cursor
        state.counts = counts_with(report)
        state.in_progress = (
            None
            if starting is None
            else {"blob": starting[0], "size": starting[1], "since": clock()}
        )
        _save_state(driver, state, clock())
        last_save = time.monotonic()

    run = _Run(
        driver,
        repair=repair,
        limits=limits,
        chunk_size=chunk_size,
        heartbeat=heartbeat,
        on_finding=on_finding,
        clock=clock,
        checkpoint=checkpoint,
    )
    report = run.run(state.cursor, budget_bytes, budget_blobs)
    state.counts = counts_with(report)
    state.in_progress = None
    state.cursor = report.cursor
    if report.complete:
        state.last_pass = {
            "started_at": state.pass_started_at,
            "completed_at": clock(),
            **state.counts,
        }
        state.passes_completed += 1
        state.cursor = None
        state.pass_started_at = None
        state.counts = dict.fromkeys(_COUNTERS, 0)
    _save_state(driver, state, clock())
    return ShareResult(report, state, report.complete, skipped)
