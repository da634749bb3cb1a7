"""The ``ingest`` command line.

Configuration is read once, in the group callback, into ``ctx.obj``. Every
IngestError becomes a one-line message with its code and the exit status the
taxonomy assigns: 3 rejected content or request, 4 service unavailable (try
again), 1 anything else; click uses 2 for usage errors.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import io
import json
import os
import re
import stat
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, BinaryIO, ParamSpec, TypeVar, cast

import click

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from ingest.client import Credentials, RegistryClient
    from ingest.http.server import ConnectionLimits, DebugListener

from ingest.config import ConfigError, Settings, mask_url, parse_duration
from ingest.errors import (
    EXIT_USAGE,
    ArgumentInvalid,
    BlobUploadUnknown,
    IngestError,
    NameInvalid,
    Unauthorized,
)
from ingest.queue import WORKER_QUEUES

P = ParamSpec("P")
R = TypeVar("R")


class Context:
    """What every command gets: settings, and an Ingest client built on first use.

    ``ingest_url``: INGEST_URL as the group found it, for the message of a command
    that has no HTTP form (the commands that do take it through ``--url``)."""

    def __init__(self, settings: Settings, as_json: bool, ingest_url: str | None = None) -> None:
        self.settings = settings
        self.as_json = as_json
        self.ingest_url = ingest_url
        self._ingest: Any = None

    @property
    def ingest(self) -> Any:
        if self._ingest is None:
            from ingest.api import Ingest  # builds a Celery client: only when needed

            self._ingest = Ingest.from_settings(self.settings)
        return self._ingest

    def local(self, command: str, *, http_form: bool = True) -> Any:
        """:attr:`ingest`, for a command working on the storage and broker directly.

        A usage error when the storage is not here (a filesystem root that does not
        exist): scanning an empty directory would report nothing to do, as
        ``retry --failed`` did with only INGEST_URL set. The message says where to
        turn: the frontend (``http_form``), or the host that has the storage."""
        s = self.settings
        if s.storage_driver != "filesystem" or os.path.isdir(s.storage_root):
            return self.ingest
        if http_form:
            hint = "give the frontend with --url or INGEST_URL, or set INGEST_STORAGE_ROOT"
        else:
            ignored = " (INGEST_URL is not used)" if self.ingest_url else ""
            hint = (
                f"`ingest {command}` has no HTTP form{ignored}: it works on the storage and "
                "Redis directly, so run it where they are, with INGEST_STORAGE_ROOT and REDIS_URL"
            )
        raise click.UsageError(
            f"no storage at {os.path.abspath(s.storage_root)} (INGEST_STORAGE_ROOT): {hint}"
        )

    def emit(self, data: dict[str, Any], human: str) -> None:
        click.echo(json.dumps(data, sort_keys=True) if self.as_json else human)


class Duration(click.ParamType[float]):
    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float | int):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


pass_ctx = click.make_pass_decorator(Context)


def reports_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn IngestError into ``CODE: message`` on stderr and the taxonomy's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except IngestError as exc:
            ctx = click.get_current_context()
            obj = ctx.find_object(Context)
            if obj is not None and obj.as_json:
                click.echo(json.dumps({"error": exc.to_dict()}, sort_keys=True))
            detail = f" {json.dumps(exc.detail, sort_keys=True)}" if exc.detail else ""
            click.echo(f"error: {exc.code}: {exc.message}{detail}", err=True)
            for note in getattr(exc, "__notes__", ()):  # what to do about it (add_note)
                click.echo(f"hint: {note}", err=True)
            # An argument out of its safe range (purge --older-than 0s) is a usage error.
            ctx.exit(EXIT_USAGE if isinstance(exc, ArgumentInvalid) else exc.exit_code)
            raise AssertionError("unreachable") from exc

    return wrapper


@click.group()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def cli(ctx: click.Context, as_json: bool) -> None:
    """verified-ingest: stage, verify and commit content-addressed blobs."""
    if isinstance(ctx.obj, Context):  # injected by a caller (tests, embedding)
        ctx.obj.as_json = ctx.obj.as_json or as_json
        return
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        click.echo(f"error: configuration: {exc}", err=True)
        ctx.exit(EXIT_USAGE)
    ctx.obj = Context(settings, as_json, os.environ.get("INGEST_URL") or None)


@cli.command()
@click.argument("file", type=click.File("rb"))
@click.option("--repo", "repository", required=True, help="Repository to link the blob into.")
@click.option("--digest", help="Claimed digest (default: sha256 computed while uploading).")
@click.option("--timeout", type=float, default=300.0, show_default=True)
@pass_ctx
@reports_errors
def put(obj: Context, file: IO[bytes], repository: str, digest: str | None, timeout: float) -> None:
    """Stage FILE ('-' for stdin), finish, and wait for the verified commit."""
    up = obj.ingest.start_upload(repository)
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while n := file.readinto(view):  # type: ignore[attr-defined]
        up.write(view[:n])
        if digest is None:
            h.update(view[:n])
    ticket = up.finish(digest or "sha256:" + h.hexdigest())
    result = ticket.wait(timeout=timeout)
    obj.emit(result, _committed(result))


def _committed(result: dict[str, Any]) -> str:
    """The success line: what was committed where, and the upload it came from."""
    size = f" ({result['size']} bytes)" if "size" in result else ""
    upload = f", upload {result['upload_id']}" if result.get("upload_id") else ""
    return f"committed {result['repository']}@{result['digest']}{size}{upload}"


MIB = 1 << 20


class _ByteBar:
    """One progress line on stderr, redrawn in place at most every ``INTERVAL`` s: MiB
    done (of the total when known), the rate and, with a total, percent and ETA. A
    pipe has no total: then bytes and rate only."""

    INTERVAL = 0.2
    WIDTH = 24

    def __init__(
        self, label: str, total: int | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.label = label
        self.total = total or None
        self.n = 0
        self._base = 0  # bytes done before this bar saw any (the rate leaves them out)
        self._clock = clock
        self._start = clock()
        self._drawn_at = float("-inf")
        self._width = 0

    def start_at(self, done: int) -> None:
        """Begin at ``done`` bytes (work that was over before the bar could watch it)."""
        self.n = self._base = done

    def update(self, n: int) -> None:
        self.n += n
        now = self._clock()
        if now - self._drawn_at >= self.INTERVAL:
            self._draw(now)

    def close(self) -> None:
        self._draw(self._clock())
        click.echo("", err=True)

    def line(self, now: float) -> str:
        elapsed = now - self._start
        # Too early to tell: a rate over microseconds would be noise (and huge).
        rate = (self.n - self._base) / elapsed if elapsed >= 0.05 else 0.0
        speed = f"{rate / MIB:.1f} MiB/s" if rate > 0 else "-- MiB/s"
        if self.total is None:
            return f"{self.label}: {self.n / MIB:.1f} MiB  {speed}"
        part = min(self.n / self.total, 1.0)
        filled = round(part * self.WIDTH)
        left = 0.0 if part >= 1 else (self.total - self.n) / rate if rate > 0 else None
        eta = "--:--" if left is None else f"{int(left) // 60:02d}:{int(left) % 60:02d}"
        return (
            f"{self.label}: {part:4.0%} |{'#' * filled}{' ' * (self.WIDTH - filled)}| "
            f"{self.n / MIB:.1f}/{self.total / MIB:.1f} MiB  {speed}  ETA {eta}"
        )

    def _draw(self, now: float) -> None:
        text = self.line(now)
        # Blank out what a longer previous line left behind.
        click.echo("\r" + text.ljust(self._width), err=True, nl=False)
        self._width = len(text)
        self._drawn_at = now


class _Progress:
    """The bars of one command, one at a time, each made on first use; none when
    ``quiet`` (stderr is no terminal, ``--json``, ``--no-progress``)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._bar: _ByteBar | None = None

    def bar(self, label: str, total: int | None) -> _ByteBar | None:
        if self.quiet:
            return None
        if self._bar is None or self._bar.label != label:
            self.close()  # the previous stage is over
            self._bar = _ByteBar(label, total)
        return self._bar

    def advance(self, label: str, total: int | None) -> Callable[[int], None]:
        """A callback adding its argument (bytes) to the bar ``label``."""

        def by(n: int) -> None:
            if bar := self.bar(label, total):
                bar.update(n)

        return by

    def reach(self, label: str) -> Callable[[int, int], None]:
        """A callback moving the bar ``label`` to ``done`` of ``total`` bytes."""

        def to(done: int, total: int) -> None:
            fresh = self._bar is None or self._bar.label != label
            if bar := self.bar(label, total or None):
                bar.total = total or bar.total
                if fresh:  # e.g. a verification half done by a prehash, or over already
                    bar.start_at(done)
                bar.update(max(done - bar.n, 0))

        return to

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _default_repository(file: IO[bytes]) -> str:
    stem = os.path.basename(getattr(file, "name", "") or "stdin").split(".", 1)[0].lower()
    cleaned = re.sub(r"[^a-z0-9]+", "-", stem).strip("-") or "blob"
    return f"uploads/{cleaned}"


