# -*- test-case-name: tests.registry.test_search -*-
"""
The ranking docker search and the web search promise, written as plain
Python over a list of names: the repository index (regd.index.store)
implements the same order in SQL, and its tests check it against this.
"""

from __future__ import annotations

import attrs


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


def name_score(lowered: str, last: str, term: str) -> int:
    """
    How well a lower-cased name (C{last}: its last component) that contains
    C{term} matches it, best first: the whole name, the last component, a
    prefix of either, anywhere. Shared by this walk and the repository index.
    """
    if lowered == term:
        return 0
    if last == term:
        return 1
    if lowered.startswith(term):
        return 2
    if last.startswith(term):
        return 3
    return 4


def rank(name: str, term: str) -> tuple[int, str] | None:
    """Sort key for C{name} against a lower-cased C{term}, or None when it does not match."""
    lowered = name.lower()
    if term not in lowered:
        return None
    return (name_score(lowered, lowered.rsplit("/", 1)[-1], term), name)


def search(names, term: str, page: int, page_size: int, visible=lambda name: True) -> SearchPage:
    """One page of the names matching C{term}; C{page} counts from 1."""
    needle = term.lower()
    keyed = [k for k in (rank(n, needle) for n in names if visible(n)) if k is not None]
    keyed.sort()
    start = (page - 1) * page_size
    chosen = tuple(name for _, name in keyed[start:start + page_size])
    return SearchPage(term, page, page_size, len(keyed), chosen)
