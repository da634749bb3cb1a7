"""Settings: declared once, read once from the environment at an edge, then passed down.

Only :meth:`Settings.from_env` reads the environment, and only the edges call it
(``Ingest.from_env``, ``workers.app``, the CLI group). Everything else takes a
:class:`Settings` or the plain values it needs.

Each field of :class:`Settings` is declared with :func:`_setting`: its kind (how the
variable is parsed and a value written, one rule per kind: :mod:`ingest.units`), its
default, its bounds and its help text. The variable is the field's name in upper case
after the prefix ``INGEST_`` (``REDIS_URL`` has none). From the declarations come the
parsing, the bound checks, the error messages and the README's Configuration table::

    python -m ingest.config                       # check the environment, print the values
    python -m ingest.config --markdown            # the README table
    python -m ingest.config --write-readme README.md

This module imports nothing of ``ingest`` but :mod:`ingest.units` (a test checks it):
every process reads its settings before it loads anything else.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from ingest import units
from ingest.units import parse_duration, parse_mode, parse_size

__all__ = [
    "MIN_GC_GRACE",
    "MIN_PURGE_AGE",
    "MIN_RECONCILE_GRACE",
    "ConfigError",
    "Declaration",
    "Kind",
    "Settings",
    "declarations",
    "mask_url",
    "parse_duration",
    "parse_mode",
    "parse_size",
    "read_env_file",
    "redis_tls_options",
    "render_markdown",
    "replace_table",
]

#: Shortest idle time after which a purge may remove an upload (seconds); why:
#: :mod:`ingest.arguments`, which applies it to task and CLI arguments too.
MIN_PURGE_AGE = 3600.0
#: Shortest age of a stuck verification that a reconcile may re-send (seconds).
MIN_RECONCILE_GRACE = 60.0
#: Shortest grace period of a garbage collection (seconds); why: :mod:`ingest.arguments`.
MIN_GC_GRACE = 60.0

T = TypeVar("T")
N = TypeVar("N", int, float)


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Kind(Generic[T]):
    """How the variables of one kind are read and their values written."""

    name: str  # in the README's "type" column
    parse: Callable[[str], T]
    format: Callable[[T], str]
    choices: tuple[str, ...] = ()  # for a choice: the values, matched in any case


def _choice(*choices: str) -> Kind[str]:
    listed = ", ".join(choices[:-1]) + " or " + choices[-1]

    def parse(text: str) -> str:
        for choice in choices:
            if text.strip().lower() == choice.lower():
                return choice
        raise ValueError(f"must be {listed}, not {text!r}")

    name = ", ".join(f"`{c}`" for c in choices[:-1]) + f" or `{choices[-1]}`"
    return Kind(name, parse, str, choices)


PATH: Kind[str] = Kind("path", str, str)
NAME: Kind[str] = Kind("name", str, str)
URL: Kind[str] = Kind("URL", str, lambda url: mask_url(url))
SIZE: Kind[int] = Kind("size", units.parse_size, units.format_size)
DURATION: Kind[float] = Kind("duration", units.parse_duration, units.format_duration)
SECONDS: Kind[int] = Kind("duration (whole s)", units.parse_seconds, units.format_duration)
COUNT: Kind[int] = Kind("integer", units.parse_count, str)
NUMBER: Kind[float] = Kind("number", units.parse_number, units.format_number)
BOOL: Kind[bool] = Kind("boolean", units.parse_bool, units.format_bool)
MODE: Kind[int] = Kind("octal mode", units.parse_mode, units.format_mode)
#: The authentication modes; unset ("") is allowed here and refused by `ingest serve`.
AUTH_MODES = ("none", "htpasswd", "token")


def _parse_auth(text: str) -> str:
    value = text.strip().lower()
    if value and value not in AUTH_MODES:
        raise ValueError(f"must be none, htpasswd or token, not {text!r}")
    return value


AUTH: Kind[str] = Kind("`none`, `htpasswd` or `token`", _parse_auth, str)


def _shown_endpoints(value: str) -> str:
    # Inline endpoints carry their headers (auth tokens): never print them.
    inline = value.lstrip()[:1] in ("[", "{")
    return f"<inline JSON, {len(value)} characters>" if inline else value


#: Credentials: never printed (``repr``, ``ingest config``), only whether one is set.
SECRET: Kind[str] = Kind("secret", str, lambda value: "<set>" if value else "")

#: Notification endpoints: a JSON file, or the JSON itself (ingest.notify parses it).
ENDPOINTS: Kind[str] = Kind("JSON file or inline JSON", str, _shown_endpoints)


@dataclass(frozen=True, slots=True)
class Spec:
    """What a field's declaration says besides its name, type and default."""

    kind: Kind[Any]
    help: str
    env: str | None  # the whole variable name; None: the prefix + the field name, upper case
    minimum: Any  # a value of the kind, inclusive unless above; None: no bound
    above: bool
    why: str  # appended to the message of a value below the minimum
    shown_default: str | None  # for the README, when the default is derived
    check: Callable[[Any], str | None] | None  # a message for a value that will not do


