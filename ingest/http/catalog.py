"""``GET /v2/_catalog``: the repository names, a page at a time.

``n`` is the page size: :data:`DEFAULT_PAGE` when absent, at most :data:`MAX_PAGE`
(a larger ``n`` is served as :data:`MAX_PAGE`, and the ``Link`` says so, rather than
refused as distribution does: a client that follows ``Link`` gets everything either
way). ``n=0`` is an empty page. ``last`` is the last name of the previous page;
names come in lexical order. When more names follow, the response carries
``Link: </v2/_catalog?last=<last name>&n=<n>>; rel="next"``.
"""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ingest.errors import ArgumentInvalid
from ingest.http.common import ingest

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "list_repositories"]

#: Names per page when the client does not say (distribution's default).
DEFAULT_PAGE = 100
#: The most names one page holds (distribution's default ``catalog.maxentries``).
MAX_PAGE = 1000
#: ``last`` longer than any repository name cannot name one: refused, not walked.
_MAX_LAST = 4096


def _page_size(raw: str | None) -> int:
    if not raw:  # absent or empty, as distribution reads it
        return DEFAULT_PAGE
    if not (raw.isascii() and raw.isdecimal()) or len(raw) > 9:
        raise ArgumentInvalid(
            "n must be a non-negative integer", {"argument": "n", "reason": "malformed"}
        )
    return min(int(raw), MAX_PAGE)


async def list_repositories(request: Request) -> Response:
    params = request.query_params
    n = _page_size(params.get("n"))
    last = params.get("last") or None
    if last is not None and len(last) > _MAX_LAST:
        raise ArgumentInvalid("last is too long", {"argument": "last", "reason": "range"})
    # One name more than the page: whether another page follows.
    names = await run_in_threadpool(ingest(request).repositories, n + 1, last) if n else []
    headers: dict[str, str] = {}
    if len(names) > n:
        names = names[:n]
        query = urlencode({"last": names[-1], "n": n})
        headers["Link"] = f'</v2/_catalog?{query}>; rel="next"'
    return JSONResponse({"repositories": names}, headers=headers)
