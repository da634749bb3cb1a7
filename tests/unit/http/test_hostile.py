"""Hostile input to every endpoint: never a 500, always the envelope, never outside the root.

Everything runs on a FilesystemDriver rooted at ``tmp_path/"root"``; after the
examples, nothing may exist in ``tmp_path`` outside that root, nothing may have
appeared next to ``tmp_path``, and the root holds only the storage layout's
top-level directories.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.fakes import sha256, sha512
from tests.unit.http.conftest import OCI_MANIFEST, Env, EnvFactory, assert_envelope

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=False,
)

VALID_NAMES = ["library/ubuntu", "a", "a/b/c", "x-y.z_w/q__r"]
SPECIAL_TEXT = [
    "..",
    ".",
    "%2e%2e",
    "%2E%2E/%2e%2e",
    "../../etc",
    "a/../../b",
    "a/%2e%2e/b",
    "/",
    "//",
    "a//b",
    "%2F",
    "..%2F..%2Fetc",
    "\u2024\u2024",  # one-dot leader, looks like '..'
    "\uff21\uff22\uff23",  # full-width ABC
    "é/ü",
    "a\x00b",
    "a\nb",
    "~root",
    "$(id)",
    "a" * 300,
    "a/" * 150 + "a",
    "",
    " ",
    "uploads",
    "blobs",
]
HEX64 = "0123456789abcdef" * 4
DIGESTS = [
    sha256(b"x"),
    sha512(b"x"),
    "sha384:" + "a" * 96,
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 63,
    "sha256:../../../../etc/passwd",
    "sha256:" + HEX64 + "/../..",
    "tarsum.v1+sha256:" + HEX64,
    "tarsum.dev+foo:abc",
    "tarsum.x+" + "a" * 230 + ":b",
    "md5:" + "a" * 32,
    "sha256:",
    ":abc",
    "sha256::",
    "SHA256:" + HEX64,
    "a" * 300,
]

# "safe" controls whether '/' reaches the app as a path separator or as %2F.
_quote_safe = st.sampled_from(["/", ""])
_any_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
names = st.one_of(st.sampled_from(VALID_NAMES), st.sampled_from(SPECIAL_TEXT), _any_text)
digests = st.one_of(
    st.sampled_from(DIGESTS),
    st.from_regex(r"[a-z0-9]{1,8}([+._-][a-z0-9]{1,8}){0,2}:[a-zA-Z0-9=_-]{1,130}", fullmatch=True),
    st.sampled_from(SPECIAL_TEXT),
    _any_text,
)
references = st.one_of(
    digests, st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,130}", fullmatch=True), _any_text
)
upload_ids = st.one_of(
    st.builds(lambda: str(uuid.uuid4())),
    st.sampled_from(SPECIAL_TEXT),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids(version=1).map(str),
    _any_text,
)
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
numberish = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["", " ", "0x10", "1e3", "1_000", "+5", "-0", "00", " 7 ", "١٢", "²"]),
    header_text,
)
content_ranges = st.one_of(
    st.tuples(numberish, numberish).map(lambda t: f"{t[0]}-{t[1]}"),
    st.tuples(numberish, numberish).map(lambda t: f"bytes={t[0]}-{t[1]}"),
    st.sampled_from(["", "-", "bytes=", "0-", "-0", "bytes 0-3/4", "0-1,2-3", "bytes=*"]),
    header_text,
)
bodies = st.binary(max_size=64)


def _path_part(text: str, safe: str) -> str:
    return quote(text, safe=safe)


class Sender:
    """Sends one request and checks the response invariants."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.sent = 0
        self.statuses: dict[int, int] = {}

    def __call__(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        content: Any = None,
    ) -> httpx.Response | None:
        params = params or {}
        headers = headers or {}
        try:
            r: httpx.Response = self.env.client.request(
                method, path, params=params, headers=headers, content=content
            )
        except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError) as exc:
            # httpx itself refuses to build the request: nothing reached the app.
            _ = exc
            return None
        self.sent += 1
        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
        check_response(r)
        return r


def check_response(r: httpx.Response) -> None:
    where = f"{r.request.method} {r.request.url}"
    assert r.status_code < 500, (where, r.status_code, r.text)
    assert "Traceback" not in r.text, where
    if r.status_code >= 400:
        if r.request.method == "HEAD":
            assert r.content == b"", where
        else:
            assert_envelope(r)