def _setting(
    kind: Kind[T],
    default: T,
    help: str,
    *,
    env: str | None = None,
    minimum: T | None = None,
    above: bool = False,
    why: str = "",
    shown_default: str | None = None,
    check: Callable[[T], str | None] | None = None,
) -> T:
    """Declare a field of :class:`Settings` (the dataclass machinery sees a ``Field``)."""
    spec = Spec(kind, help, env, minimum, above, why, shown_default, check)
    return field(default=default, metadata={"setting": spec})


def _positive(kind: Kind[N], default: N, help: str) -> N:
    return _setting(kind, default, help, minimum=0, above=True)


def _not_negative(kind: Kind[N], default: N, help: str, shown_default: str | None = None) -> N:
    return _setting(kind, default, help, minimum=0, shown_default=shown_default)


def _file_mode_problem(mode: int) -> str | None:
    # Without the owner's write bit every staged file would read as sealed.
    ok = not mode & ~0o777 and mode & 0o200
    return None if ok else "must be an octal mode within 0777 with owner write"


def _dir_mode_problem(mode: int) -> str | None:
    ok = not mode & ~0o777 and mode & 0o700 == 0o700
    return None if ok else "must be an octal mode within 0777 with owner rwx"


def _endpoints_problem(value: str) -> str | None:
    # Only the shape here (this module imports nothing of ingest): ingest.notify checks
    # every field when a process starts (ingest.backends.notifier).
    if not value or value.lstrip()[:1] in "[{":
        return None
    return None if os.path.isfile(value) else f"no such file: {value!r}"


def _base_url_problem(url: str) -> str | None:
    if not url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "must be an http(s) URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http(s) URL with a host"
    if parts.username or parts.password or parts.query or parts.fragment:
        return "must have no credentials, query or fragment"
    return None


def _shown(kind: Kind[Any], value: Any) -> Any:
    return kind.format(value) if kind is ENDPOINTS or kind is SECRET else value


def read_env_file(path: str) -> dict[str, str]:
    """``NAME=value`` lines; ConfigError naming the file and line on anything else."""
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"INGEST_CONFIG_FILE={path!r}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            raise ConfigError(f"{path}:{number}: expected NAME=value, got {text[:60]!r}")
        out[name] = value.strip().strip('"').strip("'")
    return out


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for printing and logging.

    ``redis://:s3cret@host:6379/0`` → ``redis://:***@host:6379/0``. Works on URLs that
    do not parse (a password with an unencoded ``/``): everything before the last
    ``@`` is the user information, and only its user name is kept.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}:***@{host}" if colon else f"{scheme}://***@{host}"


