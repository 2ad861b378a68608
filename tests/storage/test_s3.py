"""
What the S3 driver does beyond the shared contract (tests/storage/test_contract.py):
bodies sent as multipart parts while they arrive, upload data kept as
segments in the bucket, server-side composition, presigned redirects,
the registry:2 key layout, and clean-up of abandoned spools.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from regd.oci.hashstate import running_hasher
from regd.storage.interfaces import PathNotFound, StorageError
from regd.storage.s3 import S3Driver, _plan_parts
from regd.storage.s3streams import Piece
from tests.support.s3 import s3_settings, shared_moto

PART = 64 * 1024  # the shared moto server accepts parts this small


class FakeTransport:
    def __init__(self):
        self.calls = []
        self.spool = None

    def pauseProducing(self):
        self.calls.append("pause")

    def resumeProducing(self):
        sending = self.spool is not None and bool(self.spool._sending)
        self.calls.append("resume while sending" if sending else "resume")


class ClientConnection:
    """The client's connection as a spool sees it (set_producer): bytes come only while it is not paused."""

    def __init__(self):
        self.paused = False
        self.pauses = 0
        self._waiting = []

    def pauseProducing(self):
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    async def send(self, spool, data: bytes, piece: int = 4096, each=lambda: None) -> None:
        for i in range(0, len(data), piece):
            while self.paused:
                d = defer.Deferred()
                self._waiting.append(d)
                await d.addTimeout(30, reactor)
            spool.write(data[i:i + piece])
            each()


