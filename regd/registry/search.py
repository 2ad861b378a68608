# -*- test-case-name: tests.registry.test_search -*-
"""
Repository search for the Docker engine's v1 search call: a case-insensitive
substring match on repository names, best matches first, one page at a time.
Only names the caller may pull (C{visible}) are ever considered.
"""

from __future__ import annotations

import json

import attrs

from regd.oci.digest import Digest
from regd.oci.errors import RegistryError
from regd.oci.reference import is_valid_tag
from regd.registry import links
from regd.storage import paths
from regd.storage.interfaces import StorageError

DESCRIPTION_KEY = "org.opencontainers.image.description"
# Image configs are small; a bigger one is not read just for a label.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_TERM = 255
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 25


@attrs.frozen
class SearchPage:
    query: str
    page: int
    page_size: int
    total: int
    names: tuple[str, ...]

    @property
    def num_pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


def rank(name: str, term: str) -> tuple[int, str] | None:
    """Sort key for C{name} against a lower-cased C{term}, or None when it does not match."""
    lowered = name.lower()
    if term not in lowered:
        return None
    last = lowered.rsplit("/", 1)[-1]
    if lowered == term:
        score = 0
    elif last == term:
        score = 1
    elif lowered.startswith(term):
        score = 2
    elif last.startswith(term):
        score = 3
    else:
        score = 4
    return (score, name)


def search(names, term: str, page: int, page_size: int, visible=lambda name: True) -> SearchPage:
    """One page of the names matching C{term}; C{page} counts from 1."""
    needle = term.lower()
    keyed = [k for k in (rank(n, needle) for n in names if visible(n)) if k is not None]
    keyed.sort()
    start = (page - 1) * page_size
    chosen = tuple(name for _, name in keyed[start:start + page_size])
    return SearchPage(term, page, page_size, len(keyed), chosen)


def _text(value) -> str:
    return value if isinstance(value, str) else ""


class SearchService:
    def __init__(self, driver, listing, manifests):
        self._driver = driver
        self._listing = listing
        self._manifests = manifests

    async def search(self, term: str, page: int, page_size: int, visible=lambda name: True) -> SearchPage:
        return search(await self._listing.repositories(), term, page, page_size, visible)

    async def description(self, name: str) -> str:
        """
        The image description of C{name}'s C{latest} tag (else its first tag):
        the manifest's annotation, else the image config's label; "" if none.
        """
        try:
            tags = sorted(t for t in await links.list_or_empty(self._driver, paths.tags(name)) if is_valid_tag(t))
            if not tags:
                return ""
            digest = await self._manifests.resolve(name, "latest" if "latest" in tags else tags[0])
            document = json.loads((await self._manifests.load(digest)).body)
            if not isinstance(document, dict):
                return ""
            annotations = document.get("annotations")
            if isinstance(annotations, dict) and _text(annotations.get(DESCRIPTION_KEY)):
                return annotations[DESCRIPTION_KEY]
            config = document.get("config")
            if not isinstance(config, dict) or not isinstance(config.get("size"), int) \
                    or config["size"] > MAX_CONFIG_BYTES:
                return ""
            body = await self._driver.get_content(paths.blob_data(Digest.parse(config.get("digest"))))
            labels = (json.loads(body).get("config") or {}).get("Labels") or {}
            return _text(labels.get(DESCRIPTION_KEY)) if isinstance(labels, dict) else ""
        except (RegistryError, StorageError, ValueError, TypeError, AttributeError):
            return ""
