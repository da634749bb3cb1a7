"""Repository names follow the distribution reference grammar."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import paths
from ingest.errors import NameInvalid
from ingest.names import MAX_NAME_LENGTH, validate_name
from ingest.storage.base import check_path

VALID = [
    "a",
    "0",
    "library/ubuntu",
    "a.b_c__d-e---f/x9",
    "my-org/team.tools/image_v2",
    "a" * MAX_NAME_LENGTH,
    "/".join(["ab"] * 85),
]

INVALID = [
    "",
    "A",
    "Library/ubuntu",
    "-a",
    "a-",
    "_a",
    "a_",
    ".a",
    "a.",
    "a//b",
    "/a",
    "a/",
    "a..b",
    "a___b",
    "a._b",
    "a/../b",
    "..",
    ".",
    "a/./b",
    "a_/b",
    "a" * (MAX_NAME_LENGTH + 1),
    "ubüntu",
    "a\n",
    "a b",
    "a:b",
    "a\\b",
    "a\x00",
]


@pytest.mark.parametrize("name", VALID)
def test_a_name_in_the_grammar_is_returned_unchanged(name: str) -> None:
    assert len(name) <= MAX_NAME_LENGTH
    assert validate_name(name) == name


@pytest.mark.parametrize("name", INVALID)
def test_a_name_outside_the_grammar_raises_name_invalid(name: str) -> None:
    with pytest.raises(NameInvalid) as info:
        validate_name(name)
    assert info.value.code == "NAME_INVALID"
    assert "name" in info.value.detail


def test_an_overlong_name_reports_its_length_and_clips_the_echo() -> None:
    with pytest.raises(NameInvalid) as info:
        validate_name("a" * 1000)
    assert info.value.detail["length"] == 1000
    assert len(info.value.detail["name"]) < 100


_NAME_ALPHABET = string.ascii_lowercase[:4] + "09._-/" + "A"


@st.composite
def grammar_names(draw: st.DrawFn) -> str:
    alnum = st.text(alphabet="abz019", min_size=1, max_size=6)
    sep = st.sampled_from([".", "_", "__", "-", "--", "---"])

    def component() -> str:
        first = draw(alnum)
        rest = draw(st.lists(st.tuples(sep, alnum), max_size=3))
        return first + "".join(s + a for s, a in rest)

    return "/".join(component() for _ in range(draw(st.integers(1, 4))))


@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(
        st.text(max_size=60), st.text(alphabet=_NAME_ALPHABET, max_size=60), grammar_names()
    )
)
def test_any_text_is_rejected_or_maps_to_a_safe_layers_path(name: str) -> None:
    try:
        validate_name(name)
    except NameInvalid:
        return
    layers = paths.layers_dir(name)
    assert check_path(layers) == layers
    assert ".." not in layers
    assert layers == f"/repositories/{name}/_layers"
    assert all(part not in ("", ".", "..") for part in name.split("/"))


@settings(max_examples=100, deadline=None)
@given(name=grammar_names())
def test_every_name_built_from_the_grammar_is_valid(name: str) -> None:
    assert validate_name(name) == name
