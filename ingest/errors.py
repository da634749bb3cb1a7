"""The one error taxonomy of verified-ingest.

Every failure the library, the Celery tasks, the HTTP frontend and the CLI report
is an :class:`IngestError`. Each class carries a stable, OCI-style ``code``, the
HTTP status it maps to, and whether retrying the same operation can succeed::

    IngestError                      code                 http  retryable
    ├── ClientError                  (4xx: the request is at fault)
    │   ├── BlobUnknown              BLOB_UNKNOWN          404
    │   ├── BlobUploadUnknown        BLOB_UPLOAD_UNKNOWN   404
    │   ├── BlobUploadInvalid        BLOB_UPLOAD_INVALID   400
    │   │   └── UploadClosed         BLOB_UPLOAD_INVALID   400
    │   ├── RangeInvalid             RANGE_INVALID         416
    │   ├── DigestInvalid            DIGEST_INVALID        400
    │   │   └── TarSumUnsupported    DIGEST_INVALID        400
    │   ├── SizeInvalid              SIZE_INVALID          400
    │   │   └── TooLarge                 SIZE_INVALID          413
    │   ├── NameInvalid              NAME_INVALID          400
    │   ├── NameUnknown              NAME_UNKNOWN          404
    │   ├── ManifestBlobUnknown      MANIFEST_BLOB_UNKNOWN 400
    │   ├── ManifestInvalid          MANIFEST_INVALID      400
    │   ├── ManifestUnknown          MANIFEST_UNKNOWN      404
    │   ├── Unsupported              UNSUPPORTED           405
    │   │   └── ArgumentInvalid      UNSUPPORTED           400
    │   ├── Unauthorized             UNAUTHORIZED          401
    │   ├── Denied                   DENIED                403
    │   └── TooManyRequests          TOOMANYREQUESTS       429  yes
    └── ServerError                  (5xx: ours, not the client's)
        ├── StorageUnavailable       UNAVAILABLE           503  yes
        ├── VerificationTimeout      VERIFICATION_TIMEOUT  503  yes
        └── Unknown                  UNKNOWN               500

Contract for every class (a unit test walks the tree and checks it):

* Constructor arguments are positional and JSON-safe -- ``(message, detail)`` --
  and are passed to ``Exception.__init__``. Celery's JSON result backend stores
  ``exc_type``/``exc_module``/``exc_message=args`` and rebuilds the exception on
  the client as ``cls(*args)``, so this keeps the code and detail intact across
  the worker → Redis → frontend trip.
* A class that defines ``code`` owns it; subclasses may share their parent's code
  (a finer Python type for the same wire error). Class names are persisted in task
  results, so renaming one needs an alias left behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "ArgumentInvalid",
    "BlobUnknown",
    "BlobUploadInvalid",
    "BlobUploadUnknown",
    "ClientError",
    "Denied",
    "DigestInvalid",
    "IngestError",
    "ManifestBlobUnknown",
    "ManifestInvalid",
    "ManifestUnknown",
    "NameInvalid",
    "NameUnknown",
    "RangeInvalid",
    "ServerError",
    "SizeInvalid",
    "StorageUnavailable",
    "TarSumUnsupported",
    "TooLarge",
    "TooManyRequests",
    "Unauthorized",
    "Unknown",
    "Unsupported",
    "UploadClosed",
    "VerificationTimeout",
    "error_classes",
    "from_dict",
]

#: Process exit codes used by the CLI (click uses 2 for usage errors).
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REJECTED = 3
EXIT_UNAVAILABLE = 4


class IngestError(Exception):
    """Base of every error verified-ingest reports.

    ``message`` is a human sentence; ``detail`` is a JSON-safe mapping with the
    machine-readable specifics (claimed/computed digests, offsets, reasons).
    """

    code: ClassVar[str] = "UNKNOWN"
    http_status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False
    default_message: ClassVar[str] = "unknown error"

    def __init__(self, message: str | None = None, detail: Mapping[str, Any] | None = None):
        self.message = message or self.default_message
        self.detail: dict[str, Any] = dict(detail or {})
        super().__init__(self.message, self.detail)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        # Monitoring tools (Flower, logs) show repr(): make it the code, the
        # sentence and the details, e.g. claimed and computed digests.
        details = ", ".join(f"{k}={v}" for k, v in sorted(self.detail.items()))
        return (
            f"{type(self).__name__}({self.code}: {self.message}{'; ' + details if details else ''})"
        )

    @property
    def exit_code(self) -> int:
        """The CLI exit status: 3 rejected by us, 4 try again later, 1 otherwise."""
        if self.retryable:
            return EXIT_UNAVAILABLE
        if 400 <= self.http_status < 500:
            return EXIT_REJECTED
        return EXIT_FAILURE

    def to_dict(self) -> dict[str, Any]:
        """The OCI error-envelope entry: ``{"code", "message", "detail"}``."""
        return {"code": self.code, "message": self.message, "detail": self.detail}


class ClientError(IngestError):
    """The request or its content is at fault; repeating it unchanged fails again."""

    http_status = 400
    default_message = "invalid request"


class BlobUnknown(ClientError):
    """The blob is not linked in this repository (even if another one has it)."""

    code = "BLOB_UNKNOWN"
    http_status = 404
    default_message = "blob unknown to registry"


class BlobUploadUnknown(ClientError):
    """No such upload session: never created, cancelled, or purged."""

    code = "BLOB_UPLOAD_UNKNOWN"
    http_status = 404
    default_message = "blob upload unknown to registry"


class BlobUploadInvalid(ClientError):
    """The upload cannot take this operation in its current state."""

    code = "BLOB_UPLOAD_INVALID"
    http_status = 400
    default_message = "blob upload invalid"


class UploadClosed(BlobUploadInvalid):
    """An operation on an upload handle after ``close()``, ``finish()`` or ``cancel()``."""

    default_message = "upload handle is closed"


class RangeInvalid(ClientError):
    """A write did not start at the upload's current size; ``detail["offset"]`` says where."""

    code = "RANGE_INVALID"
    http_status = 416
    default_message = "invalid content range"


