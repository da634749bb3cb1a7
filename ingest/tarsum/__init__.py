"""Bit-exact, streaming Docker TarSum (``tarsum``, ``tarsum.v1``, ``tarsum.dev``).

Implements the algorithm described in ``docs/tarsum-spec.md`` with this project's
decisions (spec §10):

* **Legacy tar-reader semantics**: the archive is read the way docker's vendored
  Go 1.3-era ``archive/tar`` read it (the reader behind every published v1-era sum):
  a NUL typeflag is hashed as NUL, a PAX ``g`` header is an ordinary entry, empty PAX
  values are applied, devmajor/devminor are read only for types ``3``/``4``, there is
  no sparse expansion, and bytes 345..500 of a GNU header are a name prefix.
* **Duplicate names** are ordered by a port of Go's pre-1.6 ``sort.Sort``; duplicate
  detection uses Go ``path.Clean`` (docker 1.12 - 17.x).
* **gzip input is decompressed first** (magic ``1f 8b``, multi-member), with caps.
* Only ``sha256`` and ``sha512`` labels are accepted; uname/gname are hashed (the
  2014-2017 algorithm, not the 2018 one).

Where the legacy Go code would have panicked or produced a map-order-dependent
result, a ``tar-error`` is raised instead; see :class:`TarSum` for the list.

Modules: :mod:`.labels` (the label grammar), :mod:`.reader` (Go-compatible header
parsing from 512-byte blocks), :mod:`.engine` (the streaming engine), :mod:`.inflate`
(its gzip input layer) and :mod:`.ordering` (the order of the per-entry sums).
"""

from __future__ import annotations

from ingest.tarsum.engine import META_RECORD_CAP as META_RECORD_CAP
from ingest.tarsum.engine import TarSum, tarsum_file
from ingest.tarsum.labels import (
    TARSUM_HASHES,
    TARSUM_VERSIONS,
    get_version_from_tarsum,
    parse_label,
    version_label_for_checksum,
)

# Internals the unit tests exercise directly.
from ingest.tarsum.ordering import _go_clean as _go_clean
from ingest.tarsum.ordering import _is_clean as _is_clean
from ingest.tarsum.ordering import _legacy_sort as _legacy_sort

__all__ = [
    "TARSUM_HASHES",
    "TARSUM_VERSIONS",
    "TarSum",
    "get_version_from_tarsum",
    "parse_label",
    "tarsum_file",
    "version_label_for_checksum",
]
