"""An HTTP client for the ingest frontend: push and pull blobs, follow and retry
verifications.

Speaks the OCI distribution API for blobs and the ingest JSON API for outcomes:

* push: ``HEAD`` the blob first and skip it if the repository has it (as skopeo and
  oras do); else POST, PATCH bodies streamed from the input in slices (a pipe of
  unknown length too: nothing is buffered beyond one slice), and the finishing PUT
  ``?digest=`` with ``Prefer: respond-async``, so the client can show the
  verification's progress from ``/ingest/v1/uploads/<id>`` instead of blocking.
* pull: GET streamed into a temporary file next to the target, hashed as it
  arrives, renamed only when the digest matches.

Authentication, as docker, skopeo and oras do it: a 401 names what the frontend wants
in ``WWW-Authenticate``. ``Basic``: the request is sent again with the credentials,
and every later one carries them from the start. ``Bearer realm,service,scope``: a
token for those scopes is fetched from the realm (with the credentials, or
anonymously without), the request is sent again with it, and the token is kept for
its ``expires_in`` and sent with later requests; a 401 naming a scope no kept token
was asked for fetches another. A streamed body cannot be sent twice, so a PATCH goes
out with what the POST before it got (for a push the token is asked for with
``pull,push`` on the repository from the first challenge on). Credentials and tokens
are never logged nor put in an error.

The ingest API (status, retry, cancel by upload id) challenges without a scope: naming
the upload's repository would reveal it to anyone holding the id. A token fetched for
that challenge alone grants nothing there, so a client made with ``repositories`` asks
every token for ``pull,push`` on them too, and :attr:`RegistryClient.unscoped_challenge`
tells a caller that a refusal may just be such a token.

Errors come back as the shared taxonomy (``DIGEST_INVALID``, ``UNAUTHORIZED``...)
or, when the service cannot be reached, as ``StorageUnavailable``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import httpx

from ingest.auth.headers import Challenge, ChallengeInvalid, parse_challenges
from ingest.digests import new_verifier, parse_digest
from ingest.errors import (
    DigestInvalid,
    IngestError,
    RangeInvalid,
    StorageUnavailable,
    TooManyRequests,
    Unauthorized,
    Unknown,
    VerificationTimeout,
    from_dict,
)
from ingest.names import validate_name

__all__ = ["SLICE", "Credentials", "RegistryClient", "compute_digest"]

OnBytes = Callable[[int], None]
OnVerify = Callable[[int, int], None]

#: Bytes read, sent (and reported to ``on_upload``) at a time within a PATCH: progress
#: moves during a chunk, and memory holds one slice, never a chunk.
SLICE = 256 << 10


#: Most bytes of an error body read from a streamed response (an OCI envelope is small).
MAX_ERROR_BODY = 64 << 10
#: Most bytes of a token server's answer read: a token with a certificate chain is a
#: few KiB; anything near this is not a token response.
MAX_TOKEN_RESPONSE = 1 << 20
#: Longest token sent back in an ``Authorization`` header (the frontend's own limit).
MAX_TOKEN = 64 << 10
#: A token's lifetime when the token server does not say (the token specification's).
DEFAULT_TOKEN_LIFETIME = 60.0
#: A kept token is renewed this long before it expires (at most half its lifetime):
#: a request must not arrive just after, least of all a streamed one, which cannot be
#: sent again after a 401.
TOKEN_RENEW_MARGIN = 10.0
#: Tokens kept per client (distinct scope sets); the oldest goes first.
MAX_TOKENS = 16
#: What a token may be made of to go into a header: visible ASCII, no space.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


def _error(resp: httpx.Response) -> IngestError:
    try:
        errors = resp.json()["errors"]
        return from_dict(errors[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return Unknown(f"HTTP {resp.status_code}", {"body": resp.text[:300]})


def _read_at_most(resp: httpx.Response, limit: int) -> bytes | None:
    """The body of a streamed ``resp``, or None if it is longer than ``limit`` bytes
    (then only that much was read)."""
    data = bytearray()
    for piece in resp.iter_bytes():
        data += piece
        if len(data) > limit:
            return None
    return bytes(data)


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password, for the frontend (Basic) or its token server. The
    password stays out of ``repr``, so a traceback or a log of the object shows none."""

    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if ":" in self.username:  # RFC 7617: the user-id ends at the first colon
            raise ValueError("a user name cannot contain ':'")

    def basic(self) -> str:
        """The ``Authorization`` value of HTTP Basic (RFC 7617, UTF-8)."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass(frozen=True, slots=True)
class _Token:
    """A Bearer token the token server at ``realm`` gave for ``scopes`` (normalised by
    :func:`_merge_scopes`), used until ``renew_at`` on the client's clock (a little
    before it expires)."""

    value: str = field(repr=False)
    realm: str
    service: str
    scopes: tuple[str, ...]
    renew_at: float

    @property
    def authorization(self) -> str:
        return f"Bearer {self.value}"


def _split_scope(scope: str) -> tuple[str, str, frozenset[str]] | None:
    """``type:name:actions`` as the token specification splits it (the type up to the
    first colon, the actions after the last: a name may hold colons), or None."""
    kind, _, rest = scope.partition(":")
    name, sep, actions = rest.rpartition(":")
    if not kind or not sep or not name:
        return None
    return kind, name, frozenset(a for a in actions.split(",") if a)


def _merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """``scopes`` with the actions asked for one resource merged (sorted, as the
    frontend writes them), each resource once, sorted; text that is no
    ``type:name:actions`` is kept as it is."""
    merged: dict[tuple[str, str], set[str]] = {}
    other: set[str] = set()
    for scope in scopes:
        split = _split_scope(scope)
        if split is None:
            other.add(scope)
        else:
            merged.setdefault(split[:2], set()).update(split[2])
    out = {f"{kind}:{name}:{','.join(sorted(actions))}" for (kind, name), actions in merged.items()}
    return tuple(sorted(out | other))


def _covers(granted: Iterable[str], wanted: Iterable[str]) -> bool:
    """Whether a token asked for ``granted`` was asked for everything in ``wanted``."""
    have: dict[tuple[str, str], set[str]] = {}
    literal = set()
    for scope in granted:
        split = _split_scope(scope)
        if split is None:
            literal.add(scope)
        else:
            have.setdefault(split[:2], set()).update(split[2])
    for scope in wanted:
        split = _split_scope(scope)
        if split is None:
            if scope not in literal:
                return False
            continue
        actions = have.get(split[:2])
        if actions is None or not ("*" in actions or split[2] <= actions):
            return False
    return True


def compute_digest(
    stream: BinaryIO, tarsum_label: str | None = None, on_bytes: OnBytes | None = None
) -> str:
    """The sha256 digest (or the TarSum of ``tarsum_label``) of the rest of ``stream``,
    read in slices: what a push of a seekable file claims, known before any byte is
    sent so the blob can be skipped if the repository has it."""

    def feed(update: Callable[[bytes], None]) -> None:
        while piece := stream.read(SLICE):
            update(piece)
            if on_bytes is not None:
                on_bytes(len(piece))

    if tarsum_label is not None:
        from ingest.tarsum import TarSum

        ts = TarSum(tarsum_label)
        feed(ts.update)
        return ts.finish()
    sha = hashlib.sha256()
    feed(sha.update)
    return "sha256:" + sha.hexdigest()


class RegistryClient:
    """Talks to one ingest frontend (``base_url``, e.g. ``http://127.0.0.1:5000``).

    ``credentials``: whom to authenticate as when the frontend asks (see the module
    docstring); without them requests are anonymous, and a token is asked for
    anonymously. ``repositories``: every token is asked for ``pull,push`` on these
    too (valid names, else NameInvalid), for the ingest API, whose challenge names no
    scope. ``transport``: an httpx transport to use instead of the network (tests;
    the token server is reached through it too). ``clock``: for token lifetimes. One
    client serves one thread at a time."""

    def __init__(
        self,
        base_url: str,
        *,
        credentials: Credentials | None = None,
        repositories: Iterable[str] = (),
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # The token server is asked through this same client: the same TLS settings
        # (verification, CA bundle) and timeouts as the frontend's connection.
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        self._credentials = credentials
        self._clock = clock
        self._basic = False  # the frontend asked for Basic: send it with every request
        self._tokens: list[_Token] = []  # newest last
        self._token: _Token | None = None  # sent with every request until a 401 says other
        # Scopes the operation under way will need: those of ``repositories`` always.
        self._wanted: tuple[str, ...] = _merge_scopes(
            f"repository:{validate_name(name)}:pull,push" for name in repositories
        )
        self._unscoped = False  # see unscoped_challenge

    def close(self) -> None:
        self._http.close()

    @property
    def unscoped_challenge(self) -> bool:
        """Whether the last request met the frontend's 401 with a Bearer challenge that
        named no scope (and did not call the token invalid): the ingest API's. Its
        token then covers only the ``repositories`` the client was made with, so an
        answer of BLOB_UPLOAD_UNKNOWN or 401 may only mean the upload's is not one."""
        return self._unscoped

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except httpx.TransportError as exc:
            raise StorageUnavailable(
                f"cannot reach {self.base_url}: {exc}", {"url": self.base_url}
            ) from exc

    @contextlib.contextmanager
    def _needing(self, *scopes: str) -> Iterator[None]:
        """While inside, tokens are asked for ``scopes`` too, whatever the challenge
        names: a push's first challenge (its HEAD's) only names pull, and the POST's
        would need a second token."""
        before = self._wanted
        self._wanted = _merge_scopes((*before, *scopes))
        try:
            yield
        finally:
            self._wanted = before

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        resp = self._send(method, url, **kwargs)
        if resp.status_code >= 400:
            raise self._error(resp)
        return resp

    def _error(self, resp: httpx.Response) -> IngestError:
        """The error of a refused request (of a streamed one, at most MAX_ERROR_BODY
        bytes of its body are read)."""
        try:
            resp.content  # noqa: B018 - read already (not streamed)?
        except httpx.ResponseNotRead:
            with self._reaching():
                body = _read_at_most(resp, MAX_ERROR_BODY)
            # Decoded already: only the type goes along, not the Content-Encoding.
            kind = {"Content-Type": resp.headers.get("content-type", "")}
            resp = httpx.Response(resp.status_code, headers=kind, content=body or b"")
        err = _error(resp)
        if isinstance(err, Unauthorized) and self._credentials is None:
            return Unauthorized(f"{err.message} (and no credentials were given)", err.detail)
        return err

    def _send(
        self,
        method: str,
        url: str,
        *,
        stream: bool = False,
        replayable: bool = True,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """One request with the credentials or token already known; after a 401 whose
        challenge this client can answer, once more with the answer. Not for a body
        that cannot be sent twice (``replayable=False``: a 401 is then the answer).
        ``stream``: the body is left unread, for the caller to read and close."""
        self._unscoped = False
        sent = self._authorization()
        resp = self._once(method, url, sent, stream, headers, kwargs)
        if resp.status_code != 401 or not replayable:
            self._note(resp)
            return resp
        try:
            answer = self._answer(resp, sent)
        except BaseException:
            resp.close()
            raise
        # Only now: a token server's refusal (raised above) is not the frontend's.
        self._note(resp)
        if answer is None:
            return resp
        resp.close()
        resp = self._once(method, url, answer, stream, headers, kwargs)
        self._note(resp)
        return resp

    def _note(self, resp: httpx.Response) -> None:
        """Record for :attr:`unscoped_challenge` what a 401 challenged with. Any other
        answer leaves the record as it is: a 404 after the ingest API's challenge is
        what that challenge explains."""
        if resp.status_code != 401:
            return
        bearer = _challenges(resp).get("bearer")
        self._unscoped = (
            bearer is not None
            and not bearer.params.get("scope", "").strip()
            and bearer.params.get("error") != "invalid_token"
        )

    def _once(
        self,
        method: str,
        url: str,
        authorization: str | None,
        stream: bool,
        headers: dict[str, str] | None,
        kwargs: dict[str, Any],
    ) -> httpx.Response:
        merged = dict(headers or {})
        if authorization is not None:
            merged["Authorization"] = authorization
        with self._reaching():
            request = self._http.build_request(method, url, headers=merged, **kwargs)
            return self._http.send(request, stream=stream)

    # -- authentication ------------------------------------------------------------------
    def _authorization(self) -> str | None:
        """What the next request carries: the token in use (renewed first when it is
        about to expire), else Basic once the frontend asked for it, else nothing."""
        token = self._token
        if token is not None:
            if self._clock() >= token.renew_at:
                token = self._fetch_token(token.realm, token.service, token.scopes)
            return token.authorization
        if self._basic and self._credentials is not None:
            return self._credentials.basic()
        return None

    def _answer(self, resp: httpx.Response, sent: str | None) -> str | None:
        """The ``Authorization`` to send again a request refused with ``resp`` (a 401)
        after carrying ``sent``; None when there is nothing better to try: no
        credentials for Basic, the same ones already refused, or a challenge this
        client does not read (the 401 is then the answer)."""
        schemes = _challenges(resp)
        if "bearer" in schemes:
            return self._bearer(schemes["bearer"], sent)
        if "basic" in schemes and self._credentials is not None:
            basic = self._credentials.basic()
            if sent == basic:
                return None  # refused as they are: a wrong user or password
            self._basic, self._token = True, None
            return basic
        return None

    def _bearer(self, challenge: Challenge, sent: str | None) -> str | None:
        realm = challenge.params.get("realm")
        if not realm:
            return None
        service = challenge.params.get("service", "")
        wanted = _merge_scopes(challenge.params.get("scope", "").split())
        now = self._clock()
        for token in reversed(self._tokens):
            if (
                token.realm == realm
                and token.service == service
                and now < token.renew_at
                and token.authorization != sent  # that one was just refused
                and _covers(token.scopes, wanted)
            ):
                self._token = token
                return token.authorization
        scopes = _merge_scopes((*wanted, *self._wanted))
        return self._fetch_token(realm, service, scopes).authorization

    def _fetch_token(self, realm: str, service: str, scopes: tuple[str, ...]) -> _Token:
        """A token for ``scopes`` from the token server at ``realm`` (GET, as docker
        does: ``service``, ``scope`` once per scope, ``account``, and the credentials
        as Basic), kept and made the one in use. Refusals and failures raise: 401 or
        403 Unauthorized, 429 TooManyRequests, 5xx or unreachable StorageUnavailable,
        anything else (not http(s), not a token) Unknown."""
        url = _token_url(realm)
        where = f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}{url.path}"
        params: list[tuple[str, str | int | float | bool | None]] = (
            [("service", service)] if service else []
        )
        headers: dict[str, str] = {}
        if self._credentials is not None:
            params.append(("account", self._credentials.username))
            headers["Authorization"] = self._credentials.basic()
        params += [("scope", s) for s in scopes]
        started = self._clock()
        try:
            with self._http.stream("GET", url, params=params, headers=headers) as resp:
                status = resp.status_code
                body = _read_at_most(resp, MAX_TOKEN_RESPONSE) if status == 200 else None
        except httpx.TransportError as exc:
            raise StorageUnavailable(
                f"cannot reach the token server {where}: {exc}", {"realm": where}
            ) from exc
        detail = {"realm": where, "status": status}
        if status in (401, 403):
            who = "anonymous access" if self._credentials is None else "the credentials"
            raise Unauthorized(f"the token server {where} refused {who}", detail)
        if status == 429:
            raise TooManyRequests(f"the token server {where} is rate-limiting", detail)
        if status >= 500:
            raise StorageUnavailable(f"the token server {where} failed (HTTP {status})", detail)
        if status != 200:
            raise Unknown(f"the token server {where} answered HTTP {status}", detail)
        value, lifetime = _token_of(body)
        if value is None:
            raise Unknown(f"the token server {where} sent no usable token", detail)
        token = _Token(
            value,
            realm,
            service,
            scopes,
            # From before the request: the server's clock started no earlier.
            renew_at=started + lifetime - min(TOKEN_RENEW_MARGIN, lifetime / 2),
        )
        # One token per realm, service and scopes: a renewal replaces the old one.
        kept = [
            t for t in self._tokens if (t.realm, t.service, t.scopes) != (realm, service, scopes)
        ]
        self._tokens = [*kept[-(MAX_TOKENS - 1) :], token]
        self._token = token
        return token

    def blob_size(self, repository: str, digest: str) -> int | None:
        """The size of ``digest`` if ``repository`` has it linked (a HEAD), else None.
        Any refusal by the frontend (404, or no pull access) is None: the upload that
        follows gets the real answer, with its error body. A token server's refusal
        raises (see :meth:`_fetch_token`)."""
        resp = self._send("HEAD", f"/v2/{repository}/blobs/{digest}")
        if resp.status_code != 200:
            return None
        try:
            return int(resp.headers.get("content-length", ""))
        except ValueError:
            return None

    def push(
        self,
        repository: str,
        stream: BinaryIO,
        *,
        digest: str | None = None,
        tarsum_label: str | None = None,
        chunk_size: int = 16 << 20,
        on_upload: OnBytes | None = None,
        on_verify: OnVerify | None = None,
        timeout: float = 600.0,
        skip_existing: bool = True,
    ) -> dict[str, Any]:
        """Upload ``stream`` in PATCHes of at most ``chunk_size`` bytes, finish, and wait
        for the verified commit (its result).

        With ``digest`` (and ``skip_existing``), a blob the repository already has is
        not sent: the answer is ``{"status": "exists", ..., "skipped": True}``.
        Without it the client computes one while uploading: sha256, or the TarSum of
        ``tarsum_label`` (e.g. ``tarsum.v1+sha256``). ``on_upload`` hears of every
        slice sent.
        """
        # Every token of the push is asked for with push on the repository: the PATCHes
        # (not replayable) go out with the one the HEAD or the POST got.
        with self._needing(f"repository:{repository}:pull,push"):
            return self._push(
                repository,
                stream,
                digest=digest,
                tarsum_label=tarsum_label,
                chunk_size=chunk_size,
                on_upload=on_upload,
                on_verify=on_verify,
                timeout=timeout,
                skip_existing=skip_existing,
            )

    def _push(
        self,
        repository: str,
        stream: BinaryIO,
        *,
        digest: str | None,
        tarsum_label: str | None,
        chunk_size: int,
        on_upload: OnBytes | None,
        on_verify: OnVerify | None,
        timeout: float,
        skip_existing: bool,
    ) -> dict[str, Any]:
        if digest is not None and skip_existing:
            size = self.blob_size(repository, digest)
            if size is not None:
                return {
                    "status": "exists",
                    "skipped": True,
                    "repository": repository,
                    "digest": digest,
                    "size": size,
                }
        sha = hashlib.sha256()
        ts = None
        if digest is None and tarsum_label is not None:
            from ingest.tarsum import TarSum

            ts = TarSum(tarsum_label)
        started = self._request("POST", f"/v2/{repository}/blobs/uploads/")
        location = started.headers["location"]
        upload_id = started.headers.get("docker-upload-uuid") or _last_segment(location)
        offset = 0
        piece = stream.read(min(SLICE, chunk_size))
        while piece:
            sent = 0

            def body(first: bytes) -> Iterator[bytes]:
                # Pulled by httpx as it writes the request: one slice in memory at a time,
                # and each one reported once it is on its way.
                nonlocal sent
                part = first
                while part:
                    if ts is not None:
                        ts.update(part)
                    elif digest is None:
                        sha.update(part)
                    yield part
                    sent += len(part)
                    if on_upload is not None:
                        on_upload(len(part))
                    if sent >= chunk_size:
                        return
                    part = stream.read(min(SLICE, chunk_size - sent))

            # No Content-Range: its end is unknown until the input says so (a pipe);
            # the server appends, and its Range answer proves where the bytes went.
            # Sent with the authorization the POST settled: a streamed body cannot be
            # sent again after a 401.
            resp = self._request(
                "PATCH",
                location,
                replayable=False,
                content=body(piece),
                headers={"Content-Type": "application/octet-stream"},
            )
            offset += sent
            if resp.headers.get("range", f"0-{offset - 1}") != f"0-{offset - 1}":
                raise RangeInvalid(
                    "the registry holds another amount of this upload than was sent",
                    {"upload_id": upload_id, "sent": offset, "range": resp.headers["range"]},
                )
            location = resp.headers.get("location", location)
            piece = stream.read(min(SLICE, chunk_size))
        if digest is None:
            digest = ts.finish() if ts is not None else "sha256:" + sha.hexdigest()
        resp = self._request(
            "PUT", location, params={"digest": digest}, headers={"Prefer": "respond-async"}
        )
        # 201 (already verified) or 202 (verifying): either way the ingest API has
        # the full result, or the progress to show until there is one.
        upload_id = resp.headers.get("docker-upload-uuid", upload_id)
        return self.wait(upload_id, timeout=timeout, on_verify=on_verify)

    def pull(
        self,
        repository: str,
        digest: str,
        path: str | os.PathLike[str],
        *,
        on_total: Callable[[int | None], None] | None = None,
        on_bytes: OnBytes | None = None,
    ) -> dict[str, Any]:
        """Download ``repository``'s blob ``digest`` to ``path``, verified as it streams.

        The bytes go to a temporary file next to ``path`` and are hashed on the way;
        only a match is renamed over ``path``. A mismatch raises DigestInvalid
        (``reason: mismatch``, ``claimed``, ``computed``) and leaves nothing behind, as
        does any other failure. ``on_total`` hears the size once the registry says it.
        """
        claimed = parse_digest(digest)
        verifier = new_verifier(claimed)
        target = os.path.abspath(os.fspath(path))
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".part", dir=os.path.dirname(target)
        )
        size = 0
        try:
            with (
                os.fdopen(fd, "wb") as out,
                contextlib.closing(
                    self._send("GET", f"/v2/{repository}/blobs/{claimed}", stream=True)
                ) as resp,
                self._reaching(),
            ):
                if resp.status_code >= 400:
                    raise self._error(resp)
                if on_total is not None:
                    length = resp.headers.get("content-length", "")
                    on_total(int(length) if length.isdigit() else None)
                for piece in resp.iter_bytes(SLICE):
                    verifier.update(piece)
                    out.write(piece)
                    size += len(piece)
                    if on_bytes is not None:
                        on_bytes(len(piece))
                out.flush()
                os.fsync(out.fileno())
            computed = verifier.result()
            if computed != str(claimed):
                raise DigestInvalid(
                    "downloaded content did not match the digest",
                    {"reason": "mismatch", "claimed": str(claimed), "computed": computed},
                )
            # mkstemp makes the file 0600; the result gets what a plain create would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return {"repository": repository, "digest": str(claimed), "size": size, "path": target}

    def retry(self, upload_id: str, digest: str | None = None) -> str:
        """Re-enqueue a failed verification; returns the new task id."""
        body = {"digest": digest} if digest else {}
        data = self._request("POST", f"/ingest/v1/uploads/{upload_id}/retry", json=body).json()
        return str(data["task_id"])

    def retry_failed(
        self, *, since: float | None = None, code: str | None = None
    ) -> dict[str, Any]:
        """Re-enqueue every failed verification the caller may retry (optionally only
        those failed in the last ``since`` seconds, with error ``code``):
        ``{"queued": [...], "errors": [...]}``."""
        body: dict[str, Any] = {}
        if since is not None:
            body["since"] = since
        if code is not None:
            body["code"] = code
        data = self._request("POST", "/ingest/v1/failed-uploads/retry", json=body).json()
        assert isinstance(data, dict)
        return data

    def cancel(self, upload_id: str) -> None:
        """Discard an upload and its staged bytes (the OCI session DELETE)."""
        repository = self.status(upload_id)["repository"]
        self._request("DELETE", f"/v2/{repository}/blobs/uploads/{upload_id}")

    def status(self, upload_id: str) -> dict[str, Any]:
        data = self._request("GET", f"/ingest/v1/uploads/{upload_id}").json()
        assert isinstance(data, dict)
        return data

    def wait(
        self, upload_id: str, *, timeout: float = 600.0, on_verify: OnVerify | None = None
    ) -> dict[str, Any]:
        """Poll the upload until it is committed (its result) or failed (raise its error)."""
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            st = self.status(upload_id)
            if st["state"] == "committed" and st.get("result"):
                result: dict[str, Any] = st["result"]
                if on_verify is not None:
                    on_verify(result["size"], result["size"])
                return result
            if st["state"] == "failed" and st.get("error"):
                raise from_dict(st["error"])
            progress = st.get("progress")
            if on_verify is not None and isinstance(progress, dict):
                on_verify(int(progress.get("done", 0)), int(progress.get("total", 0)))
            if time.monotonic() > deadline:
                raise VerificationTimeout(detail={"upload_id": upload_id})
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)


