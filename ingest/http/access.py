"""Who may do what: the one map from a route and method to the access it needs, and
the check every request passes before its handler reads a byte of its body.

Scopes are the token specification's (:mod:`ingest.auth`), and the map is
distribution's (``registry/handlers/app.go``, ``appendAccessRecords``), except where
noted:

=============================================  ==========================  =========
route                                          needs                       action
=============================================  ==========================  =========
``GET /v2/``                                   an authenticated identity   ``login``
``GET /v2/_catalog``                           ``registry:catalog:*``      ``catalog``
``GET/HEAD`` blobs, manifests, tags, referrers ``repository:N:pull``       ``pull``
``POST/PATCH/PUT/GET/DELETE`` uploads,         ``repository:N:pull,push``  ``push``
``PUT`` manifests
``DELETE`` blobs, manifests                    ``repository:N:delete``     ``delete``
``GET /ingest/v1/uploads/U``, ``POST …/retry`` ``pull,push`` on U's         ``push``
                                               repository
``POST /ingest/v1/failed-uploads/retry``       an authenticated identity;  ``push``
                                               acts on the uploads of the
                                               repositories it may push to
``GET /ingest/v1/openapi.json``                nothing                     ``public``
=============================================  ==========================  =========

* Push needs pull as well, as distribution requires: a client that pushes reads
  back (HEAD of the blobs it is about to push, mounts, manifest checks). Unlike
  distribution, the upload session's own GET and DELETE (cancel) need push too
  (distribution derives them from the method: pull for GET, delete for DELETE):
  a session belongs to a push, and cancelling one is not deleting content.
* The ingest API's upload routes look the upload's repository up first; a caller
  without push there is answered exactly as for an unknown upload (404
  ``BLOB_UPLOAD_UNKNOWN``), so upload ids of other repositories reveal nothing. An
  anonymous caller is asked for credentials (401, challenge without a scope) before
  the lookup, for the same reason. The bulk retry acts only on uploads the caller
  could retry one by one: the others are left out of its answer, as unknown.

Order of the checks, each answered as soon as it fails:

1. The route and method (Starlette: 404/405 ``UNSUPPORTED``).
2. The grammar of the path's repository name (400 ``NAME_INVALID``) or upload id
   (404 ``BLOB_UPLOAD_UNKNOWN``): public rules, so answering them first reveals
   nothing, and no unchecked text reaches a challenge header or the audit log.
3. Authentication: a header that does not authenticate is 401 ``UNAUTHORIZED`` with
   the mode's challenge (``error="invalid_token"`` for Bearer).
4. Authorisation: an anonymous caller (no ``Authorization`` header; a token without
   a subject is not anonymous) lacking the access gets 401 with the challenge
   naming the scopes wanted; an authenticated one lacking it gets, with Bearer, 401
   and ``error="insufficient_scope"`` (clients fetch a better token only on a 401
   challenge: distribution's token controller answers so, and docker,
   containers/image and oras do exactly that; RFC 6750's 403 would leave them
   stuck), with any other scheme 403 ``DENIED`` (a Basic user cannot get more
   access by retrying).
5. The switches: read-only mode refuses every write, and, unless deletes are
   enabled, blob and manifest DELETE are refused: 405 ``UNSUPPORTED`` with
   ``detail.reason`` ``read-only`` or ``delete-disabled`` and an ``Allow`` header.
   After authorisation, as distribution does, so a caller who may not write learns
   nothing of the configuration.
6. The handler: its parameters (digests, references, ranges), then the body.

Every request's :class:`Audit` record (subject, repository, action) is filled in
here and written by the access log (:mod:`ingest.http.app`).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Collection, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ingest.auth import ANONYMOUS, Access, Authenticator, Identity, bearer_error
from ingest.errors import BlobUploadUnknown, Denied, IngestError, Unauthorized, Unsupported
from ingest.http.common import ingest, upload_id
from ingest.http.errors import error_response
from ingest.names import validate_name
from ingest.notify import Origin

__all__ = [
    "Audit",
    "Policy",
    "Resource",
    "audit_var",
    "authorize",
    "identity",
    "may_pull",
    "may_push",
    "origin",
    "required",
]

PULL = frozenset({"pull"})
#: distribution asks for pull with push (and clients request both).
PUSH = frozenset({"pull", "push"})
DELETE = frozenset({"delete"})
CATALOG = Access("registry", "catalog", frozenset({"*"}))


class Resource(enum.Enum):
    """What a route serves; with the method, it decides the access needed."""

    BASE = "base"  # /v2/
    CATALOG = "catalog"  # /v2/_catalog
    UPLOADS = "uploads"  # /v2/<name>/blobs/uploads/
    UPLOAD = "upload"  # /v2/<name>/blobs/uploads/<id>
    BLOB = "blob"
    MANIFEST = "manifest"
    TAGS = "tags"
    REFERRERS = "referrers"
    UPLOAD_STATUS = "upload-status"  # /ingest/v1/uploads/<id>
    UPLOAD_RETRY = "upload-retry"  # /ingest/v1/uploads/<id>/retry
    RETRY_FAILED = "retry-failed"  # /ingest/v1/failed-uploads/retry
    PUBLIC = "public"  # /ingest/v1/openapi.json


@dataclass(frozen=True, slots=True)
class Need:
    """What one route and method needs."""

    action: str  # for the audit log: login, catalog, pull, push, delete, public
    actions: frozenset[str] = frozenset()  # on the request's repository
    write: bool = False  # refused in read-only mode
    deletion: bool = False  # refused unless deletes are enabled


_PULL = Need("pull", PULL)
_PUSH = Need("push", PUSH, write=True)
_DELETE = Need("delete", DELETE, write=True, deletion=True)

#: (resource, method) → need. HEAD is served by the GET handler and needs the same.
NEEDS: dict[tuple[Resource, str], Need] = {
    (Resource.BASE, "GET"): Need("login"),
    (Resource.CATALOG, "GET"): Need("catalog"),
    (Resource.UPLOADS, "POST"): _PUSH,
    (Resource.UPLOAD, "PATCH"): _PUSH,
    (Resource.UPLOAD, "PUT"): _PUSH,
    (Resource.UPLOAD, "DELETE"): _PUSH,  # cancel: allowed even when deletes are not
    (Resource.UPLOAD, "GET"): Need("push", PUSH),
    (Resource.BLOB, "GET"): _PULL,
    (Resource.BLOB, "DELETE"): _DELETE,
    (Resource.MANIFEST, "GET"): _PULL,
    (Resource.MANIFEST, "PUT"): _PUSH,
    (Resource.MANIFEST, "DELETE"): _DELETE,
    (Resource.TAGS, "GET"): _PULL,
    (Resource.REFERRERS, "GET"): _PULL,
    (Resource.UPLOAD_STATUS, "GET"): Need("push", PUSH),
    (Resource.UPLOAD_RETRY, "POST"): Need("push", PUSH, write=True),
    # Per upload, the handler checks push on its repository (may_push).
    (Resource.RETRY_FAILED, "POST"): Need("push", PUSH, write=True),
    (Resource.PUBLIC, "GET"): Need("public"),
}

_V2_REPOSITORY = frozenset(
    {
        Resource.UPLOADS,
        Resource.UPLOAD,
        Resource.BLOB,
        Resource.MANIFEST,
        Resource.TAGS,
        Resource.REFERRERS,
    }
)
_INGEST_UPLOAD = frozenset({Resource.UPLOAD_STATUS, Resource.UPLOAD_RETRY})


def required(resource: Resource, method: str) -> Need:
    """The need of ``method`` on ``resource`` (HEAD as GET). KeyError for a pair no
    route serves."""
    return NEEDS[(resource, "GET" if method == "HEAD" else method)]


@dataclass(frozen=True, slots=True)
class Policy:
    """The frontend's access configuration: who is asking, and the switches."""

    authenticator: Authenticator
    delete_enabled: bool = False
    read_only: bool = False

    def allows_method(self, resource: Resource, method: str) -> bool:
        """Whether the switches let ``method`` on ``resource`` through at all."""
        need = required(resource, method)
        return not (need.write and self.read_only) and not (
            need.deletion and not self.delete_enabled
        )


