"""HTTP Basic against an htpasswd file: bcrypt only, reloaded on change, cached."""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bcrypt
import pytest

from ingest.auth import ANONYMOUS, Access, Identity
from ingest.auth.htpasswd import MAX_CREDENTIALS, HtpasswdAuth
from ingest.config import ConfigError
from ingest.errors import Unauthorized

COST = 4  # bcrypt's fastest: the tests check logic, not strength


def bcrypt_hash(password: str, prefix: bytes = b"2y") -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(COST, prefix=b"2b"))
    return (b"$" + prefix + hashed[3:]).decode()  # htpasswd -B writes $2y$


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HtpasswdFile:
    """An htpasswd file whose every rewrite has a new stat (size, mtime)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes = 0

    def write(self, text: str) -> None:
        self.path.write_text(text)
        self.writes += 1
        ns = 1_700_000_000_000_000_000 + self.writes * 1_000_000_000
        os.utime(self.path, ns=(ns, ns))

    def users(self, **passwords: str) -> None:
        self.write("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in passwords.items()))


@pytest.fixture
def htpasswd(tmp_path: Path) -> HtpasswdFile:
    f = HtpasswdFile(tmp_path / "htpasswd")
    f.users(alice="wonderland", bob="builder")
    return f


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_auth(htpasswd: HtpasswdFile, clock: Clock) -> Callable[..., HtpasswdAuth]:
    def make(**kwargs: object) -> HtpasswdAuth:
        return HtpasswdAuth(str(htpasswd.path), "registry", clock=clock, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def auth(make_auth: Callable[..., HtpasswdAuth]) -> HtpasswdAuth:
    return make_auth()


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The stored hashes bcrypt.checkpw was called with, in order."""
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


def reason(auth: HtpasswdAuth, header: str | None) -> str:
    with pytest.raises(Unauthorized) as info:
        auth.authenticate(header)
    assert info.value.http_status == 401
    return str(info.value.detail["reason"])


# -- the check ------------------------------------------------------------------------


def test_the_right_password_authenticates_the_user_with_every_access(auth: HtpasswdAuth) -> None:
    identity = auth.authenticate(basic("alice", "wonderland"))
    assert identity == Identity("alice", None)
    assert identity.allows(Access("repository", "any/thing", frozenset({"push", "delete"})))
    assert identity.allows(Access("registry", "catalog", frozenset({"*"})))


def test_no_header_is_anonymous_without_grants(auth: HtpasswdAuth) -> None:
    assert auth.authenticate(None) is ANONYMOUS
    assert not ANONYMOUS.allows(Access("repository", "a", frozenset({"pull"})))


def test_a_wrong_password_and_an_unknown_user_fail_alike(auth: HtpasswdAuth) -> None:
    errors = []
    for header in (basic("alice", "nope"), basic("mallory", "wonderland"), basic("", "")):
        with pytest.raises(Unauthorized) as info:
            auth.authenticate(header)
        errors.append((info.value.message, info.value.detail))
    assert errors[0] == errors[1] == errors[2]
    assert errors[0][1] == {"reason": "invalid-credentials"}
    assert "alice" not in errors[0][0]
    assert "password is" not in errors[0][0]


def test_an_unknown_user_costs_one_bcrypt_check_of_the_files_cost(
    auth: HtpasswdAuth, checks: list[bytes]
) -> None:
    reason(auth, basic("mallory", "x"))
    reason(auth, basic("alice", "x"))
    assert len(checks) == 2  # one full check each: the timing does not tell them apart
    dummy, real = checks
    assert dummy != real
    assert dummy[:7] == b"$2b$%02d$" % COST  # the same cost as the file's entries
    assert real.startswith(b"$2y$%02d$" % COST)


def test_the_password_is_everything_after_the_first_colon(
    htpasswd: HtpasswdFile, make_auth: Callable[..., HtpasswdAuth]
) -> None:
    htpasswd.users(carol="a:b:c", dora="")
    auth = make_auth()
    assert auth.authenticate(basic("carol", "a:b:c")).subject == "carol"
    assert auth.authenticate(basic("dora", "")).subject == "dora"
    assert reason(auth, basic("carol", "a")) == "invalid-credentials"


