"""Manifest, tag-list and referrers endpoints, in process."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest

from ingest.config import Settings
from tests.unit.fakes import sha256, sha512
from tests.unit.http.conftest import (
    DELETES_ENABLED,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Env,
    EnvFactory,
    assert_error,
    image_manifest,
    index_manifest,
    jbytes,
)

REPO = "acme/app"
OTHER = "acme/other"
CONFIG = b'{"architecture":"amd64","os":"linux"}'
LAYERS = [b"layer one" * 50, b"layer two" * 70]


@dataclass
class Image:
    doc: dict[str, Any]
    body: bytes

    @property
    def digest(self) -> str:
        return sha256(self.body)


@pytest.fixture
def image(env: Env) -> Image:
    """Config and layers pushed to REPO; the manifest not yet."""
    for blob in (CONFIG, *LAYERS):
        env.push_blob(REPO, blob)
    doc = image_manifest(CONFIG, LAYERS)
    return Image(doc, jbytes(doc))


def _put(env: Env, ref: str, body: bytes, media_type: str | None = OCI_MANIFEST) -> Any:
    headers = {"Content-Type": media_type} if media_type else {}
    return env.client.put(f"/v2/{REPO}/manifests/{ref}", content=body, headers=headers)


# -- PUT / GET / HEAD --------------------------------------------------------------------


def test_put_by_tag(env: Env, image: Image) -> None:
    r = _put(env, "v1", image.body)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == image.digest
    assert r.headers["location"] == f"/v2/{REPO}/manifests/{image.digest}"
    assert r.content == b""
    assert "oci-subject" not in r.headers


@pytest.mark.parametrize("by", ["tag", "digest"])
def test_get_and_head(env: Env, image: Image, by: str) -> None:
    assert _put(env, "v1", image.body).status_code == 201
    ref = "v1" if by == "tag" else image.digest
    r = env.client.get(f"/v2/{REPO}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 200
    assert r.content == image.body
    assert r.headers["content-type"] == OCI_MANIFEST
    assert r.headers["docker-content-digest"] == image.digest
    assert r.headers["etag"] == f'"{image.digest}"'
    assert r.headers["content-length"] == str(len(image.body))
    h = env.client.head(f"/v2/{REPO}/manifests/{ref}")
    assert h.status_code == 200
    assert h.content == b""
    assert h.headers["content-type"] == OCI_MANIFEST
    assert h.headers["docker-content-digest"] == image.digest
    assert h.headers["content-length"] == str(len(image.body))


def test_body_bytes_are_kept_exactly(env: Env, image: Image) -> None:
    body = json.dumps(image.doc, indent=3).encode() + b"\n"
    r = _put(env, "pretty", body)
    assert r.status_code == 201
    assert r.headers["docker-content-digest"] == sha256(body)
    assert env.client.get(f"/v2/{REPO}/manifests/pretty").content == body


def test_put_by_digest(env: Env, image: Image) -> None:
    r = _put(env, image.digest, image.body)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == image.digest
    assert env.client.get(f"/v2/{REPO}/manifests/{image.digest}").content == image.body
    # no tag was created
    assert env.client.get(f"/v2/{REPO}/tags/list").json()["tags"] == []


def test_put_by_wrong_digest(env: Env, image: Image) -> None:
    wrong = sha256(b"not the manifest")
    detail = assert_error(_put(env, wrong, image.body), 400, "DIGEST_INVALID")
    assert detail["claimed"] == wrong
    assert detail["computed"] == image.digest
    assert env.client.get(f"/v2/{REPO}/manifests/{image.digest}").status_code == 404
    assert env.client.get(f"/v2/{REPO}/manifests/{wrong}").status_code == 404


def test_put_by_malformed_digest(env: Env, image: Image) -> None:
    assert_error(_put(env, "sha256:abc", image.body), 400, "DIGEST_INVALID")


def test_put_by_sha512_digest(env: Env, image: Image) -> None:
    d512 = "sha512:" + hashlib.sha512(image.body).hexdigest()
    r = _put(env, d512, image.body)
    assert r.status_code == 201, r.text
    # Answered in the algorithm the client addressed it by, as a GET by it is.
    assert r.headers["docker-content-digest"] == d512
    assert r.headers["location"] == f"/v2/{REPO}/manifests/{d512}"
    g = env.client.get(f"/v2/{REPO}/manifests/{d512}")
    assert g.status_code == 200
    assert g.content == image.body
    assert g.headers["docker-content-digest"] == d512
    assert env.client.get(f"/v2/{REPO}/manifests/{image.digest}").content == image.body


def test_put_by_wrong_sha512_digest(env: Env, image: Image) -> None:
    wrong = sha512(b"nope")
    assert_error(_put(env, wrong, image.body), 400, "DIGEST_INVALID")


def test_put_by_tarsum_digest_is_a_client_error(env: Env, image: Image) -> None:
    r = _put(env, "tarsum.v1+sha256:" + "a" * 64, image.body)
    assert r.status_code == 400, r.text
    assert_error(r, 400, "DIGEST_INVALID")


def test_put_retag_moves_tag(env: Env, image: Image) -> None:
    assert _put(env, "latest", image.body).status_code == 201
    other = image_manifest(CONFIG, LAYERS[:1])
    assert _put(env, "latest", jbytes(other)).status_code == 201
    r = env.client.get(f"/v2/{REPO}/manifests/latest")
    assert r.headers["docker-content-digest"] == sha256(jbytes(other))
    # the old revision is still there by digest
    assert env.client.get(f"/v2/{REPO}/manifests/{image.digest}").status_code == 200


def test_media_type_from_content_type(env: Env, image: Image) -> None:
    doc = dict(image.doc)
    del doc["mediaType"]
    r = _put(env, "v1", jbytes(doc), OCI_MANIFEST)
    assert r.status_code == 201, r.text
    assert env.client.get(f"/v2/{REPO}/manifests/v1").headers["content-type"] == OCI_MANIFEST


def test_media_type_inferred_without_content_type(env: Env, image: Image) -> None:
    doc = dict(image.doc)
    del doc["mediaType"]
    assert _put(env, "v1", jbytes(doc), None).status_code == 201
    assert env.client.head(f"/v2/{REPO}/manifests/v1").headers["content-type"] == OCI_MANIFEST


def test_content_type_parameters_ignored(env: Env, image: Image) -> None:
    r = _put(env, "v1", image.body, OCI_MANIFEST + "; charset=utf-8")
    assert r.status_code == 201, r.text


# -- validation errors -----------------------------------------------------------------


def test_missing_blobs(env: Env) -> None:
    env.push_blob(REPO, CONFIG)
    env.push_blob(REPO, LAYERS[0])
    missing = [b"missing one", b"missing two"]
    doc = image_manifest(CONFIG, [LAYERS[0], *missing])
    body = jbytes(doc)
    detail = assert_error(_put(env, "v1", body), 400, "MANIFEST_BLOB_UNKNOWN")
    assert sorted(detail["missing"]) == sorted(sha256(m) for m in missing)
    assert detail["repository"] == REPO
    assert_error(env.client.get(f"/v2/{REPO}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert_error(env.client.get(f"/v2/{REPO}/manifests/{sha256(body)}"), 404, "MANIFEST_UNKNOWN")


def test_missing_config(env: Env) -> None:
    for layer in LAYERS:
        env.push_blob(REPO, layer)
    detail = assert_error(
        _put(env, "v1", jbytes(image_manifest(CONFIG, LAYERS))), 400, "MANIFEST_BLOB_UNKNOWN"
    )
    assert detail["missing"] == [sha256(CONFIG)]


def test_blobs_linked_only_in_another_repo(env: Env) -> None:
    for blob in (CONFIG, *LAYERS):
        env.push_blob(OTHER, blob)
    detail = assert_error(
        _put(env, "v1", jbytes(image_manifest(CONFIG, LAYERS))), 400, "MANIFEST_BLOB_UNKNOWN"
    )
    assert len(detail["missing"]) == 3


def test_non_distributable_layer_is_not_checked(env: Env) -> None:
    env.push_blob(REPO, CONFIG)
    doc = image_manifest(CONFIG, [])
    doc["layers"] = [
        {
            "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "digest": sha256(b"foreign"),
            "size": 7,
            "urls": ["https://example.com/layer"],
        }
    ]
    assert _put(env, "v1", jbytes(doc)).status_code == 201


def test_descriptor_size_mismatch(env: Env, image: Image) -> None:
    doc = json.loads(image.body)
    doc["layers"][0]["size"] += 1
    detail = assert_error(_put(env, "v1", jbytes(doc)), 400, "MANIFEST_INVALID")
    assert detail["reason"] == "size"


def _bad_docs(image_doc: dict[str, Any]) -> list[tuple[str, bytes, str | None]]:
    def variant(**changes: Any) -> bytes:
        doc = json.loads(jbytes(image_doc))
        for k, v in changes.items():
            if v is None:
                doc.pop(k, None)
            else:
                doc[k] = v
        return jbytes(doc)

    return [
        ("not-json", b"{not json", OCI_MANIFEST),
        ("not-utf8", b"\xff\xfe\x00", OCI_MANIFEST),
        ("empty", b"", OCI_MANIFEST),
        ("array", b"[1,2]", OCI_MANIFEST),
        ("schema-1", variant(schemaVersion=1), OCI_MANIFEST),
        ("schema-string", variant(schemaVersion="2"), OCI_MANIFEST),
        ("no-schema", variant(schemaVersion=None), OCI_MANIFEST),
        ("unknown-type", variant(mediaType="application/vnd.example+json"), None),
        ("type-not-string", variant(mediaType=5), OCI_MANIFEST),
        ("type-mismatch", variant(), DOCKER_MANIFEST),
        ("no-config", variant(config=None), OCI_MANIFEST),
        ("config-not-object", variant(config="sha256:abc"), OCI_MANIFEST),
        ("layers-not-list", variant(layers={"a": 1}), OCI_MANIFEST),
        ("layer-not-object", variant(layers=["x"]), OCI_MANIFEST),
        ("layer-without-digest", variant(layers=[{"size": 1}]), OCI_MANIFEST),
        ("layer-bad-digest", variant(layers=[{"digest": "sha256:zz", "size": 1}]), OCI_MANIFEST),
    ]


BAD_CASES = [
    "not-json",
    "not-utf8",
    "empty",
    "array",
    "schema-1",
    "schema-string",
    "no-schema",
    "unknown-type",
    "type-not-string",
    "type-mismatch",
    "no-config",
    "config-not-object",
    "layers-not-list",
    "layer-not-object",
    "layer-without-digest",
    "layer-bad-digest",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_invalid_manifest(env: Env, image: Image, case: str) -> None:
    cases = {name: (body, ct) for name, body, ct in _bad_docs(image.doc)}
    assert sorted(cases) == sorted(BAD_CASES)
    body, ct = cases[case]
    assert_error(_put(env, "v1", body, ct), 400, "MANIFEST_INVALID")
    assert_error(env.client.get(f"/v2/{REPO}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


@pytest.mark.parametrize(
    ("tag", "status", "code"),
    [
        (".hidden", 400, "MANIFEST_INVALID"),
        ("-dash", 400, "MANIFEST_INVALID"),
        ("a" * 129, 400, "MANIFEST_INVALID"),
        ("tag%20space", 400, "MANIFEST_INVALID"),
        ("%C3%A9t%C3%A9", 400, "MANIFEST_INVALID"),
        ("bad%3Atag", 400, "DIGEST_INVALID"),  # any ':' makes it a digest reference
        ("t%2Fslash", 404, "UNSUPPORTED"),  # %2F decodes to '/': no route matches
    ],
)
def test_invalid_tag(env: Env, image: Image, tag: str, status: int, code: str) -> None:
    r = env.client.put(
        f"/v2/{REPO}/manifests/{tag}", content=image.body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert_error(r, status, code)
    assert env.client.get(f"/v2/{REPO}/tags/list").json()["tags"] == []


@pytest.mark.parametrize("tag", ["a", "_underscore", "v1.2.3-rc_1", "A" * 128])
def test_valid_tags(env: Env, image: Image, tag: str) -> None:
    assert _put(env, tag, image.body).status_code == 201
    assert env.client.get(f"/v2/{REPO}/manifests/{tag}").status_code == 200


def test_invalid_repository_name(env: Env, image: Image) -> None:
    r = env.client.put("/v2/ACME/app/manifests/v1", content=image.body)
    assert_error(r, 400, "NAME_INVALID")
    assert_error(env.client.get("/v2/ACME/app/manifests/v1"), 400, "NAME_INVALID")
    assert_error(env.client.get("/v2/ACME/app/tags/list"), 400, "NAME_INVALID")


# -- other manifest types --------------------------------------------------------------


def test_docker_schema2_manifest(env: Env) -> None:
    for blob in (CONFIG, *LAYERS):
        env.push_blob(REPO, blob)
    body = jbytes(image_manifest(CONFIG, LAYERS, media_type=DOCKER_MANIFEST))
    r = _put(env, "docker", body, DOCKER_MANIFEST)
    assert r.status_code == 201, r.text
    g = env.client.get(f"/v2/{REPO}/manifests/docker")
    assert g.headers["content-type"] == DOCKER_MANIFEST
    assert g.content == body


@pytest.mark.parametrize(
    ("index_type", "child_type"), [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)]
)
def test_index_with_existing_children(
    env: Env, image: Image, index_type: str, child_type: str
) -> None:
    child = jbytes(image_manifest(CONFIG, LAYERS, media_type=child_type))
    assert _put(env, sha256(child), child, child_type).status_code == 201
    body = jbytes(index_manifest([(child_type, child)], media_type=index_type))
    r = _put(env, "multi", body, index_type)
    assert r.status_code == 201, r.text
    g = env.client.get(f"/v2/{REPO}/manifests/multi")
    assert g.headers["content-type"] == index_type
    assert g.content == body


@pytest.mark.parametrize("index_type", [OCI_INDEX, DOCKER_LIST])
def test_index_with_missing_child(env: Env, image: Image, index_type: str) -> None:
    present = image.body
    assert _put(env, image.digest, present).status_code == 201
    absent = jbytes(image_manifest(CONFIG, LAYERS[:1]))
    body = jbytes(
        index_manifest([(OCI_MANIFEST, present), (OCI_MANIFEST, absent)], media_type=index_type)
    )
    detail = assert_error(_put(env, "multi", body, index_type), 400, "MANIFEST_BLOB_UNKNOWN")
    assert detail["missing"] == [sha256(absent)]


def test_index_child_only_in_another_repo(env: Env) -> None:
    for blob in (CONFIG, *LAYERS):
        env.push_blob(OTHER, blob)
    child = jbytes(image_manifest(CONFIG, LAYERS))
    r = env.client.put(
        f"/v2/{OTHER}/manifests/{sha256(child)}",
        content=child,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert r.status_code == 201
    body = jbytes(index_manifest([(OCI_MANIFEST, child)]))
    assert_error(_put(env, "multi", body, OCI_INDEX), 400, "MANIFEST_BLOB_UNKNOWN")


def test_index_inferred_from_manifests_key(env: Env, image: Image) -> None:
    assert _put(env, image.digest, image.body).status_code == 201
    doc = index_manifest([(OCI_MANIFEST, image.body)])
    del doc["mediaType"]
    assert _put(env, "idx", jbytes(doc), None).status_code == 201
    assert env.client.head(f"/v2/{REPO}/manifests/idx").headers["content-type"] == OCI_INDEX


# -- size limit ------------------------------------------------------------------------


def test_manifest_too_large(make_env: EnvFactory) -> None:
    env = make_env(Settings(max_manifest_size=256))
    for blob in (CONFIG, *LAYERS):
        env.push_blob(REPO, blob)
    doc = image_manifest(CONFIG, LAYERS, annotations={"pad": "x" * 300})
    body = jbytes(doc)
    detail = assert_error(_put(env, "big", body), 413, "SIZE_INVALID")
    assert detail["limit"] == 256
    # also when the body comes chunked, without a Content-Length
    r = env.client.put(
        f"/v2/{REPO}/manifests/big",
        content=iter([body[:100], body[100:]]),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "SIZE_INVALID")
    assert env.client.get(f"/v2/{REPO}/manifests/big").status_code == 404


# -- DELETE ----------------------------------------------------------------------------


@DELETES_ENABLED
def test_delete_by_tag(env: Env, image: Image) -> None:
    assert _put(env, "v1", image.body).status_code == 201
    r = env.client.delete(f"/v2/{REPO}/manifests/v1")
    assert r.status_code == 202
    assert r.content == b""
    assert_error(env.client.get(f"/v2/{REPO}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    assert_error(env.client.head(f"/v2/{REPO}/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    # the revision stays addressable by digest
    assert env.client.get(f"/v2/{REPO}/manifests/{image.digest}").status_code == 200
    assert env.client.get(f"/v2/{REPO}/tags/list").json()["tags"] == []
    assert_error(env.client.delete(f"/v2/{REPO}/manifests/v1"), 404, "MANIFEST_UNKNOWN")


@DELETES_ENABLED
def test_delete_by_digest_removes_its_tags(env: Env, image: Image) -> None:
    assert _put(env, "v1", image.body).status_code == 201
    assert _put(env, "latest", image.body).status_code == 201
    other = jbytes(image_manifest(CONFIG, LAYERS[:1]))
    assert _put(env, "keep", other).status_code == 201
    r = env.client.delete(f"/v2/{REPO}/manifests/{image.digest}")
    assert r.status_code == 202
    for ref in ("v1", "latest", image.digest):
        assert_error(env.client.get(f"/v2/{REPO}/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")
    assert env.client.get(f"/v2/{REPO}/tags/list").json()["tags"] == ["keep"]
    assert_error(env.client.delete(f"/v2/{REPO}/manifests/{image.digest}"), 404, "MANIFEST_UNKNOWN")


@DELETES_ENABLED
def test_delete_unknown(env: Env) -> None:
    assert_error(env.client.delete(f"/v2/{REPO}/manifests/nope"), 404, "MANIFEST_UNKNOWN")
    assert_error(env.client.delete(f"/v2/{REPO}/manifests/{sha256(b'x')}"), 404, "MANIFEST_UNKNOWN")
    assert_error(env.client.delete(f"/v2/{REPO}/manifests/.bad"), 400, "MANIFEST_INVALID")


def test_get_unknown(env: Env) -> None:
    for ref in ("nope", sha256(b"x")):
        assert_error(env.client.get(f"/v2/{REPO}/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")
        assert_error(env.client.head(f"/v2/{REPO}/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")
    assert_error(env.client.get(f"/v2/{REPO}/manifests/sha256:zz"), 400, "DIGEST_INVALID")


def test_manifest_of_another_repository(env: Env, image: Image) -> None:
    assert _put(env, "v1", image.body).status_code == 201
    for ref in ("v1", image.digest):
        assert_error(env.client.get(f"/v2/{OTHER}/manifests/{ref}"), 404, "MANIFEST_UNKNOWN")


# -- tags/list -------------------------------------------------------------------------


@pytest.fixture
def tagged(env: Env, image: Image) -> list[str]:
    tags = ["v2", "latest", "a", "v10", "B", "v1", "_x"]
    for t in tags:
        assert _put(env, t, image.body).status_code == 201
    return sorted(tags)


def test_tags_list_sorted(env: Env, tagged: list[str]) -> None:
    r = env.client.get(f"/v2/{REPO}/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": REPO, "tags": tagged}
    assert "link" not in r.headers


def test_tags_list_pagination(env: Env, tagged: list[str]) -> None:
    seen: list[str] = []
    url: str | None = f"/v2/{REPO}/tags/list?n=3"
    pages = 0
    while url is not None:
        r = env.client.get(url)
        assert r.status_code == 200
        page = r.json()["tags"]
        assert len(page) <= 3
        seen += page
        pages += 1
        link = r.headers.get("link")
        if link is None:
            url = None
        else:
            m = re.fullmatch(r'<([^>]+)>; rel="next"', link)
            assert m, link
            url = m.group(1)
            assert url.startswith(f"/v2/{REPO}/tags/list?n=3&last=")
        assert pages < 10
    assert seen == tagged


def test_tags_list_last(env: Env, tagged: list[str]) -> None:
    r = env.client.get(f"/v2/{REPO}/tags/list", params={"last": "latest"})
    assert r.json()["tags"] == [t for t in tagged if t > "latest"]
    r = env.client.get(f"/v2/{REPO}/tags/list", params={"last": "zzz"})
    assert r.json()["tags"] == []


def test_tags_list_n_exact_has_no_link(env: Env, tagged: list[str]) -> None:
    r = env.client.get(f"/v2/{REPO}/tags/list", params={"n": str(len(tagged))})
    assert r.json()["tags"] == tagged
    assert "link" not in r.headers


@pytest.mark.parametrize("n", ["-1", "abc", "1.5", "", " 2"])
def test_tags_list_bad_n(env: Env, tagged: list[str], n: str) -> None:
    detail = assert_error(
        env.client.get(f"/v2/{REPO}/tags/list", params={"n": n}), 400, "MANIFEST_INVALID"
    )
    assert detail["reason"] == "pagination"


def test_tags_list_n_zero(env: Env, tagged: list[str]) -> None:
    # n=0 answers an empty page and no Link, although tags exist.
    r = env.client.get(f"/v2/{REPO}/tags/list", params={"n": "0"})
    assert r.status_code == 200
    assert r.json()["tags"] == []
    assert "link" not in r.headers


def test_tags_list_superscript_n_is_a_client_error(env: Env, tagged: list[str]) -> None:
    r = env.client.get(f"/v2/{REPO}/tags/list", params={"n": "²"})
    assert_error(r, 400, "MANIFEST_INVALID")


def test_tags_list_unknown_repository(env: Env) -> None:
    detail = assert_error(env.client.get("/v2/nobody/here/tags/list"), 404, "NAME_UNKNOWN")
    assert detail["repository"] == "nobody/here"


def test_tags_list_repository_without_tags(env: Env) -> None:
    env.push_blob(REPO, b"only a blob")
    r = env.client.get(f"/v2/{REPO}/tags/list")
    assert r.status_code == 200
    assert r.json() == {"name": REPO, "tags": []}


# -- referrers -------------------------------------------------------------------------

ARTIFACT_TYPE = "application/vnd.example.signature.v1"


def _referrer(env: Env, subject: Image, artifact_type: str, payload: bytes) -> bytes:
    env.push_blob(REPO, payload)
    env.push_blob(REPO, b"{}")
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": sha256(b"{}"),
            "size": 2,
        },
        "layers": [
            {
                "mediaType": "application/octet-stream",
                "digest": sha256(payload),
                "size": len(payload),
            }
        ],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": len(subject.body)},
        "annotations": {"org.example.kind": artifact_type},
    }
    return jbytes(doc)


def test_referrers(env: Env, image: Image) -> None:
    assert _put(env, "v1", image.body).status_code == 201
    sig = _referrer(env, image, ARTIFACT_TYPE, b"signature")
    sbom = _referrer(env, image, "application/spdx+json", b"sbom")
    for body in (sig, sbom):
        r = _put(env, sha256(body), body)
        assert r.status_code == 201, r.text
        assert r.headers["oci-subject"] == image.digest

    r = env.client.get(f"/v2/{REPO}/referrers/{image.digest}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(OCI_INDEX)
    assert "oci-filters-applied" not in r.headers
    index = r.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    by_digest = {d["digest"]: d for d in index["manifests"]}
    assert set(by_digest) == {sha256(sig), sha256(sbom)}
    d = by_digest[sha256(sig)]
    assert d == {
        "mediaType": OCI_MANIFEST,
        "digest": sha256(sig),
        "size": len(sig),
        "artifactType": ARTIFACT_TYPE,
        "annotations": {"org.example.kind": ARTIFACT_TYPE},
    }

    f = env.client.get(
        f"/v2/{REPO}/referrers/{image.digest}", params={"artifactType": ARTIFACT_TYPE}
    )
    assert f.status_code == 200
    assert f.headers["oci-filters-applied"] == "artifactType"
    assert [m["digest"] for m in f.json()["manifests"]] == [sha256(sig)]

    none = env.client.get(
        f"/v2/{REPO}/referrers/{image.digest}", params={"artifactType": "application/none"}
    )
    assert none.json()["manifests"] == []
    assert none.headers["oci-filters-applied"] == "artifactType"


def test_referrers_subject_need_not_exist(env: Env, image: Image) -> None:
    ghost = Image({}, b"a manifest nobody pushed")
    body = _referrer(env, ghost, ARTIFACT_TYPE, b"sig")
    env.push_blob(REPO, CONFIG)
    r = _put(env, "sig", body)
    assert r.status_code == 201, r.text
    assert r.headers["oci-subject"] == ghost.digest
    listed = env.client.get(f"/v2/{REPO}/referrers/{ghost.digest}").json()["manifests"]
    assert [m["digest"] for m in listed] == [sha256(body)]


@DELETES_ENABLED
def test_referrers_gone_after_delete(env: Env, image: Image) -> None:
    assert _put(env, "v1", image.body).status_code == 201
    sig = _referrer(env, image, ARTIFACT_TYPE, b"signature")
    assert _put(env, sha256(sig), sig).status_code == 201
    assert env.client.delete(f"/v2/{REPO}/manifests/{sha256(sig)}").status_code == 202
    assert env.client.get(f"/v2/{REPO}/referrers/{image.digest}").json()["manifests"] == []


def test_referrers_empty_and_errors(env: Env) -> None:
    r = env.client.get(f"/v2/{REPO}/referrers/{sha256(b'nothing')}")
    assert r.status_code == 200
    assert r.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    assert_error(env.client.get(f"/v2/{REPO}/referrers/latest"), 400, "MANIFEST_INVALID")
    assert_error(env.client.get(f"/v2/{REPO}/referrers/sha256:zz"), 400, "DIGEST_INVALID")
    assert_error(env.client.get(f"/v2/{REPO}/referrers/md5:{'a' * 32}"), 400, "DIGEST_INVALID")


def test_malformed_subject_stores_nothing(env: Env, image: Image) -> None:
    doc = dict(image.doc, subject={"mediaType": OCI_MANIFEST, "digest": "nope", "size": 1})
    body = jbytes(doc)
    assert_error(_put(env, "v1", body), 400, "MANIFEST_INVALID")
    assert_error(env.client.get(f"/v2/{REPO}/manifests/{sha256(body)}"), 404, "MANIFEST_UNKNOWN")


def test_a_generic_content_type_without_media_type_is_inferred_from_the_body(
    env: Env, image: Image
) -> None:
    doc = {k: v for k, v in image.doc.items() if k != "mediaType"}
    body = jbytes(doc)
    r = env.client.put(
        f"/v2/{REPO}/manifests/v1", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 201
    got = env.client.get(f"/v2/{REPO}/manifests/v1")
    assert got.headers["content-type"] == OCI_MANIFEST
    assert got.content == body


@pytest.mark.parametrize("body", [b"[" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000])
def test_deeply_nested_manifest_is_invalid(env: Env, body: bytes) -> None:
    assert_error(_put(env, "v1", body), 400, "MANIFEST_INVALID")
