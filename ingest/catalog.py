"""The catalog: the names of every repository, in lexical order, a page at a time.

A repository is a directory below ``/repositories`` that holds layer links or
manifests (:func:`ingest.paths.repository_content_dirs`). Names nest, so one
directory can be a repository and the parent of others (``library`` and
``library/ubuntu``).

A page is found by walking directory listings only (never a link, a blob or any
other object's content) and keeps at most about ``2 * n`` names in memory. The walk
skips every subtree that can hold no name of the page: every name below the
directory of ``P`` starts with ``P + "/"``, so a subtree is skipped when ``P`` sorts
before ``last`` without being a prefix of it (all its names sort before ``last``
too), or, once ``n`` names are in hand, when ``P`` sorts after the largest of them.
A page therefore costs about the listings on the way to ``last`` and on the way
through the ``n`` names, not a walk of every repository.

Order is Python's string order of the whole name (code points: ``a-b`` before
``a/b`` before ``a_b``), the same order ``last`` is compared in, so paging with any
``n`` yields every repository exactly once.
"""

from __future__ import annotations

from ingest import paths
from ingest.storage.base import PathNotFound, StorageDriver

__all__ = ["repositories"]


def repositories(driver: StorageDriver, n: int, last: str | None = None) -> list[str]:
    """Up to ``n`` repository names that sort after ``last`` (all, without it), in
    lexical order. Repositories created or removed during the walk may or may not
    be included."""
    if n <= 0:
        return []
    after = last or ""
    found: list[str] = []
    bound: str | None = None  # the n-th smallest name found so far, once n are found

    def keep(name: str) -> None:
        nonlocal bound
        found.append(name)
        if len(found) >= 2 * n or (bound is None and len(found) == n):
            found.sort()
            del found[n:]
            bound = found[-1]

    stack = [paths.repositories_root()]
    while stack:
        directory = stack.pop()
        name = paths.parse_repository_dir(directory)
        if name is not None and bound is not None and name > bound:
            continue  # the bound tightened since it was queued
        try:
            children = driver.list(directory)
        except PathNotFound:
            continue  # removed meanwhile, or a stray file
        if name is not None and name > after:
            content = paths.repository_content_dirs(name)
            if any(child in content for child in children):
                keep(name)
        nested: list[str] = []
        for child in children:  # sorted: once one sorts past the bound, all the rest do
            sub = paths.parse_repository_dir(child)
            if sub is None:
                continue  # _layers, _manifests, a temporary file, anything foreign
            if bound is not None and sub > bound:
                break
            if sub < after and not after.startswith(sub):
                continue
            nested.append(child)
        stack.extend(reversed(nested))  # visit in order: the bound tightens sooner
    found.sort()
    return found[:n]
