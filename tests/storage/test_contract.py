"""The storage driver contract, run against every driver."""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from regd.storage.filesystem import FilesystemDriver
from regd.storage.interfaces import IBlobReader, IBodySpool, IStorageDriver, InvalidPath, PathNotFound
from regd.storage.memory import InMemoryDriver
from regd.storage.threads import inline_runner


class FakeConsumer:
    """Drives a pull producer the way twisted.web's _PullToPush does."""

    def __init__(self):
        self.data = []
        self.producer = None
        self.unregistered = False

    def registerProducer(self, producer, streaming):
        # Pull producers are driven by pump(); push producers (S3) write on their own.
        self.producer = producer
        self.streaming = streaming

    def unregisterProducer(self):
        self.unregistered = True
        self.producer = None

    def write(self, data):
        self.data.append(data)

    def pump(self, times=10_000):
        for _ in range(times):
            if self.producer is None or self.streaming:
                return
            self.producer.resumeProducing()


class DriverContract:
    """
    Every test awaits the driver's Deferreds, so one suite serves drivers
    that answer at once (filesystem with an inline runner, memory) and over
    the network (S3, on a real S3 server).
    """

    mtime_resolution = 0.01  # seconds between writes for modified times to differ

    def make_driver(self):
        raise NotImplementedError

    def setUp(self):
        self.driver = self.make_driver()

    async def ok(self, d):
        return await d

    async def fails(self, d, *errors):
        try:
            await d
        except errors:
            return
        except Exception as e:
            self.fail(f"expected {errors}, got {e!r}")
        self.fail(f"expected {errors}, got a result")

    async def test_provides_interfaces(self):
        self.assertTrue(verifyObject(IStorageDriver, self.driver))
        spool = self.driver.new_spool()
        self.assertTrue(verifyObject(IBodySpool, spool))
        spool.close()
        await self.ok(self.driver.put_content("a/b", b"x"))
        reader = await self.ok(self.driver.reader("a/b"))
        self.assertTrue(verifyObject(IBlobReader, reader))
        reader.close()

    async def test_put_get_overwrite(self):
        await self.ok(self.driver.put_content("x/y/z", b"one"))
        self.assertEqual(await self.ok(self.driver.get_content("x/y/z")), b"one")
        await self.ok(self.driver.put_content("x/y/z", b"two!"))
        self.assertEqual(await self.ok(self.driver.get_content("x/y/z")), b"two!")
        info = await self.ok(self.driver.stat("x/y/z"))
        self.assertEqual((info.size, info.is_dir), (4, False))
        self.assertTrue((await self.ok(self.driver.stat("x/y"))).is_dir)

    async def test_missing_paths(self):
        for call in (lambda: self.driver.get_content("no/such"), lambda: self.driver.stat("no/such"),
                     lambda: self.driver.list("no/such"), lambda: self.driver.delete("no/such"),
                     lambda: self.driver.move("no/such", "else"), lambda: self.driver.reader("no/such"),
                     lambda: self.driver.digest_file("no/such", "sha256")):
            await self.fails(call(), PathNotFound)

    async def test_invalid_paths_refused(self):
        for path in ("/etc/passwd", "../x", "a/../../b", "a//b", "a/./b", "", "a\\b", "a\0b"):
            await self.fails(self.driver.put_content(path, b"x"), InvalidPath)
            await self.fails(self.driver.get_content(path), InvalidPath)

    async def test_list_and_delete_tree(self):
        for path in ("r/a/1", "r/a/2", "r/b", "r/c/d/e"):
            await self.ok(self.driver.put_content(path, b"."))
        self.assertEqual(await self.ok(self.driver.list("r")), ["a", "b", "c"])
        await self.ok(self.driver.delete("r/a"))
        self.assertEqual(await self.ok(self.driver.list("r")), ["b", "c"])
        await self.ok(self.driver.delete("r/b"))
        await self.fails(self.driver.get_content("r/b"), PathNotFound)

    async def test_move_replaces(self):
        await self.ok(self.driver.put_content("s", b"new"))
        await self.ok(self.driver.put_content("d/e", b"old"))
        await self.ok(self.driver.move("s", "d/e"))
        self.assertEqual(await self.ok(self.driver.get_content("d/e")), b"new")
        await self.fails(self.driver.get_content("s"), PathNotFound)

    async def test_spool_adopted_whole_then_appended(self):
        first = self.driver.new_spool()
        first.write(b"hello ")
        self.assertEqual(first.size, 6)
        self.assertEqual(first.hasher.hexdigest(), hashlib.sha256(b"hello ").hexdigest())
        self.assertEqual(await self.ok(self.driver.store_spool(first, "u/data")), 6)
        hasher = hashlib.sha256(b"hello ")
        second = self.driver.new_spool()
        second.write(b"wor")
        second.write(b"ld")
        self.assertEqual(await self.ok(self.driver.store_spool(second, "u/data", hasher=hasher)), 11)
        self.assertEqual(await self.ok(self.driver.get_content("u/data")), b"hello world")
        self.assertEqual(hasher.hexdigest(), hashlib.sha256(b"hello world").hexdigest())
        first.close()
        second.close()  # closing twice (twisted.web does) is harmless
        self.assertEqual(await self.ok(self.driver.get_content("u/data")), b"hello world")

    async def test_publish_spool_replaces_atomically(self):
        await self.ok(self.driver.put_content("p/blob", b"old content"))
        spool = self.driver.new_spool()
        spool.write(b"new")
        self.assertEqual(await self.ok(self.driver.publish_spool(spool, "p/blob")), 3)
        self.assertEqual(await self.ok(self.driver.get_content("p/blob")), b"new")
        spool.close()
        self.assertEqual(await self.ok(self.driver.get_content("p/blob")), b"new")

    async def test_spool_behaves_as_a_file_for_twisted_web(self):
        spool = self.driver.new_spool()
        spool.write(b"abcdef")
        spool.seek(0, 0)
        self.assertEqual(spool.read(3), b"abc")
        self.assertEqual(spool.read(), b"def")
        spool.seek(0)
        spool.write(b"gh")  # writes always append
        self.assertEqual(spool.size, 8)
        spool.close()

    async def test_reader_streams_ranges(self):
        data = os.urandom(2_700_000)
        await self.ok(self.driver.put_content("blob", data))
        reader = await self.ok(self.driver.reader("blob"))
        self.assertEqual(reader.size, len(data))
        consumer = FakeConsumer()
        d = reader.stream_to(consumer)
        consumer.pump()
        await self.ok(d)
        self.assertTrue(consumer.unregistered)
        self.assertEqual(b"".join(consumer.data), data)
        reader = await self.ok(self.driver.reader("blob"))
        consumer = FakeConsumer()
        d = reader.stream_to(consumer, 1000, 1_300_000)
        consumer.pump()
        await self.ok(d)
        self.assertEqual(b"".join(consumer.data), data[1000:1_301_000])

    async def test_reader_stopped_midway_fails_its_deferred(self):
        await self.ok(self.driver.put_content("blob", b"z" * 3_000_000))
        reader = await self.ok(self.driver.reader("blob"))
        consumer = FakeConsumer()
        d = reader.stream_to(consumer)
        consumer.producer.resumeProducing()
        consumer.producer.stopProducing()
        await self.fails(d, ConnectionDone)
        self.assertLess(sum(map(len, consumer.data)), 3_000_000)

    async def test_read_all_and_digest(self):
        await self.ok(self.driver.put_content("f", b"content"))
        self.assertEqual(await (await self.driver.reader("f")).read_all(), b"content")
        hasher = await self.ok(self.driver.digest_file("f", "sha512"))
        self.assertEqual(hasher.hexdigest(), hashlib.sha512(b"content").hexdigest())

    async def test_touch_updates_modified_time(self):
        await self.ok(self.driver.put_content("t", b"x"))
        before = (await self.ok(self.driver.stat("t"))).modified
        await _sleep(self.mtime_resolution)
        await self.ok(self.driver.touch("t"))
        self.assertGreater((await self.ok(self.driver.stat("t"))).modified, before)
        await self.fails(self.driver.touch("missing"), PathNotFound)

    async def test_truncate(self):
        await self.ok(self.driver.put_content("f", b"0123456789"))
        await self.ok(self.driver.truncate("f", 4))
        self.assertEqual(await self.ok(self.driver.get_content("f")), b"0123")

    async def test_walk_repositories(self):
        root = "docker/registry/v2/repositories"
        for path in ("a/_manifests/tags/t/current/link", "b/c/_manifests/revisions/x",
                     "b/_uploads/u/data", "d/_layers/_manifests/x", "e/f/g/_manifests/x"):
            await self.ok(self.driver.put_content(f"{root}/{path}", b"."))
        self.assertEqual(await self.ok(self.driver.walk_repositories(root)), ["a", "b/c", "e/f/g"])
        self.assertEqual(await self.ok(self.driver.walk_repositories(root, "_uploads")), ["b"])
        self.assertEqual(await self.ok(self.driver.walk_repositories("nothing/here")), [])


def _sleep(seconds):
    from twisted.internet import reactor, task
    return task.deferLater(reactor, seconds, lambda: None)


class FilesystemContractTests(DriverContract, TestCase):
    def make_driver(self):
        self.root = self.mktemp()
        return FilesystemDriver(self.root, inline_runner)


class MemoryContractTests(DriverContract, TestCase):
    def make_driver(self):
        return InMemoryDriver()


class S3ContractTests(DriverContract, TestCase):
    """The same contract on a real S3 server (moto), one fresh bucket per test."""

    mtime_resolution = 1.1  # S3's Last-Modified has whole seconds

    def make_driver(self):
        from twisted.internet import reactor

        from regd.storage.s3 import S3Driver
        from tests.support.s3 import s3_settings, shared_moto
        server = shared_moto()
        self.bucket = server.new_bucket()
        driver = S3Driver(s3_settings(server, self.bucket, rootdirectory="/some/root", chunksize=64 * 1024),
                          reactor, min_part=64 * 1024)
        self.addCleanup(driver.client.close)
        return driver