def test_utf8_user_names_and_passwords_work(
    htpasswd: HtpasswdFile, make_auth: Callable[..., HtpasswdAuth]
) -> None:
    htpasswd.users(**{"zoë": "pässwörd ✓"})
    auth = make_auth()
    assert auth.authenticate(basic("zoë", "pässwörd ✓")).subject == "zoë"


def test_a_password_over_72_bytes_never_matches(
    htpasswd: HtpasswdFile, make_auth: Callable[..., HtpasswdAuth]
) -> None:
    htpasswd.users(long="a" * 72)
    auth = make_auth()
    assert auth.authenticate(basic("long", "a" * 72)).subject == "long"
    # bcrypt reads 72 bytes: a longer one would match on its prefix alone.
    assert reason(auth, basic("long", "a" * 72 + "b")) == "invalid-credentials"


@pytest.mark.parametrize("prefix", [b"2y", b"2b", b"2a"])
def test_every_bcrypt_variant_htpasswd_writes_is_accepted(
    prefix: bytes, htpasswd: HtpasswdFile, make_auth: Callable[..., HtpasswdAuth]
) -> None:
    htpasswd.write(f"carol:{bcrypt_hash('pw', prefix)}\n")
    assert make_auth().authenticate(basic("carol", "pw")).subject == "carol"


def test_other_hashes_are_ignored_with_one_warning_at_load(
    htpasswd: HtpasswdFile,
    make_auth: Callable[..., HtpasswdAuth],
    caplog: pytest.LogCaptureFixture,
) -> None:
    htpasswd.write(
        "# users\n\n"
        f"alice:{bcrypt_hash('wonderland')}\n"
        "md5:$apr1$VZxiVCcZ$T7HwYtGdwQ3V.ec6pWfXS1\n"  # htpasswd -m
        "sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"  # htpasswd -s: sha1("password")
        "crypt:rOPyo1PSH6AUw\n"  # htpasswd -d
        "plain:password\n"  # htpasswd -p
        "broken:$2y$04$tooshort\n"
        "no colon at all\n"
    )
    with caplog.at_level(logging.WARNING, "ingest.auth.htpasswd"):
        auth = make_auth()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    for user in ("'md5'", "'sha'", "'crypt'", "'plain'", "'broken'", "line 9"):
        assert user in text
    assert "alice" not in text
    caplog.clear()
    assert auth.authenticate(basic("alice", "wonderland")).subject == "alice"
    for user in ("sha", "plain", "crypt"):
        assert reason(auth, basic(user, "password")) == "invalid-credentials"
    assert not caplog.records  # nothing more is logged per request than the failure


def test_a_user_listed_twice_is_the_last_line(
    htpasswd: HtpasswdFile, make_auth: Callable[..., HtpasswdAuth]
) -> None:
    htpasswd.write(f"alice:{bcrypt_hash('old')}\nalice:{bcrypt_hash('new')}\n")
    auth = make_auth()
    assert auth.authenticate(basic("alice", "new")).subject == "alice"
    assert reason(auth, basic("alice", "old")) == "invalid-credentials"


# -- malformed headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", "malformed"),
        ("   ", "malformed"),
        ("Basic", "malformed"),
        ("Basic ", "malformed"),
        ("Basic !!!!", "malformed"),
        ("Basic YWxpY2U", "malformed"),  # base64 without its padding
        ("Basic " + base64.b64encode(b"alice").decode(), "malformed"),  # no colon
        ("Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), "malformed"),  # not UTF-8
        ("Basic " + base64.b64encode("é:x".encode("latin-1")).decode(), "malformed"),
        ("Basic " + "A" * (MAX_CREDENTIALS + 4), "malformed"),
        ("Basic wr3CvcK9:w6k=", "malformed"),
        ("Bearer abc.def.ghi", "scheme"),
        ("Digest username=alice", "scheme"),
        ("basicYWxpY2U6d29uZGVybGFuZA==", "scheme"),
    ],
)
def test_a_malformed_header_is_refused_with_its_reason(
    auth: HtpasswdAuth, header: str, expected: str
) -> None:
    assert reason(auth, header) == expected


