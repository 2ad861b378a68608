"""
A full disk (or any storage failure) during an upload: the client gets the
JSON error it will show (507 when the disk is full), the failure is counted
and logged in one line, and nothing half-written stays behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess

from prometheus_client import CollectorRegistry
from twisted.internet import defer, threads
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from regd.http.metrics import HTTPMetrics
from regd.storage.filesystem import FileAppender, FileSpool
from tests.support.processes import in_ci
from tests.support.server import RegistryServer, raw_exchange


def _files_under(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


class _FillingSpool(FileSpool):
    """A spool on a disk that fills up after `room` bytes."""

    room = 100_000

    def write(self, data):
        if self.size + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        super().write(data)


class StorageFullTests(TestCase):
    def setUp(self):
        self.server = RegistryServer(self)
        self.metrics = CollectorRegistry()
        self.server.site.metrics = HTTPMetrics(self.metrics, self.server.site, self.server.registry.uploads)

    async def exchange(self, method, path, body):
        port = self.server.port.getHost().port
        return await threads.deferToThread(raw_exchange, port, method, path, body)

    def assert_insufficient_storage(self, status, body, events, route="blob_upload"):
        self.assertEqual(status, 507, body)
        error = json.loads(body)["errors"][0]
        self.assertIn("no space left", error["message"])
        self.assertNotIn(self.server.root, body.decode())
        self.assertEqual(self.metrics.get_sample_value("regd_storage_errors_total", {"route": route}), 1.0)
        lines = [formatEvent(e) for e in events if "storage error" in (e.get("log_format") or "")]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("No space left on device", lines[0])
        self.assertFalse([e for e in events if e.get("log_failure")], "a traceback was logged")

    async def test_disk_full_while_the_body_arrives(self):
        self.server.site.requestFactory.spool_factory = staticmethod(
            lambda ends=None: _FillingSpool(os.path.join(self.server.root, "regd", "spool")))
        response, _ = await self.server.request("POST", "/v2/full/blobs/uploads/")
        location = response.headers.getRawHeaders("Location")[0].replace(self.server.base, "")
        with capturedLogs() as events:
            status, body = await self.exchange("PATCH", location, os.urandom(300_000))
        self.assert_insufficient_storage(status, body, events)
        self.assertEqual(await self.server.registry.uploads.status("full", location.rsplit("/", 1)[1]), 0)
        self.assertEqual(os.listdir(os.path.join(self.server.root, "regd", "spool")), [])
        # The connection answered and the registry goes on serving.
        response, _ = await self.server.request("GET", location)
        self.assertEqual(response.code, 204)

    async def test_disk_full_while_storing_a_chunk(self):
        data = os.urandom(200_000)
        digest = await self.server.push_blob("full", data[:10])
        self.assertTrue(digest)
        response, _ = await self.server.request("POST", "/v2/full/blobs/uploads/")
        location = response.headers.getRawHeaders("Location")[0].replace(self.server.base, "")
        status, _ = await self.exchange("PATCH", location, data[:100_000])
        self.assertEqual(status, 202)

        def full(*args, **kwargs):
            return defer.fail(OSError(errno.ENOSPC, "No space left on device"))

        self.server.driver.store_spool = full
        self.server.site.requestFactory.upload_sink = None  # as on drivers that cannot append in place
        with capturedLogs() as events:
            status, body = await self.exchange("PATCH", location, data[100_000:])
        self.assert_insufficient_storage(status, body, events)
        self.assertEqual(await self.server.registry.uploads.status("full", location.rsplit("/", 1)[1]), 100_000)

    async def test_disk_full_while_a_chunk_is_written_in_place(self):
        data = os.urandom(200_000)
        response, _ = await self.server.request("POST", "/v2/full/blobs/uploads/")
        location = response.headers.getRawHeaders("Location")[0].replace(self.server.base, "")
        status, _ = await self.exchange("PATCH", location, data[:100_000])
        self.assertEqual(status, 202)
        real_write = FileAppender.write

        def filling(appender, chunk):
            if appender.size + len(chunk) > 50_000:
                raise OSError(errno.ENOSPC, "No space left on device", appender.path)
            real_write(appender, chunk)

        self.patch(FileAppender, "write", filling)
        with capturedLogs() as events:
            status, body = await self.exchange("PATCH", location, data[100_000:])
        self.assert_insufficient_storage(status, body, events)
        upload_id = location.split("?")[0].rsplit("/", 1)[1]
        self.assertEqual(await self.server.registry.uploads.status("full", upload_id), 100_000)
        data_file = os.path.join(self.server.root, "docker/registry/v2/repositories/full/_uploads", upload_id, "data")
        with open(data_file, "rb") as f:
            self.assertEqual(f.read(), data[:100_000])

    async def test_other_storage_failures_are_503(self):
        def broken(*args, **kwargs):
            return defer.fail(OSError(errno.EIO, "Input/output error"))

        self.server.driver.put_content = broken
        with capturedLogs() as events:
            status, body = await self.exchange("POST", "/v2/full/blobs/uploads/", b"")
        self.assertEqual((status, json.loads(body)["errors"][0]["code"]), (503, "UNAVAILABLE"))
        self.assertFalse([e for e in events if e.get("log_failure")])


class RealFullDiskTests(TestCase):
    """The same on a real 8 MiB tmpfs, when this runs as root."""

    def setUp(self):
        if os.geteuid() != 0:
            if in_ci():
                self.fail("mounting a tmpfs needs root")
            raise self.skipTest("mounting a tmpfs needs root")
        self.mount = os.path.abspath(self.mktemp())
        os.makedirs(self.mount)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", self.mount], capture_output=True)
        if result.returncode != 0:
            self.fail(f"cannot mount a tmpfs: {result.stderr.decode()}")
        self.addCleanup(subprocess.run, ["umount", "-l", self.mount], capture_output=True)

    async def test_a_push_that_fills_the_disk_is_refused_and_leaves_nothing(self):
        from regd.http.api import RegistryAPI
        from regd.http.site import RegdSite
        from regd.registry.service import Registry
        from regd.storage.filesystem import FilesystemDriver
        from regd.storage.threads import inline_runner
        from twisted.internet import reactor

        root = os.path.join(self.mount, "registry")
        registry = Registry(FilesystemDriver(root, inline_runner), reactor)
        site = RegdSite(RegistryAPI(registry).resource(), registry.new_spool, spool_threshold=1024)
        metrics = CollectorRegistry()
        site.metrics = HTTPMetrics(metrics, site, registry.uploads)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        small = os.urandom(1_000_000)
        small_digest = "sha256:" + hashlib.sha256(small).hexdigest()
        status, _ = await threads.deferToThread(
            raw_exchange, number, "POST", f"/v2/fits/blobs/uploads/?digest={small_digest}", small)
        self.assertEqual(status, 201)
        before = _files_under(root)
        big = os.urandom(12_000_000)
        big_digest = "sha256:" + hashlib.sha256(big).hexdigest()
        status, body = await threads.deferToThread(
            raw_exchange, number, "POST", f"/v2/toobig/blobs/uploads/?digest={big_digest}", big)
        self.assertEqual(status, 507, body)
        self.assertEqual(metrics.get_sample_value("regd_storage_errors_total", {"route": "blob_upload"}), 1.0)
        self.assertEqual(_files_under(root), before)  # no spool, blob or link half-written
        status, _ = await threads.deferToThread(
            raw_exchange, number, "GET", f"/v2/fits/blobs/{small_digest}", None)
        self.assertEqual(status, 200)


class SpoolCreationFailureTests(TestCase):
    async def test_no_room_for_a_spool_file_is_507(self):
        server = RegistryServer(self)

        def no_room(ends=None):
            raise OSError(errno.ENOSPC, "No space left on device")

        server.site.requestFactory.spool_factory = staticmethod(no_room)
        port = server.port.getHost().port
        with capturedLogs() as events:
            status, body = await threads.deferToThread(
                raw_exchange, port, "POST", f"/v2/full/blobs/uploads/?digest=sha256:{'0' * 64}", b"x" * 200_000)
        self.assertEqual(status, 507, body)
        self.assertFalse([e for e in events if e.get("log_failure")])