class DigestInvalid(ClientError):
    """The digest is malformed, unsupported, or does not match the content.

    ``detail["reason"]`` is one of ``malformed``, ``unsupported``,
    ``tarsum-unsupported``, ``mismatch`` or ``tar-error``; a mismatch also carries
    ``claimed`` and ``computed``.
    """

    code = "DIGEST_INVALID"
    http_status = 400
    default_message = "provided digest did not match uploaded content"


class TarSumUnsupported(DigestInvalid):
    """A TarSum version or hash that cannot be verified (ErrLayerTarSumVersionUnsupported)."""

    default_message = "unsupported tarsum version"


class SizeInvalid(ClientError):
    """The content length does not match the claimed size, or exceeds the limit."""

    code = "SIZE_INVALID"
    http_status = 400
    default_message = "provided length did not match content length"


class TooLarge(SizeInvalid):
    """The blob or manifest exceeds the configured maximum (HTTP 413)."""

    http_status = 413
    default_message = "content exceeds the maximum size"


class NameInvalid(ClientError):
    """The repository name does not follow the distribution grammar."""

    code = "NAME_INVALID"
    http_status = 400
    default_message = "invalid repository name"


class NameUnknown(ClientError):
    """The repository is not known."""

    code = "NAME_UNKNOWN"
    http_status = 404
    default_message = "repository name not known to registry"


class ManifestBlobUnknown(ClientError):
    """A manifest references blobs that are not linked in the repository."""

    code = "MANIFEST_BLOB_UNKNOWN"
    http_status = 400
    default_message = "manifest references unknown blobs"


class ManifestInvalid(ClientError):
    """The manifest is not valid JSON of a supported type, or contradicts its address."""

    code = "MANIFEST_INVALID"
    http_status = 400
    default_message = "manifest invalid"


class ManifestUnknown(ClientError):
    """No manifest under that tag or digest in the repository."""

    code = "MANIFEST_UNKNOWN"
    http_status = 404
    default_message = "manifest unknown"


class Unsupported(ClientError):
    """The operation is not supported."""

    code = "UNSUPPORTED"
    http_status = 405
    default_message = "the operation is unsupported"


class ArgumentInvalid(Unsupported):
    """An argument is of the wrong type, malformed or out of its safe range: a task
    message from the broker, or a housekeeping call (``purge --older-than 0s``).

    Refused before anything touches storage. ``detail["argument"]`` names it;
    ``detail["reason"]`` says why (``type``, ``range``, ``malformed``, ``signature``).
    OCI's UNSUPPORTED covers "an invalid set of parameters"; the CLI reports it as
    a usage error (exit 2).
    """

    http_status = 400
    default_message = "invalid argument"


class Unauthorized(ClientError):
    """The request carries no credentials, or credentials that do not authenticate
    (a wrong password, a token that is expired, for another audience, or badly
    signed), or a token without the scope the request needs. The HTTP frontend
    answers with the ``WWW-Authenticate`` challenge of its authentication mode;
    ``detail["reason"]`` says which case it is, never whether a secret was close."""

    code = "UNAUTHORIZED"
    http_status = 401
    default_message = "authentication required"


class Denied(ClientError):
    """Authenticated, but the requested access to the resource is not granted."""

    code = "DENIED"
    http_status = 403
    default_message = "requested access to the resource is denied"


class TooManyRequests(ClientError):
    """The client is over a rate or concurrency limit; it may try again later."""

    code = "TOOMANYREQUESTS"
    http_status = 429
    retryable = True
    default_message = "too many requests"


class ServerError(IngestError):
    """Our side failed; the request itself may be fine."""

    code = "UNKNOWN"
    http_status = 500
    default_message = "internal error"


class StorageUnavailable(ServerError):
    """Storage, broker or result backend failed transiently (I/O error, ENOSPC, timeout)."""

    code = "UNAVAILABLE"
    http_status = 503
    retryable = True
    default_message = "storage or queue temporarily unavailable"


class VerificationTimeout(ServerError):
    """The verification did not finish within its time limit, or the wait bound passed."""

    code = "VERIFICATION_TIMEOUT"
    http_status = 503
    retryable = True
    default_message = "verification did not finish in time"


class Unknown(ServerError):
    """An unexpected failure; the detail names the original exception type."""

    code = "UNKNOWN"
    http_status = 500
    default_message = "unknown error"


def error_classes() -> list[type[IngestError]]:
    """Every class in the taxonomy, parents before children."""
    out: list[type[IngestError]] = []
    todo: list[type[IngestError]] = [IngestError]
    while todo:
        cls = todo.pop(0)
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def _canonical_for_code() -> dict[str, type[IngestError]]:
    # The first (most general) class that declares a code stands for it on the wire.
    table: dict[str, type[IngestError]] = {}
    for cls in error_classes():
        if cls in (IngestError, ClientError, ServerError):
            continue
        table.setdefault(cls.code, cls)
    return table


def from_dict(data: Mapping[str, Any]) -> IngestError:
    """Rebuild an error from its :meth:`IngestError.to_dict` form (unknown codes → Unknown)."""
    code = str(data.get("code", "UNKNOWN"))
    cls = _canonical_for_code().get(code, Unknown)
    detail = data.get("detail")
    err = cls(str(data.get("message") or ""), detail if isinstance(detail, Mapping) else None)
    return err
