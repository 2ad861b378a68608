# -*- test-case-name: tests.index.test_index -*-
"""
What the index answers with: frozen values, safe to hand to templates and
JSON encoders. Times are seconds since the epoch (UTC); strings are as
pushed, never escaped here (escaping belongs to whoever renders them).
"""

from __future__ import annotations

from typing import Generic, TypeVar

import attrs

T = TypeVar("T")

DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 100
MAX_TERM = 255


def organization_of(name: str) -> str:
    """The first path component of a nested name (C{library/ubuntu} -> C{library}); "" for a flat name."""
    head, slash, _ = name.partition("/")
    return head if slash else ""


@attrs.frozen
class Page(Generic[T]):
    """One page of results; C{total} counts every item the caller may see."""

    items: tuple
    total: int
    page: int
    per_page: int

    @property
    def num_pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


@attrs.frozen
class RepositoryRow:
    """A repository in lists and search results."""

    name: str
    organization: str
    description: str  # the admin-set one if any, else the image's
    pushed_at: float | None  # newest tag push; None: no tag
    pushed_by: str | None  # actor of that push, when auth named one
    tag_count: int


@attrs.frozen
class Organization:
    name: str
    repositories: int  # how many of its repositories the caller may pull


@attrs.frozen
class TagRow:
    tag: str
    digest: str
    media_type: str
    size: int  # compressed bytes summed over layers (an index: over its platforms' distinct layers)
    platforms: tuple[str, ...]  # "os/arch[/variant]" of an index's manifests; () for a single image
    pushed_at: float | None
    pushed_by: str | None


@attrs.frozen
class RepositorySummary:
    """A repository's page: its row, where its description came from, and one page of tags (newest first)."""

    name: str
    organization: str
    description: str  # effective: admin_description if set, else image_description
    image_description: str  # org.opencontainers.image.description of the `latest` tag (else the first tag)
    admin_description: str | None
    pushed_at: float | None
    pushed_by: str | None
    tag_count: int
    tags: Page  # Page[TagRow]


@attrs.frozen
class ActivityDay:
    day: str  # YYYY-MM-DD, UTC
    pulls: int
    pushes: int
