"""The path mapper: every storage key, from a table (like distribution's TestPathMapper)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest import paths
from ingest.digests import Digest, parse_digest
from ingest.errors import BlobUploadUnknown, IngestError, ManifestInvalid, NameInvalid
from ingest.storage.base import TMP_MARKER, check_path, is_temporary

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
    (
        lambda: paths.layer_link_dir("foo/bar", SHA512),
        f"/repositories/foo/bar/_layers/sha512/{HEX512}",
    ),
    (lambda: paths.repository_dir("library/ubuntu"), "/repositories/library/ubuntu"),
    (paths.uploads_root, "/uploads"),
    (lambda: paths.upload_entry_path(UID), f"/uploads/{UID}"),
    (lambda: paths.upload_entry_path("leftover"), "/uploads/leftover"),
    (lambda: paths.upload_dir(UID), f"/uploads/{UID}"),
    (lambda: paths.upload_data_path(UID), f"/uploads/{UID}/data"),
    (lambda: paths.upload_info_path(UID), f"/uploads/{UID}/info.json"),
    (lambda: paths.upload_state_path(UID), f"/uploads/{UID}/state.json"),
    (lambda: paths.upload_result_path(UID), f"/uploads/{UID}/result.json"),
    (lambda: paths.upload_prehash_path(UID), f"/uploads/{UID}/prehash.json"),
    (lambda: paths.upload_prehash_lease_path(UID), f"/uploads/{UID}/prehash.lease"),
    (lambda: paths.upload_verify_lease_path(UID), f"/uploads/{UID}/verify.lease"),
    (lambda: paths.health_probe_path(UID), f"/health/{UID}"),
    (paths.repositories_root, "/repositories"),
    (paths.blob_store_root, "/blobs"),
    (paths.blobs_root, "/blobs/sha256"),
    (
        lambda: paths.manifest_revision_dir("foo/bar", SHA512),
        f"/repositories/foo/bar/_manifests/revisions/sha512/{HEX512}",
    ),
    (
        lambda: paths.manifest_revision_link_path("foo", SHA256),
        f"/repositories/foo/_manifests/revisions/sha256/{HEX256}/link",
    ),
    (
        lambda: paths.manifest_revision_mediatype_path("foo", SHA256),
        f"/repositories/foo/_manifests/revisions/sha256/{HEX256}/mediatype",
    ),
    (lambda: paths.manifest_tags_dir("foo/bar"), "/repositories/foo/bar/_manifests/tags"),
    (
        lambda: paths.manifest_tag_dir("foo/bar", "v1.0"),
        "/repositories/foo/bar/_manifests/tags/v1.0",
    ),
    (
        lambda: paths.manifest_tag_link_path("foo/bar", "latest"),
        "/repositories/foo/bar/_manifests/tags/latest/current/link",
    ),
    (
        lambda: paths.TagLink("foo", "_x").path,
        "/repositories/foo/_manifests/tags/_x/current/link",
    ),
    (
        lambda: paths.manifest_referrers_dir("foo", SHA256),
        f"/repositories/foo/_manifests/referrers/sha256/{HEX256}",
    ),
    (
        lambda: paths.manifest_referrer_link_path("foo", SHA256, SHA512),
        f"/repositories/foo/_manifests/referrers/sha256/{HEX256}/sha512/{HEX512}/link",
    ),
    (
        lambda: paths.ReferrerLink("foo", SHA512, SHA256).path,
        f"/repositories/foo/_manifests/referrers/sha512/{HEX512}/sha256/{HEX256}/link",
    ),
    (
        lambda: paths.RepositoryLink("foo", "layer", TARSUM).path,
        f"/repositories/foo/_layers/tarsum.v1+sha256/{HEX256}/link",
    ),
    (
        lambda: paths.RepositoryLink("foo", "layer", TARSUM).dir,
        f"/repositories/foo/_layers/tarsum.v1+sha256/{HEX256}",
    ),
    (
        lambda: paths.RepositoryLink("foo", "manifest", SHA256).dir,
        f"/repositories/foo/_manifests/revisions/sha256/{HEX256}",
    ),
    (paths.quarantine_root, "/quarantine"),
    (lambda: paths.quarantine_dir(QID), f"/quarantine/{QID}"),
    (lambda: paths.quarantine_record_path(QID), f"/quarantine/{QID}/record.json"),
    (lambda: paths.quarantine_data_path(QID), f"/quarantine/{QID}/data"),
    (paths.fsck_state_path, "/maintenance/fsck.json"),
    (paths.gc_clock_path, "/gc/clock"),
    (paths.gc_sweep_path, "/gc/sweep"),
    (paths.gc_verdicts_root, "/gc/verdicts"),
    (lambda: paths.gc_blob_verdict_path(SHA256), f"/gc/verdicts/blobs/{HEX256}"),
    (
        lambda: paths.gc_revision_verdict_path("a/b", SHA256),
        f"/gc/verdicts/revisions/a/b/sha256/{HEX256}",
    ),
    (lambda: paths.notify_outbox_dir("audit"), "/notifications/audit/outbox"),
    (
        lambda: paths.notify_event_path("audit", "01700000000000000000-0a1b2c3d"),
        "/notifications/audit/outbox/01700000000000000000-0a1b2c3d",
    ),
    (lambda: paths.notify_state_path("a-b_c"), "/notifications/a-b_c/state.json"),
    (lambda: paths.notify_lease_path("audit"), "/notifications/audit/drain.lease"),
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
        "layer_link_dir",
        "layer_link_path",
        "repository_dir",
        "uploads_root",
        "upload_entry_path",
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
        "blob_store_root",
        "blobs_root",
        "manifest_revision_dir",
        "manifest_revision_link_path",
        "manifest_revision_mediatype_path",
        "manifest_tags_dir",
        "manifest_tag_dir",
        "manifest_tag_link_path",
        "manifest_referrers_dir",
        "manifest_referrer_link_path",
        "RepositoryLink",
        "TagLink",
        "ReferrerLink",
        # the inverses: property-tested below
        "parse_repository_link",
        "parse_tag_link",
        "parse_referrer_link",
        "parse_repository_dir",  # round trips and refusals: tests/unit/test_catalog.py
        "repository_content_dirs",  # a tuple of two keys: tests/unit/test_catalog.py
        "entry_name",
        "quarantine_root",
        "quarantine_dir",
        "quarantine_record_path",
        "quarantine_data_path",
        "validate_quarantine_id",
        "fsck_state_path",
        "health_probe_path",
        "gc_clock_path",
        "gc_sweep_path",
        "gc_verdicts_root",
        "gc_blob_verdict_path",
        "gc_revision_verdict_path",
        # notification outboxes: names, keys and the parser in tests/unit/test_notify.py
        "notify_outbox_dir",
        "notify_event_path",
        "notify_state_path",
        "notify_lease_path",
        "parse_notify_event",
        "validate_endpoint_name",
        "validate_event_key",
    }
    assert set(paths.__all__) == covered


@pytest.mark.parametrize("probe_id", ["", "..", "../uploads", "x", UID.upper(), UID + "/data"])
def test_a_health_probe_key_takes_only_a_uuid4(probe_id: str) -> None:
    with pytest.raises(ValueError, match="invalid health probe id"):
        paths.health_probe_path(probe_id)


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


@pytest.mark.parametrize("tag", ["", ".", "..", "-x", ".x", "a/b", "a b", "x" * 129, "v1\n"])
def test_an_invalid_tag_is_refused(tag: str) -> None:
    with pytest.raises(ManifestInvalid):
        paths.manifest_tag_dir("foo", tag)
    with pytest.raises(ManifestInvalid):
        paths.manifest_tag_link_path("foo", tag)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a b", "é", "x\n"])
def test_an_unsafe_upload_entry_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="unsafe upload entry"):
        paths.upload_entry_path(name)


def test_a_manifest_revision_link_parses_back_as_one() -> None:
    link = paths.parse_repository_link(paths.manifest_revision_link_path("a/b", SHA512))
    assert link == paths.RepositoryLink("a/b", "manifest", SHA512)
    assert link.dir == paths.manifest_revision_dir("a/b", SHA512)


def test_each_parser_refuses_the_other_kinds_of_link() -> None:
    layer = paths.layer_link_path("a", SHA256)
    tag = paths.manifest_tag_link_path("a", "v1")
    referrer = paths.manifest_referrer_link_path("a", SHA256, SHA256)
    revision = paths.manifest_revision_link_path("a", SHA256)
    assert paths.parse_tag_link(layer) is None
    assert paths.parse_tag_link(referrer) is None
    assert paths.parse_tag_link(revision) is None
    assert paths.parse_referrer_link(layer) is None
    assert paths.parse_referrer_link(tag) is None
    assert paths.parse_referrer_link(revision) is None
    assert paths.parse_repository_link(tag) is None
    assert paths.parse_repository_link(referrer) is None
    for built in (layer, tag, referrer, revision):
        assert paths.parse_tag_link(built[:-1]) is None
        assert paths.parse_referrer_link(built + "/") is None


# -- properties: build a key, parse it back; hostile parts never escape ---------------

names = st.from_regex(
    r"[a-z0-9]{1,8}(?:(?:[._]|__|-+)[a-z0-9]{1,4})?(?:/[a-z0-9]{1,8}){0,3}", fullmatch=True
)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,20}", fullmatch=True)
hexes = st.text("0123456789abcdef", min_size=64, max_size=64)
digests = st.one_of(
    hexes.map(lambda h: Digest("sha256", h)),
    st.text("0123456789abcdef", min_size=96, max_size=96).map(lambda h: Digest("sha384", h)),
    st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: Digest("sha512", h)),
    hexes.map(lambda h: Digest("tarsum.v1+sha256", h)),
)
uuids = st.uuids(version=4).map(str)
# Text a client, a task message or a corrupted listing could hand us.
hostile = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="./\\-_:+=a0\x00\n %~", max_size=20),
    st.sampled_from(["", ".", "..", "../..", "/", "a/../b", "a/./b", "a//b", "/etc", "..\\x"]),
)


@given(name=names, digest=digests, kind=st.sampled_from(["layer", "manifest"]))
def test_a_repository_link_parses_back_to_its_parts(name: str, digest: Digest, kind: str) -> None:
    link = paths.RepositoryLink(name, kind, digest)
    assert paths.parse_repository_link(link.path) == link
    assert link.path == link.dir + "/link"


@given(name=names, tag=tags)
def test_a_tag_link_parses_back_to_its_parts(name: str, tag: str) -> None:
    path = paths.manifest_tag_link_path(name, tag)
    assert paths.parse_tag_link(path) == paths.TagLink(name, tag)
    assert path.startswith(paths.manifest_tag_dir(name, tag) + "/")
    assert paths.entry_name(paths.manifest_tag_dir(name, tag)) == tag
    assert check_path(path) == path


@given(name=names, subject=digests, digest=digests)
def test_a_referrer_link_parses_back_to_its_parts(
    name: str, subject: Digest, digest: Digest
) -> None:
    path = paths.manifest_referrer_link_path(name, subject, digest)
    assert paths.parse_referrer_link(path) == paths.ReferrerLink(name, subject, digest)
    assert path.startswith(paths.manifest_referrers_dir(name, subject) + "/")
    assert check_path(path) == path


@given(upload_id=uuids, digest=digests)
def test_a_listed_entry_name_is_the_part_that_built_it(upload_id: str, digest: Digest) -> None:
    assert paths.entry_name(paths.upload_dir(upload_id)) == upload_id
    assert paths.upload_entry_path(paths.entry_name(paths.upload_dir(upload_id))) == (
        paths.upload_dir(upload_id)
    )
    assert paths.entry_name(paths.blob_dir(digest)) == digest.encoded
    assert paths.entry_name(paths.blobs_root(digest.algorithm)) == digest.algorithm
    assert paths.blob_dir(digest).startswith(paths.blobs_root(digest.algorithm) + "/")


@given(text=st.one_of(st.text(max_size=200), hostile))
def test_a_parser_returns_none_or_a_link_that_maps_back_to_exactly_its_input(text: str) -> None:
    for parse in (paths.parse_repository_link, paths.parse_tag_link, paths.parse_referrer_link):
        link = parse(text)
        assert link is None or link.path == text


@given(
    name=st.one_of(names, hostile),
    tag=st.one_of(tags, hostile),
    a=st.one_of(hexes, hostile),
    b=st.one_of(hexes, hostile),
)
def test_a_parser_never_accepts_a_path_built_from_hostile_parts(
    name: str, tag: str, a: str, b: str
) -> None:
    candidates = [
        f"/repositories/{name}/_layers/sha256/{a}/link",
        f"/repositories/{name}/_manifests/revisions/{b}/{a}/link",
        f"/repositories/{name}/_manifests/tags/{tag}/current/link",
        f"/repositories/{name}/_manifests/referrers/sha256/{a}/sha256/{b}/link",
    ]
    for text in candidates:
        for parse in (paths.parse_repository_link, paths.parse_tag_link, paths.parse_referrer_link):
            link = parse(text)
            if link is not None:
                # Only when every part was valid: then it is exactly the key built again.
                assert link.path == text
                assert check_path(text) == text


_BUILDERS: list[Callable[[str], str]] = [
    paths.repository_dir,
    paths.layers_dir,
    paths.manifest_tags_dir,
    lambda x: paths.manifest_tag_dir("foo", x),
    lambda x: paths.manifest_tag_link_path("foo", x),
    lambda x: paths.manifest_tag_dir(x, "v1"),
    paths.upload_dir,
    paths.upload_data_path,
    paths.upload_entry_path,
    paths.quarantine_dir,
    lambda x: paths.layer_link_dir("foo", Digest("sha256", x)),
    lambda x: paths.blob_data_path(Digest(x, HEX256)),
    lambda x: paths.manifest_referrer_link_path("foo", Digest("sha256", x), SHA256),
    paths.blobs_root,
]


@given(part=hostile, which=st.sampled_from(range(len(_BUILDERS))))
def test_a_builder_refuses_a_hostile_part_or_stays_below_its_root(part: str, which: int) -> None:
    build = _BUILDERS[which]
    try:
        path = build(part)
    except (IngestError, ValueError):
        return
    # Accepted: a valid storage path (no '.', '..' or empty segment), and the part
    # became exactly one segment of it (or, for a repository name, whole components).
    assert check_path(path) == path
    assert part in path.split("/") or ("/" in part and f"/{part}/" in f"{path}/")


@given(name=st.text(max_size=30))
def test_temporary_entries_are_told_apart_from_keys(name: str) -> None:
    assert is_temporary(f"/uploads/{TMP_MARKER}{name.replace('/', '')}")
    assert is_temporary(TMP_MARKER + name.replace("/", ""))
    assert not is_temporary(paths.upload_dir(UID))
    assert paths.parse_repository_link(paths.layer_link_dir("a", SHA256) + "/" + TMP_MARKER) is None
