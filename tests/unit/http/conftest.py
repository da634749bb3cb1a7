"""Fixtures for the in-process HTTP protocol tests.

The app is built with ``create_app(ingest=Ingest(driver, RecordingQueue, settings),
auth=...)`` and driven through Starlette's TestClient (httpx underneath, no sockets).
The RecordingQueue runs the real commit synchronously when the frontend waits, so a
blob PUT answers 201 exactly as it would with a worker behind Redis.

Authentication is ``none`` (:class:`~ingest.auth.none.NoAuth`) unless a test passes
``auth=``: :class:`FakeAuth` maps fixed ``Authorization`` values to identities.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # starlette >= 1.x warns at import that httpx is deprecated for the TestClient.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

from ingest.api import Ingest
from ingest.auth import ANONYMOUS, Access, Authenticator, Identity
from ingest.auth.none import NoAuth
from ingest.config import Settings
from ingest.errors import Unauthorized
from ingest.http.app import create_app
from ingest.storage.base import StorageDriver
from ingest.storage.filesystem import FilesystemDriver
from ingest.storage.memory import MemoryDriver
from tests.unit.fakes import RecordingQueue, make_ingest, sha256

__all__ = [
    "DELETES_ENABLED",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "UUID4",
    "Env",
    "EnvFactory",
    "FakeAuth",
    "assert_envelope",
    "assert_error",
    "descriptor",
    "image_manifest",
    "index_manifest",
    "jbytes",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def assert_envelope(resp: httpx.Response) -> list[dict[str, Any]]:
    """The body is the OCI error envelope; returns its ``errors`` list."""
    assert "Traceback" not in resp.text
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    doc = resp.json()
    assert isinstance(doc, dict)
    assert set(doc) == {"errors"}, doc
    errors = doc["errors"]
    assert isinstance(errors, list)
    assert errors
    for e in errors:
        assert isinstance(e, dict)
        assert set(e) == {"code", "message", "detail"}, e
        assert isinstance(e["code"], str)
        assert e["code"]
        assert isinstance(e["message"], str)
        assert isinstance(e["detail"], dict)
    return errors


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """``resp`` is ``status`` with one error of ``code``; returns its ``detail``.

    HEAD responses must carry no body at all."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    if resp.request.method == "HEAD":
        assert resp.content == b""
        return {}
    errors = assert_envelope(resp)
    assert len(errors) == 1, errors
    assert errors[0]["code"] == code, errors
    detail = errors[0]["detail"]
    assert isinstance(detail, dict)
    return detail


def jbytes(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


def image_manifest(
    config: bytes,
    layers: list[bytes],
    *,
    media_type: str | None = OCI_MANIFEST,
    **extra: Any,
) -> dict[str, Any]:
    docker = media_type == DOCKER_MANIFEST
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "config": descriptor(
            "application/vnd.docker.container.image.v1+json" if docker else CONFIG_TYPE, config
        ),
        "layers": [
            descriptor(
                "application/vnd.docker.image.rootfs.diff.tar.gzip" if docker else LAYER_TYPE, b
            )
            for b in layers
        ],
        **extra,
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    return doc


def index_manifest(
    children: list[tuple[str, bytes]], *, media_type: str = OCI_INDEX
) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            descriptor(mt, body, platform={"architecture": "amd64", "os": "linux"})
            for mt, body in children
        ],
    }


class FakeAuth:
    """An authenticator for tests: each known ``Authorization`` value is an identity;
    no header is :data:`~ingest.auth.ANONYMOUS`; anything else does not authenticate.
    Its challenge spells out what it was asked for, so tests can check it."""

    def __init__(self, scheme: str, identities: Mapping[str, Identity]) -> None:
        self.scheme = scheme
        self.identities = dict(identities)
        self.calls: list[str | None] = []

    def authenticate(self, authorization: str | None) -> Identity:
        self.calls.append(authorization)
        if authorization is None:
            return ANONYMOUS
        try:
            return self.identities[authorization]
        except KeyError:
            raise Unauthorized("credentials not accepted", {"reason": "invalid"}) from None

    def challenge(self, wanted: Sequence[Access], error: str | None = None) -> str:
        if self.scheme == "Basic":
            return 'Basic realm="test"'
        value = 'Bearer realm="https://auth.test/token",service="registry.test"'
        if wanted:
            value += f',scope="{" ".join(w.scope for w in wanted)}"'
        if error:
            value += f',error="{error}"'
        return value


@dataclass
class Env:
    """One app instance and the pieces behind it."""

    client: TestClient
    ingest: Ingest
    queue: RecordingQueue
    driver: StorageDriver

    # -- blob helpers ----------------------------------------------------------------

    def start(self, repo: str) -> tuple[str, str]:
        """POST a new session; returns (Location, upload id)."""
        r = self.client.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202, r.text
        return r.headers["location"], r.headers["docker-upload-uuid"]

    def push_blob(self, repo: str, data: bytes, digest: str | None = None) -> str:
        """POST, PATCH, PUT ?digest= (the skopeo sequence); returns the digest."""
        digest = digest or sha256(data)
        loc, _ = self.start(repo)
        r = self.client.patch(loc, content=data)
        assert r.status_code == 202, r.text
        r = self.client.put(r.headers["location"], params={"digest": digest})
        assert r.status_code == 201, r.text
        assert r.headers["docker-content-digest"] == digest
        return digest

    def push_manifest(
        self, repo: str, reference: str, doc: dict[str, Any] | bytes, media_type: str | None = None
    ) -> httpx.Response:
        body = doc if isinstance(doc, bytes) else jbytes(doc)
        if media_type is None and isinstance(doc, dict):
            mt = doc.get("mediaType")
            media_type = mt if isinstance(mt, str) else None
        headers = {"Content-Type": media_type} if media_type else {}
        r: httpx.Response = self.client.put(
            f"/v2/{repo}/manifests/{reference}", content=body, headers=headers
        )
        return r

    def upload_url(self, repo: str, upload_id: str) -> str:
        return f"/v2/{repo}/blobs/uploads/{upload_id}"


EnvFactory = Callable[..., Env]


@pytest.fixture
def make_env(tmp_path: Path) -> Iterator[EnvFactory]:
    """``make_env(settings=None, driver="memory"|"filesystem"|StorageDriver, auth=NoAuth())``
    → Env."""
    with contextlib.ExitStack() as stack:

        def factory(
            settings: Settings | None = None,
            driver: str | StorageDriver = "memory",
            auth: Authenticator | None = None,
        ) -> Env:
            if driver == "memory":
                drv: StorageDriver = MemoryDriver()
            elif driver == "filesystem":
                drv = FilesystemDriver(tmp_path / "root")
            else:
                assert not isinstance(driver, str)
                drv = driver
            ing, queue = make_ingest(drv, settings)
            app = create_app(ingest=ing, auth=auth if auth is not None else NoAuth())
            client = TestClient(app, raise_server_exceptions=False)
            stack.enter_context(client)
            return Env(client, ing, queue, drv)

        yield factory


@pytest.fixture
def env(make_env: EnvFactory, request: pytest.FixtureRequest) -> Env:
    """An app on the memory driver with default settings, or with the changes an
    indirect parametrisation passes (:data:`DELETES_ENABLED`)."""
    changes = getattr(request, "param", None) or {}
    return make_env(Settings(**changes) if changes else None)


#: Run a test with ``INGEST_DELETE_ENABLED=true`` (deletes are refused by default).
DELETES_ENABLED = pytest.mark.parametrize(
    "env", [{"delete_enabled": True}], indirect=True, ids=["deletes-enabled"]
)