#: The frontend a push or pull talks to (always HTTP, so it has a default).
_FRONTEND_URL = click.option(
    "--url",
    envvar="INGEST_URL",
    default="http://127.0.0.1:5000",
    show_default=True,
    help="Frontend URL [INGEST_URL].",
)


#: Who the HTTP commands authenticate as when the frontend asks. No --password: a
#: password on the command line shows in ps and the shell's history.
_USERNAME = click.option(
    "--username",
    "-u",
    envvar="INGEST_USERNAME",
    help="User name for the frontend (or its token server) [INGEST_USERNAME].",
)
_PASSWORD_STDIN = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from standard input (else INGEST_PASSWORD).",
)
#: The most of standard input --password-stdin reads.
MAX_PASSWORD = 4096


def _credentials(
    username: str | None, password_stdin: bool, *, stdin_busy: bool = False
) -> Credentials | None:
    """The credentials of an HTTP command: the user name of --username or
    INGEST_USERNAME, the password from standard input (--password-stdin) or
    INGEST_PASSWORD; None for neither. Given half of them, a usage error."""
    from ingest.client import Credentials

    username = username or None
    if password_stdin:
        if stdin_busy:
            raise click.UsageError(
                "--password-stdin: standard input is the blob to push; set INGEST_PASSWORD"
            )
        if username is None:
            raise click.UsageError("--password-stdin needs --username (or INGEST_USERNAME)")
        raw = sys.stdin.buffer.read(MAX_PASSWORD + 1)
        if len(raw) > MAX_PASSWORD:
            raise click.UsageError(f"--password-stdin: more than {MAX_PASSWORD} bytes")
        try:
            # As docker login does: one trailing line end is not part of the password.
            password: str | None = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError:
            raise click.UsageError("--password-stdin: the password is not UTF-8") from None
        if not password:
            raise click.UsageError("--password-stdin: standard input held no password")
    else:
        password = os.environ.get("INGEST_PASSWORD") or None
    if username is None and password is None:
        return None
    if username is None:
        raise click.UsageError("INGEST_PASSWORD is set but no user name: give --username")
    if password is None:
        raise click.UsageError(
            "--username needs a password: pipe it to --password-stdin or set INGEST_PASSWORD"
        )
    try:
        return Credentials(username, password)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--username") from None


