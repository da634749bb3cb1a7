"""The path mapper: every storage key, from a table (like distribution's TestPathMapper)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from ingest import paths
from ingest.digests import Digest, parse_digest
from ingest.errors import BlobUploadUnknown, NameInvalid
from ingest.storage.base import check_path

HEX256 = "ab" + "c" * 62
HEX512 = "0f" + "e" * 126
UID = "3f2c7a1e-9b4d-4c8e-a1f0-123456789abc"
SHA256 = Digest("sha256", HEX256)
SHA512 = Digest("sha512", HEX512)
TARSUM = Digest("tarsum.v1+sha256", HEX256)
QID = "20250101T120000Z-abcccccccccc-0123abcd"

TABLE: list[tuple[Callable[[], str], str]] = [
    (lambda: paths.blob_dir(SHA256), f"/blobs/sha256/ab/{HEX256}"),
    (lambda: paths.blob_data_path(SHA256), f"/blobs/sha256/ab/{HEX256}/data"),
    (lambda: paths.blob_data_path(SHA512), f"/blobs/sha512/0f/{HEX512}/data"),
    (lambda: paths.blob_data_path(TARSUM), f"/blobs/tarsum.v1+sha256/ab/{HEX256}/data"),
    (lambda: paths.layers_dir("library/ubuntu"), "/repositories/library/ubuntu/_layers"),
    (lambda: paths.layers_dir("a"), "/repositories/a/_layers"),
    (
        lambda: paths.layer_link_path("library/ubuntu", SHA256),
        f"/repositories/library/ubuntu/_layers/sha256/{HEX256}/link",
    ),
    (
        lambda: paths.layer_link_path("foo/bar", SHA512),
        f"/repositories/foo/bar/_layers/sha512/{HEX512}/link",
    ),
    (
        lambda: paths.layer_link_path("foo", TARSUM),
        f"/repositories/foo/_layers/tarsum.v1+sha256/{HEX256}/link",
    ),
    (paths.uploads_root, "/uploads"),
    (lambda: paths.upload_dir(UID), f"/uploads/{UID}"),
    (lambda: paths.upload_data_path(UID), f"/uploads/{UID}/data"),
    (lambda: paths.upload_info_path(UID), f"/uploads/{UID}/info.json"),
    (lambda: paths.upload_state_path(UID), f"/uploads/{UID}/state.json"),
    (lambda: paths.upload_result_path(UID), f"/uploads/{UID}/result.json"),
    (lambda: paths.upload_prehash_path(UID), f"/uploads/{UID}/prehash.json"),
    (lambda: paths.upload_prehash_lease_path(UID), f"/uploads/{UID}/prehash.lease"),
    (lambda: paths.upload_verify_lease_path(UID), f"/uploads/{UID}/verify.lease"),
    (paths.repositories_root, "/repositories"),
    (paths.blobs_root, "/blobs/sha256"),
    (
        lambda: paths.manifest_revision_dir("foo/bar", SHA512),
        f"/repositories/foo/bar/_manifests/revisions/sha512/{HEX512}",
    ),
    (
        lambda: paths.manifest_revision_link_path("foo", SHA256),
        f"/repositories/foo/_manifests/revisions/sha256/{HEX256}/link",
    ),
    (lambda: paths.manifest_tags_dir("foo/bar"), "/repositories/foo/bar/_manifests/tags"),
    (
        lambda: paths.RepositoryLink("foo", "layer", TARSUM).path,
        f"/repositories/foo/_layers/tarsum.v1+sha256/{HEX256}/link",
    ),
    (paths.quarantine_root, "/quarantine"),
    (lambda: paths.quarantine_dir(QID), f"/quarantine/{QID}"),
    (lambda: paths.quarantine_record_path(QID), f"/quarantine/{QID}/record.json"),
    (lambda: paths.quarantine_data_path(QID), f"/quarantine/{QID}/data"),
    (paths.fsck_state_path, "/maintenance/fsck.json"),
]


@pytest.mark.parametrize(("build", "expected"), TABLE, ids=[e for _, e in TABLE])
def test_mapper_builds_the_exact_storage_path(build: Callable[[], str], expected: str) -> None:
    path = build()
    assert path == expected
    assert check_path(path) == path


def test_every_exported_mapper_function_is_in_the_table() -> None:
    covered = {
        "blob_dir",
        "blob_data_path",
        "layers_dir",
        "layer_link_path",
        "uploads_root",
        "upload_dir",
        "upload_data_path",
        "upload_info_path",
        "upload_state_path",
        "upload_result_path",
        "upload_prehash_path",
        "upload_prehash_lease_path",
        "upload_verify_lease_path",
        "validate_upload_id",
        "repositories_root",
        "blobs_root",
        "manifest_revision_dir",
        "manifest_revision_link_path",
        "manifest_tags_dir",
        "RepositoryLink",
        "parse_repository_link",  # its inverse: property-tested in test_fsck.py
        "quarantine_root",
        "quarantine_dir",
        "quarantine_record_path",
        "quarantine_data_path",
        "validate_quarantine_id",
        "fsck_state_path",
    }
    assert set(paths.__all__) == covered


def test_a_parsed_digest_maps_like_a_constructed_one() -> None:
    assert paths.blob_data_path(parse_digest(f"sha256:{HEX256}")) == paths.blob_data_path(SHA256)


@pytest.mark.parametrize(
    "digest",
    [
        Digest("sha256", ".."),
        Digest("sha256", "."),
        Digest("..", HEX256),
        Digest("sha256", "ab/../../etc"),
        Digest("sha256", ""),
        Digest("sha 256", HEX256),
    ],
)
def test_an_unsafe_hand_built_digest_is_refused(digest: Digest) -> None:
    with pytest.raises(ValueError, match="unsafe digest"):
        paths.blob_data_path(digest)
    with pytest.raises(ValueError, match="unsafe digest"):
        paths.layer_link_path("library/ubuntu", digest)


@pytest.mark.parametrize("name", ["", "../etc", "a//b", "A", "a/../b"])
def test_an_invalid_repository_name_is_refused(name: str) -> None:
    with pytest.raises(NameInvalid):
        paths.layers_dir(name)
    with pytest.raises(NameInvalid):
        paths.layer_link_path(name, SHA256)


def test_a_fresh_uuid4_is_a_valid_upload_id() -> None:
    for _ in range(50):
        uid = str(uuid.uuid4())
        assert paths.validate_upload_id(uid) == uid


@pytest.mark.parametrize(
    "upload_id",
    [
        "",
        UID.upper(),
        UID[:-1] + "C",
        str(uuid.uuid1()),
        "3f2c7a1e-9b4d-5c8e-a1f0-123456789abc",  # version 5
        "3f2c7a1e-9b4d-4c8e-c1f0-123456789abc",  # wrong variant
        UID.replace("-", ""),
        "{" + UID + "}",
        "urn:uuid:" + UID,
        UID + "\n",
        " " + UID,
        UID + "/../x",
        "../" + UID,
        "..",
        ".",
        "/" + UID,
        UID + "/data",
    ],
)
def test_validate_upload_id_rejects_anything_but_a_lower_case_uuid4(upload_id: str) -> None:
    with pytest.raises(BlobUploadUnknown) as info:
        paths.validate_upload_id(upload_id)
    assert len(info.value.detail["upload_id"]) <= 64
    for mapper in (
        paths.upload_dir,
        paths.upload_data_path,
        paths.upload_info_path,
        paths.upload_state_path,
        paths.upload_result_path,
    ):
        with pytest.raises(BlobUploadUnknown):
            mapper(upload_id)


@pytest.mark.parametrize(
    "qid", ["", "x", "../etc", "20250101T120000Z-ABCCCCCCCCCC-0123abcd", f"{QID}/..", QID + "0"]
)
def test_a_malformed_quarantine_id_is_refused(qid: str) -> None:
    with pytest.raises(ValueError, match="quarantine id"):
        paths.quarantine_dir(qid)
