"""``WWW-Authenticate`` as the registry client reads it (``parse_challenges``): what the
frontend's modes write comes back intact, any valid challenge list round-trips, and
whatever a server sends, the parser answers with challenges or ChallengeInvalid."""

from __future__ import annotations

import string

import bcrypt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingest.auth import Access
from ingest.auth.headers import (
    MAX_CHALLENGE,
    Challenge,
    ChallengeInvalid,
    parse_challenges,
    quoted,
)
from ingest.auth.htpasswd import HtpasswdAuth
from ingest.auth.token import TokenAuth
from tests.support.tokens import TestIssuer

TCHAR = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
TOKEN68 = "-._~+/" + string.digits + string.ascii_letters

tokens = st.text(alphabet=TCHAR, min_size=1, max_size=12)
#: What a quoted-string can carry once ``quoted`` has escaped it: HTAB, SP, VCHAR, obs-text.
texts = st.text(
    alphabet=st.just("\t")
    | st.characters(min_codepoint=0x20, max_codepoint=0x7E)
    | st.characters(min_codepoint=0x80, max_codepoint=0xFF),
    max_size=40,
)


@st.composite
def challenges(draw: st.DrawFn) -> Challenge:
    scheme = draw(tokens)
    if draw(st.integers(0, 4)) == 0:
        body = draw(st.text(alphabet=TOKEN68, min_size=1, max_size=20))
        return Challenge(scheme, {}, body + "=" * draw(st.integers(0, 2)))
    names = draw(st.lists(tokens.map(str.lower), unique=True, max_size=4))
    return Challenge(scheme, {name: draw(texts) for name in names})


def render(challenge: Challenge, as_tokens: bool, spaces: str) -> str:
    """``challenge`` as a server writes it: values quoted (or as bare tokens, when
    ``as_tokens`` and they are tokens), ``spaces`` around the commas and equals signs."""
    if challenge.token68 is not None:
        return f"{challenge.scheme} {challenge.token68}"
    if not challenge.params:
        return challenge.scheme
    params = []
    for name, value in challenge.params.items():
        bare = as_tokens and value and all(c in TCHAR for c in value)
        params.append(f"{name}{spaces}={spaces}{value if bare else quoted(value)}")
    return f"{challenge.scheme} " + f"{spaces},{spaces}".join(params)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(challenges(), min_size=1, max_size=4),
    st.booleans(),
    st.sampled_from(["", " ", "\t", "  "]),
)
def test_any_valid_challenge_list_round_trips(
    expected: list[Challenge], as_tokens: bool, spaces: str
) -> None:
    value = f"{spaces},{spaces}".join(render(c, as_tokens, spaces) for c in expected)
    assert parse_challenges(value) == expected


@settings(max_examples=2000, deadline=None)
@given(
    st.text(max_size=200)
    | st.text(alphabet=TCHAR + ' ="\\,\t', max_size=120)
    | st.lists(st.sampled_from(["Bearer", " ", "realm", "=", '"', "\\", ",", "a", "x=="])).map(
        "".join
    )
)
@example('Bearer realm="unterminated')
@example('Bearer realm="a\\')
@example("Bearer realm")
@example("Bearer realm=")
@example("Basic=x")
@example('Bearer realm="a" scope="b"')
@example('Bearer realm="a", realm="b"')
@example('Bearer realm="\x00"')
@example(",,,")
def test_garbage_is_a_list_of_challenges_or_challenge_invalid(value: str) -> None:
    try:
        parsed = parse_challenges(value)
    except ChallengeInvalid:
        return
    assert all(isinstance(c, Challenge) and c.scheme for c in parsed)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Empty list elements are skipped (RFC 9110 section 5.6.1).
        (" , ,", []),
        ("Basic", [Challenge("Basic")]),
        # Names are case-insensitive (lower-cased), schemes kept as sent.
        (
            'BASIC Realm="r", CharSet=UTF-8',
            [Challenge("BASIC", {"realm": "r", "charset": "UTF-8"})],
        ),
        (
            "Negotiate a87421000492aa874209af8bc028==",
            [Challenge("Negotiate", {}, "a87421000492aa874209af8bc028==")],
        ),
        # Two challenges in one value; an empty quoted value; escapes.
        (
            'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
            [
                Challenge("Newauth", {"realm": "apps", "type": "1", "title": 'Login to "apps"'}),
                Challenge("Basic", {"realm": "simple"}),
            ],
        ),
        (
            'Bearer realm="", error=invalid_token',
            [Challenge("Bearer", {"realm": "", "error": "invalid_token"})],
        ),
    ],
)
def test_examples(value: str, expected: list[Challenge]) -> None:
    assert parse_challenges(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        'Bearer realm="a", realm="b"',  # a parameter twice: which scope would count?
        'Bearer realm="a" service="b"',  # no comma between parameters
        'Bearer realm="a\x01"',  # a control character
        'Bearer realm="open',
        "Bearer =x",
        'Bearer realm="a", ="b"',
        "Basic=x",
    ],
)
def test_malformed_values_are_challenge_invalid(value: str) -> None:
    with pytest.raises(ChallengeInvalid):
        parse_challenges(value)


def test_an_overlong_value_is_refused_unread() -> None:
    with pytest.raises(ChallengeInvalid, match="longer than"):
        parse_challenges("Basic realm=" + "a" * MAX_CHALLENGE)


@pytest.fixture(scope="module")
def modes(tmp_path_factory: pytest.TempPathFactory) -> tuple[HtpasswdAuth, TokenAuth]:
    root = tmp_path_factory.mktemp("modes")
    htpasswd = root / "htpasswd"
    htpasswd.write_bytes(b"alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)) + b"\n")
    certs = root / "certs.pem"
    certs.write_text(TestIssuer("ec").pem_bundle())
    return HtpasswdAuth(str(htpasswd), "r"), TokenAuth("https://t", "s", "i", str(certs))


@given(
    realm=texts,
    service=texts,
    names=st.lists(st.text(alphabet=string.ascii_lowercase + "/._-:", min_size=1), max_size=3),
    error=st.none() | st.sampled_from(["invalid_token", "insufficient_scope"]),
)
@settings(max_examples=200, deadline=None)
def test_the_frontends_own_challenges_parse_back(
    modes: tuple[HtpasswdAuth, TokenAuth],
    realm: str,
    service: str,
    names: list[str],
    error: str | None,
) -> None:
    htpasswd, token = modes
    htpasswd.realm, token.realm, token.service = realm, realm, service
    wanted = [Access("repository", n, frozenset({"pull", "push"})) for n in names]
    assert parse_challenges(htpasswd.challenge(wanted)) == [
        Challenge("Basic", {"realm": realm, "charset": "UTF-8"})
    ]
    [challenge] = parse_challenges(token.challenge(wanted, error))
    assert challenge.scheme == "Bearer"
    expected = {"realm": realm, "service": service}
    if wanted:
        expected["scope"] = " ".join(dict.fromkeys(f"repository:{n}:pull,push" for n in names))
    if error:
        expected["error"] = error
    assert challenge.params == expected
