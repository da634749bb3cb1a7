"""Every storage key verified-ingest uses, from one pure mapper.

The layout, below the driver's root::

    /blobs/<alg>/<hex[0:2]>/<hex>/data                  content-addressed blob (canonical sha256)
    /repositories/<name>/_layers/<alg>/<hex>/link       "sha256:<hex>" of the blob it names;
                                                        one per digest the repo knows, so a
                                                        sha512 or tarsum alias links to the
                                                        same canonical blob
    /uploads/<uuid>/info.json                           immutable: repository, started_at
    /uploads/<uuid>/data                                staged bytes; its size is the offset
    /uploads/<uuid>/state.json                          lifecycle: open/finishing/verified/failed
    /uploads/<uuid>/result.json                         the committed result; written once
    /uploads/<uuid>/prehash.lease                       a worker hashes the bytes as they arrive
    /uploads/<uuid>/prehash.json                        its result: sha256 of the first N bytes
    /uploads/<uuid>/verify.lease                        a worker is verifying it (ingest.leases)
    /repositories/<name>/_manifests/revisions/<alg>/<hex>/link
                                                        a manifest revision ("sha256:<hex>"
                                                        of the blob holding its bytes)
    /quarantine/<id>/record.json                        what fsck found and repaired
    /quarantine/<id>/data                               a blob fsck moved out of /blobs
    /maintenance/fsck.json                              the scheduled fsck's cursor and passes

Uploads are keyed by id alone because the verification task receives only the
id; the repository recorded in ``info.json`` is checked on every access.

Inputs are validated here (names, digests, upload ids) even when callers
already did, so no caller can build a path from unchecked text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.digests import Digest, parse_digest
from ingest.errors import BlobUploadUnknown, IngestError
from ingest.names import validate_name

__all__ = [
    "RepositoryLink",
    "blob_data_path",
    "blob_dir",
    "blobs_root",
    "fsck_state_path",
    "layer_link_path",
    "layers_dir",
    "manifest_revision_dir",
    "manifest_revision_link_path",
    "manifest_tags_dir",
    "parse_repository_link",
    "quarantine_data_path",
    "quarantine_dir",
    "quarantine_record_path",
    "quarantine_root",
    "repositories_root",
    "upload_data_path",
    "upload_dir",
    "upload_info_path",
    "upload_prehash_lease_path",
    "upload_prehash_path",
    "upload_result_path",
    "upload_state_path",
    "upload_verify_lease_path",
    "uploads_root",
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
        if not _SAFE_SEGMENT.fullmatch(seg) or seg in (".", ".."):
            raise ValueError(f"unsafe digest for a path: {digest}")
    return alg, enc


def blob_dir(digest: Digest) -> str:
    alg, enc = _segments(digest)
    return f"/blobs/{alg}/{enc[:2]}/{enc}"


def blob_data_path(digest: Digest) -> str:
    return blob_dir(digest) + "/data"


def layers_dir(repository: str) -> str:
    return f"/repositories/{validate_name(repository)}/_layers"


def layer_link_path(repository: str, digest: Digest) -> str:
    alg, enc = _segments(digest)
    return f"{layers_dir(repository)}/{alg}/{enc}/link"


def uploads_root() -> str:
    return "/uploads"


def upload_dir(upload_id: str) -> str:
    return f"/uploads/{validate_upload_id(upload_id)}"


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


# -- repositories, manifests, quarantine, maintenance (fsck) ---------------------------


def repositories_root() -> str:
    return "/repositories"


def blobs_root(algorithm: str = "sha256") -> str:
    """The directory holding every blob stored under ``algorithm`` (``/blobs/sha256``)."""
    alg, _ = _segments(Digest(algorithm, "0"))
    return f"/blobs/{alg}"


def _manifests_dir(repository: str) -> str:
    return f"/repositories/{validate_name(repository)}/_manifests"


def manifest_revision_dir(repository: str, digest: Digest) -> str:
    alg, enc = _segments(digest)
    return f"{_manifests_dir(repository)}/revisions/{alg}/{enc}"


def manifest_revision_link_path(repository: str, digest: Digest) -> str:
    return manifest_revision_dir(repository, digest) + "/link"


def manifest_tags_dir(repository: str) -> str:
    return f"{_manifests_dir(repository)}/tags"


@dataclass(frozen=True, slots=True)
class RepositoryLink:
    """A link file that names a blob: a layer link (``kind="layer"``) or a manifest
    revision (``kind="manifest"``) of ``repository``, known there as ``digest``."""

    repository: str
    kind: str
    digest: Digest

    @property
    def path(self) -> str:
        if self.kind == "layer":
            return layer_link_path(self.repository, self.digest)
        return manifest_revision_link_path(self.repository, self.digest)


_LINK_RE = re.compile(
    r"/repositories/(?P<name>.+)/(?P<kind>_layers|_manifests/revisions)"
    r"/(?P<alg>[^/]+)/(?P<enc>[^/]+)/link"
)


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
    try:
        link = RepositoryLink(
            validate_name(m["name"]), kind, parse_digest(f"{m['alg']}:{m['enc']}")
        )
        rebuilt = link.path
    except (IngestError, ValueError):
        return None
    return link if rebuilt == path else None


_QUARANTINE_ID_RE = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{12}-[0-9a-f]{8}")


def validate_quarantine_id(quarantine_id: str) -> str:
    """Return the id if it has the form fsck gives them
    (``20250101T120000Z-<12 hex of the digest>-<8 random hex>``), else ValueError."""
    if not isinstance(quarantine_id, str) or not _QUARANTINE_ID_RE.fullmatch(quarantine_id):
        raise ValueError(f"invalid quarantine id: {str(quarantine_id)[:80]!r}")
    return quarantine_id


def quarantine_root() -> str:
    return "/quarantine"


def quarantine_dir(quarantine_id: str) -> str:
    return f"/quarantine/{validate_quarantine_id(quarantine_id)}"


def quarantine_record_path(quarantine_id: str) -> str:
    return quarantine_dir(quarantine_id) + "/record.json"


def quarantine_data_path(quarantine_id: str) -> str:
    return quarantine_dir(quarantine_id) + "/data"


def fsck_state_path() -> str:
    """The scheduled fsck's cursor and pass history (in storage: survives Redis)."""
    return "/maintenance/fsck.json"
