"""Repository names and tags, following the distribution reference grammar.

A name is one or more path components joined by ``/``; each component matches
``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*`` and the whole name is at most 255
characters. By construction no component is empty, ``.`` or ``..``, so a valid
name can never make a storage path escape its root.

A tag is ``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}``: one path segment that is never
``.`` or ``..`` either.
"""

from __future__ import annotations

import re

from ingest.errors import ManifestInvalid, NameInvalid

__all__ = ["MAX_NAME_LENGTH", "validate_name", "validate_tag"]

MAX_NAME_LENGTH = 255
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


def validate_name(name: str) -> str:
    """Return ``name`` unchanged if valid, else raise NameInvalid."""
    if not isinstance(name, str) or not name:
        raise NameInvalid("repository name must not be empty", {"name": ""})
    if len(name) > MAX_NAME_LENGTH:
        raise NameInvalid(
            f"repository name must not be longer than {MAX_NAME_LENGTH} characters",
            {"name": name[:64] + "...", "length": len(name)},
        )
    if not _NAME_RE.fullmatch(name):
        raise NameInvalid("invalid repository name", {"name": name})
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` unchanged if valid, else raise ManifestInvalid (``reason: tag-invalid``)."""
    if not isinstance(tag, str) or not _TAG_RE.fullmatch(tag):
        raise ManifestInvalid("invalid tag", {"reason": "tag-invalid", "tag": str(tag)[:140]})
    return tag
