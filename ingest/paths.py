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

Uploads are keyed by id alone because the verification task receives only the
id; the repository recorded in ``info.json`` is checked on every access.

Inputs are validated here (names, digests, upload ids) even when callers
already did, so no caller can build a path from unchecked text.
"""

from __future__ import annotations

import re

from ingest.digests import Digest
from ingest.errors import BlobUploadUnknown
from ingest.names import validate_name

__all__ = [
    "blob_data_path",
    "blob_dir",
    "layer_link_path",
    "layers_dir",
    "upload_data_path",
    "upload_dir",
    "upload_info_path",
    "upload_prehash_lease_path",
    "upload_prehash_path",
    "upload_result_path",
    "upload_state_path",
    "uploads_root",
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
