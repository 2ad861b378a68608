# -*- test-case-name: tests.registry.test_listing -*-
"""
Tag lists and the repository catalog, with the spec's n/last pagination:
results are lexically sorted and a page starts strictly after C{last}.
"""

from __future__ import annotations

import attrs

from regd.oci.errors import NameUnknown, PaginationNumberInvalid
from regd.oci.reference import is_valid_name, is_valid_tag
from regd.registry import links
from regd.storage import paths

MAX_PAGE = 10000


@attrs.frozen
class Page:
    items: tuple[str, ...]
    # Last item of this page when more follow, else None.
    next_last: str | None


def paginate(items: list[str], n: int | None, last: str | None) -> Page:
    if n is not None and (n < 0 or n > MAX_PAGE):
        raise PaginationNumberInvalid(detail={"n": n, "max": MAX_PAGE})
    ordered = sorted(items)
    if last:
        ordered = [i for i in ordered if i > last]
    if n is None:
        return Page(tuple(ordered), None)
    page = ordered[:n]
    more = len(ordered) > n and n > 0
    return Page(tuple(page), page[-1] if more else None)


class ListingService:
    def __init__(self, driver):
        self._driver = driver

    async def repository_exists(self, name: str) -> bool:
        return await links.exists(self._driver, paths.manifests(name))

    async def tags(self, name: str, n: int | None, last: str | None) -> Page:
        """
        Tags that can be fetched: a tag directory whose current link was
        never finished (a crash mid-push) or names bytes no longer stored is
        left out, checked only as far as the page reaches.
        """
        if not await self.repository_exists(name):
            raise NameUnknown(detail={"name": name})
        names = [t for t in await links.list_or_empty(self._driver, paths.tags(name)) if is_valid_tag(t)]
        if n is not None and (n < 0 or n > MAX_PAGE):
            raise PaginationNumberInvalid(detail={"n": n, "max": MAX_PAGE})
        candidates = sorted(t for t in names if not last or t > last)
        found = []
        for tag in candidates:
            if n is not None and len(found) > n:
                break
            if await self._fetchable(name, tag):
                found.append(tag)
        return paginate(found, n, None)

    async def _fetchable(self, name: str, tag: str) -> bool:
        digest = await links.read_link(self._driver, paths.tag_current_link(name, tag))
        if digest is None:
            return False
        # Bytes a running collection has condemned come back on the first fetch (BlobService.reclaim).
        return await links.exists(self._driver, paths.blob_data(digest)) or \
            await links.exists(self._driver, paths.condemned_blob(digest))

    async def catalog(self, n: int | None, last: str | None, visible=lambda name: True) -> Page:
        """Repositories the caller may see (C{visible}), one page of them."""
        names = await self.repositories()
        return paginate([r for r in names if visible(r)], n, last)

    async def repositories(self) -> list[str]:
        return [r for r in await self._driver.walk_repositories(paths.REPOSITORIES) if is_valid_name(r)]