@cli.command()
@click.argument("file", type=click.File("rb"))
@click.option("--repo", "repository", help="Repository (default: uploads/<file name>).")
@click.option("--digest", help="Claimed digest (default: computed while uploading).")
@click.option(
    "--tarsum",
    type=click.Choice(["v0", "v1", "dev"]),
    help="Claim the TarSum of this version (sha256) instead of a plain digest.",
)
@click.option("--chunk-size", type=str, default="16MiB", show_default=True)
@_FRONTEND_URL
@_USERNAME
@_PASSWORD_STDIN
@click.option("--timeout", type=float, default=600.0, show_default=True)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bars (default: when stderr is a TTY)."
)
@pass_ctx
@reports_errors
def push(
    obj: Context,
    file: IO[bytes],
    repository: str | None,
    digest: str | None,
    tarsum: str | None,
    chunk_size: str,
    url: str,
    username: str | None,
    password_stdin: bool,
    timeout: float,
    progress: bool | None,
) -> None:
    """Upload FILE ('-' for stdin) through the HTTP API and wait for its verification.

    A regular file is hashed first, and not sent if the repository already has that
    blob (a HEAD). A pipe is streamed as it comes, hashed on the way."""
    from ingest.client import RegistryClient, compute_digest
    from ingest.config import parse_size

    if digest and tarsum:
        raise click.UsageError("--digest and --tarsum are exclusive")
    label = (
        None
        if tarsum is None
        else {"v0": "tarsum", "v1": "tarsum.v1", "dev": "tarsum.dev"}[tarsum] + "+sha256"
    )
    try:
        chunk = parse_size(chunk_size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--chunk-size") from None
    if chunk <= 0:
        raise click.BadParameter("must be more than 0 bytes", param_hint="--chunk-size")
    stdin_busy = file is getattr(sys.stdin, "buffer", None)  # FILE '-' (click's stdin)
    creds = _credentials(username, password_stdin, stdin_busy=stdin_busy)
    repo = repository or _default_repository(file)
    size = _size_of(file)
    quiet = not progress if progress is not None else (obj.as_json or not sys.stderr.isatty())
    bars = _Progress(quiet)
    try:
        if digest is None and size is not None:
            # Known before sending, so a blob the repository has is skipped, as
            # skopeo and oras do. A pipe cannot be read twice: it is hashed on the way.
            digest = compute_digest(cast(BinaryIO, file), label, bars.advance("digest", size))
            file.seek(0)
        with RegistryClient(url, credentials=creds) as client:
            result = client.push(
                repo,
                cast(BinaryIO, file),
                digest=digest,
                tarsum_label=label,
                chunk_size=chunk,
                on_upload=bars.advance("upload", size),
                on_verify=bars.reach("verify"),
                timeout=timeout,
            )
    finally:
        bars.close()
    if result.get("skipped"):
        human = (
            f"skipped {result['repository']}@{result['digest']} ({result['size']} bytes): "
            "the repository already has it"
        )
        obj.emit(result, human)
        return
    obj.emit(result, _committed(result))


@cli.command()
@click.argument("repository")
@click.argument("digest")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, writable=True),
    help="File to write; replaced only once the download matched DIGEST.",
)
@_FRONTEND_URL
@_USERNAME
@_PASSWORD_STDIN
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a TTY)."
)
@pass_ctx
@reports_errors
def pull(
    obj: Context,
    repository: str,
    digest: str,
    output: str,
    url: str,
    username: str | None,
    password_stdin: bool,
    progress: bool | None,
) -> None:
    """Download REPOSITORY's blob DIGEST to a file, verifying the digest as it streams.

    The bytes go to a temporary file next to --output, renamed only when they match
    DIGEST; a mismatch is DIGEST_INVALID (exit 3) and leaves no file behind."""
    from ingest.client import RegistryClient

    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise click.BadParameter(f"no directory {folder}", param_hint="--output")
    creds = _credentials(username, password_stdin)
    quiet = not progress if progress is not None else (obj.as_json or not sys.stderr.isatty())
    bars = _Progress(quiet)

    def sized(size: int | None) -> None:
        bars.bar("download", size)  # its total (for the ETA) once the registry says it

    try:
        with RegistryClient(url, credentials=creds) as client:
            result = client.pull(
                repository,
                digest,
                output,
                on_total=sized,
                on_bytes=bars.advance("download", None),
            )
    finally:
        bars.close()
    obj.emit(
        result,
        f"verified {result['repository']}@{result['digest']} ({result['size']} bytes) "
        f"-> {result['path']}",
    )


