"""
A client that hangs up mid-download: its unsent bytes are freed at once
(not at the next full garbage collection), and the request is in the access
log and the metrics like any other.
"""

from __future__ import annotations

import gc
import os
import socket

from prometheus_client import CollectorRegistry
from twisted.internet import reactor, task, tcp, threads
from twisted.trial.unittest import TestCase

from regd.http.bodies import StreamingBody
from regd.http.metrics import HTTPMetrics
from tests.support.server import RegistryServer


def _download_then_hang_up(port: int, path: str, keep: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        received = 0
        while received < keep:
            received += len(sock.recv(4096))
        return received


class _Lines:
    def __init__(self):
        self.lines = []

    def write(self, line):
        self.lines.append(line)

    def flush(self):
        pass

    def close(self):
        pass


class AbortedDownloadTests(TestCase):
    async def test_unsent_bytes_are_freed_without_a_garbage_collection(self):
        # The buffered path (TLS, drivers without sendfile): plain TCP sends files with sendfile(2).
        self.patch(StreamingBody, "zero_copy", False)
        server = RegistryServer(self)
        metrics = CollectorRegistry()
        server.site.metrics = HTTPMetrics(metrics, server.site, server.registry.uploads)
        access = server.site._logFile = _Lines()
        digest = await server.push_blob("big", os.urandom(8 << 20))
        gc.collect()
        gc.disable()  # only reference counting frees memory from here on, as on a busy server
        self.addCleanup(gc.enable)
        port = server.port.getHost().port
        for _ in range(3):
            await threads.deferToThread(_download_then_hang_up, port, f"/v2/big/blobs/{digest}", 10240)
        for _ in range(500):
            if server.site.in_flight == 0:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        held = [t for t in gc.get_objects() if isinstance(t, tcp.Server) and t.server is server.port
                and t.disconnected and (len(t.dataBuffer) or t._tempDataLen)]
        self.assertEqual(held, [], "closed connections still hold unsent response bytes")
        gc.enable()
        aborted = [line for line in access.lines if f"GET /v2/big/blobs/{digest}" in line]
        self.assertEqual(len(aborted), 3, access.lines)
        self.assertTrue(all(line.rstrip().endswith("aborted=true") for line in aborted), aborted)
        self.assertEqual(metrics.get_sample_value(
            "regd_http_requests_aborted_total", {"route": "blob", "method": "GET"}), 3.0)
