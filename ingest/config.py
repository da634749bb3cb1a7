"""Settings: read once from the environment at an edge, then passed down.

Only :meth:`Settings.from_env` reads the environment, and only the edges call it
(``Ingest.from_env``, ``workers.app``, the CLI group). Everything else takes a
:class:`Settings` or the plain values it needs.

The variables, their defaults and meanings are listed in the README's
Configuration table; the field names below are the variables without ``INGEST_``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from ingest.arguments import MIN_PURGE_AGE, MIN_RECONCILE_GRACE
from ingest.digests import VerifierLimits

__all__ = [
    "ConfigError",
    "Settings",
    "mask_url",
    "parse_duration",
    "parse_mode",
    "parse_size",
    "redis_tls_options",
]

_SIZE_RE = re.compile(r"\s*(\d+)\s*([kmgt]?i?b?)?\s*", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``"24h"`` → 86400.0; plain numbers are seconds."""
    m = _DURATION_RE.fullmatch(text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or ""]


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


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_mode(text: str) -> int:
    """``"0640"``, ``"640"`` or ``"0o640"`` → 0o640: permission bits, always octal."""
    digits = text.strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{1,4}", digits):
        raise ValueError(f"not an octal file mode: {text!r}")
    return int(digits, 8)


def parse_size(text: str) -> int:
    """``"16GiB"`` → 17179869184; plain integers are bytes."""
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    unit = (m.group(2) or "").lower().removesuffix("b")
    if unit not in _UNITS:
        raise ValueError(f"unknown size unit in {text!r}")
    return int(m.group(1)) * _UNITS[unit]


_URL_FIELDS = frozenset({"redis_url", "broker_url", "result_backend"})


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


