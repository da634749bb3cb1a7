"""``INGEST_AUTH=htpasswd``: HTTP Basic against an htpasswd file of bcrypt entries.

As in distribution's htpasswd access controller, an authenticated user may do
everything (``Identity(user, None)``) and only bcrypt entries count. Beyond it:

* The file is re-read when it changes: its ``stat`` (inode, size, mtime in ns) is
  compared at most every ``check_interval`` seconds, so adding or removing a user
  needs no restart. A file that disappears or cannot be read keeps the last good
  contents in force and logs an error; a missing file at start-up is a
  :class:`~ingest.config.ConfigError`.
* Entries that are not bcrypt (``$apr1$`` MD5, ``{SHA}``, crypt, plain text) and lines
  without a ``:`` are ignored, with one warning per load naming the users; they are
  never accepted. If a user appears twice, the last line wins (as in distribution).
* Passwords over 72 bytes never match (bcrypt reads only 72 bytes; distribution's Go
  bcrypt refuses them too), so no two passwords that differ after byte 72 are the same.
* An unknown user costs a bcrypt check against a dummy hash of the file's usual cost,
  so the time of a failure does not say whether the user exists.
* Successful checks are remembered for a while (see :class:`_VerifiedCache`).

Header problems raise :class:`~ingest.errors.Unauthorized` with ``detail["reason"]``:
``scheme`` (not ``Basic``), ``malformed`` (not base64 of UTF-8 ``user:password``), or
``invalid-credentials`` (which of user or password was wrong is never said).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import bcrypt

from ingest.auth import ANONYMOUS, Access, Identity
from ingest.auth.headers import quoted, split_authorization
from ingest.config import ConfigError
from ingest.errors import Unauthorized

__all__ = ["HtpasswdAuth"]

log = logging.getLogger(__name__)

#: A bcrypt hash as htpasswd (``-B``), Apache and Python's bcrypt write it:
#: ``$2y$`` / ``$2b$`` / ``$2a$``, a two-digit cost, 22 characters of salt, 31 of hash.
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
#: bcrypt uses the first 72 bytes of a password.
_BCRYPT_MAX_PASSWORD = 72
#: The cost of the dummy hash when the file has no usable entry (htpasswd's default).
_DEFAULT_COST = 10
#: An ``Authorization`` value longer than this is malformed: a user name and a
#: password of any sensible length fit many times over.
MAX_CREDENTIALS = 4096


@dataclass(frozen=True, slots=True)
class _Entries:
    """One load of the file: user → bcrypt hash, and the cost most entries use."""

    users: Mapping[str, bytes]
    cost: int


_Signature = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _parse(data: bytes, path: str) -> _Entries:
    users: dict[str, bytes] = {}
    ignored: list[str] = []
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            ignored.append(f"line {number} (not UTF-8)")
            continue
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep:
            ignored.append(f"line {number} (no ':')")
        elif _BCRYPT.fullmatch(stored.strip()) is None:
            ignored.append(f"{user!r} (line {number}: not a bcrypt hash)")
        else:
            if user in users:
                log.warning(
                    "htpasswd %s: user %r appears again on line %d; the last wins",
                    path,
                    user,
                    number,
                )
            users[user] = stored.strip().encode("ascii")
    if ignored:
        log.warning(
            "htpasswd %s: ignoring %d entr%s: %s (only bcrypt entries are accepted; "
            "re-create them with `htpasswd -B`)",
            path,
            len(ignored),
            "y" if len(ignored) == 1 else "ies",
            ", ".join(ignored),
        )
    if not users:
        log.warning("htpasswd %s: no usable bcrypt entry: nobody can log in", path)
    costs = Counter(int(h[4:6]) for h in users.values())
    cost = costs.most_common(1)[0][0] if costs else _DEFAULT_COST
    return _Entries(users, cost)


class _VerifiedCache:
    """Recently verified credentials, so that bcrypt runs once per client and minute.

    bcrypt is slow on purpose (50-250 ms a check at the usual costs) and HTTP Basic
    sends the password with every request: a client pushing an image of many small
    blobs, or many chunks, would otherwise pay a bcrypt check per request and tie up
    a CPU core doing it. Only *successes* are remembered, so guessing gains nothing:
    every wrong password still costs a full check.

    The key is a keyed BLAKE2b of (user, password, stored hash), with a random key
    made per process: no password is kept in memory, and a changed entry (a new
    password, a removed user: no entry to look up at all) can never hit an old key,
    even before a reload clears the cache. Entries live ``ttl`` seconds at most;
    beyond ``size`` entries the oldest go first.
    """

    def __init__(self, ttl: float, size: int, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._secret = secrets.token_bytes(32)
        self._expiry: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, user: str, password: bytes, stored: bytes) -> bytes:
        h = hashlib.blake2b(key=self._secret, digest_size=32)
        for part in (user.encode("utf-8"), password, stored):
            h.update(len(part).to_bytes(8, "big"))  # length-prefixed: no ambiguity
            h.update(part)
        return h.digest()

    def __contains__(self, key: bytes) -> bool:
        with self._lock:
            expiry = self._expiry.get(key)
            if expiry is None:
                return False
            if self._clock() >= expiry:
                del self._expiry[key]
                return False
            return True

    def add(self, key: bytes) -> None:
        if self._ttl <= 0 or self._size <= 0:
            return
        with self._lock:
            self._expiry[key] = self._clock() + self._ttl
            self._expiry.move_to_end(key)
            while len(self._expiry) > self._size:
                self._expiry.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._expiry.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)


class HtpasswdAuth:
    """HTTP Basic against the bcrypt entries of the htpasswd file at ``path``."""

    scheme = "Basic"

    def __init__(
        self,
        path: str,
        realm: str,
        *,
        check_interval: float = 1.0,
        cache_ttl: float = 60.0,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.realm = realm
        self._check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()  # one reload at a time
        self._cache = _VerifiedCache(cache_ttl, cache_size, clock)
        self._dummies: dict[int, bytes] = {}  # cost -> a hash no password matches
        self._failing: str | None = None  # the read error last logged
        try:
            self._signature, self._entries = self._load()
        except OSError as exc:
            raise ConfigError(
                f"INGEST_AUTH_HTPASSWD: cannot read {path!r}: {exc.strerror or exc}",
                "auth_htpasswd",
            ) from None
        self._dummy(self._entries.cost)  # made now, so no request pays for it
        self._next_check = clock() + check_interval

    # -- the file ---------------------------------------------------------------------
    def _load(self) -> tuple[_Signature, _Entries]:
        with open(self.path, "rb") as f:
            # The stat of the file read, not of the path: a replacement that lands
            # during the read has another signature, so the next check re-reads.
            signature = _signature(os.fstat(f.fileno()))
            data = f.read()
        return signature, _parse(data, self.path)

    def _current(self) -> _Entries:
        """The entries in force, re-read first if the file changed (checked at most
        every ``check_interval`` seconds, by one thread at a time)."""
        if self._clock() < self._next_check:
            return self._entries
        with self._lock:
            now = self._clock()
            if now >= self._next_check:
                self._next_check = now + self._check_interval
                self._refresh()
            return self._entries

    def _refresh(self) -> None:
        try:
            if _signature(os.stat(self.path)) == self._signature:
                return
            signature, entries = self._load()
        except OSError as exc:
            problem = f"{type(exc).__name__}: {exc.strerror or exc}"
            if problem != self._failing:  # once per problem, not once a second
                log.error(
                    "htpasswd %s cannot be read (%s); keeping the %d users last read",
                    self.path,
                    problem,
                    len(self._entries.users),
                )
                self._failing = problem
            return
        self._dummy(entries.cost)
        self._signature, self._entries, self._failing = signature, entries, None
        self._cache.clear()
        log.info("htpasswd %s re-read: %d users", self.path, len(entries.users))

    def _dummy(self, cost: int) -> bytes:
        dummy = self._dummies.get(cost)
        if dummy is None:  # made once per cost; two threads racing both make a valid one
            dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
            self._dummies[cost] = dummy
        return dummy

    # -- Authenticator ----------------------------------------------------------------
    def authenticate(self, authorization: str | None) -> Identity:
        if authorization is None:
            return ANONYMOUS
        user, password = _basic_credentials(authorization)
        entries = self._current()
        stored = entries.users.get(user)
        if stored is None:
            _check(password, self._dummy(entries.cost))  # as slow as a wrong password
        else:
            key = self._cache.key(user, password, stored)
            if key in self._cache or _check(password, stored):
                self._cache.add(key)
                return Identity(user, None)
        log.info("htpasswd: authentication failed for user %r", user[:100])
        raise Unauthorized("invalid user name or password", {"reason": "invalid-credentials"})

    def challenge(self, wanted: Sequence[Access], error: str | None = None) -> str:
        return f'Basic realm={quoted(self.realm)}, charset="UTF-8"'


def _check(password: bytes, stored: bytes) -> bool:
    """Whether ``password`` matches the bcrypt hash ``stored``; always one full check."""
    too_long = len(password) > _BCRYPT_MAX_PASSWORD
    try:
        ok = bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], stored)
    except ValueError:  # a hash bcrypt will not read (the pattern let it through)
        return False
    return ok and not too_long


def _basic_credentials(authorization: str) -> tuple[str, bytes]:
    """``(user, password)`` of a ``Basic`` header, or Unauthorized."""
    scheme, value = split_authorization(authorization)
    if scheme != "basic":
        raise Unauthorized(
            "expected Basic credentials", {"reason": "scheme" if scheme else "malformed"}
        )
    if not value or len(value) > MAX_CREDENTIALS:
        raise _malformed()
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except ValueError:  # not ASCII, not base64, or not UTF-8
        raise _malformed() from None
    user, sep, password = text.partition(":")
    if not sep:
        raise _malformed()
    return user, password.encode("utf-8")


def _malformed() -> Unauthorized:
    return Unauthorized(
        "malformed Basic credentials: expected base64 of UTF-8 user:password",
        {"reason": "malformed"},
    )
