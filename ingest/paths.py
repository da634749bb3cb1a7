"""Every storage key verified-ingest uses, from one pure mapper.

The layout, below the driver's root::

    /blobs/<alg>/<hex[0:2]>/<hex>/data                  content-addressed blob (canonical sha256)
    /repositories/<name>/_layers/<alg>/<hex>/link       "sha256:<hex>" of the blob it names;
                                                        one per digest the repo knows, so a
                                                        sha512 or tarsum alias links to the
                                                        same canonical blob
    /repositories/<name>/_manifests/revisions/<alg>/<hex>/link
                                                        a manifest revision ("sha256:<hex>"
                                                        of the blob holding its bytes)
    /repositories/<name>/_manifests/revisions/<alg>/<hex>/mediatype
                                                        its media type
    /repositories/<name>/_manifests/tags/<tag>/current/link
                                                        "sha256:<hex>" of the revision it names
    /repositories/<name>/_manifests/referrers/<alg>/<subject hex>/<alg>/<hex>/link
                                                        a manifest whose ``subject`` is <subject>
    /uploads/<uuid>/info.json                           immutable: repository, started_at
    /uploads/<uuid>/data                                staged bytes; its size is the offset
    /uploads/<uuid>/state.json                          lifecycle: open/finishing/verified/failed
    /uploads/<uuid>/result.json                         the committed result; written once
    /uploads/<uuid>/prehash.lease                       a worker hashes the bytes as they arrive
    /uploads/<uuid>/prehash.json                        its result: sha256 of the first N bytes
    /uploads/<uuid>/verify.lease                        a worker is verifying it (ingest.leases)
    /quarantine/<id>/record.json                        what fsck found and repaired
    /quarantine/<id>/data                               a blob fsck moved out of /blobs
    /maintenance/fsck.json                              the scheduled fsck's cursor and passes
    /health/<uuid>                                      a frontend's storage probe (/health):
                                                        written, read back, deleted at once
    /gc/clock                                           garbage collection's clock probe: its
                                                        mtime is the storage's "now" (ingest.gc)
    /gc/sweep                                           present while a sweep decides: writers
                                                        that reuse a blob then record verdicts
    /gc/verdicts/blobs/<hex>                            "claimed" (being deleted) or "retained"
                                                        (kept): created once, by the winner
    /gc/verdicts/revisions/<name>/<alg>/<hex>           the same for an untagged manifest
                                                        revision (``gc --delete-untagged``)
    /notifications/<endpoint>/outbox/<key>              one event waiting for delivery to that
                                                        endpoint; keys sort oldest first
                                                        (ingest.notify)
    /notifications/<endpoint>/state.json                its delivery state: failures, next attempt,
                                                        counters (written by the drainer only)
    /notifications/<endpoint>/drain.lease               a worker is delivering, or backing off

This module is the only place a key is spelled, and the only place one is taken
apart again: every other module builds keys with the functions below and reads
them back with the ``parse_*`` functions (or :func:`entry_name` for the children
a listing returns). Each parser is the exact inverse of its builder: it returns
None for anything the builder could not have produced, and what it returns maps
back to exactly the key it was given, so nothing built from a parsed key can
name another location. Besides the keys above, a listing may show a driver's
temporary files (:data:`ingest.storage.base.TMP_MARKER`): the ``parse_*``
functions return None for them, and :func:`~ingest.storage.base.is_temporary`
tells them apart from the children of a listing.

Uploads are keyed by id alone because the verification task receives only the
id; the repository recorded in ``info.json`` is checked on every access.

Inputs are validated here (names, digests, upload ids) even when callers
already did, so no caller can build a path from unchecked text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ingest.digests import Digest, parse_digest
from ingest.errors import BlobUploadUnknown, IngestError
from ingest.names import validate_name, validate_tag

__all__ = [
    "ReferrerLink",
    "RepositoryLink",
    "TagLink",
    "blob_data_path",
    "blob_dir",
    "blob_store_root",
    "blobs_root",
    "entry_name",
    "fsck_state_path",
    "gc_blob_verdict_path",
    "gc_clock_path",
    "gc_revision_verdict_path",
    "gc_sweep_path",
    "gc_verdicts_root",
    "health_probe_path",
    "layer_link_dir",
    "layer_link_path",
    "layers_dir",
    "manifest_referrer_link_path",
    "manifest_referrers_dir",
    "manifest_revision_dir",
    "manifest_revision_link_path",
    "manifest_revision_mediatype_path",
    "manifest_tag_dir",
    "manifest_tag_link_path",
    "manifest_tags_dir",
    "notify_event_path",
    "notify_lease_path",
    "notify_outbox_dir",
    "notify_state_path",
    "parse_notify_event",
    "parse_referrer_link",
    "parse_repository_dir",
    "parse_repository_link",
    "parse_tag_link",
    "quarantine_data_path",
    "quarantine_dir",
    "quarantine_record_path",
    "quarantine_root",
    "repositories_root",
    "repository_content_dirs",
    "repository_dir",
    "upload_data_path",
    "upload_dir",
    "upload_entry_path",
    "upload_info_path",
    "upload_prehash_lease_path",
    "upload_prehash_path",
    "upload_result_path",
    "upload_state_path",
    "upload_verify_lease_path",
    "uploads_root",
    "validate_endpoint_name",
    "validate_event_key",
    "validate_quarantine_id",
    "validate_upload_id",
]

_UUID4_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9=_+.-]+")


def validate_upload_id(upload_id: str) -> str:
    """Return the id if it is a canonical lower-case UUID4, else BlobUploadUnknown."""
    if not isinstance(upload_id, str) or not _UUID4_RE.fullmatch(upload_id):
        raise BlobUploadUnknown("invalid upload id", {"upload_id": str(upload_id)[:64]})
    return upload_id


def _segments(digest: Digest) -> tuple[str, str]:
    # Digest objects come from parse_digest, but re-check: a path segment must
    # never be '.', '..' or contain '/'.
    alg, enc = digest.algorithm, digest.encoded
    for seg in (alg, enc):
        if not isinstance(seg, str) or not _SAFE_SEGMENT.fullmatch(seg) or seg in (".", ".."):
            raise ValueError(f"unsafe digest for a path: {digest}")
    return alg, enc


def entry_name(path: str) -> str:
    """The last segment of a key: the name of one child that ``StorageDriver.list``
    returned (it returns full keys). Never raises, and does not validate: a name
    goes back into a key only through a builder, which does."""
    return path.rpartition("/")[2]


# -- blobs -------------------------------------------------------------------------

_BLOBS = "/blobs"


def blob_store_root() -> str:
    """The directory holding one directory per algorithm (only ``sha256`` is used:
    every blob is stored under its canonical digest)."""
    return _BLOBS


def blobs_root(algorithm: str = "sha256") -> str:
    """The directory holding every blob stored under ``algorithm`` (``/blobs/sha256``):
    its children are the two-hex-digit shards, theirs the :func:`blob_dir` s."""
    alg, _ = _segments(Digest(algorithm, "0"))
    return f"{_BLOBS}/{alg}"


def blob_dir(digest: Digest) -> str:
    alg, enc = _segments(digest)
    return f"{_BLOBS}/{alg}/{enc[:2]}/{enc}"


def blob_data_path(digest: Digest) -> str:
    return blob_dir(digest) + "/data"


# -- repositories: layer links, manifests, tags, referrers -------------------------

_REPOSITORIES = "/repositories"


def repositories_root() -> str:
    return _REPOSITORIES


def repository_dir(repository: str) -> str:
    """Everything a repository holds; it exists once anything was linked in it."""
    return f"{_REPOSITORIES}/{validate_name(repository)}"


def layers_dir(repository: str) -> str:
    return repository_dir(repository) + "/_layers"


def layer_link_dir(repository: str, digest: Digest) -> str:
    """The directory of one layer link: deleting it unlinks ``digest``."""
    alg, enc = _segments(digest)
    return f"{layers_dir(repository)}/{alg}/{enc}"


def layer_link_path(repository: str, digest: Digest) -> str:
    return layer_link_dir(repository, digest) + "/link"


def _manifests_dir(repository: str) -> str:
    return repository_dir(repository) + "/_manifests"


def repository_content_dirs(repository: str) -> tuple[str, str]:
    """The directories whose presence makes :func:`repository_dir` a repository (its
    layer links, its manifests) rather than only the parent of nested names' directories
    (``library`` of ``library/ubuntu``). A directory may be both."""
    return layers_dir(repository), _manifests_dir(repository)


def parse_repository_dir(path: str) -> str | None:
    """The inverse of :func:`repository_dir`: the repository name whose directory
    ``path`` is (a child a listing of :func:`repositories_root` or of a repository
    directory returned), or None for anything else (``_layers``, temporary files,
    anything malformed). Never raises; ``repository_dir`` of the result is exactly
    ``path``."""
    if not isinstance(path, str) or not path.startswith(_REPOSITORIES + "/"):
        return None
    name = path[len(_REPOSITORIES) + 1 :]
    try:
        return name if repository_dir(name) == path else None
    except IngestError:
        return None


def manifest_revision_dir(repository: str, digest: Digest) -> str:
    alg, enc = _segments(digest)
    return f"{_manifests_dir(repository)}/revisions/{alg}/{enc}"


def manifest_revision_link_path(repository: str, digest: Digest) -> str:
    return manifest_revision_dir(repository, digest) + "/link"


def manifest_revision_mediatype_path(repository: str, digest: Digest) -> str:
    return manifest_revision_dir(repository, digest) + "/mediatype"


def manifest_tags_dir(repository: str) -> str:
    """The directory whose children are the tags: one :func:`manifest_tag_dir` each."""
    return f"{_manifests_dir(repository)}/tags"


def manifest_tag_dir(repository: str, tag: str) -> str:
    """Everything one tag holds: deleting it deletes the tag."""
    return f"{manifest_tags_dir(repository)}/{validate_tag(tag)}"


def manifest_tag_link_path(repository: str, tag: str) -> str:
    return manifest_tag_dir(repository, tag) + "/current/link"


def manifest_referrers_dir(repository: str, subject: Digest) -> str:
    """The links of the manifests whose ``subject`` is ``subject``."""
    alg, enc = _segments(subject)
    return f"{_manifests_dir(repository)}/referrers/{alg}/{enc}"


def manifest_referrer_link_path(repository: str, subject: Digest, digest: Digest) -> str:
    alg, enc = _segments(digest)
    return f"{manifest_referrers_dir(repository, subject)}/{alg}/{enc}/link"


@dataclass(frozen=True, slots=True)
class RepositoryLink:
    """A link file that names a blob: a layer link (``kind="layer"``) or a manifest
    revision (``kind="manifest"``) of ``repository``, known there as ``digest``."""

    repository: str
    kind: str
    digest: Digest

    @property
    def path(self) -> str:
        return self.dir + "/link"

    @property
    def dir(self) -> str:
        """The link's directory: deleting it removes the link (and, for a manifest
        revision, its media type)."""
        if self.kind == "layer":
            return layer_link_dir(self.repository, self.digest)
        return manifest_revision_dir(self.repository, self.digest)


@dataclass(frozen=True, slots=True)
class TagLink:
    """The link of tag ``tag`` in ``repository``."""

    repository: str
    tag: str

    @property
    def path(self) -> str:
        return manifest_tag_link_path(self.repository, self.tag)


@dataclass(frozen=True, slots=True)
class ReferrerLink:
    """The link saying that manifest ``digest`` of ``repository`` refers to ``subject``."""

    repository: str
    subject: Digest
    digest: Digest

    @property
    def path(self) -> str:
        return manifest_referrer_link_path(self.repository, self.subject, self.digest)


_NAME = r"/repositories/(?P<name>.+)"
_LINK_RE = re.compile(
    _NAME + r"/(?P<kind>_layers|_manifests/revisions)/(?P<alg>[^/]+)/(?P<enc>[^/]+)/link"
)
_TAG_LINK_RE = re.compile(_NAME + r"/_manifests/tags/(?P<tag>[^/]+)/current/link")
_REFERRER_LINK_RE = re.compile(
    _NAME + r"/_manifests/referrers/(?P<salg>[^/]+)/(?P<senc>[^/]+)"
    r"/(?P<alg>[^/]+)/(?P<enc>[^/]+)/link"
)


def _digest(alg: str, enc: str) -> Digest:
    return parse_digest(f"{alg}:{enc}")


_Link = TypeVar("_Link", RepositoryLink, TagLink, ReferrerLink)


def _exact(path: str, build: Callable[[], _Link]) -> _Link | None:
    # Build from the parts (validating each), then require the result to map back
    # to exactly ``path``: what a parser returns can name no other location.
    try:
        link = build()
        rebuilt = link.path
    except (IngestError, ValueError):
        return None
    return link if rebuilt == path else None


def parse_repository_link(path: str) -> RepositoryLink | None:
    """The inverse of :func:`layer_link_path` and :func:`manifest_revision_link_path`:
    the link a storage path is, or None for any other path (tags, media types,
    temporary files, anything malformed). Never raises on any string.

    The result maps back to exactly ``path``, so nothing built from it can name
    another location."""
    m = _LINK_RE.fullmatch(path) if isinstance(path, str) else None
    if m is None:
        return None
    kind = "layer" if m["kind"] == "_layers" else "manifest"
    return _exact(
        path, lambda: RepositoryLink(validate_name(m["name"]), kind, _digest(m["alg"], m["enc"]))
    )


def parse_tag_link(path: str) -> TagLink | None:
    """The inverse of :func:`manifest_tag_link_path`; None for any other path. Never
    raises; the result maps back to exactly ``path``."""
    m = _TAG_LINK_RE.fullmatch(path) if isinstance(path, str) else None
    if m is None:
        return None
    return _exact(path, lambda: TagLink(validate_name(m["name"]), validate_tag(m["tag"])))


def parse_referrer_link(path: str) -> ReferrerLink | None:
    """The inverse of :func:`manifest_referrer_link_path`; None for any other path.
    Never raises; the result maps back to exactly ``path``."""
    m = _REFERRER_LINK_RE.fullmatch(path) if isinstance(path, str) else None
    if m is None:
        return None
    return _exact(
        path,
        lambda: ReferrerLink(
            validate_name(m["name"]), _digest(m["salg"], m["senc"]), _digest(m["alg"], m["enc"])
        ),
    )


# -- uploads -----------------------------------------------------------------------

_UPLOADS = "/uploads"


def uploads_root() -> str:
    return _UPLOADS


def upload_dir(upload_id: str) -> str:
    return f"{_UPLOADS}/{validate_upload_id(upload_id)}"


def upload_entry_path(name: str) -> str:
    """An entry directly under :func:`uploads_root`, by the name a listing gives it
    (:func:`entry_name`): the :func:`upload_dir` when ``name`` is an upload id, else
    a leftover that only the purge touches. ValueError unless ``name`` is one safe
    path segment (never ``.``, ``..`` or anything with ``/``)."""
    if not isinstance(name, str) or not _SAFE_SEGMENT.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"unsafe upload entry name: {str(name)[:80]!r}")
    return f"{_UPLOADS}/{name}"


def upload_data_path(upload_id: str) -> str:
    return upload_dir(upload_id) + "/data"


def upload_info_path(upload_id: str) -> str:
    return upload_dir(upload_id) + "/info.json"


def upload_state_path(upload_id: str) -> str:
    return upload_dir(upload_id) + "/state.json"


def upload_result_path(upload_id: str) -> str:
    return upload_dir(upload_id) + "/result.json"


def upload_prehash_path(upload_id: str) -> str:
    return upload_dir(upload_id) + "/prehash.json"


def upload_prehash_lease_path(upload_id: str) -> str:
    return upload_dir(upload_id) + "/prehash.lease"


def upload_verify_lease_path(upload_id: str) -> str:
    return upload_dir(upload_id) + "/verify.lease"


# -- quarantine, maintenance (fsck) -------------------------------------------------

_QUARANTINE_ID_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}-[0-9a-f]{8}")
_QUARANTINE = "/quarantine"


def validate_quarantine_id(quarantine_id: str) -> str:
    """Return the id if it has the form fsck gives them
    (``20250101T120000Z-<12 hex of the digest>-<8 random hex>``), else ValueError."""
    if not isinstance(quarantine_id, str) or not _QUARANTINE_ID_RE.fullmatch(quarantine_id):
        raise ValueError(f"invalid quarantine id: {str(quarantine_id)[:80]!r}")
    return quarantine_id


def quarantine_root() -> str:
    return _QUARANTINE


def quarantine_dir(quarantine_id: str) -> str:
    return f"{_QUARANTINE}/{validate_quarantine_id(quarantine_id)}"


def quarantine_record_path(quarantine_id: str) -> str:
    return quarantine_dir(quarantine_id) + "/record.json"


def quarantine_data_path(quarantine_id: str) -> str:
    return quarantine_dir(quarantine_id) + "/data"


def fsck_state_path() -> str:
    """The scheduled fsck's cursor and pass history (in storage: survives Redis)."""
    return "/maintenance/fsck.json"


