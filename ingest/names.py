"""Repository names, following the distribution reference grammar.

A name is one or more path components joined by ``/``; each component matches
``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*`` and the whole name is at most 255
characters. By construction no component is empty, ``.`` or ``..``, so a valid
name can never make a storage path escape its root.
"""

from __future__ import annotations

import re

from ingest.errors import NameInvalid

__all__ = ["MAX_NAME_LENGTH", "validate_name"]

MAX_NAME_LENGTH = 255
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


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
