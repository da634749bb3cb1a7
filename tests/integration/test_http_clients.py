"""Real OCI clients against the real frontend, worker and Redis: skopeo and oras-py."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Stack, unavailable

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"


def _required(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        unavailable(f"{tool} is not installed (scripts/test.sh installs it)")
    return path


def _oras_client() -> ModuleType:
    # oras-py is a dev dependency (pyproject's [dev] extra, which the bootstrap installs).
    try:
        return importlib.import_module("oras.client")
    except ImportError as exc:
        unavailable(f"oras-py is not installed (pip install -e '.[dev]'): {exc}")


@pytest.fixture(scope="module")
def registry(shared_stack: Stack) -> tuple[Stack, str]:
    return shared_stack, shared_stack.frontend().url


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar_gz(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip'd tar layer and the diff_id (digest of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(content))
    plain = raw.getvalue()
    return gzip.compress(plain, mtime=0), sha256(plain)


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


def make_oci_layout(root: Path, tag: str, seed: bytes) -> dict[str, Any]:
    """An OCI image layout with three real tar+gzip layers, a config and a manifest."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers, diff_ids = [], []
    for i, size in enumerate((200_000, 1_500_000, 3_000)):
        layer, diff_id = _tar_gz({f"layer{i}/data.bin": seed + os.urandom(size)})
        layers.append(layer)
        diff_ids.append(diff_id)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor(OCI_CONFIG, config),
            "layers": [_descriptor(OCI_LAYER_GZIP, layer) for layer in layers],
        },
        sort_keys=True,
    ).encode()
    for blob in (*layers, config, manifest):
        (blobs / sha256(blob)[7:]).write_bytes(blob)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                **_descriptor(OCI_MANIFEST, manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (root / "index.json").write_text(json.dumps(index))
    return {"layers": layers, "config": config, "manifest": manifest}


def skopeo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    policy = tmp_path / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    return subprocess.run(
        [_required("skopeo"), "--policy", str(policy), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def upload_dirs(stack: Stack) -> set[str]:
    root = stack.storage / "uploads"
    return {p.name for p in root.iterdir()} if root.exists() else set()


def test_skopeo_pushes_an_oci_image_and_pulls_it_back_byte_for_byte(
    registry: tuple[Stack, str], tmp_path: Path
) -> None:
    _, url = registry
    host = url.removeprefix("http://")
    image = make_oci_layout(tmp_path / "src", "v1", b"skopeo-push")
    push = skopeo(
        tmp_path,
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'src'}:v1",
        f"docker://{host}/it/skopeo:v1",
    )
    assert push.returncode == 0, push.stderr

    with httpx.Client(base_url=url) as client:
        for layer in image["layers"]:
            head = client.head(f"/v2/it/skopeo/blobs/{sha256(layer)}")
            assert head.status_code == 200
            assert int(head.headers["content-length"]) == len(layer)
        tags = client.get("/v2/it/skopeo/tags/list").json()
        assert tags == {"name": "it/skopeo", "tags": ["v1"]}

    pull = skopeo(
        tmp_path,
        "copy",
        "--src-tls-verify=false",
        f"docker://{host}/it/skopeo:v1",
        f"oci:{tmp_path / 'dst'}:v1",
    )
    assert pull.returncode == 0, pull.stderr
    pulled = tmp_path / "dst" / "blobs" / "sha256"
    for blob in (*image["layers"], image["config"]):
        assert (pulled / sha256(blob)[7:]).read_bytes() == blob


def test_skopeo_mounts_layers_across_repositories_instead_of_reuploading(
    registry: tuple[Stack, str], tmp_path: Path
) -> None:
    stack, url = registry
    host = url.removeprefix("http://")
    make_oci_layout(tmp_path / "src", "v1", b"skopeo-mount")
    first = skopeo(
        tmp_path,
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'src'}:v1",
        f"docker://{host}/it/mount-a:v1",
    )
    assert first.returncode == 0, first.stderr
    before = upload_dirs(stack)
    second = skopeo(
        tmp_path,
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'src'}:v1",
        f"docker://{host}/it/mount-b:v1",
    )
    assert second.returncode == 0, second.stderr
    new_sessions = upload_dirs(stack) - before
    # skopeo mounts what its blob-info cache knows is in it/mount-a (under load it may
    # not have recorded every layer yet); every mount it asks for must succeed, and
    # each mounted layer is one upload fewer. The config is never mounted.
    mounts = []
    for line in (stack.root / "frontend.log").read_text().splitlines():
        if '"ingest.http.access"' not in line:
            continue
        entry = json.loads(line)
        if entry["path"] == "/v2/it/mount-b/blobs/uploads/" and "mount=" in (
            entry.get("query") or ""
        ):
            mounts.append(entry["status"])
    assert mounts, "skopeo attempted no cross-repository mount"
    assert set(mounts) == {201}, mounts
    assert len(new_sessions) == 4 - len(mounts), (new_sessions, mounts)
    with httpx.Client(base_url=url) as client:
        manifest = client.get("/v2/it/mount-b/manifests/v1", headers={"Accept": OCI_MANIFEST})
        assert manifest.status_code == 200
        for layer in manifest.json()["layers"]:
            assert client.head(f"/v2/it/mount-b/blobs/{layer['digest']}").status_code == 200


