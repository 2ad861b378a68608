# -*- test-case-name: tests.cache.test_descriptors -*-
"""
The blob-descriptor cache the registry service reads through.

Read-through: a lookup that misses (or finds the backend down) loads from
storage and remembers the answer; only positive answers are kept, so a blob
pushed a moment ago is never hidden. Correctness rests on forgetting:

- Redis is shared, so a delete or a garbage collection anywhere forgets the
  entry for everyone (L{invalidate}, L{invalidate_repo_link}). While Redis is
  unreachable, lookups go to storage and forgets are kept in a pending list
  that is replayed before the cache is trusted again. A separate
  `regd garbage-collect` process is built `strict`: it refuses to delete a
  blob whose entry it cannot forget.
- Process memory is not shared, so the in-memory backend is re-validated on
  every lookup against a generation marker in storage (one small read in
  place of a link read plus a stat). Every delete and every blob removed by
  garbage collection writes a new marker, which empties every other
  process's memory cache on its next lookup.
"""

from __future__ import annotations

import os

from twisted.logger import Logger

from regd.cache.interfaces import CacheUnavailable, Descriptor
from regd.storage import paths
from regd.storage.interfaces import PathNotFound

log = Logger()

MAX_PENDING = 100_000


class StorageGeneration:
    """The storage-visible marker that tells process-local caches something was removed."""

    def __init__(self, driver):
        self._driver = driver

    async def current(self) -> bytes:
        try:
            return await self._driver.get_content(paths.CACHE_GENERATION)
        except PathNotFound:
            return b""

    async def bump(self) -> None:
        await self._driver.put_content(paths.CACHE_GENERATION, os.urandom(12).hex().encode("ascii"))


class BlobDescriptorCache:
    """
    C{backend}: an L{IDescriptorBackend}, or None for no caching at all (every
    lookup goes to storage). C{generation}: a L{StorageGeneration}, bumped on
    every forget; a non-shared backend is also validated against it.
    """

    def __init__(self, backend=None, generation: StorageGeneration | None = None, *, strict: bool = False):
        self.backend = backend
        self.generation = generation
        self.strict = strict
        self.error = ""            # the last backend failure, for /debug/health
        self._pending: list[tuple] = []
        self._replaying = False
        self._seen = None          # generation the in-memory entries were filled under
        self.hits = self.misses = self.failures = 0

    @property
    def kind(self) -> str:
        if self.backend is None:
            return "none"
        return "redis" if self.backend.shared else "inmemory"

    @property
    def degraded(self) -> bool:
        """True while a configured backend cannot be used (lookups go to storage)."""
        return self.backend is not None and (bool(self._pending) or self._replaying or not self.backend.available)

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        text = str(error) or type(error).__name__
        if text != self.error:
            log.warn("blob descriptor cache unavailable, using storage: {error}", error=text)
        self.error = text

    async def _usable(self) -> bool:
        """Whether the backend may be read now; replays pending forgets first."""
        backend = self.backend
        if backend is None or not backend.available:
            return False
        if self._replaying:
            return False
        if self._pending:
            pending, self._pending = self._pending, []
            self._replaying = True
            try:
                for done, (method, args) in enumerate(pending):
                    try:
                        await getattr(backend, method)(*args)
                    except Exception as e:
                        self._pending = pending[done:] + self._pending
                        self._failed(e)
                        return False
            finally:
                self._replaying = False
        if self.error:
            log.info("blob descriptor cache available again")
            self.error = ""
        return True

    async def _validate(self):
        """For a process-local backend: drop everything when the storage generation moved. Returns the token."""
        if self.backend.shared or self.generation is None:
            return None
        token = await self.generation.current()
        if token != self._seen:
            self.backend.clear()
            self._seen = token
        return token

    async def _read_through(self, lookup, load, remember):
        if not await self._usable():
            return await load()
        try:
            token = await self._validate()
            found = await lookup()
        except Exception as e:
            self._failed(e)
            return await load()
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        loaded = await load()
        # Not if the generation moved meanwhile: the load may have raced a delete.
        if loaded is not None and (token is None or token == self._seen):
            try:
                await remember(loaded)
            except Exception as e:
                self._failed(e)
        return loaded

    async def stored(self, digest, load) -> Descriptor | None:
        """The blob in the global store; C{load()} asks storage on a miss (None: absent)."""
        backend = self.backend
        return await self._read_through(lambda: backend.get(digest), load,
                                        lambda d: backend.put(d))

    async def linked(self, repository: str, digest, load) -> Descriptor | None:
        """The blob as C{repository} links it; C{load()} asks storage on a miss (None: not linked or absent)."""
        backend = self.backend
        return await self._read_through(lambda: backend.get_linked(repository, digest), load,
                                        lambda d: backend.put_linked(repository, d))

    async def invalidate(self, digest) -> None:
        """Forget a blob removed from the global store (garbage collection, fsck repair)."""
        await self._forget([("invalidate", (digest,))])

    async def invalidate_many(self, digests) -> None:
        """L{invalidate} for many blobs, with one new storage generation."""
        if digests:
            await self._forget([("invalidate", (d,)) for d in digests])

    async def invalidate_repo_link(self, repository: str, digest) -> None:
        """Forget that C{repository} links C{digest} (a blob delete)."""
        await self._forget([("invalidate_repo_link", (repository, digest))])

    async def _forget(self, operations: list[tuple[str, tuple]]) -> None:
        if self.generation is not None:
            await self.generation.bump()
        backend = self.backend
        if backend is None:
            return
        for done, (method, args) in enumerate(operations):
            try:
                if not backend.available:
                    raise CacheUnavailable("not connected")
                await getattr(backend, method)(*args)
            except Exception as e:
                self._failed(e)
                if self.strict:
                    raise CacheUnavailable(f"cannot forget {args[-1]} in the blob descriptor cache: {e}") from None
                left = operations[done:]
                if len(self._pending) + len(left) <= MAX_PENDING:
                    self._pending.extend(left)
                else:
                    log.error("blob descriptor cache: too many forgets pending; {count} dropped", count=len(left))
                return

    async def ping(self) -> None:
        """For the health check: raise while the configured backend cannot be used."""
        if self.backend is None:
            return
        wait = getattr(self.backend, "wait_connected", None)
        if wait is not None and not self.backend.available:
            try:
                await wait(0.5)  # just started, or reconnecting: give the pool a moment
            except Exception as e:
                self._failed(e)
                raise
        if not await self._usable():
            raise CacheUnavailable(self.error or "not connected")
        try:
            await self.backend.ping()
        except Exception as e:
            self._failed(e)
            raise

    def close(self):
        return self.backend.close() if self.backend is not None else None
