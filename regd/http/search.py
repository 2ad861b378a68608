# -*- test-case-name: tests.http.test_search -*-
"""
The Docker engine's search endpoints for a private registry: C{/v1/_ping}
(which says the registry is standalone) and C{/v1/search?q=&n=&page=},
answered in the JSON shape the engine's client decodes.
"""

from __future__ import annotations

from regd.http.responses import query, respond_json
from regd.oci.errors import PaginationNumberInvalid, RegistryError
from regd.registry.search import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_TERM

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
        if len(term) > MAX_TERM or any(ord(c) < 0x20 for c in term):
            raise SearchTermInvalid(detail={"max_length": MAX_TERM})
        size = _number(request, "n", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = _number(request, "page", 1, _MAX_PAGE_NUMBER)
        found = await self.registry.search.search(term, page, size, visible)
        results = [{"name": name, "description": await self.registry.search.description(name),
                    "star_count": 0, "is_official": False, "is_automated": False, "is_trusted": False}
                   for name in found.names]
        return respond_json(request, 200, {
            "query": term, "num_results": found.total, "num_pages": found.num_pages,
            "page": found.page, "page_size": found.page_size, "results": results})