@dataclass(frozen=True, slots=True)
class Settings:
    """All runtime configuration, immutable."""

    storage_root: str = "./var/storage"
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str = ""
    result_backend: str = ""
    # TLS of rediss:// URLs (broker, result backend, locks); "" = not set.
    redis_tls_ca: str = ""  # CA file that signed the server's certificate ("" = system CAs)
    redis_tls_cert: str = ""  # client certificate, for a Redis with tls-auth-clients
    redis_tls_key: str = ""  # its private key, unless it is in redis_tls_cert
    max_blob_size: int = 16 << 30
    verify_chunk: int = 4 << 20
    task_max_retries: int = 5
    verify_min_rate: int = 20 << 20
    verify_base_time: int = 60
    visibility_timeout: int = 0  # 0: the longest verification time limit + 60 s
    result_expires: int = 7 * 24 * 3600
    finish_wait: float = 300.0
    # Slow and idle clients (the HTTP frontend; see ingest/http/server.py).
    header_timeout: float = 10.0  # connection open (or first byte) → complete request head
    body_idle_timeout: float = 60.0  # longest silence inside a request (or response) body
    keepalive_timeout: float = 30.0  # idle connection between requests
    max_connections: int = 1000  # open connections per frontend process
    tarsum_max_bytes: int = 64 << 30
    tarsum_max_ratio: float = 1000.0
    purge_age: float = 24 * 3600.0
    purge_interval: float = 3600.0
    reconcile_grace: float = 600.0
    # Often enough that a dead worker's verification is handed over within seconds of
    # its lease going stale (ingest.leases); each run only reads small records.
    reconcile_interval: float = 15.0
    staging_fsync: bool = False
    log_level: str = "INFO"
    log_format: str = "json"
    max_manifest_size: int = 4 << 20
    prehash_min_size: int = 32 << 20  # 0: never hash uploads while they arrive
    prehash_idle: float = 10.0
    # Permissions of what the filesystem driver creates (octal; the umask only removes
    # bits). Private by default: staged uploads are not for other local users.
    file_mode: int = 0o640
    dir_mode: int = 0o750
    fsck_interval: float = 600.0  # 0: no scheduled fsck
    fsck_budget: int = 1 << 30  # bytes hashed per scheduled share
    fsck_budget_blobs: int = 10_000  # blobs per scheduled share
    fsck_repair: bool = False  # whether the scheduled share repairs or only reports

    def __post_init__(self) -> None:
        # Empty broker/backend fall back to the Redis URL.
        if not self.broker_url:
            object.__setattr__(self, "broker_url", self.redis_url)
        if not self.result_backend:
            object.__setattr__(self, "result_backend", self.redis_url)
        self._check_redis()
        # Floors (ingest.arguments): `not >=` also refuses NaN.
        if not self.purge_age >= MIN_PURGE_AGE:
            raise ConfigError(
                f"must be at least {MIN_PURGE_AGE:g} s: a shorter cut-off purges uploads "
                "whose client merely paused between chunks",
                "purge_age",
            )
        if not self.reconcile_grace >= MIN_RECONCILE_GRACE:
            raise ConfigError(
                f"must be at least {MIN_RECONCILE_GRACE:g} s: a shorter grace re-sends "
                "verifications that are only queued",
                "reconcile_grace",
            )
        for name in ("max_blob_size", "verify_chunk", "verify_min_rate", "max_manifest_size"):
            if getattr(self, name) <= 0:
                raise ConfigError("must be positive", name)
        if self.log_format not in ("json", "text"):
            raise ConfigError("must be 'json' or 'text'", "log_format")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL", "log_level")
        if self.prehash_min_size < 0:
            raise ConfigError("must not be negative", "prehash_min_size")
        if self.prehash_idle <= 0:
            raise ConfigError("must be positive", "prehash_idle")
        if self.file_mode & ~0o777 or not self.file_mode & 0o200:
            # Without the owner's write bit every staged file would read as sealed.
            raise ConfigError("must be an octal mode within 0777 with owner write", "file_mode")
        if self.dir_mode & ~0o777 or self.dir_mode & 0o700 != 0o700:
            raise ConfigError("must be an octal mode within 0777 with owner rwx", "dir_mode")
        for name in ("header_timeout", "body_idle_timeout", "keepalive_timeout", "max_connections"):
            if getattr(self, name) <= 0:
                raise ConfigError("must be positive", name)
        if self.task_max_retries < 0:
            raise ConfigError("must not be negative", "task_max_retries")
        if self.fsck_interval < 0:
            raise ConfigError("must not be negative", "fsck_interval")
        for name in ("fsck_budget", "fsck_budget_blobs"):
            if getattr(self, name) <= 0:
                raise ConfigError("must be positive", name)
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
            f"{f.name}={(mask_url(v) if f.name in _URL_FIELDS else v)!r}"
            for f in fields(self)
            for v in (getattr(self, f.name),)
        )
        return f"Settings({', '.join(shown)})"

    def redis_ssl_options(self) -> dict[str, Any]:
        """TLS keyword arguments for connections to ``rediss://`` URLs (see
        :func:`redis_tls_options`)."""
        return redis_tls_options(self.redis_tls_ca, self.redis_tls_cert, self.redis_tls_key)

    def verifier_limits(self) -> VerifierLimits:
        return VerifierLimits(self.tarsum_max_bytes, self.tarsum_max_ratio)

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
        """
        file_name = environ.get(prefix + "CONFIG_FILE")
        if file_name:
            environ = {**read_env_file(file_name), **environ}
        values: dict[str, object] = {}
        if environ.get("REDIS_URL"):
            values["redis_url"] = environ["REDIS_URL"]
        for f in fields(cls):
            var = prefix + f.name.upper()
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            try:
                if f.type in ("int", int):
                    is_size = f.name in (
                        "max_blob_size",
                        "verify_chunk",
                        "verify_min_rate",
                        "max_manifest_size",
                        "tarsum_max_bytes",
                        "prehash_min_size",
                        "fsck_budget",
                    )
                    if f.name in ("file_mode", "dir_mode"):
                        values[f.name] = parse_mode(raw)
                    else:
                        values[f.name] = parse_size(raw) if is_size else int(raw)
                elif f.type in ("float", float):
                    values[f.name] = parse_duration(raw)
                elif f.type in ("bool", bool):
                    values[f.name] = _parse_bool(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ConfigError(f"{var}={raw!r}: {exc}") from None
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ConfigError as exc:
            var = prefix + exc.field.upper() if exc.field else "configuration"
            raise ConfigError(f"{var}: {exc}", exc.field) from None