def _snapshot(tmp_path: Path) -> set[str]:
    return {p.name for p in tmp_path.parent.iterdir()}


def check_contained(tmp_path: Path, before_siblings: set[str]) -> None:
    root = tmp_path / "root"
    for p in tmp_path.rglob("*"):
        assert p == root or root in p.parents, f"created outside the storage root: {p}"
    if root.exists():
        assert {c.name for c in root.iterdir()} <= {"blobs", "repositories", "uploads"}
        for p in (root / "repositories").rglob("*") if (root / "repositories").exists() else []:
            rel = p.relative_to(root / "repositories").parts
            assert all(re.fullmatch(r"[A-Za-z0-9._+=-]+", part) for part in rel), p
            assert ".." not in rel
    assert _snapshot(tmp_path) == before_siblings, "something appeared next to tmp_path"


@pytest.fixture
def fs_env(make_env: EnvFactory) -> Env:
    return make_env(driver="filesystem")


# -- paths -----------------------------------------------------------------------------

ENDPOINTS: list[tuple[str, str]] = [
    ("GET", "/v2/{name}/blobs/{digest}"),
    ("HEAD", "/v2/{name}/blobs/{digest}"),
    ("DELETE", "/v2/{name}/blobs/{digest}"),
    ("POST", "/v2/{name}/blobs/uploads/"),
    ("PATCH", "/v2/{name}/blobs/uploads/{upload_id}"),
    ("PUT", "/v2/{name}/blobs/uploads/{upload_id}"),
    ("GET", "/v2/{name}/blobs/uploads/{upload_id}"),
    ("DELETE", "/v2/{name}/blobs/uploads/{upload_id}"),
    ("GET", "/v2/{name}/manifests/{reference}"),
    ("HEAD", "/v2/{name}/manifests/{reference}"),
    ("PUT", "/v2/{name}/manifests/{reference}"),
    ("DELETE", "/v2/{name}/manifests/{reference}"),
    ("GET", "/v2/{name}/tags/list"),
    ("GET", "/v2/{name}/referrers/{digest}"),
    ("GET", "/ingest/v1/uploads/{upload_id}"),
    ("POST", "/ingest/v1/uploads/{upload_id}/retry"),
    ("OPTIONS", "/v2/{name}/blobs/{digest}"),
]


def test_hostile_paths(tmp_path: Path, fs_env: Env) -> None:
    """Arbitrary names, digests, references and upload ids in every route's path."""
    # Seed real content so some requests reach storage, not just the validators.
    fs_env.push_blob("library/ubuntu", b"seed")
    _, live_upload = fs_env.start("library/ubuntu")

    @SETTINGS
    @given(
        endpoint=st.sampled_from(ENDPOINTS),
        name=names,
        digest=digests,
        reference=references,
        upload_id=st.one_of(st.just(live_upload), upload_ids),
        safe=_quote_safe,
        body=bodies,
    )
    def run(
        endpoint: tuple[str, str],
        name: str,
        digest: str,
        reference: str,
        upload_id: str,
        safe: str,
        body: bytes,
    ) -> None:
        method, template = endpoint
        path = template.format(
            name=_path_part(name, safe),
            digest=_path_part(digest, ""),
            reference=_path_part(reference, ""),
            upload_id=_path_part(upload_id, ""),
        )
        send(
            method,
            path,
            params={"digest": digest} if method == "PUT" and "uploads" in path else {},
            content=body if method in ("PATCH", "PUT", "POST") else None,
        )

    send = Sender(fs_env)
    before = _snapshot(tmp_path)
    run()
    check_contained(tmp_path, before)
    assert send.sent > 10
    assert 404 in send.statuses
    assert 400 in send.statuses


def test_hostile_raw_paths(tmp_path: Path, fs_env: Env) -> None:
    """Unquoted path text (dot segments, encoded slashes) straight into the URL."""

    @SETTINGS
    @given(
        prefix=st.sampled_from(["/v2/", "/v2/library/", "/ingest/v1/uploads/", "/"]),
        raw=st.one_of(st.sampled_from(SPECIAL_TEXT), _any_text),
        suffix=st.sampled_from(
            ["", "/blobs/uploads/", "/tags/list", f"/blobs/{sha256(b'x')}", "/manifests/v1"]
        ),
        method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]),
    )
    def run(prefix: str, raw: str, suffix: str, method: str) -> None:
        send(method, prefix + raw + suffix, content=b"{}" if method in ("PUT", "POST") else None)

    send = Sender(fs_env)
    before = _snapshot(tmp_path)
    run()
    check_contained(tmp_path, before)
    assert send.sent > 10


