"""The blob-descriptor cache in front of storage: read-through, forgetting, and many processes on one storage."""

from __future__ import annotations

import os
import time

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from regd.cache.descriptors import BlobDescriptorCache, StorageGeneration
from regd.cache.interfaces import CacheUnavailable, Descriptor
from regd.cache.memory import InMemoryBackend
from regd.oci.digest import Digest
from regd.oci.errors import BlobUnknown
from regd.registry.context import RequestContext
from regd.registry.gc import GarbageCollector
from regd.registry.service import Registry
from regd.storage import paths
from regd.storage.filesystem import FilesystemDriver
from regd.storage.threads import inline_runner

CTX = RequestContext()


class CountingDriver:
    """A filesystem driver that counts reads of each path (to see which lookups storage answered)."""

    def __init__(self, driver):
        self._driver = driver
        self.reads: list[str] = []

    def get_content(self, path):
        self.reads.append(path)
        return self._driver.get_content(path)

    def stat(self, path):
        self.reads.append(path)
        return self._driver.stat(path)

    def __getattr__(self, name):
        return getattr(self._driver, name)


class FlakyBackend(InMemoryBackend):
    """An in-memory backend that can be switched off, as Redis going away; shared like Redis."""

    shared = True

    def __init__(self):
        super().__init__()
        self.up = True

    @property
    def available(self):
        return self.up

    async def get_linked(self, repository, digest):
        if not self.up:
            raise CacheUnavailable("down")
        return await super().get_linked(repository, digest)

    async def invalidate(self, digest):
        if not self.up:
            raise CacheUnavailable("down")
        await super().invalidate(digest)

    async def invalidate_repo_link(self, repository, digest):
        if not self.up:
            raise CacheUnavailable("down")
        await super().invalidate_repo_link(repository, digest)


class Instance:
    """One regd process's registry over the shared root, with its own in-memory cache."""

    def __init__(self, root: str, backend=None):
        self.driver = CountingDriver(FilesystemDriver(root, inline_runner))
        self.cache = BlobDescriptorCache(backend if backend is not None else InMemoryBackend(),
                                         StorageGeneration(self.driver))
        self.registry = Registry(self.driver, WallClock(), delete_enabled=True, cache=self.cache)


class WallClock:
    def seconds(self) -> float:
        return time.time()


