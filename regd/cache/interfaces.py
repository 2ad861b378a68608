# -*- test-case-name: tests.cache.test_descriptors -*-
"""
What a blob-descriptor cache stores and the backend seam under it.

A descriptor is immutable for a digest (the bytes never change), so the only
way an entry goes wrong is by outliving what it describes: a blob removed by
garbage collection, or a repository link removed by a delete. Backends are
therefore told to forget, never to update.
"""

from __future__ import annotations

import attrs
from zope.interface import Attribute, Interface

from regd.oci.digest import Digest


class CacheUnavailable(Exception):
    """The backend cannot answer now (Redis down, timed out); callers fall through to storage."""


@attrs.frozen
class Descriptor:
    digest: Digest
    size: int
    media_type: str = "application/octet-stream"


class IDescriptorBackend(Interface):
    """
    Where descriptors are kept. Every method is a coroutine and may raise
    L{CacheUnavailable} (or any error, which counts the same).
    """

    available = Attribute("False when the backend is known to be unreachable; checked before each use.")
    shared = Attribute("True when every process sees the same entries (Redis), False for process memory.")

    async def get(digest: Digest):
        """The global descriptor of C{digest}, or None."""

    async def put(descriptor: Descriptor):
        """Remember the global descriptor."""

    async def get_linked(repository: str, digest: Digest):
        """The descriptor if C{repository} is known to link C{digest} and it is globally known, or None."""

    async def put_linked(repository: str, descriptor: Descriptor):
        """Remember that C{repository} links the blob, and its global descriptor."""

    async def invalidate(digest: Digest):
        """Forget the global descriptor (every repository's entry for it then misses)."""

    async def invalidate_repo_link(repository: str, digest: Digest):
        """Forget that C{repository} links C{digest}."""

    async def ping():
        """Raise unless the backend answers."""

    def close():
        """Deferred or None: release connections."""
