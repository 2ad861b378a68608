"""Request bodies stream into storage spools, not into temporary files elsewhere."""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile

from twisted.internet import reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from zope.interface import directlyProvides

from regd.http.site import RegdSite
from regd.storage.interfaces import IBodySpool
from tests.support.server import RegistryServer, header


def _raw_request(port: int, head: bytes, body_chunks, read_response=True) -> bytes:
    """Blocking raw HTTP/1.1 exchange, run in a thread by the tests."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            sock.sendall(chunk)
        if not read_response:
            return b""
        data = b""
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                break
            data += more
        return data


class SpoolTests(TestCase):
    async def test_large_body_goes_to_storage_spool_not_tmp(self):
        server = RegistryServer(self, spool_threshold=1024)
        seen = []
        original = server.site.requestFactory.spool_factory

        def recording_factory(ends=None):
            spool = original(ends)
            seen.append(spool)
            return spool

        server.site.requestFactory.spool_factory = staticmethod(recording_factory)
        before = set(os.listdir(tempfile.gettempdir()))
        data = os.urandom(2_000_000)
        digest = await server.push_blob("demo", data)
        self.assertEqual(len(seen), 1)
        self.assertTrue(IBodySpool.providedBy(seen[0]))
        self.assertEqual(set(os.listdir(tempfile.gettempdir())) - before, set())
        _, body = await server.request("GET", f"/v2/demo/blobs/{digest}")
        self.assertEqual(hashlib.sha256(body).hexdigest(), digest.split(":")[1])
        spool_dir = os.path.join(server.root, "regd", "spool")
        self.assertEqual(os.listdir(spool_dir), [])

    async def test_chunked_transfer_encoding_upload(self):
        server = RegistryServer(self)
        port = server.port.getHost().port
        data = os.urandom(300_000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response, _ = await server.request("POST", "/v2/demo/blobs/uploads/")
        location = header(response, "Location").split(str(port), 1)[1]
        head = (f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n"
                "Connection: close\r\n\r\n").encode()
        pieces = [data[i:i + 65536] for i in range(0, len(data), 65536)]
        chunks = [b"%x\r\n%s\r\n" % (len(p), p) for p in pieces] + [b"0\r\n\r\n"]
        reply = await threads.deferToThread(_raw_request, port, head, chunks)
        self.assertTrue(reply.startswith(b"HTTP/1.1 202"), reply[:200])
        response, body = await server.request("PUT", f"{location}?digest={digest}")
        self.assertEqual(response.code, 201, body)
        _, body = await server.request("GET", f"/v2/demo/blobs/{digest}")
        self.assertEqual(body, data)

    async def test_dropped_upload_leaves_no_spool(self):
        server = RegistryServer(self, spool_threshold=1024)
        port = server.port.getHost().port
        head = (f"POST /v2/demo/blobs/uploads/?digest=sha256:{'a' * 64} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nContent-Length: 10000000\r\n\r\n").encode()
        await threads.deferToThread(_raw_request, port, head, [b"x" * 100_000], False)
        spool_dir = os.path.join(server.root, "regd", "spool")
        for _ in range(100):
            if os.path.isdir(spool_dir) and not os.listdir(spool_dir):
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(os.listdir(spool_dir), [])

    async def test_body_over_limit_is_refused_with_413(self):
        server = RegistryServer(self, max_body_size=1000)
        port = server.port.getHost().port
        head = (f"POST /v2/demo/blobs/uploads/?digest=sha256:{'a' * 64} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nContent-Length: 5000\r\n\r\n").encode()
        reply = await threads.deferToThread(_raw_request, port, head, [b"x" * 5000])
        self.assertTrue(reply.startswith(b"HTTP/1.1 413"), reply[:100])
        self.assertIn(b"Docker-Distribution-API-Version: registry/2.0", reply)


class PlainHttpTests(TestCase):
    async def test_tls_client_hello_gets_an_immediate_400(self):
        server = RegistryServer(self)
        port = server.port.getHost().port
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64

        def exchange():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(hello)
                return sock.recv(4096)

        reply = await threads.deferToThread(exchange)
        self.assertTrue(reply.startswith(b"HTTP/1.0 400 Bad Request"), reply)


class HashOnceTests(TestCase):
    async def test_every_byte_of_a_chunked_upload_is_hashed_once(self):
        from regd.oci import hashstate

        hashed = []
        real_update = hashstate.ResumableSha256.update

        def counting(self, data):
            hashed.append(len(data))
            return real_update(self, data)

        self.patch(hashstate.ResumableSha256, "update", counting)
        server = RegistryServer(self)
        data = os.urandom(3 * 300_000)
        response, _ = await server.request("POST", "/v2/demo/once/blobs/uploads/")
        location = header(response, "Location")
        for offset in range(0, len(data), 300_000):
            chunk = data[offset:offset + 300_000]
            response, body = await server.request("PATCH", location, chunk, {
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}", "Content-Type": "application/octet-stream"})
            self.assertEqual(response.code, 202, body)
            location = header(response, "Location")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        sep = "&" if "?" in location else "?"
        response, body = await server.request("PUT", f"{location}{sep}digest={digest}")
        self.assertEqual(response.code, 201, body)
        self.assertEqual(sum(hashed), len(data), hashed)
        _, pulled = await server.request("GET", f"/v2/demo/once/blobs/{digest}")
        self.assertEqual(pulled, data)


class InPlaceChunkTests(TestCase):
    """A PATCH that continues an upload is written straight into the upload's data, once."""

    async def patch(self, server, location, chunk, start, headers=None):
        response, body = await server.request("PATCH", location, chunk, {
            "Content-Range": f"{start}-{start + len(chunk) - 1}", "Content-Type": "application/octet-stream",
            **(headers or {})})
        return response, body

    def data_file(self, server, name, location):
        upload_id = location.split("?")[0].rsplit("/", 1)[1]
        return os.path.join(server.root, "docker/registry/v2/repositories", name, "_uploads", upload_id, "data")

    async def finish(self, server, name, location, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        sep = "&" if "?" in location else "?"
        response, body = await server.request("PUT", f"{location}{sep}digest={digest}")
        self.assertEqual(response.code, 201, body)
        _, pulled = await server.request("GET", f"/v2/{name}/blobs/{digest}")
        self.assertEqual(pulled, data)

    async def test_later_chunks_go_into_the_upload_not_a_spool(self):
        server = RegistryServer(self)
        spools = []
        original = server.site.requestFactory.spool_factory

        def recording_factory(ends=None):
            spools.append(original(ends))
            return spools[-1]

        server.site.requestFactory.spool_factory = staticmethod(recording_factory)
        data = os.urandom(4 * 300_000)
        response, _ = await server.request("POST", "/v2/demo/inplace/blobs/uploads/")
        location = header(response, "Location")
        inodes = set()
        for offset in range(0, len(data), 300_000):
            response, body = await self.patch(server, location, data[offset:offset + 300_000], offset)
            self.assertEqual(response.code, 202, body)
            self.assertEqual(header(response, "Range"), f"0-{offset + 300_000 - 1}")
            location = header(response, "Location")
            inodes.add(os.stat(self.data_file(server, "demo/inplace", location)).st_ino)
        # Only the first body was spooled (and renamed into place); the data file stayed the same file.
        self.assertEqual(len(spools), 1)
        self.assertEqual(len(inodes), 1)
        await self.finish(server, "demo/inplace", location, data)

    async def test_an_aborted_chunk_leaves_the_upload_as_it_was(self):
        server = RegistryServer(self)
        port = server.port.getHost().port
        first, rest = os.urandom(100_000), os.urandom(300_000)
        response, _ = await server.request("POST", "/v2/demo/blobs/uploads/")
        response, _ = await self.patch(server, header(response, "Location"), first, 0)
        location = header(response, "Location")
        path = location.split(str(port), 1)[1]
        head = (f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Range: 100000-1099999\r\n"
                "Content-Length: 1000000\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
        await threads.deferToThread(_raw_request, port, head, [rest], False)  # 300 KB of 1 MB, then hangs up
        data_file = self.data_file(server, "demo", location)
        for _ in range(200):
            response, _ = await server.request("GET", location)
            if response.code == 204 and os.path.getsize(data_file) == 100_000:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(header(response, "Range"), "0-99999")
        with open(data_file, "rb") as f:
            self.assertEqual(f.read(), first)
        response, body = await self.patch(server, location, rest, 100_000)
        self.assertEqual(response.code, 202, body)
        await self.finish(server, "demo", header(response, "Location"), first + rest)

    async def test_an_out_of_order_chunk_is_416_and_changes_nothing(self):
        server = RegistryServer(self)
        first = os.urandom(100_000)
        response, _ = await server.request("POST", "/v2/demo/blobs/uploads/")
        response, _ = await self.patch(server, header(response, "Location"), first, 0)
        location = header(response, "Location")
        for start in (50_000, 150_000):
            response, body = await self.patch(server, location, os.urandom(70_000), start)
            self.assertEqual(response.code, 416, body)
            self.assertEqual(header(response, "Range"), "0-99999")
        # A Content-Range that starts right but does not match the body's length.
        response, body = await server.request("PATCH", location, os.urandom(70_000), {
            "Content-Range": "100000-100999", "Content-Type": "application/octet-stream"})
        self.assertEqual(response.code, 400, body)
        with open(self.data_file(server, "demo", location), "rb") as f:
            self.assertEqual(f.read(), first)
        second = os.urandom(70_000)
        response, body = await self.patch(server, location, second, 100_000)
        self.assertEqual(response.code, 202, body)
        await self.finish(server, "demo", header(response, "Location"), first + second)

    async def test_another_instance_takes_the_next_chunks(self):
        a = RegistryServer(self)
        b = RegistryServer(self, root=a.root)
        data = os.urandom(5 * 200_000)
        response, _ = await a.request("POST", "/v2/demo/blobs/uploads/")
        path = header(response, "Location").split(str(a.port.getHost().port), 1)[1]
        for i, offset in enumerate(range(0, len(data), 200_000)):
            server = (a, b)[i % 2]
            response, body = await self.patch(server, path, data[offset:offset + 200_000], offset)
            self.assertEqual(response.code, 202, body)
            path = header(response, "Location").split(str(server.port.getHost().port), 1)[1]
        await self.finish(b, "demo", path, data)


class UploadTargetTests(SynchronousTestCase):
    def test_the_upload_a_request_line_names(self):
        from regd.http.site import _upload_target
        upload = "2b6a3c36-1f0a-4d8e-9c57-1d2b2b0c5e11"
        self.assertEqual(_upload_target(f"/v2/a/b/blobs/uploads/{upload}?_state=x".encode(), ""), ("a/b", upload))
        self.assertEqual(_upload_target(f"/reg/v2/a/blobs/uploads/{upload}".encode(), "/reg"), ("a", upload))
        self.assertEqual(_upload_target(f"/v2/a%2Fb/blobs/uploads/{upload}".encode(), ""), ("a/b", upload))
        for path in (f"/v2/a/blobs/uploads/{upload}/x", "/v2/a/blobs/uploads/", f"/v2/a/blobs/{upload}",
                     f"/x/v2/a/blobs/uploads/{upload}", "/v2/%ff/blobs/uploads/u", ""):
            self.assertIsNone(_upload_target(path.encode(), ""), path)
        self.assertIsNone(_upload_target(f"/v2/a/blobs/uploads/{upload}".encode(), "/reg"))


class ConnectionFactsTests(SynchronousTestCase):
    """What does not change during a connection is asked of its transport once, not on every request."""

    HOST = IPv4Address("TCP", "127.0.0.1", 5000)
    PEER = IPv4Address("TCP", "127.0.0.1", 40000)

    def connect(self, site, secure=False):
        transport = StringTransport(hostAddress=self.HOST, peerAddress=self.PEER)
        if secure:
            directlyProvides(transport, ISSLTransport)
        asked = []
        for name in ("getHost", "getPeer"):
            real = getattr(transport, name)
            setattr(transport, name, lambda real=real, name=name: asked.append(name) or real())
        guard = site.buildProtocol(self.PEER)
        guard.makeConnection(transport)
        return guard, asked

    def test_addresses_come_from_the_transport_once_and_stay_after_close(self):
        guard, asked = self.connect(RegdSite(Resource()))
        for _ in range(3):
            self.assertEqual((guard.getHost(), guard.getPeer()), (self.HOST, self.PEER))
        self.assertEqual(sorted(asked), ["getHost", "getPeer"])
        guard.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((guard.getHost(), guard.getPeer()), (self.HOST, self.PEER))

    def requests_on(self, secure):
        site = RegdSite(Resource())
        channel = HTTPChannel()
        channel.site = site
        channel.makeConnection(StringTransport(hostAddress=self.HOST, peerAddress=self.PEER))
        if secure:
            directlyProvides(channel.transport, ISSLTransport)
        asked = []
        real = channel.isSecure
        channel.isSecure = lambda: asked.append(1) or real()
        return [site.requestFactory(channel) for _ in range(3)], asked

    def test_tls_is_asked_of_the_channel_once(self):
        for secure in (False, True):
            requests, asked = self.requests_on(secure)
            self.assertEqual([r.isSecure() for r in requests for _ in range(2)], [secure] * 6)
            self.assertEqual(len(asked), 1)

    def test_a_host_set_as_secure_is_secure(self):
        requests, _ = self.requests_on(False)
        requests[0].setHost(b"registry.example", 443, ssl=True)
        self.assertEqual([r.isSecure() for r in requests], [True, False, False])

    def test_every_request_has_its_own_request_id(self):
        requests, _ = self.requests_on(False)
        ids = [r.request_id for r in requests]
        self.assertEqual(len(set(ids)), 3)
        for request_id in ids:
            self.assertRegex(request_id, "^[0-9a-f]{32}$")