def test_a_push_with_a_wrong_blob_digest_fails_and_links_nothing(
    registry: tuple[Stack, str],
) -> None:
    _, url = registry
    data = os.urandom(300_000)
    wrong = sha256(b"something else")
    with httpx.Client(base_url=url) as client:
        start = client.post("/v2/it/wrong/blobs/uploads/")
        assert start.status_code == 202
        put = client.put(start.headers["location"], params={"digest": wrong}, content=data)
        assert put.status_code == 400
        error = put.json()["errors"][0]
        assert error["code"] == "DIGEST_INVALID"
        assert error["detail"]["computed"] == sha256(data)
        assert client.head(f"/v2/it/wrong/blobs/{wrong}").status_code == 404
        assert client.head(f"/v2/it/wrong/blobs/{sha256(data)}").status_code == 404


def test_skopeo_push_of_a_corrupted_layer_fails_and_the_tag_never_appears(
    registry: tuple[Stack, str], tmp_path: Path
) -> None:
    _, url = registry
    host = url.removeprefix("http://")
    image = make_oci_layout(tmp_path / "src", "v1", b"skopeo-corrupt")
    victim = tmp_path / "src" / "blobs" / "sha256" / sha256(image["layers"][1])[7:]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # bit rot in the source: the bytes no longer match the digest
    victim.write_bytes(bytes(raw))
    push = skopeo(
        tmp_path,
        "copy",
        "--dest-tls-verify=false",
        f"oci:{tmp_path / 'src'}:v1",
        f"docker://{host}/it/corrupt:v1",
    )
    assert push.returncode != 0
    with httpx.Client(base_url=url) as client:
        assert client.head(f"/v2/it/corrupt/blobs/{sha256(image['layers'][1])}").status_code == 404
        assert client.get("/v2/it/corrupt/manifests/v1").status_code == 404


@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic", "chunked"])
def test_oras_pushes_and_pulls_files(
    registry: tuple[Stack, str], tmp_path: Path, chunked: bool
) -> None:
    oras_client = _oras_client()
    _, url = registry
    host = url.removeprefix("http://")
    src = tmp_path / "artifact.bin"
    data = os.urandom(5 * 1024 * 1024 + 17)
    src.write_bytes(data)
    client = oras_client.OrasClient(hostname=host, insecure=True)
    target = f"{host}/it/oras-{'chunked' if chunked else 'mono'}:v1"
    old = Path.cwd()
    os.chdir(tmp_path)  # oras stores relative file names as titles
    try:
        resp = client.push(
            target=target, files=["artifact.bin"], do_chunked=chunked, chunk_size=1 << 20
        )
        assert resp.status_code in (200, 201)
        out = tmp_path / "pulled"
        files = client.pull(target=target, outdir=str(out))
    finally:
        os.chdir(old)
    assert [Path(f).read_bytes() for f in files] == [data]


def test_sha512_addressed_blobs_push_and_fetch_over_http(registry: tuple[Stack, str]) -> None:
    _, url = registry
    data = os.urandom(123_457)
    d512 = "sha512:" + hashlib.sha512(data).hexdigest()
    with httpx.Client(base_url=url) as client:
        start = client.post("/v2/it/sha512/blobs/uploads/", params={"digest-algorithm": "sha512"})
        assert start.status_code == 202
        patch = client.patch(
            start.headers["location"], content=data, headers={"Content-Range": f"0-{len(data) - 1}"}
        )
        assert patch.status_code == 202
        put = client.put(patch.headers["location"], params={"digest": d512})
        assert put.status_code == 201
        assert put.headers["docker-content-digest"] == d512
        got = client.get(f"/v2/it/sha512/blobs/{d512}")
        assert got.status_code == 200
        assert got.content == data
        assert got.headers["docker-content-digest"] == d512
        assert client.head(f"/v2/it/sha512/blobs/{sha256(data)}").status_code == 200
