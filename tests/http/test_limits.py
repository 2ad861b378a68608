"""
Abuse: connections beyond the caps, slow request heads and slow bodies, on
real sockets; time is a Clock, so deadlines are exact and tests are quick.
(Aborted downloads and memory have their own test, with the download path.)
"""

from __future__ import annotations

import json
import socket

from prometheus_client import CollectorRegistry
from twisted.internet import reactor, task, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from regd.http.limits import ConnectionCounter, ConnectionLimits, raise_descriptor_limit
from regd.http.metrics import HTTPMetrics
from tests.support.server import RegistryServer


class Client:
    """A blocking socket driven from a thread, so the reactor stays free to serve it."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def send(self, data: bytes):
        return threads.deferToThread(self.sock.sendall, data)

    def read_all(self):
        def read():
            chunks = []
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
        return threads.deferToThread(read)

    def close(self):
        self.sock.close()


def status_and_body(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


class LimitTests(TestCase):
    def setUp(self):
        self.server = RegistryServer(self)
        self.clock = task.Clock()
        self.metrics = CollectorRegistry()

    def limit(self, **limits):
        self.server.site.connections = ConnectionCounter(ConnectionLimits(**limits), self.clock)
        HTTPMetrics(self.metrics, self.server.site)
        return self.server.site.connections

    def refused(self, reason: str) -> float | None:
        return self.metrics.get_sample_value("regd_connections_refused_total", {"reason": reason})

    def body_bytes(self) -> int:
        """Bytes of the body the server has received on the connection now receiving one."""
        guards = [p for p in self.server.site._wrapping.protocols if getattr(p, "_request", None) is not None]
        return guards[0]._request.body_bytes if guards else -1

    def connect(self) -> Client:
        client = Client(self.server.port.getHost().port)
        self.addCleanup(client.close)
        return client

    async def until(self, condition):
        for _ in range(500):
            if condition():
                return
            await task.deferLater(reactor, 0.01, lambda: None)
        self.fail("condition never became true")

    async def test_connections_beyond_the_per_client_cap_get_503(self):
        connections = self.limit(max_per_client=3)
        held = [self.connect() for _ in range(3)]
        await self.until(lambda: connections.total == 3)
        status, body = status_and_body(await self.connect().read_all())
        self.assertEqual((status, body["errors"][0]["code"]), (503, "TOOMANYREQUESTS"))
        self.assertEqual(self.refused("client"), 1.0)
        held[0].close()
        await self.until(lambda: connections.total == 2)
        client = self.connect()
        await client.send(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        self.assertTrue((await client.read_all()).startswith(b"HTTP/1.1 200"))

    async def test_connections_beyond_the_total_cap_get_503(self):
        connections = self.limit(max_connections=2)
        for _ in range(2):
            self.connect()
        await self.until(lambda: connections.total == 2)
        for _ in range(3):
            status, _ = status_and_body(await self.connect().read_all())
            self.assertEqual(status, 503)
        self.assertEqual((self.refused("total"), connections.total), (3.0, 2))

    async def test_a_slow_head_is_cut_at_the_deadline_whatever_trickles_in(self):
        connections = self.limit(head_timeout=10)
        client = self.connect()
        await self.until(lambda: connections.total == 1)
        for byte in b"GET /v2/ HTTP/1.1\r\nHost: ":
            await client.send(bytes([byte]))
            self.clock.advance(0.3)  # a byte every 0.3 s: far more than the idle timeout would allow for
            if self.clock.seconds() >= 9:
                break
        self.clock.advance(10)
        status, body = status_and_body(await client.read_all())
        self.assertEqual(status, 408)
        self.assertEqual(self.refused("head"), 1.0)

    async def test_the_head_deadline_counts_per_request_on_a_kept_alive_connection(self):
        connections = self.limit(head_timeout=10)
        client = self.connect()
        await self.until(lambda: connections.total == 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the head deadline
        await client.send(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        await self.until(lambda: not self.clock.getDelayedCalls())
        self.clock.advance(60)  # idle between requests: the idle timeout's business, not the head deadline's
        await client.send(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        response = await client.read_all()
        self.assertEqual(response.count(b"HTTP/1.1 200 OK"), 2)
        self.assertIsNone(self.refused("head") or None)

    async def test_a_stalled_upload_is_cut_with_408_and_leaves_no_spool(self):
        connections = self.limit(body_timeout=30, min_body_rate=100)
        response, _ = await self.server.request("POST", "/v2/x/blobs/uploads/")
        location = response.headers.getRawHeaders("Location")[0].replace(self.server.base, "")
        client = self.connect()
        await client.send(b"PATCH " + location.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: 100000\r\n\r\n" + b"a" * 3500)
        await self.until(lambda: self.body_bytes() >= 3500)
        self.clock.advance(30)  # 3500 bytes in 30 s: enough (>= 3000)
        await client.send(b"b" * 100)
        await self.until(lambda: self.body_bytes() >= 3600)
        self.clock.advance(30)  # then 100 bytes in 30 s: not
        status, body = status_and_body(await client.read_all())
        self.assertEqual((status, body["errors"][0]["code"]), (408, "BLOB_UPLOAD_INVALID"))
        self.assertEqual(self.refused("body"), 1.0)
        await self.until(lambda: connections.total == 0)

    async def test_a_steady_upload_and_its_commit_are_not_cut(self):
        self.limit(head_timeout=5, body_timeout=5, min_body_rate=1)
        digest = await self.server.push_blob("x", b"y" * 200000)
        self.clock.advance(60)  # timers left behind by finished requests would fire here
        response, _ = await self.server.request("HEAD", f"/v2/x/blobs/{digest}")
        self.assertEqual(response.code, 200)
        self.assertEqual([self.refused(r) for r in ("head", "body")], [0.0, 0.0])


class DescriptorLimitTests(SynchronousTestCase):
    def test_soft_limit_raised_to_hard(self):
        import resource
        before = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, before)
        hard = before[1]
        lowered = min(256, hard) if hard != resource.RLIM_INFINITY else 256
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
        soft, _ = raise_descriptor_limit()
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE)[0], soft)
        if hard != resource.RLIM_INFINITY:
            self.assertEqual(soft, hard)
