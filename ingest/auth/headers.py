"""The little HTTP header grammar the authentication modes share (RFC 9110 §11).

Framework-free: the modes get the ``Authorization`` value as text (an HTTP server
decodes header bytes as latin-1) and hand back ``WWW-Authenticate`` text.
"""

from __future__ import annotations

__all__ = ["quoted", "split_authorization"]


def split_authorization(authorization: str) -> tuple[str, str]:
    """``(scheme in lower case, credentials)`` of an ``Authorization`` value.

    ``credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]``: the scheme is
    case-insensitive and ends at the first space; surrounding whitespace is optional
    whitespace of the field and is dropped. ``("", "")`` for an empty value.
    """
    scheme, _, rest = authorization.strip(" \t").partition(" ")
    return scheme.lower(), rest.strip(" \t")


def quoted(value: str) -> str:
    """``value`` as an HTTP quoted-string: ``"`` and ``\\`` escaped, control characters
    (which could end the header line) dropped, and anything past latin-1 (which an
    HTTP server cannot put in a header) replaced by ``?``."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\t" or (" " <= ch <= "\xff" and ch != "\x7f"):
            out.append(ch)
        elif ch > "\xff":
            out.append("?")
    return '"' + "".join(out) + '"'
