"""The Redis blob-descriptor cache against a real redis-server, including Redis killed mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.application.service import MultiService
from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from regd.cache.build import build_blob_cache
from regd.cache.descriptors import BlobDescriptorCache
from regd.cache.interfaces import CacheUnavailable, Descriptor
from regd.cache.redis import RedisBackend
from regd.config import parse_config
from regd.oci.digest import Digest
from regd.oci.errors import BlobUnknown
from regd.registry.context import RequestContext
from regd.registry.service import Registry
from regd.storage import paths
from regd.storage.filesystem import FilesystemDriver
from regd.storage.threads import inline_runner
from tests.cache.test_descriptors import CountingDriver, WallClock
from tests.support.redis import RedisServer

CTX = RequestContext()


def config_for(root: str, redis: RedisServer, extra: str = "") -> str:
    password = f", password: {redis.password}" if redis.password else ""
    return (f"storage: {{filesystem: {{rootdirectory: {root}}}, cache: {{blobdescriptor: redis}}, "
            f"delete: {{enabled: true}}}}\n"
            f"redis: {{addr: '{redis.addr}', db: 3{password}, dialtimeout: 200ms, readtimeout: 200ms, "
            f"writetimeout: 200ms, pool: {{maxidle: 2, maxactive: 4}}}}\n{extra}")


class RedisCacheTests(TestCase):
    timeout = 60

    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.redis = RedisServer(os.path.abspath(self.mktemp()), password="s3cret").start()
        self.addCleanup(self.redis.stop)
        self.config = parse_config(config_for(self.root, self.redis)).config
        self.instances = []

    def instance(self):
        driver = CountingDriver(FilesystemDriver(self.root, inline_runner))
        cache = build_blob_cache(self.config, driver, reactor)
        factory = cache.backend._redis._factory
        factory.initialDelay, factory.maxDelay = 0.05, 0.2  # reconnect fast in tests
        self.addCleanup(cache.close)
        registry = Registry(driver, WallClock(), delete_enabled=True, cache=cache)
        return driver, cache, registry

    async def connected(self, cache: BlobDescriptorCache):
        factory = cache.backend._redis._factory
        for _ in range(200):
            if factory.size == factory.poolsize:  # the whole pool, not just a first connection
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        self.fail("no connection to redis")

    async def push(self, registry, name: str, data: bytes) -> Digest:
        digest = Digest.of(data)
        await registry.uploads.put_whole(name, digest, registry.uploads.spool_from_bytes(data), CTX)
        return digest

    @defer.inlineCallbacks
    def test_keys_are_registry2s_and_hits_need_no_storage(self):
        yield defer.ensureDeferred(self._hits())

    async def _hits(self):
        driver, cache, registry = self.instance()
        await self.connected(cache)
        digest = await self.push(registry, "library/app", b"layer bytes")
        driver.reads.clear()
        self.assertEqual((await registry.blobs.stat("library/app", digest)).size, 11)
        self.assertIn(paths.layer_link("library/app", digest), driver.reads)
        driver.reads.clear()
        self.assertEqual((await registry.blobs.stat("library/app", digest)).size, 11)
        self.assertEqual(driver.reads, [])  # answered by Redis alone
        self.assertEqual(self.redis.command("SELECT", "3"), "OK")
        keys = self.redis.keys("*")  # db 0 (the inline connection's) holds nothing
        self.assertEqual(keys, set())
        db3 = self.redis._exchange("SELECT 3\r\nKEYS *")
        self.assertEqual({line for i, line in enumerate(db3) if i > 1 and db3[i - 1].startswith("$")},
                         {f"blobs::{digest}", "repository::library/app::blobs",
                          f"repository::library/app::blobs::{digest}"})
        fields = await cache.backend._redis.hgetall(f"blobs::{digest}")
        self.assertEqual(fields, {"digest": str(digest), "size": "11", "mediatype": "application/octet-stream"})

    @defer.inlineCallbacks
    def test_a_delete_on_one_instance_is_forgotten_for_all(self):
        yield defer.ensureDeferred(self._delete())

    async def _delete(self):
        _, cache_a, a = self.instance()
        driver_b, cache_b, b = self.instance()
        await self.connected(cache_a)
        await self.connected(cache_b)
        digest = await self.push(a, "app", b"layer")
        await b.blobs.stat("app", digest)
        self.assertEqual(await cache_b.backend.get_linked("app", digest), Descriptor(digest, 5))
        await a.blobs.delete("app", digest, CTX)
        self.assertIsNone(await cache_b.backend.get_linked("app", digest))
        with self.assertRaises(BlobUnknown):
            await b.blobs.stat("app", digest)

    @defer.inlineCallbacks
    def test_redis_killed_mid_run(self):
        yield defer.ensureDeferred(self._killed())

    async def _killed(self):
        from regd.daemon.health import HealthResource
        from regd.daemon.tap import add_health
        driver, cache, registry = self.instance()
        await self.connected(cache)
        root = MultiService()
        health = add_health(root, registry, reactor, {"storagedriver": {"interval": "50ms"}}, None)
        root.startService()
        self.addCleanup(task.deferLater, reactor, 0.6, lambda: None)  # a probe's wait for Redis ends
        self.addCleanup(root.stopService)
        kept = await self.push(registry, "app", b"kept")
        gone = await self.push(registry, "app", b"gone")
        await registry.blobs.stat("app", kept)
        await registry.blobs.stat("app", gone)

        self.redis.kill()
        for _ in range(200):
            if cache.degraded:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        self.assertTrue(cache.degraded)
        driver.reads.clear()
        self.assertEqual((await registry.blobs.stat("app", kept)).size, 4)  # from storage, not waiting on Redis
        self.assertIn(paths.layer_link("app", kept), driver.reads)
        await registry.blobs.delete("app", gone, CTX)  # its forget waits for Redis
        for _ in range(100):
            await task.deferLater(reactor, 0.05, lambda: None)
            if health.report()["redis"]["status"] == "degraded":
                break
        report = health.report()
        self.assertEqual(report["redis"]["status"], "degraded")
        self.assertEqual(report["blob_descriptor_cache"]["status"], "degraded")
        self.assertTrue(health.healthy)  # degraded, not failing: balancers keep the instance
        body = HealthResource(health).render_GET(_Request())
        self.assertEqual(json.loads(body)["redis"]["status"], "degraded")

        self.redis.start()  # back, on the same port
        for _ in range(300):
            await task.deferLater(reactor, 0.02, lambda: None)
            if cache.backend.available:
                break
        with self.assertRaises(BlobUnknown):
            await registry.blobs.stat("app", gone)
        for _ in range(100):  # until every pooled connection is back and the entry is refilled
            driver.reads.clear()
            self.assertEqual((await registry.blobs.stat("app", kept)).size, 4)
            if not driver.reads:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(driver.reads, [])  # served by Redis again
        self.assertFalse(cache.degraded)
        for _ in range(100):
            await task.deferLater(reactor, 0.05, lambda: None)
            if health.report()["redis"]["status"] == "ok":
                break
        self.assertEqual(health.report()["redis"]["status"], "ok")

    @defer.inlineCallbacks
    def test_garbage_collect_process_purges_redis_and_refuses_without_it(self):
        yield defer.ensureDeferred(self._gc())

    async def _gc(self):
        _, cache, registry = self.instance()
        await self.connected(cache)
        orphan = await self.push(registry, "app", b"orphan")
        await registry.blobs.stat("app", orphan)
        self.assertIsNotNone(await cache.backend.get(orphan))
        config_path = os.path.join(self.root, "..", "regd-gc.yml")
        with open(config_path, "w") as f:
            f.write(config_for(self.root, self.redis))

        def collect():
            return subprocess.run([sys.executable, "-m", "regd.cli", "garbage-collect", "--grace", "0s",
                                   config_path], capture_output=True, text=True, timeout=60)

        self.redis.kill()
        checked = await threads.deferToThread(lambda: subprocess.run(
            [sys.executable, "-m", "regd.cli", "fsck", config_path], capture_output=True, text=True, timeout=60))
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)  # a check removes nothing
        refused = await threads.deferToThread(collect)
        self.assertEqual(refused.returncode, 1, refused.stdout + refused.stderr)
        self.assertIn("cannot connect", refused.stderr)
        self.assertTrue(os.path.exists(os.path.join(self.root, paths.blob_data(orphan))))
        self.redis.start()
        # Redis came back empty; fill it again, as instances do.
        for _ in range(300):
            await task.deferLater(reactor, 0.02, lambda: None)
            if cache.backend.available:
                break
        await cache.backend.put_linked("app", Descriptor(orphan, 6))
        done = await threads.deferToThread(collect)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn(f"deleted blob {orphan}", done.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.root, paths.blob_data(orphan))))
        self.assertIsNone(await cache.backend.get(orphan))
        with self.assertRaises(BlobUnknown):
            await registry.blobs.stat("app", orphan)


class RedisTLSTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_tls_with_a_client_certificate(self):
        yield defer.ensureDeferred(self._tls())

    async def _tls(self):
        from tests.support.certs import PKI
        pki = PKI(os.path.abspath(self.mktemp()))
        redis = RedisServer(os.path.abspath(self.mktemp()), tls=pki).start()
        self.addCleanup(redis.stop)
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        tls = (f"  tls: {{enabled: true, clientcas: ['{pki.ca}'], certificate: '{pki.client_cert}', "
               f"key: '{pki.client_key}'}}\n")
        config = parse_config(f"storage: {{filesystem: {{rootdirectory: {root}}}, cache: {{blobdescriptor: redis}}}}\n"
                              f"redis:\n  addr: '{redis.addr}'\n{tls}").config
        cache = build_blob_cache(config, FilesystemDriver(root, inline_runner), reactor)
        self.addCleanup(cache.close)
        await cache.backend.wait_connected(10)
        digest = Digest.of(b"over tls")
        await cache.backend.put_linked("app", Descriptor(digest, 8))
        self.assertEqual(await cache.backend.get_linked("app", digest), Descriptor(digest, 8))
        self.assertEqual(redis.command("EXISTS", f"blobs::{digest}"), "1")

        # Without a client certificate the server refuses: the cache stays unavailable.
        config = parse_config(f"storage: {{filesystem: {{rootdirectory: {root}}}, cache: {{blobdescriptor: redis}}}}\n"
                              f"redis: {{addr: '{redis.addr}', tls: {{enabled: true, clientcas: ['{pki.ca}']}}}}\n"
                              ).config
        refused = build_blob_cache(config, FilesystemDriver(root, inline_runner), reactor)
        self.addCleanup(refused.close)
        with self.assertRaises(CacheUnavailable):
            await refused.backend.wait_connected(1.0)


class _Request:
    def __init__(self):
        self.code = None

    def setResponseCode(self, code):
        self.code = code

    def setHeader(self, name, value):
        pass