def _size_of(file: IO[bytes]) -> int | None:
    try:
        st = os.fstat(file.fileno())
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


_URL_OPTION = click.option(
    "--url",
    envvar="INGEST_URL",
    default=None,
    help="Ask this frontend's ingest API [INGEST_URL] instead of the storage and Redis directly.",
)


def _repository_names(
    ctx: click.Context, param: click.Parameter, value: str | Sequence[str] | None
) -> tuple[str, ...]:
    """--repo as a tuple of valid repository names (one goes into a token scope)."""
    from ingest.names import validate_name

    names = (value,) if isinstance(value, str) else tuple(value or ())
    try:
        return tuple(validate_name(name) for name in names)
    except NameInvalid as exc:
        raise click.BadParameter(exc.message) from None


_REPO_HELP = (
    "The upload's repository: the frontend's token is asked to cover it (token mode: "
    "the ingest API's challenge names none, so as not to reveal an upload's). Needs --url."
)
#: --repo of the commands that act on one upload.
_UPLOAD_REPO = click.option(
    "--repo", "repositories", callback=_repository_names, metavar="REPOSITORY", help=_REPO_HELP
)
#: The hint that goes with a refusal a token for no repository explains.
REPO_HINT = (
    "in token mode, pass --repo REPOSITORY so the token covers it (the frontend's challenge "
    "names no repository: it does not reveal an upload's)"
)


def _http_only(repositories: Sequence[str], url: str | None) -> None:
    """Refuse --repo without a frontend: it scopes the frontend's token, and is no
    filter of the storage (there, retry --failed would re-queue every repository's)."""
    if repositories and not url:
        raise click.UsageError(
            "--repo scopes the frontend's token: give the frontend with --url or INGEST_URL"
        )


@contextmanager
def _frontend(
    url: str, creds: Credentials | None, repositories: Sequence[str]
) -> Iterator[RegistryClient]:
    """A client of the frontend at ``url`` whose tokens cover ``repositories``. Without
    any, a refusal (BLOB_UPLOAD_UNKNOWN, 401) after a challenge naming no scope gets
    :data:`REPO_HINT`: the token was for nothing, the upload may well exist."""
    from ingest.client import RegistryClient

    with RegistryClient(url, credentials=creds, repositories=repositories) as client:
        try:
            yield client
        except (BlobUploadUnknown, Unauthorized) as exc:
            if not repositories and client.unscoped_challenge:
                exc.add_note(REPO_HINT)
            raise


@cli.command()
@click.argument("upload_id")
@_URL_OPTION
@_UPLOAD_REPO
@_USERNAME
@_PASSWORD_STDIN
@pass_ctx
@reports_errors
def status(
    obj: Context,
    upload_id: str,
    url: str | None,
    repositories: tuple[str, ...],
    username: str | None,
    password_stdin: bool,
) -> None:
    """Show an upload's state, progress and outcome."""
    _http_only(repositories, url)
    if url:
        creds = _credentials(username, password_stdin)
        with _frontend(url, creds, repositories) as client:
            st = client.status(upload_id)
    else:
        st = obj.local("status").status(upload_id).to_dict()
    shown = _with_iso_times(st)
    lines = [
        f"{k}: {json.dumps(v, sort_keys=True) if isinstance(v, dict) else v}"
        for k, v in shown.items()
    ]
    obj.emit(st, "\n".join(lines))