def _challenges(resp: httpx.Response) -> dict[str, Challenge]:
    """The challenges of ``resp``'s ``WWW-Authenticate`` headers by scheme (in lower
    case; the first of each); unreadable ones are left out."""
    challenges: list[Challenge] = []
    for value in resp.headers.get_list("www-authenticate"):
        with contextlib.suppress(ChallengeInvalid):
            challenges += parse_challenges(value)
    schemes: dict[str, Challenge] = {}
    for c in challenges:
        schemes.setdefault(c.scheme.lower(), c)
    return schemes


def _token_url(realm: str) -> httpx.URL:
    """The token endpoint a challenge names, if it is one to send credentials to: an
    absolute http(s) URL without credentials of its own (Unknown otherwise, naming
    no more of it than its scheme)."""
    try:
        url = httpx.URL(realm)
    except (httpx.InvalidURL, TypeError, ValueError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        scheme = url.scheme if url is not None else ""
        raise Unknown(
            "the frontend names a token realm that is not an http(s) URL; not following it",
            {"scheme": scheme[:20]},
        )
    if url.userinfo:
        raise Unknown("the frontend names a token realm with credentials in it; not following it")
    return url


def _token_of(body: bytes | None) -> tuple[str | None, float]:
    """The token of a token server's JSON answer (``token``, else ``access_token``) if it
    can go into a header, and its lifetime: ``expires_in`` when a positive number of
    seconds, else :data:`DEFAULT_TOKEN_LIFETIME`."""
    try:
        doc = json.loads(body) if body is not None else None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        return None, DEFAULT_TOKEN_LIFETIME
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or len(value) > MAX_TOKEN or not _HEADER_SAFE.fullmatch(value):
        value = None
    lifetime = doc.get("expires_in")
    if (
        isinstance(lifetime, bool)
        or not isinstance(lifetime, int | float)
        or not math.isfinite(lifetime)
        or lifetime <= 0
    ):
        lifetime = DEFAULT_TOKEN_LIFETIME
    return value, float(lifetime)


def _last_segment(location: str) -> str:
    return location.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
