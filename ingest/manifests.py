"""Manifests, tags and referrers.

Manifests are small, so they are verified inline (digest of the exact bytes,
JSON structure, every referenced blob or child manifest linked in the
repository) rather than through the blob verification task. Their bytes live in
the blob store like any blob; the repository keeps a revision link and its
media type per digest, a link per tag and one per referrer, all under
``/repositories/<name>/_manifests`` (the layout is drawn in :mod:`ingest.paths`).

Supported media types: OCI image manifest and index, Docker schema 2 manifest
and manifest list.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ingest import gc, paths
from ingest.blobs import BlobStore
from ingest.digests import Digest, parse_digest
from ingest.errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    TooLarge,
)
from ingest.names import validate_name, validate_tag
from ingest.storage.base import PathNotFound, StorageDriver

__all__ = [
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "Manifest",
    "ManifestStore",
    "is_digest_reference",
    "validate_tag",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = IMAGE_TYPES | INDEX_TYPES


def is_digest_reference(reference: str) -> bool:
    return ":" in reference


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body)


class ManifestStore:
    """Manifests of all repositories on one storage driver."""

    def __init__(self, driver: StorageDriver, *, max_size: int = 4 << 20) -> None:
        self.driver = driver
        self.blobs = BlobStore(driver)
        self.max_size = max_size

    # -- write ---------------------------------------------------------------------

    def put(
        self, repository: str, reference: str, body: bytes, content_type: str | None
    ) -> Manifest:
        """Validate and store ``body`` under ``reference`` (a tag or its digest)."""
        validate_name(repository)
        if len(body) > self.max_size:
            raise TooLarge("manifest too large", {"limit": self.max_size, "size": len(body)})
        digest = parse_digest("sha256:" + hashlib.sha256(body).hexdigest())
        if is_digest_reference(reference):
            claimed = parse_digest(reference)
            if claimed.algorithm not in ("sha256", "sha384", "sha512"):
                raise DigestInvalid(
                    "manifests are addressed by sha256, sha384 or sha512",
                    {"reason": "unsupported", "digest": str(claimed)},
                )
            if claimed.algorithm != "sha256":
                computed = (
                    f"{claimed.algorithm}:" + hashlib.new(claimed.algorithm, body).hexdigest()
                )
            else:
                computed = str(digest)
            if computed != str(claimed):
                raise DigestInvalid(
                    "manifest digest did not match its content",
                    {"reason": "mismatch", "claimed": str(claimed), "computed": computed},
                )
        else:
            validate_tag(reference)
        doc = self._parse(body)
        media_type = self._media_type(doc, content_type)
        self._check_references(repository, doc, media_type)
        subject = self._subject(doc)  # validated before anything is written

        # Bytes first, then the revision, then tag/referrer links: a link never
        # names something missing.
        blob_path = paths.blob_data_path(digest)
        if self.blobs.exists(digest) != len(body):
            self.driver.put_content(blob_path, body)
        revisions = [digest]
        if is_digest_reference(reference) and parse_digest(reference) != digest:
            revisions.append(parse_digest(reference))  # an alias: sha384 or sha512
        for rev in revisions:
            self.driver.put_content(
                paths.manifest_revision_mediatype_path(repository, rev), media_type.encode()
            )
            self.driver.put_content(
                paths.manifest_revision_link_path(repository, rev), str(digest).encode()
            )
        if subject is not None:
            self.driver.put_content(
                paths.manifest_referrer_link_path(repository, subject, digest),
                str(digest).encode(),
            )
        self._retain(repository, doc, media_type, body, digest, revisions, subject)
        if not is_digest_reference(reference):
            self.driver.put_content(
                paths.manifest_tag_link_path(repository, reference), str(digest).encode()
            )
        # Put by digest, the manifest is known by the digest the client chose (a sha512
        # push is answered in sha512, as ``get`` answers it); by tag, by its sha256.
        return Manifest(str(revisions[-1]), media_type, body)

    def _retain(
        self,
        repository: str,
        doc: dict[str, Any],
        media_type: str,
        body: bytes,
        digest: Digest,
        revisions: list[Digest],
        subject: Digest | None,
    ) -> None:
        """The revision links just written are this push's reference: keep what it
        references from a garbage collection deciding about it (:mod:`ingest.gc`).
        Its own bytes and revisions are written again if a collection took them; a
        referenced blob or child manifest that was collected meanwhile withdraws the
        push (ManifestBlobUnknown), before any tag names it."""
        for _ in range(3):
            gc.retain_blob(self.driver, digest)
            for rev in revisions:
                gc.retain_revision(self.driver, repository, rev)
            if self.blobs.exists(digest) != len(body):
                self.driver.put_content(paths.blob_data_path(digest), body)
            gone = [rev for rev in revisions if not self._has_revision(repository, rev)]
            if not gone:
                break
            for rev in gone:
                self.driver.put_content(
                    paths.manifest_revision_mediatype_path(repository, rev), media_type.encode()
                )
                self.driver.put_content(
                    paths.manifest_revision_link_path(repository, rev), str(digest).encode()
                )
        missing: list[str] = []
        if media_type in IMAGE_TYPES:
            config = doc.get("config")
            for desc in [config, *self._descriptors(doc, "layers")]:
                if not isinstance(desc, dict) or desc.get("urls"):
                    continue
                d = self._descriptor_digest(desc)
                try:
                    canonical = self.blobs.resolve(repository, d)
                except BlobUnknown:
                    missing.append(str(d))
                    continue
                gc.retain_blob(self.driver, canonical)
                if self.blobs.exists(canonical) is None:
                    missing.append(str(d))
        else:
            for desc in self._descriptors(doc, "manifests"):
                d = self._descriptor_digest(desc)
                gc.retain_revision(self.driver, repository, d)
                if not self._has_revision(repository, d):
                    missing.append(str(d))
        if missing:
            # Collected between the check and now: withdraw what this push wrote.
            if subject is not None:
                with contextlib.suppress(PathNotFound):
                    self.driver.delete(
                        paths.manifest_referrer_link_path(repository, subject, digest)
                    )
            for rev in revisions:
                with contextlib.suppress(PathNotFound):
                    self.driver.delete(paths.manifest_revision_dir(repository, rev))
            raise ManifestBlobUnknown(
                "manifest references blobs not linked in this repository",
                {"repository": repository, "missing": missing},
            )

    def _subject(self, doc: dict[str, Any]) -> Digest | None:
        subject = doc.get("subject")
        if subject is None:
            return None
        if not isinstance(subject, dict):
            raise ManifestInvalid("subject must be a descriptor", {"reason": "descriptor"})
        return self._descriptor_digest(subject)

    @staticmethod
    def _parse(body: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ManifestInvalid("manifest is not valid JSON", {"reason": "json"}) from None
        if not isinstance(doc, dict):
            raise ManifestInvalid("manifest must be a JSON object", {"reason": "json"})
        if doc.get("schemaVersion") != 2:
            raise ManifestInvalid("schemaVersion must be 2", {"reason": "schema-version"})
        return doc

    @staticmethod
    def _media_type(doc: dict[str, Any], content_type: str | None) -> str:
        declared = doc.get("mediaType")
        ct = (content_type or "").split(";", 1)[0].strip() or None
        if declared is not None and not isinstance(declared, str):
            raise ManifestInvalid("mediaType must be a string", {"reason": "media-type"})
        if declared and ct and ct in MANIFEST_TYPES and declared != ct:
            raise ManifestInvalid(
                "mediaType does not match Content-Type",
                {"reason": "media-type", "mediaType": declared, "contentType": ct},
            )
        # A generic Content-Type (application/json...) says nothing: infer instead.
        media_type = declared or (ct if ct in MANIFEST_TYPES else None)
        if media_type is None and "manifests" in doc:
            media_type = OCI_INDEX
        if media_type is None and "config" in doc:
            media_type = OCI_MANIFEST
        if media_type not in MANIFEST_TYPES:
            raise ManifestInvalid(
                "unsupported manifest media type", {"reason": "media-type", "mediaType": media_type}
            )
        return media_type

    def _descriptors(self, doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(d, dict) for d in value):
            raise ManifestInvalid(f"{key} must be a list of descriptors", {"reason": "descriptor"})
        return value

    def _check_references(self, repository: str, doc: dict[str, Any], media_type: str) -> None:
        missing: list[str] = []
        if media_type in IMAGE_TYPES:
            config = doc.get("config")
            if not isinstance(config, dict):
                raise ManifestInvalid(
                    "image manifest needs a config descriptor", {"reason": "descriptor"}
                )
            blobs = [config, *self._descriptors(doc, "layers")]
            for desc in blobs:
                if desc.get("urls"):
                    continue  # non-distributable layer fetched from elsewhere
                d = self._descriptor_digest(desc)
                try:
                    info = self.blobs.stat(repository, d)
                except BlobUnknown:
                    missing.append(str(d))
                    continue
                size = desc.get("size")
                if isinstance(size, int) and size != info.size:
                    raise ManifestInvalid(
                        "descriptor size does not match the blob",
                        {"reason": "size", "digest": str(d), "size": size, "actual": info.size},
                    )
        else:
            for desc in self._descriptors(doc, "manifests"):
                d = self._descriptor_digest(desc)
                if not self._has_revision(repository, d):
                    missing.append(str(d))
        if missing:
            raise ManifestBlobUnknown(
                "manifest references blobs not linked in this repository",
                {"repository": repository, "missing": missing},
            )

    @staticmethod
    def _descriptor_digest(desc: dict[str, Any]) -> Digest:
        raw = desc.get("digest")
        if not isinstance(raw, str):
            raise ManifestInvalid("descriptor without a digest", {"reason": "descriptor"})
        try:
            return parse_digest(raw)
        except DigestInvalid as exc:
            raise ManifestInvalid(
                "descriptor digest invalid", {"reason": "descriptor", **exc.detail}
            ) from None

    def _has_revision(self, repository: str, digest: Digest) -> bool:
        try:
            self.driver.stat(paths.manifest_revision_link_path(repository, digest))
        except PathNotFound:
            return False
        return True

    # -- read ----------------------------------------------------------------------

    def resolve(self, repository: str, reference: str) -> Digest:
        """The canonical digest of a tag or digest reference; ManifestUnknown if none."""
        try:
            if is_digest_reference(reference):
                d = parse_digest(reference)
                raw = self.driver.get_content(paths.manifest_revision_link_path(repository, d))
            else:
                raw = self.driver.get_content(paths.manifest_tag_link_path(repository, reference))
        except PathNotFound:
            raise ManifestUnknown(
                detail={"repository": repository, "reference": reference}
            ) from None
        return parse_digest(raw.decode("ascii").strip())

    def get(self, repository: str, reference: str) -> Manifest:
        digest = self.resolve(repository, reference)
        try:
            media_type = self.driver.get_content(
                paths.manifest_revision_mediatype_path(repository, digest)
            )
            body = self.driver.get_content(paths.blob_data_path(digest))
        except PathNotFound:
            raise ManifestUnknown(
                detail={"repository": repository, "reference": reference}
            ) from None
        shown = reference if is_digest_reference(reference) else str(digest)
        return Manifest(shown, media_type.decode(), body)

    def tags(self, repository: str) -> list[str]:
        validate_name(repository)
        try:
            children = self.driver.list(paths.manifest_tags_dir(repository))
        except PathNotFound:
            if self._repository_exists(repository):
                return []
            raise NameUnknown(detail={"repository": repository}) from None
        return sorted(paths.entry_name(c) for c in children)

    def _repository_exists(self, repository: str) -> bool:
        try:
            self.driver.stat(paths.repository_dir(repository))
        except PathNotFound:
            return False
        return True

    def referrers(
        self, repository: str, subject: str, artifact_type: str | None = None
    ) -> dict[str, Any]:
        """An OCI image index listing the manifests whose ``subject`` is ``subject``."""
        sd = parse_digest(subject)
        descriptors: list[dict[str, Any]] = []
        for fi in self.driver.walk(paths.manifest_referrers_dir(repository, sd)):
            if paths.parse_referrer_link(fi.path) is None:
                continue  # a temporary file of a write in progress
            with contextlib.suppress(PathNotFound, ManifestUnknown, ValueError):
                digest = self.driver.get_content(fi.path).decode().strip()
                m = self.get(repository, digest)
                doc = json.loads(m.body)
                at = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
                if artifact_type and at != artifact_type:
                    continue
                desc: dict[str, Any] = {"mediaType": m.media_type, "digest": digest, "size": m.size}
                if at:
                    desc["artifactType"] = at
                if isinstance(doc.get("annotations"), dict):
                    desc["annotations"] = doc["annotations"]
                descriptors.append(desc)
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}

    # -- delete --------------------------------------------------------------------

    def delete(self, repository: str, reference: str) -> None:
        """Delete a tag, or a revision by digest together with the tags naming it."""
        if not is_digest_reference(reference):
            try:
                self.driver.delete(paths.manifest_tag_dir(repository, reference))
            except PathNotFound:
                raise ManifestUnknown(
                    detail={"repository": repository, "reference": reference}
                ) from None
            return
        digest = self.resolve(repository, reference)
        for tag in self.tags(repository):
            with contextlib.suppress(PathNotFound, ManifestUnknown):
                if self.resolve(repository, tag) == digest:
                    self.driver.delete(paths.manifest_tag_dir(repository, tag))
        with contextlib.suppress(PathNotFound):
            self.driver.delete(paths.manifest_revision_dir(repository, parse_digest(reference)))