def redis_tls_options(ca: str = "", cert: str = "", key: str = "") -> dict[str, Any]:
    """redis-py's TLS keyword arguments (Celery's ``broker_use_ssl`` and
    ``redis_backend_use_ssl``, and Flower, take the same): the server's certificate is
    always verified and its name checked, against ``ca`` or the system's CAs; ``cert``
    and ``key`` authenticate this client to a Redis that requires it."""
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if ca:
        options["ssl_ca_certs"] = ca
    if cert:
        options["ssl_certfile"] = cert
    if key:
        options["ssl_keyfile"] = key
    return options


#: Other names a setting's variable is accepted under (without the prefix).
_ALIASES: dict[str, tuple[str, ...]] = {"storage_driver": ("STORAGE",)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """All runtime configuration, immutable. The order of the fields is the README's."""

    storage_root: str = _setting(
        PATH, "./var/storage", "filesystem storage root shared by frontends and workers"
    )
    storage_driver: str = _setting(
        NAME,
        "filesystem",
        "storage backend, a name in `ingest.backends.STORAGE_DRIVERS`: `filesystem` or "
        "`s3` (an S3-compatible object store, the `INGEST_S3_*` settings); `INGEST_STORAGE` "
        "is accepted as another name for it",
    )
    # Permissions of what the filesystem driver creates (the umask only removes bits).
    # Private by default: staged uploads are not for other local users.
    file_mode: int = _setting(
        MODE,
        0o640,
        "permissions of the files the storage creates; the umask can only remove bits. "
        "Committed blobs are read-only (`0440`): sealed data keeps only the read bits",
        check=_file_mode_problem,
    )
    dir_mode: int = _setting(
        MODE, 0o750, "permissions of the directories the storage creates", check=_dir_mode_problem
    )
    # -- INGEST_STORAGE_DRIVER=s3 (ingest.storage.s3; docs/operations.md, "S3") -----------
    s3_bucket: str = _setting(NAME, "", "the bucket (it must exist)", shown_default="none")
    s3_prefix: str = _setting(
        NAME, "", "key prefix inside the bucket, so registries can share one", shown_default="none"
    )
    s3_endpoint: str = _setting(
        URL,
        "",
        "endpoint URL of an S3-compatible server (`http://127.0.0.1:9000`); unset: AWS",
        shown_default="AWS",
    )
    s3_region: str = _setting(NAME, "us-east-1", "region to sign requests for")
    s3_access_key: str = _setting(
        SECRET,
        "",
        "access key id; unset (with the secret): boto3's own lookup (instance role, "
        "`AWS_SHARED_CREDENTIALS_FILE`, web identity)",
        shown_default="none",
    )
    s3_secret_key: str = _setting(
        SECRET, "", "secret access key, with `INGEST_S3_ACCESS_KEY`", shown_default="none"
    )
    s3_addressing: str = _setting(
        _choice("auto", "path", "virtual"),
        "auto",
        "bucket in the path (`path`, what most self-hosted servers want) or in the host name",
    )
    s3_part_size: int = _positive(
        SIZE,
        8 << 20,
        "part size of the multipart uploads that place staged uploads as blobs; at least "
        "`5MiB` (S3's smallest part), checked when the driver starts",
    )
    redis_url: str = _setting(
        URL,
        "redis://127.0.0.1:6379/0",
        "broker and result backend; a password goes in the URL "
        "(`redis://:PASSWORD@host:6379/0`, percent-encoded), TLS with `rediss://`; "
        "printed only masked (`redis://:***@…`)",
        env="REDIS_URL",
    )
    broker_url: str = _setting(
        URL, "", "the broker, if not `REDIS_URL` (e.g. `amqp://…`)", shown_default="`REDIS_URL`"
    )
    result_backend: str = _setting(
        URL, "", "the result backend, if not `REDIS_URL`", shown_default="`REDIS_URL`"
    )
    redis_tls_ca: str = _setting(
        PATH,
        "",
        "for `rediss://` URLs: the CA file that signed Redis's certificate (default: the "
        "system's CAs; the certificate and host name are always verified). Each "
        "`INGEST_REDIS_TLS_*` set without a `rediss://` URL is an error",
        shown_default="none",
    )
    redis_tls_cert: str = _setting(
        PATH, "", "client certificate, for a Redis with `tls-auth-clients`", shown_default="none"
    )
    redis_tls_key: str = _setting(
        PATH,
        "",
        "its private key, unless it is in `INGEST_REDIS_TLS_CERT`",
        shown_default="none",
    )
    max_blob_size: int = _positive(
        SIZE, 16 << 30, "largest blob accepted, enforced while streaming (413)"
    )
    max_manifest_size: int = _positive(SIZE, 4 << 20, "largest manifest accepted (413)")
    verify_chunk: int = _positive(SIZE, 4 << 20, "read size of the verification pass")
    batch_window: float = _not_negative(
        DURATION,
        0.05,
        "under concurrent load (other finishes awaiting their outcome, one in the last "
        "window), a small upload's finish waits up to this long for others and they go "
        "to the workers as one task, each upload keeping its own outcome; an idle or "
        "sequential client's finish is sent at once. `0` sends every verification alone",
    )
    batch_max: int = _positive(COUNT, 32, "most uploads one batched verification carries")
    batch_max_size: int = _not_negative(
        SIZE,
        1 << 20,
        "uploads larger than this are verified by a task of their own (with progress)",
    )
    prehash_min_size: int = _not_negative(
        SIZE,
        32 << 20,
        "an upload growing past this size is hashed by a worker while it arrives, so a "
        "sha256 verification after `finish` has only the tail left (`0` turns it off; "
        "see `docs/operations.md`)",
    )
    prehash_idle: float = _positive(
        DURATION, 10.0, "the pre-hashing worker gives up on an upload idle this long"
    )
    task_max_retries: int = _not_negative(
        COUNT, 5, "automatic retries of transient failures (exponential backoff with jitter)"
    )
    verify_base_time: int = _not_negative(
        SECONDS, 60, "per-verification time limit = this + size / `INGEST_VERIFY_MIN_RATE`"
    )
    verify_min_rate: int = _positive(
        SIZE, 20 << 20, "bytes per second every verification is granted (see above)"
    )
    visibility_timeout: int = _not_negative(
        SECONDS,
        0,  # 0: the longest verification time limit + 60 s
        "before Redis redelivers a task whose worker died; must exceed the longest time "
        "limit (see `docs/operations.md`)",
        shown_default="longest time limit + 60 s",
    )
    result_expires: int = _not_negative(
        SECONDS,
        7 * 24 * 3600,
        "how long task results stay in Redis (outcomes also stay in storage)",
    )
    finish_wait: float = _not_negative(
        DURATION, 300.0, "how long a finishing blob PUT waits for its verification before a 202"
    )
    # Slow and idle clients (the HTTP frontend; see ingest/http/server.py).
    header_timeout: float = _positive(
        DURATION,
        10.0,
        "a request head must be complete this long after the connection opens (or after its "
        "first byte, between requests); then 408 and close",
    )
    body_idle_timeout: float = _positive(
        DURATION,
        60.0,
        "a request body (or a response the client reads) that makes no progress this long is "
        "cut; time the server is not reading (app busy, flow control) does not count",
    )
    keepalive_timeout: float = _positive(
        DURATION, 30.0, "an idle connection between requests is closed after this long"
    )
    max_connections: int = _positive(
        COUNT,
        1000,
        "open connections per frontend process; more get 503 and are closed at once "
        "(`ingest serve` raises the descriptor limit to fit, or lowers this with a warning)",
    )
    tarsum_max_bytes: int = _positive(
        SIZE, 64 << 30, "gzip-bomb cap of TarSum verification: most bytes decompressed"
    )
    tarsum_max_ratio: float = _positive(
        NUMBER, 1000.0, "gzip-bomb cap of TarSum verification: most decompressed per stored byte"
    )
    purge_age: float = _setting(
        DURATION,
        24 * 3600.0,
        "idle time before an upload is purged (the floor holds for `--older-than` too)",
        minimum=MIN_PURGE_AGE,
        why="a shorter cut-off purges uploads whose client merely paused between chunks",
    )
    purge_interval: float = _positive(DURATION, 3600.0, "how often beat purges")
    reconcile_grace: float = _setting(
        DURATION,
        600.0,
        "a verification that no worker ever took is re-sent after this long (the floor "
        "holds for `--grace` too)",
        minimum=MIN_RECONCILE_GRACE,
        why="a shorter grace re-sends verifications that are only queued",
    )
    # Often enough that a dead worker's verification is handed over within seconds of
    # its lease going stale (ingest.leases); each run only reads small records.
    reconcile_interval: float = _positive(
        DURATION,
        15.0,
        "how often beat checks for stuck verifications: one whose worker died (its lease "
        "went unrenewed for 15 s) is re-sent at once",
    )
    fsck_interval: float = _not_negative(
        DURATION,
        600.0,
        "how often beat runs a share of fsck (`0`: never; see `docs/operations.md`)",
    )
    fsck_budget: int = _positive(
        SIZE, 1 << 30, "bytes one fsck share re-hashes at most (always at least one blob)"
    )
    fsck_budget_blobs: int = _positive(COUNT, 10_000, "blobs one fsck share re-hashes at most")
    fsck_repair: bool = _setting(
        BOOL, False, "whether scheduled shares repair (quarantine, unlink) or only report"
    )
    gc_grace: float = _setting(
        DURATION,
        3600.0,
        "garbage collection keeps an unreferenced blob (or, with `--delete-untagged`, an "
        "untagged manifest) this long after it was last written or linked: the time a "
        "client may take between pushing a blob and the manifest naming it (the floor "
        "holds for `--grace` too)",
        minimum=MIN_GC_GRACE,
        why="a shorter grace deletes blobs whose manifest is still being pushed",
    )
    gc_interval: float = _not_negative(
        DURATION,
        0.0,
        "how often beat runs garbage collection (`0`: never; `ingest gc` runs it by hand; "
        "see `docs/operations.md`)",
    )
    beat_lock_ttl: float = _setting(
        DURATION,
        30.0,
        "beat schedules only while it holds a Redis lock that lives this long and is "
        "renewed every third of it; a standby beat takes over within about this long "
        "of the leader's death (at once when it stops cleanly)",
        minimum=3.0,
        why="the leader renews the lock every third of it, and needs a second for that",
    )
    staging_fsync: bool = _setting(
        BOOL, False, "also fsync every staged request body (commits are always fsync'd)"
    )
    log_level: str = _setting(
        _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), "INFO", "logging threshold"
    )
    log_format: str = _setting(
        _choice("json", "text"),
        "json",
        "logging: `json` lines with `upload_id`/`task_id`, or `text`",
    )

    # -- access control and transport (the HTTP frontend) ------------------------------
    auth: str = _setting(
        AUTH,
        "",
        "how the HTTP frontend authenticates: `htpasswd` (Basic, bcrypt entries), `token` "
        "(Bearer JWTs of the Docker token protocol) or `none` (open: for demos and tests "
        "only, logged loudly). Required by `ingest serve`",
        shown_default="unset",
    )
    auth_realm: str = _setting(
        NAME, "verified-ingest", "the realm of the `Basic` challenge (htpasswd)"
    )
    auth_htpasswd: str = _setting(
        PATH,
        "",
        "htpasswd file (bcrypt entries only), re-read when it changes",
        shown_default="none",
    )
    auth_token_realm: str = _setting(
        URL,
        "",
        "token: where clients get a token (the `realm` of the `Bearer` challenge)",
        shown_default="none",
    )
    auth_token_service: str = _setting(
        NAME,
        "",
        "token: this registry's service name, the tokens' required audience",
        shown_default="none",
    )
    auth_token_issuer: str = _setting(
        NAME, "", "token: the required issuer (`iss`) of tokens", shown_default="none"
    )
    auth_token_certs: str = _setting(
        PATH,
        "",
        "token: PEM bundle of the issuer's certificates or public keys that may sign tokens",
        shown_default="none",
    )
    auth_token_jwks: str = _setting(
        PATH,
        "",
        "token: a JWKS file of signing keys (with, or instead of, the PEM bundle)",
        shown_default="none",
    )
    delete_enabled: bool = _setting(
        BOOL, False, "whether DELETE of blobs and manifests is allowed (else 405 `UNSUPPORTED`)"
    )
    read_only: bool = _setting(
        BOOL,
        False,
        "maintenance mode: every write answers 405 `UNSUPPORTED`, pulls keep working",
    )
    tls_cert: str = _setting(
        PATH,
        "",
        "certificate chain (PEM) `ingest serve` presents; with `INGEST_TLS_KEY`",
        shown_default="none",
    )
    tls_key: str = _setting(
        PATH, "", "private key (PEM) of `INGEST_TLS_CERT`", shown_default="none"
    )
    debug_addr: str = _setting(
        NAME,
        "127.0.0.1:5001",
        "`host:port` (`[v6]:port`) of the separate listener for `/metrics` and `/health`, "
        "served by one process of `ingest serve` for all of them; `off`: none",
    )

    # -- notifications (ingest.notify; docs/operations.md, "Notifications") -------------
    notify_endpoints: str = _setting(
        ENDPOINTS,
        "",
        "where registry events go: a JSON file, or inline JSON (starting with `[` or `{`), "
        "listing endpoints with `name`, `url`, `headers`, `timeout`, `backoff`, "
        "`max_attempts`, `max_events`, `ignore` (docs/operations.md); checked at start-up",
        shown_default="none",
        check=_endpoints_problem,
    )
    notify_pulls: bool = _setting(
        BOOL, False, "also send `pull` events (manifest and blob GETs) to the endpoints"
    )
    notify_base_url: str = _setting(
        URL,
        "",
        "the registry's external URL (`https://registry.example.com`) for events' "
        "`target.url`; unset: the request's own scheme and host (events from workers "
        "then have no `url`)",
        shown_default="none",
        check=_base_url_problem,
    )

    def __post_init__(self) -> None:
        # Empty broker/backend fall back to the Redis URL.
        if not self.broker_url:
            object.__setattr__(self, "broker_url", self.redis_url)
        if not self.result_backend:
            object.__setattr__(self, "result_backend", self.redis_url)
        self._check_redis()
        for d in _DECLARATIONS:
            value = getattr(self, d.field)
            if d.spec.kind.choices:
                try:  # any case in, the declared spelling out
                    object.__setattr__(self, d.field, d.spec.kind.parse(value))
                except ValueError as exc:
                    raise ConfigError(str(exc), d.field) from None
            if (problem := d.problem(value)) is not None:
                raise ConfigError(problem, d.field)
        self._check_auth()
        if self.visibility_timeout == 0:
            # As short as is safe: recovery from a dead worker waits this long.
            object.__setattr__(self, "visibility_timeout", self.max_time_limit() + 60)
        if self.visibility_timeout <= self.max_time_limit():
            raise ConfigError(
                "must exceed the longest verification time limit "
                f"({self.max_time_limit()} s for the maximum blob size), or Redis would "
                "redeliver tasks that are still running",
                "visibility_timeout",
            )

    def _check_auth(self) -> None:
        needs: dict[str, tuple[str, ...]] = {
            "htpasswd": ("auth_htpasswd",),
            "token": ("auth_token_realm", "auth_token_service", "auth_token_issuer"),
        }
        for name in needs.get(self.auth, ()):
            if not getattr(self, name):
                raise ConfigError(f"must be set when INGEST_AUTH={self.auth}", name)
        if self.auth == "token" and not (self.auth_token_certs or self.auth_token_jwks):
            raise ConfigError(
                "INGEST_AUTH=token needs the keys that may sign tokens: "
                "INGEST_AUTH_TOKEN_CERTS or INGEST_AUTH_TOKEN_JWKS",
                "auth_token_certs",
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError(
                "INGEST_TLS_CERT and INGEST_TLS_KEY go together",
                "tls_key" if self.tls_cert else "tls_cert",
            )

    def _check_redis(self) -> None:
        urls = {
            "redis_url": self.redis_url,
            "broker_url": self.broker_url,
            "result_backend": self.result_backend,
        }
        for name, url in urls.items():
            if url.startswith(("redis://", "rediss://")):
                try:
                    urlsplit(url).port  # noqa: B018 - raises ValueError on a mangled netloc
                except ValueError:
                    # Never echo the URL: the part after ':' may be the password.
                    raise ConfigError(
                        f"not a valid Redis URL: {mask_url(url)} (percent-encode reserved "
                        "characters such as / # ? @ in the password)",
                        name,
                    ) from None
        files = {
            "redis_tls_ca": self.redis_tls_ca,
            "redis_tls_cert": self.redis_tls_cert,
            "redis_tls_key": self.redis_tls_key,
        }
        for name, path in files.items():
            if path and not os.path.isfile(path):
                raise ConfigError(f"no such file: {path!r}", name)
        if self.redis_tls_key and not self.redis_tls_cert:
            raise ConfigError("needs INGEST_REDIS_TLS_CERT as well", "redis_tls_key")
        used = [name for name, path in files.items() if path]
        if used and not any(url.startswith("rediss://") for url in urls.values()):
            raise ConfigError(
                "is set, but no Redis URL uses rediss://, so TLS would not be used", used[0]
            )

    def __repr__(self) -> str:
        # Settings travel into Celery's configuration (``celery inspect conf``, Flower's
        # worker page): never show a password there, nor in a log line or traceback.
        shown = (
            f"{d.field}={(mask_url(v) if d.spec.kind is URL else _shown(d.spec.kind, v))!r}"
            for d in _DECLARATIONS
            for v in (getattr(self, d.field),)
        )
        return f"Settings({', '.join(shown)})"

    def redis_ssl_options(self) -> dict[str, Any]:
        """TLS keyword arguments for connections to ``rediss://`` URLs (see
        :func:`redis_tls_options`)."""
        return redis_tls_options(self.redis_tls_ca, self.redis_tls_cert, self.redis_tls_key)

    def time_limit(self, size: int | None) -> int:
        """Hard time limit in seconds for verifying ``size`` bytes."""
        n = self.max_blob_size if size is None else min(size, self.max_blob_size)
        return self.verify_base_time + -(-n // self.verify_min_rate)

    def max_time_limit(self) -> int:
        return self.time_limit(self.max_blob_size)

    def fsck_time_limit(self) -> int:
        """Hard time limit of one scheduled fsck share: its byte budget, or one blob of
        the maximum size (a share always checks at least one blob), at the verification
        rate, plus the base time twice (the second for walking the repositories' links)."""
        n = max(self.fsck_budget, self.max_blob_size)
        return 2 * self.verify_base_time + -(-n // self.verify_min_rate)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], prefix: str = "INGEST_") -> Settings:
        """Build settings from ``environ``; raise ConfigError naming a bad variable.

        ``INGEST_CONFIG_FILE`` may name a file of ``NAME=value`` lines (``#``
        comments, blank lines allowed) read first; the environment overrides it.
        Unset and empty variables take the default.
        """
        file_name = environ.get(prefix + "CONFIG_FILE")
        if file_name:
            environ = {**read_env_file(file_name), **environ}
        values: dict[str, Any] = {}
        for d in declarations(prefix):
            raw = environ.get(d.variable)
            for alias in _ALIASES.get(d.field, ()):
                other = environ.get(prefix + alias)
                if other and raw and other != raw:
                    raise ConfigError(
                        f"{prefix}{alias}={other} and {d.variable}={raw} disagree", d.field
                    )
                raw = raw or other
            if not raw:
                continue
            try:
                values[d.field] = d.spec.kind.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{d.variable}: {exc}", d.field) from None
        try:
            return cls(**values)
        except ConfigError as exc:
            by_field = {d.field: d for d in declarations(prefix)}
            var = by_field[exc.field].variable if exc.field in by_field else "configuration"
            raise ConfigError(f"{var}: {exc}", exc.field) from None


@dataclass(frozen=True, slots=True)
class Declaration:
    """One setting as declared: its field, variable, default and :class:`Spec`."""

    field: str
    variable: str
    default: Any
    spec: Spec

    def problem(self, value: Any) -> str | None:
        """Why ``value`` will not do for this setting, or None."""
        spec = self.spec
        if spec.minimum is not None:
            floor = spec.kind.format(spec.minimum)
            # `not >=` also refuses NaN.
            if spec.above and not value > spec.minimum:
                message = "must be positive" if spec.minimum == 0 else f"must exceed {floor}"
            elif not spec.above and not value >= spec.minimum:
                message = (
                    "must not be negative" if spec.minimum == 0 else f"must be at least {floor}"
                )
            else:
                message = ""
            if message:
                return f"{message}: {spec.why}" if spec.why else message
        return spec.check(value) if spec.check else None

    @property
    def shown_default(self) -> str:
        if self.spec.shown_default is not None:
            return self.spec.shown_default
        return f"`{self.spec.kind.format(self.default)}`"

    @property
    def type(self) -> str:
        spec = self.spec
        bound = ""
        if spec.minimum is not None:
            floor = spec.kind.format(spec.minimum)
            bound = f" > {floor}" if spec.above else f" ≥ {floor}"
        return spec.kind.name + bound


def declarations(prefix: str = "INGEST_") -> tuple[Declaration, ...]:
    """Every setting, in the order of :class:`Settings`' fields."""
    out = []
    for f in fields(Settings):
        spec = f.metadata.get("setting")
        if not isinstance(spec, Spec):
            raise TypeError(f"Settings.{f.name} is not declared with _setting()")
        variable = spec.env if spec.env is not None else prefix + f.name.upper()
        out.append(Declaration(f.name, variable, f.default, spec))
    return tuple(out)


_DECLARATIONS = declarations()

_TABLE_START = (
    "<!-- generated from ingest/config.py: python -m ingest.config --write-readme README.md -->"
)


def render_markdown(prefix: str = "INGEST_") -> str:
    """The README's table of every setting (``python -m ingest.config --markdown``)."""
    rows = [
        "| variable | type | default | meaning |",
        "| --- | --- | --- | --- |",
        *(
            f"| `{d.variable}` | {d.type} | {d.shown_default} | {d.spec.help} |"
            for d in declarations(prefix)
        ),
    ]
    return "\n".join(rows) + "\n"


def replace_table(readme: str) -> str:
    """``readme`` with the table after the marker line replaced by :func:`render_markdown`."""
    start = readme.find(_TABLE_START)
    if start < 0:
        raise ValueError(f"no {_TABLE_START!r} line")
    head_end = readme.index("\n", start) + 1
    lines = readme[head_end:].splitlines(keepends=True)
    n = 0
    while n < len(lines) and (lines[n].startswith("|") or not lines[n].strip()):
        n += 1
    # A blank line after the comment: the table must not read as part of an HTML block.
    return readme[:head_end] + "\n" + render_markdown() + "\n" + "".join(lines[n:])


def main(argv: Sequence[str] | None = None) -> int:
    """Check the environment's settings and print them, or render the README table."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--markdown"]:
        sys.stdout.write(render_markdown())
        return 0
    if len(args) == 2 and args[0] == "--write-readme":
        with open(args[1], encoding="utf-8") as f:
            text = f.read()
        with open(args[1], "w", encoding="utf-8") as f:
            f.write(replace_table(text))
        return 0
    if args:
        sys.stderr.write("usage: python -m ingest.config [--markdown | --write-readme README.md]\n")
        return 2
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        sys.stderr.write(f"error: configuration: {exc}\n")
        return 2
    for d in _DECLARATIONS:
        sys.stdout.write(f"{d.variable}={d.spec.kind.format(getattr(settings, d.field))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