@pytest.mark.parametrize("scheme", ["basic", "BASIC", "bAsIc"])
def test_the_scheme_is_case_insensitive_and_whitespace_is_optional(
    auth: HtpasswdAuth, scheme: str
) -> None:
    value = basic("alice", "wonderland").split()[1]
    assert auth.authenticate(f"  {scheme}   {value}  ").subject == "alice"


def test_the_challenge_quotes_the_realm(htpasswd: HtpasswdFile) -> None:
    auth = HtpasswdAuth(str(htpasswd.path), 'my "registry" \\ here\r\nX-Evil: 1')
    assert auth.scheme == "Basic"
    assert (
        auth.challenge([]) == 'Basic realm="my \\"registry\\" \\\\ hereX-Evil: 1", charset="UTF-8"'
    )
    plain = HtpasswdAuth(str(htpasswd.path), "verified-ingest")
    assert plain.challenge([Access("repository", "a", frozenset({"pull"}))], "x") == (
        'Basic realm="verified-ingest", charset="UTF-8"'
    )


# -- the file changes -------------------------------------------------------------------


def test_a_missing_file_at_start_up_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        HtpasswdAuth(str(tmp_path / "nope"), "registry")
    assert info.value.field == "auth_htpasswd"
    assert "INGEST_AUTH_HTPASSWD" in str(info.value)


def test_a_directory_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        HtpasswdAuth(str(tmp_path), "registry")


def test_changes_are_picked_up_after_the_check_interval(
    htpasswd: HtpasswdFile, auth: HtpasswdAuth, clock: Clock
) -> None:
    assert auth.authenticate(basic("bob", "builder")).subject == "bob"
    htpasswd.users(alice="wonderland", carol="singer")  # bob removed, carol added
    clock.now += 0.5
    assert auth.authenticate(basic("bob", "builder")).subject == "bob"  # not checked yet
    assert reason(auth, basic("carol", "singer")) == "invalid-credentials"
    clock.now += 0.6
    assert auth.authenticate(basic("carol", "singer")).subject == "carol"
    assert reason(auth, basic("bob", "builder")) == "invalid-credentials"


def test_a_changed_password_takes_effect_and_the_old_one_stops_working(
    htpasswd: HtpasswdFile, auth: HtpasswdAuth, clock: Clock
) -> None:
    assert auth.authenticate(basic("alice", "wonderland")).subject == "alice"  # now cached
    htpasswd.users(alice="looking-glass", bob="builder")
    clock.now += 2
    assert reason(auth, basic("alice", "wonderland")) == "invalid-credentials"
    assert auth.authenticate(basic("alice", "looking-glass")).subject == "alice"


def test_an_atomic_replacement_with_the_same_size_and_mtime_is_seen_by_its_inode(
    htpasswd: HtpasswdFile, auth: HtpasswdAuth, clock: Clock, tmp_path: Path
) -> None:
    old = htpasswd.path.stat()
    new = tmp_path / "htpasswd.new"
    text = htpasswd.path.read_text().replace("bob:", "eve:")
    new.write_text(text)
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(new, htpasswd.path)
    assert htpasswd.path.stat().st_size == old.st_size
    clock.now += 2
    assert auth.authenticate(basic("eve", "builder")).subject == "eve"