# -- garbage collection (ingest.gc) ---------------------------------------------------

_GC = "/gc"


def gc_clock_path() -> str:
    """An object the collector rewrites to read the storage's clock (its mtime)."""
    return f"{_GC}/clock"


def gc_sweep_path() -> str:
    """Present while a sweep is deciding (it holds the run's id): a writer that reuses
    an existing blob or revision records a verdict (below) only while it exists."""
    return f"{_GC}/sweep"


def gc_verdicts_root() -> str:
    return f"{_GC}/verdicts"


def _gc_blob_key(digest: Digest) -> str:
    alg, enc = _segments(digest)
    if alg != "sha256":
        raise ValueError(f"blobs are collected by their sha256: {digest}")
    return f"blobs/{enc}"


def _gc_revision_key(repository: str, digest: Digest) -> str:
    alg, enc = _segments(digest)
    return f"revisions/{validate_name(repository)}/{alg}/{enc}"


def gc_blob_verdict_path(digest: Digest) -> str:
    """Who won the race for blob ``digest`` (canonical) in the current sweep: created
    once (``put_if_absent``) by the collector ("claimed": it deletes the blob) or by a
    writer ("retained": the blob is kept)."""
    return f"{gc_verdicts_root()}/{_gc_blob_key(digest)}"


