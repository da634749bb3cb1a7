"""Every container image the deployment pulls names an exact release.

A floating tag (``redis:7``, ``latest``) changes what runs under a deployment that
nobody changed. The compose files and the Dockerfile name exact versions; an upgrade
is an edit of these files (a digest, ``@sha256:…``, may pin the bytes too).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = sorted(ROOT.glob("docker-compose*.yml"))

#: An exact release: a version with at least three numeric parts (``7.4.11``,
#: ``3.11.17-slim-bookworm``) or MinIO's release stamps.
_EXACT_TAG = re.compile(
    r"(v?\d+\.\d+\.\d+([.+-][\w.+-]*)?|RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)"
)
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}")


def pinned(image: str) -> bool:
    """True if ``image`` names one release: an exact version tag, or a digest."""
    name, _, digest = image.partition("@")
    if digest:
        return _DIGEST.fullmatch("@" + digest) is not None
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return False  # implicitly :latest
    return _EXACT_TAG.fullmatch(last.rsplit(":", 1)[1]) is not None


def _compose_images() -> list[tuple[str, str]]:
    images: list[tuple[str, str]] = []
    for path in COMPOSE_FILES:
        data: dict[str, Any] = yaml.safe_load(path.read_text())
        for name, service in (data.get("services") or {}).items():
            # A service built here (build:) tags the image it builds; it pulls nothing.
            if "image" in service and "build" not in service:
                images.append((f"{path.name}: {name}", service["image"]))
    return images


def _dockerfile_images() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    stages = set(re.findall(r"^FROM \S+ AS (\w+)$", text, re.MULTILINE | re.IGNORECASE))
    images: list[tuple[str, str]] = []
    for image in re.findall(r"^FROM (\S+)", text, re.MULTILINE):
        resolved = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], image)
        if resolved not in stages:
            images.append(("Dockerfile", resolved))
    return images


def test_the_compose_files_pull_exact_releases_only() -> None:
    images = _compose_images()
    assert any(i.startswith("redis:") for _, i in images), images  # not vacuous
    assert [(where, i) for where, i in images if not pinned(i)] == []


def test_the_image_builds_from_an_exact_base() -> None:
    images = _dockerfile_images()
    assert images, "no FROM line found"
    assert [(where, i) for where, i in images if not pinned(i)] == []


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("redis:7", False),
        ("redis:7.4", False),
        ("redis", False),
        ("redis:latest", False),
        ("minio/minio:latest", False),
        ("python:3.11-slim", False),
        ("redis:7.4.11", True),
        ("redis:7.4.11-bookworm", True),
        ("python:3.11.17-slim-bookworm", True),
        ("minio/minio:RELEASE.2025-09-07T16-13-09Z", True),
        ("registry.example:5000/redis:7.4.11", True),
        ("registry.example:5000/redis", False),
        ("redis:7@sha256:" + "ab" * 32, True),
        ("redis@sha256:abc", False),
    ],
)
def test_what_counts_as_pinned(image: str, expected: bool) -> None:
    assert pinned(image) is expected
