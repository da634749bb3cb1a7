"""What every handler module shares: the facade from the app, validated path
parameters, and request-header parsing. Handlers are thin: parse → core → render."""

from __future__ import annotations

from starlette.requests import Request

from ingest.api import Ingest
from ingest.digests import Digest, check_supported, parse_digest
from ingest.errors import DigestInvalid, SizeInvalid
from ingest.logs import upload_id_var
from ingest.names import validate_name
from ingest.paths import validate_upload_id


def ingest(request: Request) -> Ingest:
    """The facade ``create_app`` put on the app: the handlers' only way into the core."""
    ing = request.app.state.ingest
    assert isinstance(ing, Ingest)
    return ing


def repository(request: Request) -> str:
    """The path's repository name, validated."""
    return validate_name(request.path_params["name"])


def upload_id(request: Request) -> str:
    """The path's upload id, validated and bound to every log line of this request."""
    value = validate_upload_id(request.path_params["upload_id"])
    upload_id_var.set(value)
    return value


def path_digest(request: Request) -> Digest:
    """The path's digest, parsed (DigestInvalid otherwise)."""
    return parse_digest(request.path_params["digest"])


def claimed_digest(request: Request) -> Digest:
    """The ``?digest=`` a client finishes an upload with: parsed, and one this build
    can verify, before a byte is staged."""
    raw = request.query_params.get("digest")
    if not raw:
        raise DigestInvalid("digest query parameter required", {"reason": "missing"})
    return check_supported(parse_digest(raw))


def content_length(request: Request) -> int | None:
    """The Content-Length header as an integer; SizeInvalid if it is not one."""
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdecimal()) or len(raw) > 19:
        raise SizeInvalid("invalid Content-Length", {"content_length": raw[:40]})
    return int(raw)
