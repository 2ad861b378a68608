# -*- test-case-name: tests.http.test_search -*-
"""
The Docker engine's search endpoints for a private registry: C{/v1/_ping}
(which says the registry is standalone) and C{/v1/search?q=&n=&page=},
answered in the JSON shape the engine's client decodes, from the
repository index (regd.index) alone: no storage walk per query.
"""

from __future__ import annotations

from regd.http.responses import query, respond_json
from regd.index.model import DEFAULT_PER_PAGE, MAX_PER_PAGE, MAX_TERM
from regd.oci.errors import PaginationNumberInvalid, RegistryError

_MAX_PAGE_NUMBER = 100000


class SearchTermInvalid(RegistryError):
    code = "SEARCH_TERM_INVALID"
    status = 400
    message = "invalid search term"


def _number(request, name: str, default: int, largest: int) -> int:
    raw = query(request, name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise PaginationNumberInvalid(detail={name: raw[:32]})
    # Clamp rather than refuse: the engine's own --limit already stays in range.
    return min(max(int(raw), 1), largest)


class SearchHandler:
    def __init__(self, registry):
        self.registry = registry

    def ping(self, request) -> bytes:
        return respond_json(request, 200, {"standalone": True},
                            headers={"X-Docker-Registry-Standalone": "true",
                                     "X-Docker-Registry-Version": "0.6.0"})

    async def search(self, request, visible) -> bytes:
        term = query(request, "q") or ""
        if len(term) > MAX_TERM or any(ord(c) < 0x20 or ord(c) == 0x7f for c in term):
            raise SearchTermInvalid(detail={"max_length": MAX_TERM})
        size = _number(request, "n", DEFAULT_PER_PAGE, MAX_PER_PAGE)
        page = _number(request, "page", 1, _MAX_PAGE_NUMBER)
        found = await self.registry.index.search(term, page, size, visible)
        results = [{"name": row.name, "description": row.description,
                    "star_count": 0, "is_official": False, "is_automated": False, "is_trusted": False}
                   for row in found.items]
        return respond_json(request, 200, {
            "query": term, "num_results": found.total, "num_pages": found.num_pages,
            "page": found.page, "page_size": found.per_page, "results": results})