# -- headers ---------------------------------------------------------------------------


def test_hostile_upload_headers(tmp_path: Path, fs_env: Env) -> None:
    """Content-Range and Content-Length of any shape on PATCH/PUT of a live upload."""
    before = _snapshot(tmp_path)
    send = Sender(fs_env)

    @SETTINGS
    @given(
        method=st.sampled_from(["PATCH", "PUT"]),
        content_range=st.none() | content_ranges,
        content_length=st.none() | numberish,
        body=bodies,
        digest=digests,
        chunked=st.booleans(),
        extra=st.dictionaries(
            st.sampled_from(["Prefer", "Transfer-Encoding", "Content-Type", "Range", "Expect"]),
            header_text,
            max_size=2,
        ),
    )
    def run(
        method: str,
        content_range: str | None,
        content_length: str | None,
        body: bytes,
        digest: str,
        chunked: bool,
        extra: dict[str, str],
    ) -> None:
        loc, _ = fs_env.start("library/ubuntu")
        headers = dict(extra)
        if content_range is not None:
            headers["Content-Range"] = content_range
        if content_length is not None and not chunked:
            headers["Content-Length"] = content_length
        content: Any = iter([body[:5], body[5:]]) if chunked else body
        send(
            method,
            loc,
            params={"digest": digest} if method == "PUT" else {},
            headers=headers,
            content=content,
        )
        # the session still answers sensibly afterwards
        r = send("GET", loc)
        assert r is not None
        assert r.status_code in (204, 404)

    run()
    check_contained(tmp_path, before)
    assert send.sent > 10


def test_hostile_blob_range_headers(tmp_path: Path, fs_env: Env) -> None:
    data = bytes(range(200))
    d = fs_env.push_blob("library/ubuntu", data)
    send = Sender(fs_env)

    @SETTINGS
    @given(
        range_=st.one_of(
            st.tuples(numberish, numberish).map(lambda t: f"bytes={t[0]}-{t[1]}"),
            st.lists(st.tuples(numberish, numberish), min_size=1, max_size=3).map(
                lambda ts: "bytes=" + ",".join(f"{a}-{b}" for a, b in ts)
            ),
            header_text,
        ),
        method=st.sampled_from(["GET", "HEAD"]),
    )
    def run(range_: str, method: str) -> None:
        r = send(method, f"/v2/library/ubuntu/blobs/{d}", headers={"Range": range_})
        if r is None:
            return  # httpx refuses non-ASCII header values
        assert r.status_code in (200, 206, 416)
        if r.status_code == 206:
            m = re.fullmatch(r"bytes (\d+)-(\d+)/200", r.headers["content-range"])
            assert m
            first, last = int(m.group(1)), int(m.group(2))
            assert r.content == data[first : last + 1]
        elif r.status_code == 200 and method == "GET":
            assert r.content == data
        elif r.status_code == 416:
            assert r.headers["content-range"] == "bytes */200"

    before = _snapshot(tmp_path)
    run()
    check_contained(tmp_path, before)


# -- query strings ---------------------------------------------------------------------

query_values = st.one_of(digests, names, numberish, _any_text)


def test_hostile_query_strings(tmp_path: Path, fs_env: Env) -> None:
    fs_env.push_blob("library/ubuntu", b"seed")
    send = Sender(fs_env)

    @SETTINGS
    @given(
        target=st.sampled_from(
            [
                ("POST", "/v2/library/alpine/blobs/uploads/"),
                ("GET", "/v2/library/ubuntu/tags/list"),
                ("GET", f"/v2/library/ubuntu/referrers/{sha256(b'seed')}"),
                ("PUT", "upload"),
                ("GET", f"/v2/library/ubuntu/blobs/{sha256(b'seed')}"),
            ]
        ),
        params=st.dictionaries(
            st.one_of(
                st.sampled_from(["digest", "mount", "from", "n", "last", "artifactType"]),
                _any_text,
            ),
            query_values,
            max_size=4,
        ),
        body=bodies,
    )
    def run(target: tuple[str, str], params: dict[str, str], body: bytes) -> None:
        method, path = target
        if path == "upload":
            path, _ = fs_env.start("library/ubuntu")
        send(method, path, params=params, content=body if method in ("POST", "PUT") else None)

    before = _snapshot(tmp_path)
    run()
    check_contained(tmp_path, before)
    # the seeded blob is still there: no query string unlinked or moved it
    assert fs_env.client.head(f"/v2/library/ubuntu/blobs/{sha256(b'seed')}").status_code == 200


