"""DELETE of an upload racing a PATCH (or the final PUT) of it: clean answers for both, nothing left behind."""

from __future__ import annotations

import hashlib
import os
import socket

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from tests.support.server import RegistryServer


class UploadRaceTests(TestCase):
    def setUp(self):
        self.server = RegistryServer(self, spool_threshold=1024)
        # Later chunks spooled and stored (the path of drivers that cannot append in place);
        # test_delete_during_a_patch_written_in_place races the in-place path.
        self.in_place = self.server.site.requestFactory.upload_sink
        self.server.site.requestFactory.upload_sink = None
        self.gate = None
        store = self.server.driver.store_spool

        def paused_store(*args, **kwargs):
            """Storing waits for the test to open the gate, as a slow disk would."""
            if self.gate is None:
                return store(*args, **kwargs)
            gate, self.gate = self.gate, None
            return gate.addCallback(lambda _: store(*args, **kwargs))

        self.server.driver.store_spool = paused_store

    async def start_upload(self, first: bytes) -> str:
        response, _ = await self.server.request("POST", "/v2/race/blobs/uploads/")
        location = response.headers.getRawHeaders("Location")[0]
        response, _ = await self.server.request("PATCH", location, first)
        self.assertEqual(response.code, 202)
        return response.headers.getRawHeaders("Location")[0]

    async def race(self, method: str, location: str, body: bytes):
        self.gate = defer.Deferred()
        gate = self.gate
        writing = defer.ensureDeferred(self.server.request(method, location, body))
        while self.gate is not None:  # the body is in and its store is waiting
            await task.deferLater(reactor, 0.005, lambda: None)
        deleting = defer.ensureDeferred(self.server.request("DELETE", location))
        await task.deferLater(reactor, 0.05, lambda: None)
        gate.callback(None)
        (written, written_body), (deleted, deleted_body) = await defer.gatherResults([writing, deleting])
        return written.code, written_body, deleted.code, deleted_body

    def assert_no_upload_left(self):
        uploads = os.path.join(self.server.root, "docker/registry/v2/repositories/race/_uploads")
        self.assertEqual(os.listdir(uploads) if os.path.isdir(uploads) else [], [])

    async def test_delete_during_a_patch(self):
        location = await self.start_upload(os.urandom(5000))
        written, body, deleted, deleted_body = await self.race("PATCH", location, os.urandom(5000))
        self.assertEqual((written, deleted), (202, 204), (body, deleted_body))
        response, body = await self.server.request("PATCH", location, b"more")
        self.assertEqual(response.code, 404, body)
        self.assert_no_upload_left()
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_delete_during_the_final_put(self):
        first, last = os.urandom(5000), os.urandom(5000)
        location = await self.start_upload(first)
        digest = "sha256:" + hashlib.sha256(first + last).hexdigest()
        written, body, deleted, deleted_body = await self.race("PUT", f"{location}&digest={digest}"
                                                               if "?" in location else f"{location}?digest={digest}",
                                                               last)
        self.assertEqual(written, 201, body)
        self.assertIn(deleted, (204, 404), deleted_body)
        self.assertLess(deleted, 500)
        self.assert_no_upload_left()
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_delete_during_a_patch_written_in_place(self):
        """
        The DELETE waits for the chunk whose body is being written into the
        upload's data: the PATCH is answered, then the upload is gone.
        """
        self.server.site.requestFactory.upload_sink = self.in_place
        location = await self.start_upload(os.urandom(5000))
        port = self.server.port.getHost().port
        path = location.split(str(port), 1)[1]
        chunk = os.urandom(200_000)
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.addCleanup(sock.close)
        head = (f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Range: 5000-204999\r\n"
                f"Content-Length: {len(chunk)}\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        await threads.deferToThread(sock.sendall, head + chunk[:100_000])
        data_file = os.path.join(self.server.root, "docker/registry/v2/repositories/race/_uploads",
                                 path.rsplit("/", 1)[1].split("?")[0], "data")
        while os.path.getsize(data_file) < 105_000:  # the first half is in the upload's data already
            await task.deferLater(reactor, 0.005, lambda: None)
        deleting = defer.ensureDeferred(self.server.request("DELETE", location))
        await task.deferLater(reactor, 0.05, lambda: None)
        self.assertNoResult(deleting)
        await threads.deferToThread(sock.sendall, chunk[100_000:])
        reply = await threads.deferToThread(sock.recv, 65536)
        self.assertTrue(reply.startswith(b"HTTP/1.1 202"), reply[:300])
        deleted, deleted_body = await deleting
        self.assertEqual(deleted.code, 204, deleted_body)
        self.assert_no_upload_left()
        self.assertEqual(self.flushLoggedErrors(), [])
