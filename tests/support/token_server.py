"""A small issuer of the Docker registry token protocol, for the integration tests.

It plays the part of the authorisation server a registry in ``INGEST_AUTH=token`` mode
sends clients to (the ``realm`` of its ``Bearer`` challenge)::

    GET /token?service=S&scope=repository:NAME:pull,push&scope=…&account=…
    Authorization: Basic …          (absent: an anonymous token, with no grants)

    200 {"token": JWT, "access_token": JWT, "expires_in": 300, "issued_at": "…Z"}

Credentials are checked against an in-memory user table; each user has grant rules
(a resource type, an ``fnmatch`` pattern on the name, the actions allowed). Like real
issuers it grants the *intersection* of what was asked for and what the rules allow,
leaving out a scope that gets no action, and answers 401 only for credentials that do
not authenticate, never for asking too much. The JWT is minted by
:class:`tests.support.tokens.TestIssuer`, whose keys the registry is configured to trust.

Only ``GET`` is served: neither client the tests drive asks for a token any other way
(oras-py 0.2.43's ``TokenAuth.request_token`` and ``request_anonymous_token`` send a GET;
skopeo's containers/image sends a GET with Basic credentials and would POST the OAuth2
form only with an identity token, which ``--creds`` never gives it). A ``POST`` is
answered 405 and recorded, so a client that starts using it shows up in :attr:`requests`.

Runs on 127.0.0.1, on a free port, in a background thread (``with TokenServer(...) as s``).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import fnmatch
import json
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from tests.support.tokens import TestIssuer

__all__ = ["Rule", "Scope", "TokenRequest", "TokenServer", "User", "parse_scope"]

#: The repository actions of the token specification; ``*`` stands for all of them.
REPOSITORY_ACTIONS = frozenset({"pull", "push", "delete"})


@dataclass(frozen=True, slots=True)
class Scope:
    """One requested or granted resource: ``repository:library/ubuntu:pull,push``."""

    type: str
    name: str
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    def claim(self) -> dict[str, Any]:
        """The entry of the JWT's ``access`` claim."""
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def parse_scope(text: str) -> Scope | None:
    """``type:name:actions``, split as the specification says: the type up to the first
    colon, the actions after the last (a name may hold colons). None if malformed."""
    kind, _, rest = text.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return Scope(kind, name, tuple(a for a in actions.split(",") if a))


@dataclass(frozen=True, slots=True)
class Rule:
    """What a user may do: ``actions`` on resources of ``type`` whose name matches
    ``pattern`` (``fnmatch``: ``auth/*`` covers ``auth/a`` and ``auth/a/b``)."""

    pattern: str
    actions: frozenset[str]
    type: str = "repository"

    def covers(self, scope: Scope) -> bool:
        return scope.type == self.type and fnmatch.fnmatchcase(scope.name, self.pattern)


@dataclass(frozen=True, slots=True)
class User:
    password: str
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What one request to the issuer asked for and what it got (for assertions)."""

    method: str
    path: str
    user: str | None  # None: anonymous (or credentials that did not authenticate)
    service: str
    account: str
    scopes: tuple[str, ...]
    granted: tuple[str, ...]
    status: int
    authorization: str  # the scheme of the Authorization header sent ("" if none)


def _grant(rules: Iterable[Rule], wanted: Scope) -> Scope | None:
    """The intersection of ``wanted`` with what ``rules`` allow, or None if empty."""
    allowed: set[str] = set()
    for rule in rules:
        if rule.covers(wanted):
            allowed |= rule.actions
    if wanted.type == "repository":
        asked = REPOSITORY_ACTIONS if "*" in wanted.actions else set(wanted.actions)
        have = REPOSITORY_ACTIONS if "*" in allowed else allowed
        actions = tuple(a for a in ("pull", "push", "delete") if a in asked & have)
    else:  # registry:catalog:* and the like: all or nothing, as asked
        actions = tuple(a for a in wanted.actions if a in allowed or "*" in allowed)
    return Scope(wanted.type, wanted.name, actions) if actions else None


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenServer:
    """The token endpoint, ``GET {url}/token``, for the users in ``users``."""

    def __init__(
        self,
        issuer: TestIssuer,
        *,
        service: str,
        issuer_name: str,
        users: Mapping[str, User],
        expires_in: int = 300,
    ) -> None:
        self.issuer = issuer
        self.service = service
        self.issuer_name = issuer_name
        self.users = dict(users)
        self.expires_in = expires_in
        self.requests: list[TokenRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> Self:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                status, body, headers = server.handle("GET", self.path, self.headers)
                self._reply(status, body, headers)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                status, body, headers = server.handle("POST", self.path, self.headers)
                self._reply(status, body, headers)

            def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # recorded in TokenServer.requests instead

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="token-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The token endpoint: the registry's ``INGEST_AUTH_TOKEN_REALM``."""
        return f"http://127.0.0.1:{self.port}/token"

    # -- the protocol -----------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> tuple[str | None, bool]:
        """(user, ok): (None, True) for no credentials, (None, False) for bad ones."""
        if not authorization:
            return None, True
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None, False
        try:
            name, sep, password = (
                base64.b64decode(value.strip(), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeDecodeError):
            return None, False
        user = self.users.get(name)
        if not sep or user is None or user.password != password:
            return None, False
        return name, True

    def grants(self, user: str | None, scopes: Iterable[Scope]) -> list[Scope]:
        rules = self.users[user].rules if user is not None else ()
        out = []
        for wanted in scopes:
            granted = _grant(rules, wanted)
            if granted is not None:
                out.append(granted)
        return out

    def handle(
        self, method: str, target: str, headers: Message
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Answer one request: (status, JSON body, extra headers); records it."""
        url = urllib.parse.urlsplit(target)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        service = (query.get("service") or [""])[0]
        account = (query.get("account") or [""])[0]
        # Repeated scope parameters (the spec) and space-separated ones (some clients).
        scopes = tuple(s for param in query.get("scope", []) for s in param.split())
        authorization = headers.get("Authorization") or ""
        user, ok = self.authenticate(authorization or None)
        granted: list[Scope] = []
        if url.path != "/token":
            status, body = _error(404, "NOT_FOUND", "no such endpoint")
        elif method != "GET":
            status, body = _error(405, "UNSUPPORTED", f"{method} is not served")
        elif not ok:
            status, body = _error(401, "UNAUTHORIZED", "invalid username or password")
        elif service != self.service:
            status, body = _error(400, "INVALID_REQUEST", f"unknown service {service!r}")
        elif account and user is not None and account != user:
            status, body = _error(400, "INVALID_REQUEST", "account is not the credentials' user")
        else:
            granted = self.grants(user, filter(None, map(parse_scope, scopes)))
            token = self.issuer.mint(
                user or "",
                self.service,
                [g.claim() for g in granted],
                self.issuer_name,
                expires_in=self.expires_in,
            )
            status, body = (
                200,
                {
                    "token": token,
                    "access_token": token,
                    "expires_in": self.expires_in,
                    "issued_at": _rfc3339(time.time()),
                },
            )
        with self._lock:
            self.requests.append(
                TokenRequest(
                    method=method,
                    path=url.path,
                    user=user,
                    service=service,
                    account=account,
                    scopes=scopes,
                    granted=tuple(str(g) for g in granted),
                    status=status,
                    authorization=authorization.partition(" ")[0],
                )
            )
        extra = {"WWW-Authenticate": 'Basic realm="token-server"'} if status == 401 else {}
        return status, body, extra


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"errors": [{"code": code, "message": message, "detail": None}]}