def test_hostile_mount_sources(tmp_path: Path, fs_env: Env) -> None:
    d = fs_env.push_blob("library/ubuntu", b"mount me")
    send = Sender(fs_env)

    @SETTINGS
    @given(source=names, mount=st.one_of(st.just(d), digests))
    def run(source: str, mount: str) -> None:
        r = send("POST", "/v2/library/dst/blobs/uploads/", params={"mount": mount, "from": source})
        assert r is not None
        assert r.status_code in (201, 202, 400)
        if r.status_code == 201:
            assert source == "library/ubuntu"
            assert mount == d

    before = _snapshot(tmp_path)
    run()
    check_contained(tmp_path, before)


# -- bodies ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _any_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_any_text, children, max_size=4)
    ),
    max_leaves=12,
)


def _manifest_like(draw_doc: dict[str, Any]) -> dict[str, Any]:
    return {"schemaVersion": 2, **draw_doc}


manifest_docs = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "schemaVersion": st.sampled_from([2, 1, "2", None, 2.0]),
            "mediaType": st.one_of(st.sampled_from([OCI_MANIFEST, "x"]), json_values),
            "config": st.one_of(
                st.fixed_dictionaries(
                    {"digest": digests}, optional={"size": st.integers(), "urls": json_values}
                ),
                json_values,
            ),
            "layers": st.one_of(st.lists(st.fixed_dictionaries({"digest": digests})), json_values),
            "manifests": st.one_of(
                st.lists(st.fixed_dictionaries({"digest": digests})), json_values
            ),
            "subject": st.one_of(st.fixed_dictionaries({"digest": digests}), json_values),
            "artifactType": json_values,
        },
    ).map(_manifest_like),
)


def test_hostile_manifest_bodies(tmp_path: Path, fs_env: Env) -> None:
    fs_env.push_blob("library/ubuntu", b"{}")
    send = Sender(fs_env)

    @SETTINGS
    @given(
        doc=manifest_docs,
        raw=st.none() | st.binary(max_size=100),
        content_type=st.none() | st.sampled_from([OCI_MANIFEST, "application/json", "x/y; a=b"]),
        reference=st.one_of(st.just("v1"), references),
    )
    def run(doc: Any, raw: bytes | None, content_type: str | None, reference: str) -> None:
        body = raw if raw is not None else json.dumps(doc).encode()
        headers = {"Content-Type": content_type} if content_type else {}
        send(
            "PUT",
            f"/v2/library/ubuntu/manifests/{quote(reference, safe='')}",
            headers=headers,
            content=body,
        )

    before = _snapshot(tmp_path)
    run()
    check_contained(tmp_path, before)
    # tags and referrers still render after whatever was stored
    assert send("GET", "/v2/library/ubuntu/tags/list") is not None


def test_hostile_retry_bodies(tmp_path: Path, fs_env: Env) -> None:
    loc, upload_id = fs_env.start("library/ubuntu")
    fs_env.client.patch(loc, content=b"abc")
    r = fs_env.client.put(loc, params={"digest": sha256(b"wrong")})
    assert r.status_code == 400
    send = Sender(fs_env)

    @SETTINGS
    @given(
        body=st.one_of(
            json_values.map(lambda v: json.dumps(v).encode()),
            st.fixed_dictionaries({"digest": st.one_of(digests, json_values)}).map(
                lambda v: json.dumps(v).encode()
            ),
            st.binary(max_size=64),
        )
    )
    def run(body: bytes) -> None:
        r = send("POST", f"/ingest/v1/uploads/{upload_id}/retry", content=body)
        assert r is not None
        assert r.status_code in (202, 400), r.text
        if r.status_code == 202:
            # let the "worker" run so the upload is failed (or committed) again
            task_id = r.json()["task_id"]
            try:
                fs_env.queue.wait(task_id, 1.0)
            except Exception as exc:  # noqa: BLE001 - the verification outcome is irrelevant here
                _ = exc

    before = _snapshot(tmp_path)
    run()
    check_contained(tmp_path, before)
