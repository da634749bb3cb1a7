"""``ingest serve --tls-cert/--tls-key``: a real frontend over HTTPS, verified against a
throwaway CA (tests/tlsfiles.py), with httpx and with skopeo; and the start-up checks
of a real ``ingest serve`` process (no INGEST_AUTH, a broken certificate)."""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from devtools.devstack import write_htpasswd
from tests.integration.conftest import REPO_ROOT, Stack, unavailable
from tests.integration.test_http_clients import make_oci_layout, skopeo
from tests.tlsfiles import TLSFiles, make_tls_files

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def trusting(ca: str) -> ssl.SSLContext:
    """A client context that trusts ``ca`` only (and checks the host name)."""
    return ssl.create_default_context(cafile=ca)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_the_frontend_serves_https_that_verifies_against_its_ca(
    shared_stack: Stack, tls: TLSFiles
) -> None:
    fe = shared_stack.frontend(tls_cert=tls.server_cert, tls_key=tls.server_key, ca=tls.ca)
    assert fe.url.startswith("https://127.0.0.1:")
    blob = os.urandom(50_000)
    with httpx.Client(base_url=fe.url, verify=trusting(tls.ca), timeout=30) as client:
        r = client.get("/v2/")
        assert r.status_code == 200
        assert r.headers["docker-distribution-api-version"] == "registry/2.0"
        assert r.extensions["http_version"] == b"HTTP/1.1"
        # A whole push and pull over TLS (monolithic: POST, PUT ?digest= with the body).
        r = client.post("/v2/tls/blob/blobs/uploads/")
        assert r.status_code == 202, r.text
        r = client.put(r.headers["location"], params={"digest": sha256(blob)}, content=blob)
        assert r.status_code == 201, r.text
        assert client.get(f"/v2/tls/blob/blobs/{sha256(blob)}").content == blob
        stream = client.stream("GET", "/v2/")
        with stream as resp:
            sock = resp.extensions["network_stream"].get_extra_info("ssl_object")
            assert sock is not None
            assert sock.version() in ("TLSv1.2", "TLSv1.3")

    # A client that trusts another CA refuses the certificate...
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{fe.url}/v2/", verify=trusting(tls.other_ca))
    # ... and plain HTTP on the TLS port gets no HTTP answer at all.
    with pytest.raises(httpx.TransportError):
        httpx.get(fe.url.replace("https://", "http://") + "/v2/", timeout=5)

    # The debug listener stays plain HTTP on loopback.
    assert fe.debug_url is not None
    assert httpx.get(f"{fe.debug_url}/metrics", timeout=5).status_code == 200


def test_skopeo_pushes_over_tls_with_credentials_verifying_the_registry(
    stack: Stack, tls: TLSFiles, tmp_path: Path
) -> None:
    """The secured set-up end to end: htpasswd (bcrypt) + TLS, skopeo with
    --dest-cert-dir and --dest-tls-verify=true (no --dest-tls-verify=false anywhere)."""
    if shutil.which("skopeo") is None:
        unavailable("skopeo is not installed (scripts/test.sh installs it)")
    stack.worker()
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"alice": "s3cret-alice"})
    fe = stack.frontend(
        env={"INGEST_AUTH": "htpasswd", "INGEST_AUTH_HTPASSWD": htpasswd},
        tls_cert=tls.server_cert,
        tls_key=tls.server_key,
        ca=tls.ca,
    )
    host = fe.url.removeprefix("https://")
    certs = tmp_path / "certs.d"
    certs.mkdir()
    shutil.copy(tls.ca, certs / "ca.crt")  # containers/image reads *.crt as CAs
    image = make_oci_layout(tmp_path / "src", "v1", b"skopeo-over-tls")
    push = skopeo(
        tmp_path,
        "copy",
        "--dest-tls-verify=true",
        "--dest-cert-dir",
        str(certs),
        "--dest-creds",
        "alice:s3cret-alice",
        f"oci:{tmp_path / 'src'}:v1",
        f"docker://{host}/tls/skopeo:v1",
    )
    assert push.returncode == 0, push.stderr
    alice = ("alice", "s3cret-alice")
    with httpx.Client(base_url=fe.url, verify=trusting(tls.ca), auth=alice) as c:
        for layer in image["layers"]:
            assert c.head(f"/v2/tls/skopeo/blobs/{sha256(layer)}").status_code == 200
        assert c.get("/v2/tls/skopeo/tags/list").json()["tags"] == ["v1"]
        # Without credentials: challenged, over TLS all the same.
        r = httpx.get(f"{fe.url}/v2/", verify=trusting(tls.ca))
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Basic ")

    # skopeo refuses the registry when the CA it is given is not the one that signed it.
    other = tmp_path / "other.d"
    other.mkdir()
    shutil.copy(tls.other_ca, other / "ca.crt")
    refused = skopeo(
        tmp_path,
        "inspect",
        "--tls-verify=true",
        "--cert-dir",
        str(other),
        "--creds",
        "alice:s3cret-alice",
        f"docker://{host}/tls/skopeo:v1",
    )
    assert refused.returncode != 0
    assert "certificate" in refused.stderr.lower()


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("INGEST_")}
    return subprocess.run(
        [sys.executable, "-m", "ingest.cli", "serve", "--port", "0", *args],
        env={**base, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_without_INGEST_AUTH_exits_2_with_one_line_and_no_traceback() -> None:  # noqa: N802
    run = _serve({})
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.strip() == (
        "error: configuration: INGEST_AUTH must be set: none, htpasswd or token"
    )
    assert "Traceback" not in run.stdout + run.stderr


def test_serve_refuses_a_certificate_whose_key_does_not_match(tls: TLSFiles) -> None:
    run = _serve(
        {"INGEST_AUTH": "none"},
        "--tls-cert",
        tls.server_cert,
        "--tls-key",
        tls.client_key,
        "--debug-addr",
        "off",
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "error: configuration: --tls-cert/--tls-key:" in run.stderr
    assert "Traceback" not in run.stdout + run.stderr