class S3DriverTests(TestCase):
    def setUp(self):
        self.server = shared_moto()
        self.bucket = self.server.new_bucket()
        self.driver = self.make(rootdirectory="/prod")

    def make(self, **settings):
        settings.setdefault("chunksize", PART)
        settings.setdefault("multipartcopychunksize", PART)
        settings.setdefault("multipartcopythresholdsize", PART)
        driver = S3Driver(s3_settings(self.server, self.bucket, **settings), reactor, min_part=PART)
        self.addCleanup(driver.client.close)
        return driver

    def keys(self, prefix=""):
        return self.server.keys(self.bucket, prefix)

    async def spool_of(self, data: bytes, piece: int = 10_000, transport=None, aim=None):
        spool = self.driver.new_spool() if aim is None else self.driver.new_aimed_spool(aim)
        if transport is not None:
            spool.set_producer(transport)
            transport.spool = spool
        for i in range(0, len(data), piece):
            spool.write(data[i:i + piece])
        return spool

    async def test_layout_is_registry_2s_under_the_root_directory(self):
        await self.driver.put_content("docker/registry/v2/repositories/a/_layers/x/link", b"l")
        self.assertEqual(self.keys(), ["prod/docker/registry/v2/repositories/a/_layers/x/link"])
        bare = self.make(rootdirectory="")
        await bare.put_content("docker/registry/v2/blobs/x", b"b")
        self.assertIn("docker/registry/v2/blobs/x", self.keys())

    async def test_a_large_body_is_sent_in_parts_while_it_arrives(self):
        data = os.urandom(5 * PART + 1234)
        transport = FakeTransport()
        spool = await self.spool_of(data, transport=transport)
        # Parts went out before the body was finished: a multipart upload is in progress.
        await spool._settled()
        self.assertEqual(len(self.server.multipart_uploads(self.bucket)), 1)
        self.assertIn("pause", transport.calls)  # the socket was held while a full part waited
        # ... and let go as soon as the waiting part could be sent, to fill the next one meanwhile.
        self.assertEqual([c for c in transport.calls if c != "pause"][0], "resume while sending")
        self.assertEqual(spool.hasher.hexdigest(), hashlib.sha256(data).hexdigest())
        upload = "docker/registry/v2/repositories/a/_uploads/u/data"
        self.assertEqual(await self.driver.store_spool(spool, upload), len(data))
        self.assertEqual(transport.calls[-1][:6], "resume")
        self.assertEqual((await self.driver.stat(upload)).size, len(data))
        self.assertEqual(await self.driver.get_content(upload), data)
        blob = "docker/registry/v2/blobs/sha256/ab/abc/data"
        await self.driver.move(upload, blob)
        self.assertEqual(await self.driver.get_content(blob), data)
        # Only the blob is left: no segment, no index, no multipart upload.
        self.assertEqual(self.keys(), ["prod/" + blob])
        self.assertEqual(self.server.multipart_uploads(self.bucket), [])

    async def test_a_body_of_known_length_streams_each_part_into_its_request(self):
        upload = "docker/registry/v2/repositories/a/_uploads/u/data"
        for data, sizes in ((os.urandom(2 * PART + 1000), [PART, PART, 1000]),  # the last part short
                            (os.urandom(2 * PART), [PART, PART])):  # no empty part after the last full one
            spool = self.driver.new_spool()
            spool.expect_length(len(data))
            client = ClientConnection()
            spool.set_producer(client)
            held = []
            await client.send(spool, data, each=lambda: held.append(spool._streamed.held))
            # Bytes waited in regd only until their part's request had a connection (the client was
            # held back meanwhile): never more than the one piece that arrived, not a part.
            self.assertLessEqual(max(held), 4096)
            self.assertGreater(client.pauses, 0)
            await spool._settled()
            [upload_id] = self.server.multipart_uploads(self.bucket)
            self.assertEqual(self.server.part_sizes(self.bucket, "prod/" + spool.path, upload_id), sizes)
            self.assertEqual(spool.hasher.hexdigest(), hashlib.sha256(data).hexdigest())
            self.assertEqual(await self.driver.store_spool(spool, upload), len(data))
            self.assertFalse(client.paused)
            self.assertEqual(await self.driver.get_content(upload), data)
            await self.driver.delete(upload)
        self.assertEqual((self.keys(), self.server.multipart_uploads(self.bucket)), ([], []))

    async def test_a_body_of_unknown_length_is_counted_into_a_local_file_per_part(self):
        data = os.urandom(3 * PART + 5)
        spool = self.driver.new_spool()
        spool.in_memory_part = 8192
        client = ClientConnection()
        spool.set_producer(client)
        on_disk = []
        await client.send(spool, data, each=lambda: on_disk.append(spool._file is not None and spool._file._rolled))
        self.assertIn(True, on_disk)  # a part past in_memory_part was in a file, not in memory
        await spool._settled()
        [upload_id] = self.server.multipart_uploads(self.bucket)
        sizes = self.server.part_sizes(self.bucket, "prod/" + spool.path, upload_id)
        self.assertTrue(all(size >= PART for size in sizes), sizes)  # each part counted, then sent
        blob = "docker/registry/v2/blobs/sha256/ab/abcd/data"
        self.assertEqual(await self.driver.publish_spool(spool, blob), len(data))
        self.assertEqual(await self.driver.get_content(blob), data)
        self.assertFalse(client.paused)
        await spool.discarded  # the spool's own object, copied to the blob, goes
        self.assertEqual(self.keys(), ["prod/" + blob])
        # A body of unknown length under one part never leaves memory until it is stored.
        small = self.driver.new_spool()
        small.write(b"small body")
        self.assertEqual(await small.finish(), b"small body")
        small.close()

    async def test_a_part_that_fails_mid_stream_fails_the_body_and_leaves_nothing(self):
        from regd.storage.interfaces import SpoolAim, StorageUnavailable
        from tests.support.s3 import cutting_proxy
        blob = "docker/registry/v2/blobs/sha256/ab/ab12/data"
        for aim in (None, SpoolAim(blob, lambda: defer.succeed(True))):
            port, endpoint = cutting_proxy(self.server, cut_after=PART // 2)
            self.addCleanup(port.stopListening)
            driver = self.make(rootdirectory="/prod", regionendpoint=endpoint)
            data = os.urandom(3 * PART)
            spool = driver.new_spool() if aim is None else driver.new_aimed_spool(aim)
            spool.expect_length(len(data))
            client = ClientConnection()
            spool.set_producer(client)
            await client.send(spool, data)  # the rest of the body still arrives, and is dropped
            self.assertFalse(client.paused)
            with self.assertRaises(StorageUnavailable) as caught:
                if aim is None:
                    await driver.store_spool(spool, "docker/registry/v2/repositories/a/_uploads/u/data")
                else:
                    await driver.publish_spool(spool, blob)
            self.assertIn("streamed part", str(caught.exception))
            await spool.discarded
            self.assertEqual((self.keys(), self.server.multipart_uploads(self.bucket)), ([], []))

    async def test_a_client_hanging_up_mid_part_aborts_the_multipart_upload(self):
        from regd.storage.interfaces import SpoolAim
        blob = "docker/registry/v2/blobs/sha256/ab/ab12/data"
        for aim in (None, SpoolAim(blob, lambda: defer.succeed(True))):
            spool = self.driver.new_spool() if aim is None else self.driver.new_aimed_spool(aim)
            spool.expect_length(3 * PART)
            client = ClientConnection()
            spool.set_producer(client)
            await client.send(spool, os.urandom(PART + PART // 2))
            self.assertEqual(len(self.server.multipart_uploads(self.bucket)), 1)
            spool.close()  # the client went away in the middle of the second part
            await spool.discarded
            self.assertEqual((self.keys(), self.server.multipart_uploads(self.bucket)), ([], []))
            self.assertFalse(client.paused)

    async def test_chunks_from_several_requests_become_one_blob(self):
        chunks = [os.urandom(2 * PART + 7), os.urandom(100), os.urandom(PART - 5), os.urandom(3 * PART)]
        upload = "docker/registry/v2/repositories/a/_uploads/u/data"
        hasher = running_hasher()
        received = b""
        for chunk in chunks:
            spool = await self.spool_of(chunk)
            size = await self.driver.store_spool(spool, upload, hasher=hasher if received else None)
            if not received:
                hasher = spool.hasher.copy()
            received += chunk
            self.assertEqual(size, len(received))
            # A new driver (another instance) sees the same upload.
            self.assertEqual((await self.make(rootdirectory="/prod").stat(upload)).size, len(received))
        self.assertEqual(hasher.hexdigest(), hashlib.sha256(received).hexdigest())
        self.assertEqual((await self.driver.digest_file(upload, "sha256")).hexdigest(),
                         hashlib.sha256(received).hexdigest())
        reader = await self.driver.reader(upload)
        self.assertEqual(await reader.read_all(), received)
        blob = "docker/registry/v2/blobs/sha256/cd/cdef/data"
        await self.driver.move(upload, blob)
        self.assertEqual(await self.driver.get_content(blob), received)
        self.assertEqual(self.keys(), ["prod/" + blob])

    async def test_small_chunks_of_a_small_upload_stay_one_object(self):
        upload = "docker/registry/v2/repositories/a/_uploads/u/data"
        for piece in (b"abc", b"def"):
            await self.driver.store_spool(await self.spool_of(piece), upload, hasher=hashlib.sha256())
        self.assertEqual(self.keys(), ["prod/" + upload])
        self.assertEqual(await self.driver.get_content(upload), b"abcdef")

    async def test_deleting_an_upload_takes_its_segments(self):
        upload_dir = "docker/registry/v2/repositories/a/_uploads/u"
        await self.driver.put_content(f"{upload_dir}/startedat", b"2026-01-01T00:00:00Z")
        await self.driver.store_spool(await self.spool_of(os.urandom(2 * PART)), f"{upload_dir}/data")
        self.assertEqual(len(self.keys("prod/regd/spool/")), 1)
        await self.driver.delete(upload_dir)
        self.assertEqual(self.keys(), [])

    async def test_an_abandoned_spool_leaves_nothing(self):
        spool = await self.spool_of(os.urandom(3 * PART))
        spool.close()  # the client went away
        await spool.discarded
        self.assertEqual(self.server.multipart_uploads(self.bucket), [])
        self.assertEqual(self.keys(), [])

    async def test_a_spool_closed_before_it_sent_anything_is_discarded_at_once(self):
        spool = self.driver.new_spool()
        spool.write(b"a small body, still in memory")
        spool.close()  # the client went away before a part began
        self.assertTrue(spool.discarded.called)
        await spool.discarded
        self.assertEqual((self.keys(), self.server.multipart_uploads(self.bucket)), ([], []))

    async def test_publish_a_large_spool(self):
        data = os.urandom(3 * PART + 1)
        blob = "docker/registry/v2/blobs/sha256/ef/ef01/data"
        self.assertEqual(await self.driver.publish_spool(await self.spool_of(data), blob), len(data))
        self.assertEqual(await self.driver.get_content(blob), data)
        from twisted.internet import task
        await task.deferLater(reactor, 0.2, lambda: None)  # the spool object's removal is not awaited
        self.assertEqual(self.keys(), ["prod/" + blob])

    async def test_an_aimed_body_is_invisible_until_published_there(self):
        from regd.storage.interfaces import SpoolAim
        data = os.urandom(3 * PART + 5)
        blob = "docker/registry/v2/blobs/sha256/ab/ab12/data"
        asked = []
        spool = await self.spool_of(data, aim=SpoolAim(blob, lambda: asked.append(1) or defer.succeed(True)))
        await spool._settled()
        # Parts are on their way to the blob's own key, which S3 does not show yet.
        self.assertEqual((asked, spool.aimed_at), ([1], blob))
        self.assertEqual(self.server.multipart_uploads(self.bucket) != [], True)
        self.assertEqual(self.keys("prod/docker/"), [])
        with self.assertRaises(StorageError):  # nowhere else: the bytes are bound to that key
            await self.driver.publish_spool(spool, "docker/registry/v2/blobs/sha256/cd/cd34/data")
        spool = await self.spool_of(data, aim=SpoolAim(blob, lambda: defer.succeed(True)))
        self.assertEqual(await self.driver.publish_spool(spool, blob), len(data))
        self.assertEqual(await self.driver.get_content(blob), data)
        await task.deferLater(reactor, 0.2, lambda: None)  # the first spool's abort is not awaited
        # No copy source was left behind, no upload is pending, nothing else is in the bucket.
        self.assertEqual(self.keys(), ["prod/" + blob])
        self.assertEqual(self.server.multipart_uploads(self.bucket), [])

    async def test_an_aim_not_confirmed_spools_as_usual(self):
        from regd.storage.interfaces import SpoolAim
        data = os.urandom(2 * PART + 5)
        blob = "docker/registry/v2/blobs/sha256/ab/ab12/data"
        spool = await self.spool_of(data, aim=SpoolAim(blob, lambda: defer.succeed(False)))
        upload = "docker/registry/v2/repositories/a/_uploads/u/data"
        self.assertEqual(await self.driver.store_spool(spool, upload), len(data))
        self.assertIsNone(spool.aimed_at)
        self.assertEqual(await self.driver.get_content(upload), data)

    async def test_an_abandoned_aimed_body_leaves_nothing(self):
        from regd.storage.interfaces import SpoolAim
        blob = "docker/registry/v2/blobs/sha256/ab/ab12/data"
        spool = await self.spool_of(os.urandom(3 * PART), aim=SpoolAim(blob, lambda: defer.succeed(True)))
        await spool._settled()
        spool.close()  # the client went away, or the digest did not match
        await spool.discarded
        self.assertEqual(self.server.multipart_uploads(self.bucket), [])
        self.assertEqual(self.keys(), [])

    async def test_sweep_aborts_an_aimed_body_a_dead_process_left(self):
        import time
        from regd.storage.interfaces import SpoolAim
        blob = "docker/registry/v2/blobs/sha256/ab/ab12/data"
        spool = await self.spool_of(os.urandom(2 * PART), aim=SpoolAim(blob, lambda: defer.succeed(True)))
        await spool._settled()  # then the process died: the spool is never closed
        self.assertEqual([k.endswith(".aimed") for k in self.keys()], [True])
        self.assertEqual(await self.driver.sweep_spool(3600, time.time()), 0)
        self.assertEqual(await self.driver.sweep_spool(3600, time.time() + 7200), 2)  # the upload, its marker
        self.assertEqual(self.server.multipart_uploads(self.bucket), [])
        self.assertEqual(self.keys(), [])

    async def test_truncate_a_segmented_upload(self):
        upload = "docker/registry/v2/repositories/a/_uploads/u/data"
        first, second = os.urandom(2 * PART), os.urandom(2 * PART)
        await self.driver.store_spool(await self.spool_of(first), upload)
        await self.driver.store_spool(await self.spool_of(second), upload, hasher=hashlib.sha256())
        await self.driver.truncate(upload, 3 * PART)
        self.assertEqual(await self.driver.get_content(upload), (first + second)[:3 * PART])

    async def test_touch_a_large_blob_marks_it_without_copying(self):
        from twisted.internet import task
        data = os.urandom(2 * PART + 3)  # above the copy threshold
        blob = "docker/registry/v2/blobs/sha256/ab/abcd/data"
        await self.driver.put_content(blob, data)
        before = (await self.driver.stat(blob)).modified
        await task.deferLater(reactor, 1.1, lambda: None)  # S3 times have whole seconds
        await self.driver.touch(blob)
        self.assertGreater((await self.driver.stat(blob)).modified, before)
        self.assertEqual(self.keys("prod/docker/registry/v2/blobs/"), ["prod/" + blob, "prod/" + blob + ".regdtouched"])
        self.assertEqual(await self.driver.list("docker/registry/v2/blobs/sha256/ab/abcd"), ["data"])
        self.assertEqual(await self.driver.get_content(blob), data)
        await self.driver.move(blob, "elsewhere/data")
        self.assertEqual(self.keys("prod/docker/"), [])
        await self.driver.delete("elsewhere/data")
        self.assertEqual(self.keys(), [])

    async def test_presigned_redirect_url_serves_the_blob(self):
        await self.driver.put_content("docker/registry/v2/blobs/x/data", b"the bytes")
        url = await self.driver.redirect_url("docker/registry/v2/blobs/x/data")
        self.assertIn("X-Amz-Signature=", url)
        with urllib.request.urlopen(url, timeout=10) as answer:  # no credentials beyond the URL
            self.assertEqual(answer.read(), b"the bytes")

    async def test_walk_and_list_across_pages(self):
        self.driver.list_page = 2
        for name in ("a", "b/c", "d", "e", "f/g/h"):
            await self.driver.put_content(f"docker/registry/v2/repositories/{name}/_manifests/x", b".")
        self.assertEqual(await self.driver.walk_repositories("docker/registry/v2/repositories"),
                         ["a", "b/c", "d", "e", "f/g/h"])
        self.assertEqual(await self.driver.list("docker/registry/v2/repositories"), ["a", "b", "d", "e", "f"])

    async def test_sweep_removes_old_spool_leftovers_only(self):
        import time
        spool = await self.spool_of(os.urandom(2 * PART))
        await spool._settled()  # a multipart upload begun by a process that then died
        await self.driver.put_content("regd/spool/finished-segment", b"x")
        self.assertEqual(await self.driver.sweep_spool(3600, time.time()), 0)
        self.assertEqual(await self.driver.sweep_spool(3600, time.time() + 7200), 2)
        self.assertEqual(self.server.multipart_uploads(self.bucket), [])
        self.assertEqual(self.keys(), [])

    async def test_connections_to_s3_read_large_pieces(self):
        from twisted.internet.protocol import Factory, Protocol
        from twisted.web.client import URI
        from regd.storage.s3client import READ_SIZE, _LargeReads
        endpoint = _LargeReads(reactor, None).endpointForURI(URI.fromBytes(self.server.endpoint.encode("ascii")))
        protocol = await endpoint.connect(Factory.forProtocol(Protocol))
        self.addCleanup(protocol.transport.loseConnection)
        self.assertEqual(protocol.transport.bufferSize, READ_SIZE)
        self.assertGreater(READ_SIZE, 65536)
        await self.driver.put_content("x", b"y")  # and the driver's requests still work through them
        self.assertEqual(await self.driver.get_content("x"), b"y")

    async def test_missing_objects(self):
        with self.assertRaises(PathNotFound):
            await self.driver.stat("nothing")
        with self.assertRaises(PathNotFound):
            await self.driver.touch("nothing")


class PlanTests(SynchronousTestCase):
    def test_parts_are_copied_within_a_piece_and_gathered_across_small_ones(self):
        pieces = [Piece("a", 0, 25), Piece("b", 0, 3), Piece("c", 0, 12)]
        plan = _plan_parts(pieces, chunk=10, minimum=5)
        sizes = [sum(p.size for p in part) for part in plan]
        self.assertEqual(sum(sizes), 40)
        self.assertTrue(all(size >= 5 for size in sizes[:-1]))
        self.assertEqual(plan[0], [Piece("a", 0, 10)])
        # a's 5-byte tail is copied; b (3 bytes) cannot be a part, so b + 2 bytes of c are gathered.
        self.assertEqual(plan[2], [Piece("a", 20, 25)])
        self.assertEqual(plan[3], [Piece("b", 0, 3), Piece("c", 0, 2)])
        self.assertEqual(plan[4:], [[Piece("c", 2, 12)]])

    def test_one_piece_in_copy_chunks(self):
        plan = _plan_parts([Piece("a", 0, 23)], chunk=10, minimum=5)
        self.assertEqual(plan, [[Piece("a", 0, 10)], [Piece("a", 10, 20)], [Piece("a", 20, 23)]])


class SignedStreamTests(TestCase):
    async def test_streamed_and_file_parts_pass_a_server_that_checks_signatures(self):
        """Parts are signed UNSIGNED-PAYLOAD before their bytes exist; a server checking SigV4 takes them."""
        from tests.support.s3 import MotoServer
        server = MotoServer.checking_credentials()
        self.addCleanup(server.stop)
        bucket = server.new_bucket()
        driver = S3Driver(s3_settings(server, bucket, accesskey=server.access_key, secretkey=server.secret_key),
                          reactor)
        self.addCleanup(driver.client.close)
        data = os.urandom(driver.chunksize + 5)  # two parts, at S3's own smallest part
        for known in (True, False):
            spool = driver.new_spool()
            if known:
                spool.expect_length(len(data))
            for i in range(0, len(data), 256 * 1024):
                spool.write(data[i:i + 256 * 1024])
            path = f"docker/registry/v2/repositories/a/_uploads/{known}/data"
            self.assertEqual(await driver.store_spool(spool, path), len(data))
            self.assertEqual(await driver.get_content(path), data)
        wrong = S3Driver(s3_settings(server, bucket, accesskey=server.access_key, secretkey="wrong"), reactor)
        self.addCleanup(wrong.client.close)
        wrong.client.retries = 1
        spool = wrong.new_spool()
        spool.expect_length(len(data))
        spool.write(data)
        from regd.storage.interfaces import StorageUnavailable
        with self.assertRaises(StorageUnavailable):  # and the check is real
            await wrong.store_spool(spool, "docker/registry/v2/repositories/a/_uploads/w/data")
        await spool.discarded
