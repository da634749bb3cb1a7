"""``INGEST_AUTH=none``: no authentication, every request may do everything.

For demos and tests only; :func:`ingest.backends.authenticator` logs a warning each
time it builds one.
"""

from __future__ import annotations

from collections.abc import Sequence

from ingest.auth import ANONYMOUS_ALL, Access, Identity

__all__ = ["NoAuth"]


class NoAuth:
    """Everyone is :data:`~ingest.auth.ANONYMOUS_ALL`, whatever they send."""

    scheme = ""

    def authenticate(self, authorization: str | None) -> Identity:
        return ANONYMOUS_ALL

    def challenge(self, wanted: Sequence[Access], error: str | None = None) -> str:
        return ""  # nothing is ever refused, so nothing is ever challenged
