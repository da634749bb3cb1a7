"""``GET /v2/_catalog``: lexical order, ``n``/``last`` pagination with a ``Link``,
and its scope."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import paths
from ingest.auth import Access, Identity
from ingest.digests import parse_digest
from ingest.http import catalog
from ingest.storage.base import StorageDriver
from tests.unit.fakes import sha256
from tests.unit.http.conftest import Env, EnvFactory, FakeAuth, assert_error

LINK = re.compile(r'<(/v2/_catalog\?[^>]+)>; rel="next"')
DIGEST = parse_digest(sha256(b"x"))

component = st.from_regex(r"[a-z0-9]{1,3}([._-][a-z0-9]{1,2})?", fullmatch=True)
repo_names = st.lists(component, min_size=1, max_size=3).map("/".join)


def make_repositories(driver: StorageDriver, names: set[str]) -> None:
    """Repositories as the core leaves them: a layer link, or only a tag."""
    for i, name in enumerate(sorted(names)):
        if i % 2:
            driver.put_content(paths.layer_link_path(name, DIGEST), str(DIGEST).encode())
        else:
            driver.put_content(paths.manifest_tag_link_path(name, "v1"), str(DIGEST).encode())


def page_through(env: Env, sizes: list[int | None]) -> list[str]:
    """Follow ``Link`` from the first page, with ``sizes[i]`` as the first page's ``n``
    (the rest follow the link as given, except where a later size overrides ``n``)."""
    seen: list[str] = []
    url: str | None = "/v2/_catalog"
    params = {"n": str(sizes[0])} if sizes[0] is not None else {}
    step = 0
    while url is not None:
        r = env.client.get(url, params=params)
        assert r.status_code == 200, r.text
        names = r.json()["repositories"]
        seen += names
        link = r.headers.get("link")
        if link is None:
            break
        m = LINK.fullmatch(link)
        assert m, link
        query = parse_qs(urlsplit(m.group(1)).query)
        assert query["last"] == [names[-1]]
        step += 1
        size = sizes[step % len(sizes)]
        url, params = "/v2/_catalog", {"last": query["last"][0], "n": query["n"][0]}
        if size is not None:
            params["n"] = str(size)
        assert step < 500
    return seen


def test_an_empty_registry_has_an_empty_catalog(env: Env) -> None:
    r = env.client.get("/v2/_catalog")
    assert r.status_code == 200
    assert r.json() == {"repositories": []}
    assert "link" not in r.headers


def test_pushed_repositories_are_listed_in_lexical_order(env: Env) -> None:
    for name in ("b", "a/c", "a-c", "a", "a/b/c"):
        env.push_blob(name, b"data")
    env.start("only/an/upload")  # an upload alone makes no repository
    r = env.client.get("/v2/_catalog")
    assert r.json() == {"repositories": ["a", "a-c", "a/b/c", "a/c", "b"]}


def test_a_link_points_at_the_next_page(env: Env) -> None:
    make_repositories(env.driver, {"a", "b/x", "c", "d"})
    r = env.client.get("/v2/_catalog", params={"n": "2"})
    assert r.json() == {"repositories": ["a", "b/x"]}
    assert r.headers["link"] == '</v2/_catalog?last=b%2Fx&n=2>; rel="next"'
    r = env.client.get("/v2/_catalog", params={"n": "2", "last": "b/x"})
    assert r.json() == {"repositories": ["c", "d"]}
    assert "link" not in r.headers  # nothing after d
    r = env.client.get("/v2/_catalog", params={"last": "d"})
    assert r.json() == {"repositories": []}


def test_n_zero_is_an_empty_page(env: Env) -> None:
    make_repositories(env.driver, {"a"})
    r = env.client.get("/v2/_catalog", params={"n": "0"})
    assert r.json() == {"repositories": []}
    assert "link" not in r.headers


@pytest.mark.parametrize("n", ["-1", "x", "1.5", "", " 3", "9" * 12, "٣"])
def test_a_malformed_n_is_refused(env: Env, n: str) -> None:
    r = env.client.get("/v2/_catalog", params={"n": n})
    if n == "":
        assert r.status_code == 200  # absent: the default page
        return
    detail = assert_error(r, 400, "UNSUPPORTED")
    assert detail == {"argument": "n", "reason": "malformed"}


def test_the_default_and_the_largest_page(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "DEFAULT_PAGE", 2)
    monkeypatch.setattr(catalog, "MAX_PAGE", 3)
    make_repositories(env.driver, {"a", "b", "c", "d", "e"})
    r = env.client.get("/v2/_catalog")
    assert r.json()["repositories"] == ["a", "b"]
    assert "n=2" in r.headers["link"]
    r = env.client.get("/v2/_catalog", params={"n": "1000000"})
    assert r.json()["repositories"] == ["a", "b", "c"]
    assert r.headers["link"] == '</v2/_catalog?last=c&n=3>; rel="next"'


def test_distributions_defaults() -> None:
    assert (catalog.DEFAULT_PAGE, catalog.MAX_PAGE) == (100, 1000)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    names=st.sets(repo_names, max_size=30),
    sizes=st.lists(st.one_of(st.none(), st.integers(1, 7)), min_size=1, max_size=4),
)
def test_paging_with_any_n_yields_every_repository_once_in_order(
    make_env: EnvFactory, names: set[str], sizes: list[int | None]
) -> None:
    env = make_env()
    make_repositories(env.driver, names)
    assert page_through(env, sizes) == sorted(names)


def test_the_catalog_needs_the_catalog_scope(make_env: EnvFactory) -> None:
    repo = Access("repository", "a", frozenset({"*"}))
    env = make_env(
        auth=FakeAuth(
            "Bearer",
            {
                "Bearer repo": Identity("alice", (repo,)),
                "Bearer catalog": Identity(
                    "admin", (Access("registry", "catalog", frozenset({"*"})),)
                ),
            },
        )
    )
    make_repositories(env.driver, {"a"})
    r = env.client.get("/v2/_catalog", headers={"Authorization": "Bearer repo"})
    assert_error(r, 401, "UNAUTHORIZED")
    assert 'scope="registry:catalog:*"' in r.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    r = env.client.get("/v2/_catalog", headers={"Authorization": "Bearer catalog"})
    assert r.json() == {"repositories": ["a"]}
