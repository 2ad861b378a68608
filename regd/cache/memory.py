# -*- test-case-name: tests.cache.test_memory -*-
"""
The in-process backend: a bounded LRU map in this process's memory.

It is not shared, so on its own it could outlive a delete made by another
instance or by a separate `regd garbage-collect` process; the
L{regd.cache.descriptors.BlobDescriptorCache} in front of it re-validates it
against a generation marker kept in storage (see there).
"""

from __future__ import annotations

from collections import OrderedDict

from zope.interface import implementer

from regd.cache.interfaces import Descriptor, IDescriptorBackend
from regd.oci.digest import Digest

DEFAULT_SIZE = 10000


@implementer(IDescriptorBackend)
class InMemoryBackend:
    available = True
    shared = False

    def __init__(self, max_entries: int = DEFAULT_SIZE):
        self.max_entries = max(1, max_entries)
        self._global: OrderedDict[Digest, Descriptor] = OrderedDict()
        self._linked: OrderedDict[tuple[str, Digest], None] = OrderedDict()

    def _bound(self, table: OrderedDict) -> None:
        while len(table) > self.max_entries:
            table.popitem(last=False)

    async def get(self, digest):
        found = self._global.get(digest)
        if found is not None:
            self._global.move_to_end(digest)
        return found

    async def put(self, descriptor: Descriptor):
        self._global[descriptor.digest] = descriptor
        self._global.move_to_end(descriptor.digest)
        self._bound(self._global)

    async def get_linked(self, repository, digest):
        key = (repository, digest)
        if key not in self._linked:
            return None
        self._linked.move_to_end(key)
        return await self.get(digest)

    async def put_linked(self, repository, descriptor: Descriptor):
        await self.put(descriptor)
        key = (repository, descriptor.digest)
        self._linked[key] = None
        self._linked.move_to_end(key)
        self._bound(self._linked)

    async def invalidate(self, digest):
        self._global.pop(digest, None)

    async def invalidate_repo_link(self, repository, digest):
        self._linked.pop((repository, digest), None)

    async def ping(self):
        return None

    def clear(self) -> None:
        self._global.clear()
        self._linked.clear()

    def __len__(self) -> int:
        return len(self._global)

    def close(self):
        return None