def _with_iso_times(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with its epoch times (``*_at``, ``last_activity``), nested ones too, as
    ISO 8601 in UTC: for people; ``--json`` keeps the numbers."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out[key] = _with_iso_times(value)
        elif (
            (key.endswith("_at") or key == "last_activity")
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            when = datetime.datetime.fromtimestamp(value, datetime.UTC)
            out[key] = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        else:
            out[key] = value
    return out


@cli.command()
@click.argument("upload_id", required=False)
@click.option("--digest", help="Verify against this digest instead of the recorded claim.")
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed upload (bulk).")
@click.option(
    "--since", type=Duration(), help="With --failed: only failures this recent (e.g. 2h)."
)
@click.option("--code", help="With --failed: only failures with this error code.")
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", type=float, default=300.0, show_default=True)
@_URL_OPTION
@click.option(
    "--repo",
    "repositories",
    multiple=True,
    callback=_repository_names,
    metavar="REPOSITORY",
    help=_REPO_HELP + " With --failed, repeat it for each repository to retry in.",
)
@_USERNAME
@_PASSWORD_STDIN
@pass_ctx
@reports_errors
def retry(
    obj: Context,
    upload_id: str | None,
    digest: str | None,
    all_failed: bool,
    since: float | None,
    code: str | None,
    wait: bool,
    timeout: float,
    url: str | None,
    repositories: tuple[str, ...],
    username: str | None,
    password_stdin: bool,
) -> None:
    """Re-enqueue the failed verification of UPLOAD_ID, or of every failed upload."""
    if all_failed == bool(upload_id):
        raise click.UsageError("give either UPLOAD_ID or --failed")
    if not all_failed and (since is not None or code is not None):
        raise click.UsageError("--since and --code go with --failed")
    _http_only(repositories, url)
    creds = _credentials(username, password_stdin) if url else None
    if all_failed:
        _retry_failed(obj, since, code, url, creds, repositories)
        return
    assert upload_id is not None
    if url:
        with _frontend(url, creds, repositories) as client:
            task_id = client.retry(upload_id, digest)
            if not wait:
                obj.emit({"upload_id": upload_id, "task_id": task_id}, f"queued {task_id}")
                return
            result = client.wait(upload_id, timeout=timeout)
        obj.emit(result, _committed(result))
        return
    ticket = obj.local("retry").retry(upload_id, digest)
    if not wait:
        obj.emit({"upload_id": upload_id, "task_id": ticket.task_id}, f"queued {ticket.task_id}")
        return
    result = ticket.wait(timeout=timeout)
    obj.emit(result, _committed(result))


def _retry_failed(
    obj: Context,
    since: float | None,
    code: str | None,
    url: str | None,
    creds: Credentials | None,
    repositories: Sequence[str],
) -> None:
    """Over HTTP with a URL (the frontend re-queues what the caller may push to: in
    token mode, what the token grants push on, so ``repositories``), else on the
    storage and broker directly."""
    hint = False
    if url:
        with _frontend(url, creds, repositories) as client:
            summary = client.retry_failed(since=since, code=code)
            # A token for no repository retries nothing, and that is no error.
            hint = not repositories and client.unscoped_challenge
        where = mask_url(url)
    else:
        summary = obj.local("retry").retry_failed(since=since, code=code).to_dict()
        where = os.path.abspath(obj.settings.storage_root)
    queued: list[dict[str, str]] = summary["queued"]
    errors: list[dict[str, Any]] = summary["errors"]
    lines = [f"re-queued {len(queued)} failed verification(s) ({where})"]
    lines += [f"  {q['upload_id']} task {q['task_id']}" for q in queued]
    lines += [f"  {e['upload_id']} not retried: {e['error']['code']}" for e in errors]
    obj.emit({"queued": queued, "errors": errors}, "\n".join(lines))
    if hint and not queued and not errors:
        click.echo(
            "hint: nothing was re-queued: in token mode, pass --repo REPOSITORY (once per "
            "repository) so the token covers them",
            err=True,
        )


@cli.command()
@click.argument("upload_id")
@_URL_OPTION
@_UPLOAD_REPO
@_USERNAME
@_PASSWORD_STDIN
@pass_ctx
@reports_errors
def cancel(
    obj: Context,
    upload_id: str,
    url: str | None,
    repositories: tuple[str, ...],
    username: str | None,
    password_stdin: bool,
) -> None:
    """Discard an upload and its staged bytes."""
    _http_only(repositories, url)
    if url:
        creds = _credentials(username, password_stdin)
        with _frontend(url, creds, repositories) as client:
            client.cancel(upload_id)
    else:
        obj.local("cancel").cancel(upload_id)
    obj.emit({"upload_id": upload_id, "cancelled": True}, f"cancelled {upload_id}")


@cli.command()
@click.option("--older-than", type=Duration(), help="Idle time before removal [INGEST_PURGE_AGE].")
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@pass_ctx
@reports_errors
def purge(obj: Context, older_than: float | None, dry_run: bool) -> None:
    """Remove abandoned uploads (idle longer than --older-than); never finishing ones.

    Works on the storage and Redis directly (there is no HTTP form)."""
    from ingest.arguments import check_purge_age
    from ingest.locks import exclusive

    s = obj.settings
    age = check_purge_age(s.purge_age if older_than is None else older_than)  # before the lock
    ing = obj.local("purge", http_form=False)
    with exclusive(
        s.redis_url, "purge", ttl=max(600.0, s.purge_interval), tls=s.redis_ssl_options()
    ):
        summary = ing.purge(older_than=age, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    lines = [
        f"{verb} {len(summary.removed)} upload(s), {summary.bytes_freed} bytes "
        f"(scanned {summary.scanned}, busy {summary.skipped_busy}, recent {summary.kept_recent})"
    ]
    lines += [f"  {r['upload_id']} {r['state']} {r['bytes']} bytes" for r in summary.removed]
    obj.emit(summary.to_dict(), "\n".join(lines))


@cli.command()
@click.option(
    "--grace", type=Duration(), help="Minimum age of a stuck verification [INGEST_RECONCILE_GRACE]."
)
@click.option("--dry-run", is_flag=True, help="Only report what would be re-enqueued.")
@pass_ctx
@reports_errors
def reconcile(obj: Context, grace: float | None, dry_run: bool) -> None:
    """Re-enqueue verifications whose task was lost (after a Redis loss).

    Works on the storage and broker directly (there is no HTTP form)."""
    from ingest.arguments import check_reconcile_grace

    # A wrong argument is the first thing to hear of, as for purge.
    checked_grace = check_reconcile_grace(obj.settings.reconcile_grace if grace is None else grace)
    summary = obj.local("reconcile", http_form=False).reconcile(
        grace=checked_grace, dry_run=dry_run
    )
    verb = "would re-enqueue" if dry_run else "re-enqueued"
    lines = [
        f"{verb} {len(summary.requeued)} verification(s) (scanned {summary.scanned}, "
        f"in flight {summary.in_flight}, failures recorded {summary.recorded_failures})"
    ]
    lines += [f"  {r['upload_id']} task {r['task_id']}" for r in summary.requeued]
    obj.emit(summary.to_dict(), "\n".join(lines))


#: Seconds the fsck lock lives without renewal; a run renews it every FSCK_LOCK_TTL / 5 s.
FSCK_LOCK_TTL = 300.0


@cli.command()
@click.option(
    "--repair",
    is_flag=True,
    help="Quarantine corrupt blobs and remove the links naming them (default: only report).",
)
@pass_ctx
@reports_errors
def fsck(obj: Context, repair: bool) -> None:
    """Re-hash every stored blob and alias link against its address.

    Exit status 0 when everything matches, 3 when problems were found (also when
    --repair dealt with them), 4 when another fsck runs or storage/Redis fail."""
    from ingest.errors import EXIT_REJECTED
    from ingest.fsck import throttled
    from ingest.locks import exclusive

    s = obj.settings
    with exclusive(s.redis_url, "fsck", ttl=FSCK_LOCK_TTL, tls=s.redis_ssl_options()) as renew:
        report = obj.ingest.fsck(repair=repair, heartbeat=throttled(renew, FSCK_LOCK_TTL / 5))
    obj.emit(report.to_dict(), "\n".join(report.summary_lines()))
    if not report.clean:
        click.get_current_context().exit(EXIT_REJECTED)


#: Seconds the gc lock lives without renewal; a run renews it every GC_LOCK_TTL / 5 s.
GC_LOCK_TTL = 300.0


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only report what would be freed.")
@click.option(
    "--delete-untagged",
    is_flag=True,
    help="Also remove manifests no tag reaches (then their blobs are freed too).",
)
@click.option(
    "--grace",
    type=Duration(),
    help="Keep what was written or linked this recently [INGEST_GC_GRACE].",
)
@pass_ctx
@reports_errors
def gc(obj: Context, dry_run: bool, delete_untagged: bool, grace: float | None) -> None:
    """Free blobs no manifest references, while pushes go on (see docs/operations.md)."""
    from ingest.arguments import check_gc_grace
    from ingest.fsck import throttled
    from ingest.locks import exclusive

    s = obj.settings
    grace = check_gc_grace(s.gc_grace if grace is None else grace)  # before the lock
    with exclusive(s.redis_url, "gc", ttl=GC_LOCK_TTL, tls=s.redis_ssl_options()) as renew:
        report = obj.ingest.gc(
            grace=grace,
            dry_run=dry_run,
            delete_untagged=delete_untagged,
            heartbeat=throttled(renew, GC_LOCK_TTL / 5),
        )
    obj.emit(report.to_dict(), "\n".join(report.summary_lines()))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", type=int, default=None, help="Pool processes (default: CPUs).")
@click.option("--beat", is_flag=True, help="Also run the beat scheduler (reconcile, purge, fsck).")
@click.pass_context
def worker(ctx: click.Context, concurrency: int | None, beat: bool) -> None:
    """Run a verification worker (celery worker with the right app and queues)."""
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-Q",
        WORKER_QUEUES,
        "--loglevel",
        "INFO",
    ]
    if concurrency:
        args += ["-c", str(concurrency)]
    if beat:
        args += ["-B"]
    args += ctx.args
    os.execv(sys.executable, args)  # noqa: S606 - replace this process: signals go to celery


def _tarsum_label(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A label no TarSum can be made for is a usage error (2), not a rejected blob (3)."""
    from ingest.errors import TarSumUnsupported
    from ingest.tarsum.labels import parse_label

    try:
        parse_label(value)
    except TarSumUnsupported as exc:
        raise click.BadParameter(exc.message) from None
    return value


@cli.command()
@click.argument("file", type=click.File("rb"))
@click.option(
    "--label",
    default="tarsum.v1+sha256",
    show_default=True,
    callback=_tarsum_label,
    help="TarSum version and hash: tarsum|tarsum.v1|tarsum.dev + sha256|sha512.",
)
@click.option("--extra", type=click.File("rb"), help="Extra payload (the v1 image JSON).")
@pass_ctx
@reports_errors
def tarsum(obj: Context, file: IO[bytes], label: str, extra: IO[bytes] | None) -> None:
    """Print the TarSum digest of a tar (or tar.gz) FILE; '-' reads stdin."""
    from ingest.tarsum import tarsum_file

    s = obj.settings
    digest = tarsum_file(
        file,
        label,
        extra.read() if extra else b"",
        max_decompressed_bytes=s.tarsum_max_bytes,
        max_ratio=s.tarsum_max_ratio,
    )
    obj.emit({"digest": digest}, digest)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--workers", type=int, default=1, show_default=True, help="Frontend processes.")
@click.option("--log-level", default="warning", show_default=True)
@click.option(
    "--server",
    type=click.Choice(["uvicorn", "granian"]),
    envvar="INGEST_SERVER",
    default="uvicorn",
    show_default=True,
    help="ASGI server [INGEST_SERVER] (granian: pip install granian).",
)
@click.option(
    "--tls-cert",
    metavar="FILE",
    help="Serve HTTPS with this certificate chain (PEM) [INGEST_TLS_CERT].",
)
@click.option("--tls-key", metavar="FILE", help="Its private key (PEM) [INGEST_TLS_KEY].")
@click.option(
    "--debug-addr",
    metavar="HOST:PORT|off",
    help="Listener for /metrics and /health [INGEST_DEBUG_ADDR, default 127.0.0.1:5001].",
)
@pass_ctx
def serve(
    obj: Context,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    server: str,
    tls_cert: str | None,
    tls_key: str | None,
    debug_addr: str | None,
) -> None:
    """Serve the OCI distribution API and the ingest JSON API.

    INGEST_AUTH must say how clients authenticate (htpasswd, token, or none for
    demos). Slow and idle clients are cut off by INGEST_HEADER_TIMEOUT,
    INGEST_BODY_IDLE_TIMEOUT and INGEST_KEEPALIVE_TIMEOUT; INGEST_MAX_CONNECTIONS
    bounds each process's open connections. /metrics and /health are served on the
    debug address, by this process only (docs/operations.md)."""
    import dataclasses
    import tempfile

    from ingest import logs

    ctx = click.get_current_context()
    settings = obj.settings
    try:
        if (tls_cert, tls_key, debug_addr) != (None, None, None):  # the options win
            settings = dataclasses.replace(
                settings,
                tls_cert=settings.tls_cert if tls_cert is None else tls_cert,
                tls_key=settings.tls_key if tls_key is None else tls_key,
                debug_addr=settings.debug_addr if debug_addr is None else debug_addr,
            )
        _check_auth(settings)
    except ConfigError as exc:
        click.echo(f"error: configuration: {_config_message(exc)}", err=True)
        ctx.exit(EXIT_USAGE)
    separate = workers > 1 or server == "granian"  # the app runs in other processes
    if separate and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several processes: /metrics aggregates them through a shared directory.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ingest-metrics-")
    from ingest.http import server as http_server

    try:
        if settings.tls_cert:
            http_server.check_tls_files(settings.tls_cert, settings.tls_key)
    except ConfigError as exc:
        click.echo(f"error: configuration: {exc}", err=True)
        ctx.exit(EXIT_USAGE)
    try:
        debug_at = http_server.parse_listen_address(settings.debug_addr)
    except ValueError as exc:
        click.echo(f"error: configuration: --debug-addr/INGEST_DEBUG_ADDR: {exc}", err=True)
        ctx.exit(EXIT_USAGE)

    limits = http_server.ConnectionLimits.from_settings(settings)
    cap, warning = http_server.fit_fd_limit(limits.max_connections)  # inherited by workers
    if warning:
        click.echo(f"warning: {warning}", err=True)
        limits = dataclasses.replace(limits, max_connections=cap)
    if separate:  # else the app factory configures this very process as it starts
        logs.configure(settings.log_level, settings.log_format)
    listener = _start_debug_listener(settings, debug_at, log_level) if debug_at else None
    try:
        if server == "granian":
            code = _serve_granian(host, port, workers, log_level, limits, settings, listener)
            ctx.exit(code)
        import uvicorn

        uvicorn.run(
            "ingest.http.app:app_factory",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=False,  # the app logs one structured line per request itself
            log_config=None,  # keep the app's JSON logging (configured in the app factory)
            # HTTPS when configured (the files were checked above).
            ssl_certfile=settings.tls_cert or None,
            ssl_keyfile=settings.tls_key or None,
            # Frontends are stateless: any process can serve any upload.
            # uvicorn's httptools protocol plus the header, body-idle and keep-alive
            # timeouts and the connection cap (ingest/http/server.py).
            http=http_server.protocol_factory(limits),
        )
    finally:
        if listener is not None:
            listener.stop()


def _check_auth(settings: Settings) -> None:
    """Build the authenticator the app will build, once, here: an unset INGEST_AUTH
    or a broken htpasswd/token set-up stops ``ingest serve`` with one message
    instead of a traceback in every worker process."""
    from ingest import backends

    if settings.auth != "none":  # nothing to check; each app process logs its warning
        backends.authenticator(settings)


def _config_message(exc: ConfigError) -> str:
    """The message, naming the variable when the error only names the field."""
    text = str(exc)
    if exc.field and "INGEST_" not in text:
        from ingest.config import declarations

        names = {d.field: d.variable for d in declarations()}
        if exc.field in names:
            return f"{names[exc.field]}: {text}"
    return text


def _start_debug_listener(
    settings: Settings, address: tuple[str, int], log_level: str
) -> DebugListener:
    """Bind the debug address and serve /metrics and /health from this process (the
    supervisor of --workers N, so one process binds it and aggregates them all)."""
    from ingest.api import Ingest
    from ingest.http import server as http_server

    host, port = address
    try:
        sock = http_server.bind_debug_socket(host, port)
    except OSError as exc:
        click.echo(
            f"error: the debug listener cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(set --debug-addr or INGEST_DEBUG_ADDR to a free host:port, or to off)",
            err=True,
        )
        click.get_current_context().exit(EXIT_USAGE)
    listener = http_server.start_debug_listener(
        Ingest.from_settings(settings),
        sock,
        multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
        log_level=log_level,
    )
    click.echo(f"debug listener: http://{listener.address} (/metrics, /health)", err=True)
    return listener


def _serve_granian(
    host: str,
    port: int,
    workers: int,
    log_level: str,
    limits: ConnectionLimits,
    settings: Settings,
    listener: DebugListener | None,
) -> int:
    """Run granian; as a child when this process serves the debug listener (forwarding
    SIGINT/SIGTERM), else in place of this process."""
    import signal
    import subprocess

    from ingest.http.server import granian_args

    mapped, missing = granian_args(limits)
    click.echo(f"warning: granian does not enforce {', '.join(missing)}", err=True)
    args = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        log_level,
        *mapped,
    ]
    if settings.tls_cert:
        args += ["--ssl-certificate", settings.tls_cert, "--ssl-keyfile", settings.tls_key]
    args.append("ingest.http.app:app_factory")
    if listener is None:
        os.execv(sys.executable, args)  # noqa: S606 - replace this process: signals go to granian
    child = subprocess.Popen(args)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    return child.wait()


def main() -> None:
    cli(prog_name="ingest")


if __name__ == "__main__":  # pragma: no cover
    main()
