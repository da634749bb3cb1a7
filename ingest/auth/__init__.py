"""Who is asking, and may they: authentication and authorisation, free of any web framework.

The HTTP frontend turns each request into the :class:`Access` it needs (for example
``repository:library/ubuntu:push``), asks the configured :class:`Authenticator` who
the ``Authorization`` header belongs to, and checks the :class:`Identity`'s grants:

* ``none``: everyone is :data:`ANONYMOUS_ALL` (every access granted). For demos and
  tests, and logged loudly at start-up.
* ``htpasswd``: HTTP Basic against a bcrypt htpasswd file; an authenticated user is
  granted everything (as in distribution), no one else anything.
* ``token``: the Docker registry token protocol: a Bearer JWT signed by a trusted
  issuer, for this service (audience), in its validity window; the grants are the
  token's ``access`` claims.

The modes live in ``ingest.auth.none``, ``.htpasswd`` and ``.token`` (keys: ``.keys``),
built from the settings by :func:`ingest.backends.authenticator`. A failure's
``detail["reason"]`` is one of: ``scheme`` (another scheme than the mode's, which
RFC 6750 treats like no credentials: no ``error`` in a Bearer challenge, see
:func:`ingest.auth.token.bearer_error`), ``malformed``, ``invalid-credentials``
(htpasswd), and for tokens ``algorithm``, ``unknown-key``, ``signature``, ``expired``,
``not-yet-valid``, ``audience``, ``issuer``.

Scopes follow the token specification: ``repository:<name>:<actions>`` with actions
``pull``, ``push``, ``delete`` (``*`` for all), and ``registry:catalog:*`` for
``/v2/_catalog``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "ANONYMOUS",
    "ANONYMOUS_ALL",
    "Access",
    "Authenticator",
    "Identity",
    "bearer_error",
]

#: Every action a grant may name; ``*`` grants them all.
ACTIONS = frozenset({"pull", "push", "delete", "*"})


@dataclass(frozen=True, slots=True)
class Access:
    """One resource and the actions wanted on it (or granted for it)."""

    type: str  # "repository" or "registry"
    name: str  # a repository name, or "catalog"
    actions: frozenset[str]

    @property
    def scope(self) -> str:
        """The scope string of the token protocol: ``repository:NAME:pull,push``."""
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request authenticated as, and what they may do.

    ``grants`` None means everything (``none`` mode, an htpasswd user); otherwise
    only what the listed grants cover.
    """

    subject: str  # "" for an anonymous request
    grants: tuple[Access, ...] | None = field(default=())

    def allows(self, wanted: Access) -> bool:
        """Whether every action of ``wanted`` is granted on its resource."""
        if self.grants is None:
            return True
        have: set[str] = set()
        for g in self.grants:
            if g.type == wanted.type and g.name == wanted.name:
                have |= g.actions
        return "*" in have or wanted.actions <= have

    def allows_all(self, wanted: Iterable[Access]) -> bool:
        return all(self.allows(w) for w in wanted)


def bearer_error(reason: str | None) -> str | None:
    """The ``error`` parameter of a Bearer challenge after a failure with ``reason``
    (RFC 6750 §3.1): none when the request carried no Bearer token at all (no
    header, or another scheme: distribution answers those alike), ``invalid_token``
    for a token that does not verify. ``insufficient_scope`` is for the caller to
    use when a valid token lacks a grant."""
    if reason is None or reason == "scheme":
        return None
    return "invalid_token"


#: An anonymous request: no grants.
ANONYMOUS = Identity("", ())
#: Everyone, when authentication is switched off.
ANONYMOUS_ALL = Identity("", None)


class Authenticator(Protocol):
    """One authentication mode. Implementations are thread-safe and do no network I/O."""

    #: The ``WWW-Authenticate`` scheme: ``Basic`` or ``Bearer`` (``""`` for ``none``).
    scheme: str

    def authenticate(self, authorization: str | None) -> Identity:
        """The identity of a request with this ``Authorization`` header value.

        No header: :data:`ANONYMOUS` (or :data:`ANONYMOUS_ALL` with ``none``).
        A header that does not authenticate (malformed, wrong password, bad or
        expired token...): raise :class:`~ingest.errors.Unauthorized` with
        ``detail["reason"]``. Never raises anything else for any input.
        """

    def challenge(self, wanted: Sequence[Access], error: str | None = None) -> str:
        """The ``WWW-Authenticate`` value of a 401 for a request that needs
        ``wanted`` (``Basic realm="…"``, or ``Bearer realm="…",service="…",
        scope="…"`` with ``error="…"`` when given, e.g. ``insufficient_scope``)."""