def gc_revision_verdict_path(repository: str, digest: Digest) -> str:
    """:func:`gc_blob_verdict_path` for manifest revision ``digest`` of ``repository``."""
    return f"{gc_verdicts_root()}/{_gc_revision_key(repository, digest)}"


def health_probe_path(probe_id: str) -> str:
    """A storage probe of the debug listener's ``/health``: each check writes a small
    object under a fresh UUID4 (so concurrent probes never collide), reads it back
    and deletes it. Nothing else reads ``/health``."""
    if not isinstance(probe_id, str) or not _UUID4_RE.fullmatch(probe_id):
        raise ValueError(f"invalid health probe id: {str(probe_id)[:80]!r}")
    return f"/health/{probe_id}"


# -- notifications (ingest.notify) --------------------------------------------------

_NOTIFICATIONS = "/notifications"
_ENDPOINT_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: Nanoseconds since the epoch (20 digits, so keys sort by time), then 8 random hex.
_EVENT_KEY_RE = re.compile(r"[0-9]{20}-[0-9a-f]{8}")


def validate_endpoint_name(name: str) -> str:
    """Return a notification endpoint's name if it is one safe path segment
    (``[a-z0-9][a-z0-9_-]{0,63}``), else ValueError."""
    if not isinstance(name, str) or not _ENDPOINT_NAME_RE.fullmatch(name):
        raise ValueError(f"invalid endpoint name: {str(name)[:80]!r}")
    return name