class DescriptorCacheTests(SynchronousTestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.a = Instance(self.root)
        self.b = Instance(self.root)

    def run_(self, coroutine):
        return self.successResultOf(defer.ensureDeferred(coroutine))

    def push(self, instance, name: str, data: bytes) -> Digest:
        digest = Digest.of(data)
        uploads = instance.registry.uploads
        self.run_(uploads.put_whole(name, digest, uploads.spool_from_bytes(data), CTX))
        return digest

    def stat(self, instance, name, digest):
        return self.run_(instance.registry.blobs.stat(name, digest))

    def test_a_hit_skips_the_link_read_and_the_stat(self):
        digest = self.push(self.a, "app", b"layer")
        self.a.driver.reads.clear()
        self.assertEqual(self.stat(self.a, "app", digest).size, 5)
        first = list(self.a.driver.reads)
        self.assertIn(paths.layer_link("app", digest), first)
        self.assertIn(paths.blob_data(digest), first)
        self.a.driver.reads.clear()
        self.assertEqual(self.stat(self.a, "app", digest).size, 5)
        # Only the generation marker is read: one small read instead of a link read and a stat.
        self.assertEqual(self.a.driver.reads, [paths.CACHE_GENERATION])
        self.assertEqual((self.a.cache.hits, self.a.cache.misses), (1, 1))

    def test_a_blob_only_in_another_repository_is_unknown(self):
        digest = self.push(self.a, "app", b"layer")
        self.stat(self.a, "app", digest)
        failure = self.failureResultOf(defer.ensureDeferred(self.a.registry.blobs.stat("other", digest)))
        failure.trap(BlobUnknown)

    def test_a_delete_on_one_instance_is_seen_by_another_instances_cache(self):
        digest = self.push(self.a, "app", b"layer")
        self.stat(self.b, "app", digest)
        self.stat(self.b, "app", digest)
        self.assertEqual(self.b.cache.hits, 1)
        self.run_(self.a.registry.blobs.delete("app", digest, CTX))
        failure = self.failureResultOf(defer.ensureDeferred(self.b.registry.blobs.stat("app", digest)))
        failure.trap(BlobUnknown)

    def test_garbage_collection_elsewhere_empties_every_memory_cache(self):
        orphan = self.push(self.a, "app", b"never referenced")
        self.stat(self.b, "app", orphan)
        past = time.time() - 7200
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                os.utime(os.path.join(directory, name), (past, past))
        collector = Instance(self.root)  # the separate `regd garbage-collect` process
        report = self.run_(GarbageCollector(collector.registry, WallClock(), grace=3600).run())
        self.assertEqual(report.blobs_deleted, [str(orphan)])
        self.assertFalse(os.path.exists(os.path.join(self.root, paths.blob_data(orphan))))
        failure = self.failureResultOf(defer.ensureDeferred(self.b.registry.blobs.stat("app", orphan)))
        failure.trap(BlobUnknown)

    def test_a_load_that_raced_a_delete_is_not_remembered(self):
        digest = Digest.of(b"x")
        cache = self.a.cache

        async def load_while_someone_deletes():
            await StorageGeneration(self.b.driver).bump()  # another process deleted meanwhile
            return Descriptor(digest, 1)

        async def absent():
            return None

        self.run_(cache.linked("app", digest, absent))
        self.assertEqual(self.run_(cache.linked("app", digest, load_while_someone_deletes)), Descriptor(digest, 1))
        loads = []

        async def load():
            loads.append(1)
            return None

        self.assertIsNone(self.run_(cache.linked("app", digest, load)))
        self.assertEqual(loads, [1])

    def test_no_cache_configured_asks_storage_every_time_and_still_marks_deletes(self):
        plain = BlobDescriptorCache(None, StorageGeneration(self.a.driver))
        registry = Registry(self.a.driver, WallClock(), delete_enabled=True, cache=plain)
        digest = self.push(self.a, "app", b"layer")
        before = self.run_(plain.generation.current())
        for _ in range(2):
            self.a.driver.reads.clear()
            self.run_(registry.blobs.stat("app", digest))
            self.assertIn(paths.layer_link("app", digest), self.a.driver.reads)
        self.run_(registry.blobs.delete("app", digest, CTX))
        self.assertNotEqual(self.run_(plain.generation.current()), before)
        self.assertEqual(plain.kind, "none")
        self.assertFalse(plain.degraded)

    def test_memory_backend_is_bounded(self):
        backend = InMemoryBackend(max_entries=3)
        digests = [Digest.of(bytes([i])) for i in range(5)]
        for d in digests:
            self.run_(backend.put_linked("app", Descriptor(d, 1)))
        self.assertEqual(len(backend), 3)
        self.assertIsNone(self.run_(backend.get(digests[0])))
        self.assertEqual(self.run_(backend.get_linked("app", digests[4])), Descriptor(digests[4], 1))


class UnavailableBackendTests(SynchronousTestCase):
    """A shared backend that goes away (Redis down): storage answers, forgets wait, nothing stale is served."""

    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.backend = FlakyBackend()
        self.a = Instance(self.root, self.backend)

    def run_(self, coroutine):
        return self.successResultOf(defer.ensureDeferred(coroutine))

    def test_down_falls_through_forgets_wait_and_are_replayed_first(self):
        data = b"layer"
        digest = Digest.of(data)
        uploads = self.a.registry.uploads
        self.run_(uploads.put_whole("app", digest, uploads.spool_from_bytes(data), CTX))
        self.run_(self.a.registry.blobs.stat("app", digest))
        self.assertEqual(self.run_(self.backend.get_linked("app", digest)), Descriptor(digest, 5))

        self.backend.up = False
        self.assertTrue(self.a.cache.degraded)
        self.a.driver.reads.clear()
        self.assertEqual(self.run_(self.a.registry.blobs.stat("app", digest)).size, 5)
        self.assertIn(paths.layer_link("app", digest), self.a.driver.reads)  # storage answered
        self.run_(self.a.registry.blobs.delete("app", digest, CTX))  # the forget cannot reach the backend
        self.assertNotEqual(self.a.cache.error, "")
        self.assertEqual(self.run_(InMemoryBackend.get_linked(self.backend, "app", digest)), Descriptor(digest, 5))

        self.backend.up = True
        self.assertTrue(self.a.cache.degraded)  # a forget is still pending
        failure = self.failureResultOf(defer.ensureDeferred(self.a.registry.blobs.stat("app", digest)))
        failure.trap(BlobUnknown)
        self.assertIsNone(self.run_(self.backend.get_linked("app", digest)))
        self.assertFalse(self.a.cache.degraded)
        self.assertEqual(self.a.cache.error, "")
        self.run_(self.a.cache.ping())

    def test_strict_cache_refuses_to_forget_without_the_backend(self):
        strict = BlobDescriptorCache(self.backend, StorageGeneration(self.a.driver), strict=True)
        self.backend.up = False
        failure = self.failureResultOf(defer.ensureDeferred(strict.invalidate(Digest.of(b"x"))))
        failure.trap(CacheUnavailable)
        self.failureResultOf(defer.ensureDeferred(strict.ping())).trap(CacheUnavailable)