def test_a_vanished_or_unreadable_file_keeps_the_last_users_and_logs_once(
    htpasswd: HtpasswdFile, auth: HtpasswdAuth, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    htpasswd.path.unlink()
    with caplog.at_level(logging.ERROR, "ingest.auth.htpasswd"):
        for _ in range(3):
            clock.now += 2
            assert auth.authenticate(basic("alice", "wonderland")).subject == "alice"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "keeping the 2 users" in errors[0].getMessage()
    htpasswd.users(alice="back")
    clock.now += 2
    assert auth.authenticate(basic("alice", "back")).subject == "alice"
    assert reason(auth, basic("bob", "builder")) == "invalid-credentials"


def test_a_file_that_cannot_be_read_keeps_the_last_users(
    htpasswd: HtpasswdFile, auth: HtpasswdAuth, clock: Clock
) -> None:
    htpasswd.path.unlink()
    htpasswd.path.mkdir()  # stat works, open fails (as a permission error would, even for root)
    clock.now += 2
    assert auth.authenticate(basic("alice", "wonderland")).subject == "alice"
    htpasswd.path.rmdir()
    htpasswd.users(alice="changed")
    clock.now += 2
    assert auth.authenticate(basic("alice", "changed")).subject == "alice"


# -- the cache of verified credentials --------------------------------------------------


def test_a_verified_password_is_not_checked_again_within_the_ttl(
    auth: HtpasswdAuth, clock: Clock, checks: list[bytes]
) -> None:
    for _ in range(5):
        assert auth.authenticate(basic("alice", "wonderland")).subject == "alice"
        clock.now += 0.1
    assert len(checks) == 1
    clock.now += 60
    auth.authenticate(basic("alice", "wonderland"))
    assert len(checks) == 2  # expired: checked again


def test_wrong_passwords_are_never_cached(auth: HtpasswdAuth, checks: list[bytes]) -> None:
    auth.authenticate(basic("alice", "wonderland"))
    for _ in range(3):
        reason(auth, basic("alice", "wonderland!"))
    assert len(checks) == 4


def test_the_cache_is_dropped_on_reload(
    htpasswd: HtpasswdFile, auth: HtpasswdAuth, clock: Clock, checks: list[bytes]
) -> None:
    auth.authenticate(basic("alice", "wonderland"))
    text = htpasswd.path.read_text()
    htpasswd.write(text + "# touched\n")  # same entries, new stat
    clock.now += 2
    auth.authenticate(basic("alice", "wonderland"))
    assert len(checks) == 2


def test_the_cache_is_bounded(
    htpasswd: HtpasswdFile, make_auth: Callable[..., HtpasswdAuth], checks: list[bytes]
) -> None:
    htpasswd.users(a="1", b="2", c="3")
    auth = make_auth(cache_size=2)
    for user, password in (("a", "1"), ("b", "2"), ("c", "3"), ("a", "1")):
        auth.authenticate(basic(user, password))
    assert len(checks) == 4  # a was evicted by c
    auth.authenticate(basic("c", "3"))
    assert len(checks) == 4


def test_a_zero_ttl_turns_the_cache_off(
    make_auth: Callable[..., HtpasswdAuth], checks: list[bytes]
) -> None:
    auth = make_auth(cache_ttl=0)
    auth.authenticate(basic("alice", "wonderland"))
    auth.authenticate(basic("alice", "wonderland"))
    assert len(checks) == 2


def test_concurrent_requests_during_reloads_only_authenticate_or_refuse(
    htpasswd: HtpasswdFile, tmp_path: Path
) -> None:
    auth = HtpasswdAuth(str(htpasswd.path), "registry", check_interval=0)
    stop = threading.Event()

    alice = f"alice:{bcrypt_hash('wonderland')}\n"
    versions = [alice + f"bob:{bcrypt_hash('builder')}\n", alice + f"bob:{bcrypt_hash('other')}\n"]

    def rewrite() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            htpasswd.write(versions[n % 2])
            stop.wait(0.002)

    def one(i: int) -> str:
        header = basic("alice", "wonderland") if i % 2 else basic("bob", "builder")
        try:
            return auth.authenticate(header).subject
        except Unauthorized:
            return "refused"

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(200)))
    finally:
        stop.set()
        writer.join()
    assert set(results) <= {"alice", "bob", "refused"}
    assert "alice" in results