@dataclass(slots=True)
class Audit:
    """What the access log reports about who did what; filled in as the request is
    checked. ``subject`` is ``""`` for an anonymous caller (and for one whose
    credentials did not authenticate: ``auth_error`` then says why)."""

    subject: str = ""
    repository: str | None = None
    action: str | None = None
    auth_error: str | None = None


#: The current request's audit record (bound by the access log middleware).
audit_var: ContextVar[Audit | None] = ContextVar("audit", default=None)


def origin(request: Request) -> Origin | None:
    """Who is asking and through which request, for a registry event
    (:mod:`ingest.notify`): distribution's ``request`` and ``actor`` records. None
    when no endpoint is configured (nothing to build)."""
    if not ingest(request).notifier.enabled:
        return None
    client = request.client
    return Origin(
        request_id=str(uuid.uuid4()),
        addr=f"{client.host}:{client.port}" if client else "",
        host=request.headers.get("host", ""),
        method=request.method,
        useragent=request.headers.get("user-agent", ""),
        actor=identity(request).subject,
        base_url=str(request.base_url).rstrip("/"),
    )


def identity(request: Request) -> Identity:
    """Who the request authenticated as (:data:`~ingest.auth.ANONYMOUS` before the check)."""
    found = getattr(request.state, "identity", None)
    return found if isinstance(found, Identity) else ANONYMOUS


def may_pull(request: Request, repository: str) -> bool:
    """Whether the caller may pull from ``repository`` (a validated name): a
    cross-repository mount needs it on its source."""
    return identity(request).allows(Access("repository", repository, PULL))