def validate_event_key(key: str) -> str:
    """Return an outbox key (``<20-digit ns>-<8 hex>``), else ValueError."""
    if not isinstance(key, str) or not _EVENT_KEY_RE.fullmatch(key):
        raise ValueError(f"invalid event key: {str(key)[:80]!r}")
    return key


def _notify_dir(endpoint: str) -> str:
    return f"{_NOTIFICATIONS}/{validate_endpoint_name(endpoint)}"


def notify_outbox_dir(endpoint: str) -> str:
    """The events waiting for ``endpoint``: one object each, named by its key."""
    return _notify_dir(endpoint) + "/outbox"


def notify_event_path(endpoint: str, key: str) -> str:
    return f"{notify_outbox_dir(endpoint)}/{validate_event_key(key)}"


def parse_notify_event(path: str) -> str | None:
    """The inverse of :func:`notify_event_path` for a child a listing of
    :func:`notify_outbox_dir` returned: its key, or None for anything else (a driver's
    temporary file). Never raises."""
    if not isinstance(path, str):
        return None
    key = entry_name(path)
    return key if _EVENT_KEY_RE.fullmatch(key) else None


def notify_state_path(endpoint: str) -> str:
    return _notify_dir(endpoint) + "/state.json"


def notify_lease_path(endpoint: str) -> str:
    return _notify_dir(endpoint) + "/drain.lease"
