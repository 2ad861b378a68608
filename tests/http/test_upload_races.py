"""DELETE of an upload racing a PATCH (or the final PUT) of it: clean answers for both, nothing left behind."""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tests.support.server import RegistryServer


class UploadRaceTests(TestCase):
    def setUp(self):
        self.server = RegistryServer(self, spool_threshold=1024)
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