def may_push(request: Request, repository: str) -> bool:
    """Whether the caller may push to ``repository`` (a validated name): what the bulk
    retry asks of each failed upload, as the retry of one upload does."""
    return identity(request).allows(Access("repository", repository, PUSH))


def _policy(request: Request) -> Policy:
    policy = request.app.state.policy
    assert isinstance(policy, Policy)
    return policy


def _challenge(
    request: Request,
    authenticator: Authenticator,
    exc: IngestError,
    wanted: Sequence[Access],
    error: str | None = None,
) -> Response:
    value = authenticator.challenge(wanted, error if authenticator.scheme == "Bearer" else None)
    return error_response(request, exc, {"WWW-Authenticate": value} if value else None)


def _lacking(
    request: Request, authenticator: Authenticator, authenticated: bool, wanted: Sequence[Access]
) -> Response:
    """The refusal of a caller who lacks ``wanted``: anonymous, 401 asking for
    credentials; with a Bearer token, 401 asking for a token with more scope (the
    only answer on which clients fetch one); otherwise 403."""
    scope = [w.scope for w in wanted]
    if not authenticated:
        return _challenge(
            request,
            authenticator,
            Unauthorized(detail={"reason": "anonymous", "scope": scope}),
            wanted,
        )
    if authenticator.scheme == "Bearer":
        insufficient = Unauthorized(
            "the token does not grant the access this request needs",
            {"reason": "insufficient-scope", "scope": scope},
        )
        return _challenge(request, authenticator, insufficient, wanted, "insufficient_scope")
    return error_response(request, Denied(detail={"reason": "denied", "scope": scope}))


async def authorize(
    request: Request, resource: Resource, methods: Collection[str]
) -> Response | None:
    """Check the request against its route's need, in the order of the module
    docstring. None: the handler may run. Otherwise the refusal to send (401, 403,
    405; ``methods``, those the route serves, give a 405 its ``Allow``). A malformed
    repository name or upload id, an unknown upload or one the caller may not see
    raise their IngestError (rendered by the app's handler)."""
    need = required(resource, request.method)
    audit = audit_var.get() or Audit()
    audit.action = need.action
    if resource is Resource.PUBLIC:
        return None
    policy = _policy(request)
    authenticator = policy.authenticator

    wanted: tuple[Access, ...] = ()
    uid = None
    if resource in _V2_REPOSITORY:
        name = validate_name(request.path_params["name"])
        audit.repository = name
        wanted = (Access("repository", name, need.actions),)
    elif resource is Resource.CATALOG:
        wanted = (CATALOG,)
    elif resource in _INGEST_UPLOAD:
        uid = upload_id(request)

    header = request.headers.get("authorization")
    try:
        # Verifying a password hash or a signature is CPU work: off the event loop.
        who = (
            authenticator.authenticate(None)
            if header is None
            else await run_in_threadpool(authenticator.authenticate, header)
        )
    except Unauthorized as exc:
        reason = exc.detail.get("reason")
        audit.auth_error = str(reason) if reason is not None else "unauthorized"
        # A header in another scheme is answered like none (RFC 6750 §3.1, as
        # distribution does); a bad credential gets invalid_token.
        return _challenge(request, authenticator, exc, wanted, bearer_error(reason))
    audit.subject = who.subject
    request.state.identity = who
    # Credentials that authenticated (a token need not name a subject: anonymous
    # tokens have none), or everyone, with authentication switched off.
    authenticated = header is not None or who.grants is None

    if resource in (Resource.BASE, Resource.RETRY_FAILED) or uid is not None:
        # Anyone authenticated; for an upload, before looking it up (see above).
        if not authenticated:
            return _lacking(request, authenticator, authenticated, ())
        if uid is not None:
            repository = await run_in_threadpool(ingest(request).upload_repository, uid)
            audit.repository = repository
            if not who.allows(Access("repository", repository, need.actions)):
                raise BlobUploadUnknown(detail={"upload_id": uid})
    elif not who.allows_all(wanted):
        return _lacking(request, authenticator, authenticated, wanted)

    if need.write and policy.read_only:
        refusal = Unsupported(
            "the registry is read-only (maintenance): writes are refused, pulls work",
            {"reason": "read-only"},
        )
    elif need.deletion and not policy.delete_enabled:
        refusal = Unsupported(
            "deletes are disabled on this registry (INGEST_DELETE_ENABLED)",
            {"reason": "delete-disabled"},
        )
    else:
        return None
    allowed = sorted(m for m in _with_head(methods) if policy.allows_method(resource, m))
    return error_response(request, refusal, {"Allow": ", ".join(allowed)})


def _with_head(methods: Collection[str]) -> set[str]:
    found = set(methods)
    if "GET" in found:
        found.add("HEAD")
    return found
