"""The little HTTP header grammar the authentication modes share (RFC 9110 §11).

Framework-free: the modes get the ``Authorization`` value as text (an HTTP server
decodes header bytes as latin-1) and hand back ``WWW-Authenticate`` text; the
registry client (:mod:`ingest.client`) reads that text back with
:func:`parse_challenges`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "MAX_CHALLENGE",
    "Challenge",
    "ChallengeInvalid",
    "parse_challenges",
    "quoted",
    "split_authorization",
]


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


# -- WWW-Authenticate, as a client reads it ---------------------------------------------

#: ``tchar`` of RFC 9110 §5.6.2: what a scheme or parameter name is made of.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
#: ``token68`` characters (RFC 9110 §11.2), before its trailing ``=`` padding.
_TOKEN68 = frozenset("-._~+/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_OWS = " \t"
#: A longer ``WWW-Authenticate`` value is refused unread: real ones are a few hundred bytes.
MAX_CHALLENGE = 16 * 1024


class ChallengeInvalid(ValueError):
    """A ``WWW-Authenticate`` value that does not follow RFC 9110 §11.6.1."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` value: its scheme as sent (schemes are
    case-insensitive: compare ``scheme.lower()``), and either its parameters (names in
    lower case, values unquoted) or a ``token68``."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)
    token68: str | None = None


def parse_challenges(value: str) -> list[Challenge]:
    """Every challenge of one ``WWW-Authenticate`` field value, in order::

        #challenge; challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
        auth-param = token BWS "=" BWS ( token / quoted-string )

    Empty list elements are skipped, as recipients must (RFC 9110 §5.6.1). Anything
    else that breaks the grammar, a parameter named twice in one challenge, or a value
    over :data:`MAX_CHALLENGE` characters raises :class:`ChallengeInvalid` (and
    nothing else: the value comes from a server, so may be anything)."""
    if len(value) > MAX_CHALLENGE:
        raise ChallengeInvalid(f"longer than {MAX_CHALLENGE} characters")
    return _ChallengeParser(value).challenges()


class _ChallengeParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _skip(self, chars: str) -> None:
        while self._peek() and self._peek() in chars:
            self.pos += 1

    def _run(self, allowed: frozenset[str]) -> str:
        start = self.pos
        while self._peek() and self._peek() in allowed:
            self.pos += 1
        return self.text[start : self.pos]

    def _fail(self, what: str) -> ChallengeInvalid:
        return ChallengeInvalid(f"{what} at character {self.pos}")

    def challenges(self) -> list[Challenge]:
        out: list[Challenge] = []
        while True:
            self._skip(_OWS + ",")  # list separators and empty elements
            if not self._peek():
                return out
            scheme = self._run(_TCHAR)
            if not scheme:
                raise self._fail("expected an auth-scheme")
            out.append(self._rest_of(scheme))

    def _rest_of(self, scheme: str) -> Challenge:
        if self._peek() not in ("", ",", *_OWS):
            raise self._fail("expected a space after the auth-scheme")
        self._skip(_OWS)
        if self._peek() in ("", ","):
            return Challenge(scheme)
        start = self.pos
        token68 = self._run(_TOKEN68)
        if token68:
            token68 += self._run(frozenset("="))
            self._skip(_OWS)
            if self._peek() in ("", ","):
                return Challenge(scheme, {}, token68)
            self.pos = start  # not a token68 after all: auth-params
        return Challenge(scheme, self._params())

    def _params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        while True:
            name = self._run(_TCHAR).lower()
            if not name:
                raise self._fail("expected an auth-param name")
            self._skip(_OWS)
            if self._peek() != "=":
                raise self._fail("expected '=' after an auth-param name")
            self.pos += 1
            self._skip(_OWS)
            if name in params:
                raise self._fail(f"auth-param {name!r} given twice")
            params[name] = self._quoted() if self._peek() == '"' else self._token_value()
            if not self._next_param():
                return params

    def _token_value(self) -> str:
        value = self._run(_TCHAR)
        if not value:
            raise self._fail("expected a token or a quoted-string")
        return value

    def _quoted(self) -> str:
        self.pos += 1  # the opening quote
        out: list[str] = []
        while True:
            ch = self._peek()
            if not ch:
                raise self._fail("unterminated quoted-string")
            self.pos += 1
            if ch == '"':
                return "".join(out)
            if ch == "\\":
                ch = self._peek()
                if not ch:
                    raise self._fail("unterminated quoted-pair")
                self.pos += 1
            if not _text_char(ch):
                raise self._fail("a control character in a quoted-string")
            out.append(ch)

    def _next_param(self) -> bool:
        """After a parameter: whether another one of the same challenge follows (a
        comma, then ``name=``); False at the end or before the next challenge."""
        self._skip(_OWS)
        if not self._peek():
            return False
        if self._peek() != ",":
            raise self._fail("expected ',' between auth-params")
        after_comma = self.pos
        self._skip(_OWS + ",")
        if not self._peek():
            return False
        start = self.pos
        self._run(_TCHAR)
        self._skip(_OWS)
        is_param = self._peek() == "=" and self.pos > start
        self.pos = start if is_param else after_comma
        return is_param


def _text_char(ch: str) -> bool:
    """HTAB, SP, VCHAR or obs-text (anything past ASCII, as a server's bytes may decode)."""
    return ch == "\t" or (" " <= ch <= "~") or ch >= "\x80"
