"""Big blob bodies over TLS encrypted onto the socket by a thread, over real loopback sockets and Python's ssl."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from types import SimpleNamespace

from twisted.internet import reactor, task, threads
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from regd.http import tlssend
from regd.http.site import tls_listener_factory
from tests.support.certs import PKI
from tests.support.server import RegistryServer

BIG = 24 * 1024 * 1024


def _payload(size: int) -> bytes:
    block = os.urandom(1 << 20)
    return b"".join(i.to_bytes(8, "big") + block[8:] for i in range(size >> 20)) + block[: size % (1 << 20)]


class _Client:
    """A blocking HTTP/1.1 client over TLS with a small receive buffer, run in a thread."""

    def __init__(self, port: int, context: ssl.SSLContext):
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        raw.settimeout(20)
        raw.connect(("127.0.0.1", port))
        self.sock = context.wrap_socket(raw)
        self.buffer = b""

    def send(self, method: str, path: str, headers: str = "") -> None:
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n".encode())

    def head(self) -> tuple[bytes, int]:
        """The next response head and its Content-Length."""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before a response head: {self.buffer[:100]!r}")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return head, length

    def read(self, size: int) -> bytes:
        """Up to C{size} bytes of body (fewer if the connection ends)."""
        try:
            while len(self.buffer) < size:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    break
                self.buffer += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
        body, self.buffer = self.buffer[:size], self.buffer[size:]
        return body

    def get(self, path: str, headers: str = "") -> tuple[bytes, bytes]:
        self.send("GET", path, headers)
        head, length = self.head()
        return head, self.read(length)

    def reset(self) -> None:
        """Hang up with a reset, as a killed client would."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


class TLSSendTests(TestCase):
    def setUp(self):
        self.assertTrue(tlssend.AVAILABLE, "pyOpenSSL's binding lacks what the TLS sender needs")
        self.senders = []
        start = tlssend.TLSFileSender.start

        def counting(sender):
            self.senders.append(sender)
            return start(sender)

        self.patch(tlssend.TLSFileSender, "start", counting)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    async def _server_with_blob(self, size=BIG, maximum_version=None):
        server = RegistryServer(self)
        self.logged = []
        log = server.site.log

        def recording(request):
            self.logged.append((request.method, request.code, request.sentLength, request.aborted))
            return log(request)

        server.site.log = recording
        server.site.aborted = recording
        data = _payload(size)
        digest = await server.push_blob("demo/tls", data)
        path = os.path.join(server.root, "docker", "registry", "v2", "blobs", "sha256", digest[7:9], digest[7:], "data")
        pki = PKI(os.path.abspath(self.mktemp()))
        server.site.plain_http = False
        port = reactor.listenTCP(0, tls_listener_factory(pki.server_options(), server.site), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.context = ssl.create_default_context(cafile=pki.ca)
        self.context.check_hostname = False
        if maximum_version is not None:
            self.context.maximum_version = maximum_version
        self.port = port.getHost().port
        self.url = f"/v2/demo/tls/blobs/{digest}"
        return server, data, path

    def _client(self) -> _Client:
        return _Client(self.port, self.context)

    async def _idle(self, server):
        """Wait (up to 10 s) until no request is in progress and no sender thread runs."""
        idle = server.site.when_idle()
        timer = reactor.callLater(10, idle.cancel)
        await idle
        timer.cancel()
        for _ in range(500):
            if tlssend._active == 0:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(tlssend._active, 0, "a sender did not end")

    def _tracebacks(self):
        return [e for e in self.events if e.get("log_failure") is not None or e.get("isError")]

    async def test_whole_blob_and_ranges_over_one_keep_alive_connection(self):
        server, data, _ = await self._server_with_blob()
        cases = {
            "bytes=100-199": (100, 100),
            f"bytes={BIG - 10}-": (BIG - 10, 10),
            "bytes=-3000000": (BIG - 3000000, 3000000),
            f"bytes=5000000-{BIG + 99}": (5_000_000, BIG - 5_000_000),
        }

        def fetch_all():
            client = self._client()
            try:
                results = [client.get(self.url)]
                for spec in cases:
                    results.append(client.get(self.url, f"Range: {spec}\r\n"))
                results.append(client.get("/v2/"))
                return results
            finally:
                client.close()

        results = await threads.deferToThread(fetch_all)
        head, body = results[0]
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head[:80])
        self.assertEqual(body, data)
        for (spec, (start, length)), (head, body) in zip(cases.items(), results[1:]):
            self.assertTrue(head.startswith(b"HTTP/1.1 206"), (spec, head[:80]))
            self.assertIn(f"Content-Range: bytes {start}-{start + length - 1}/{BIG}".encode(), head)
            self.assertEqual(body, data[start:start + length], spec)
        self.assertTrue(results[-1][0].startswith(b"HTTP/1.1 200"))
        self.assertEqual(results[-1][1], b"{}")
        # The whole blob and the ranges of at least 1 MiB went by the thread, the small ones did not.
        self.assertEqual(len(self.senders), 3)
        await self._idle(server)
        gets = [entry for entry in self.logged if entry[0] == b"GET" and entry[1] in (200, 206)]
        self.assertEqual([entry[2] for entry in gets[:5]], [BIG] + [length for _, length in cases.values()])
        self.assertEqual(self._tracebacks(), [])

    async def test_full_socket_and_partial_writes_resume_where_they_stopped(self):
        server, data, _ = await self._server_with_blob()
        offered, calls = [], [0]
        write = tlssend._socket_write

        def flaky(fd, chunk):
            # Every third write finds the socket full; the others take at most an odd number of bytes.
            calls[0] += 1
            offered.append(len(chunk))
            if calls[0] % 3 == 0:
                raise BlockingIOError(11, "Resource temporarily unavailable")
            return write(fd, chunk[:100003])

        self.patch(tlssend, "_socket_write", flaky)

        def fetch():
            client = self._client()
            try:
                whole = client.get(self.url)
                return whole, client.get(self.url, "Range: bytes=3-2000000\r\n"), client.get("/v2/")
            finally:
                client.close()

        (_, whole), (_, part), (head, small) = await threads.deferToThread(fetch)
        self.assertEqual(whole, data)
        self.assertEqual(part, data[3:2000001])
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head[:80])
        self.assertEqual(small, b"{}")
        self.assertEqual(len(self.senders), 2)
        # A piece's records were offered to the socket in one write, not one write per 16 KiB record.
        self.assertGreaterEqual(max(offered), tlssend.PIECE)
        self.assertLess(len(offered), 3 * (BIG + 2000000) // 100003 + 200)
        await self._idle(server)
        self.assertEqual(self._tracebacks(), [])

    async def test_ciphertext_outgrowing_the_room_before_the_plaintext_goes_out_first(self):
        # Small records or a small gap: the ciphertext reaches the plaintext not yet encrypted, and must be
        # written out before more is read out of the BIO over it.
        self.patch(tlssend, "GAP", 64)
        self.patch(tlssend, "STEP", 5000)
        server, data, _ = await self._server_with_blob(3 * 1024 * 1024 + 777)
        written = []
        write = tlssend._socket_write

        def counting(fd, chunk):
            written.append(len(chunk))
            return write(fd, chunk)

        self.patch(tlssend, "_socket_write", counting)

        def fetch():
            client = self._client()
            try:
                return client.get(self.url)[1], client.get(self.url, "Range: bytes=1-1048577\r\n")[1]
            finally:
                client.close()

        whole, part = await threads.deferToThread(fetch)
        self.assertEqual(whole, data)
        self.assertEqual(part, data[1:1048578])
        self.assertEqual(len(self.senders), 2)
        self.assertGreater(len(written), 2 * len(data) // tlssend.PIECE + 2, "no write made room")
        await self._idle(server)
        self.assertEqual(self._tracebacks(), [])

    async def test_socket_error_mid_body_cuts_the_connection_and_logs_it(self):
        server, data, _ = await self._server_with_blob()
        calls = [0]
        write = tlssend._socket_write

        def failing(fd, chunk):
            calls[0] += 1
            if calls[0] == 5:
                raise ConnectionResetError(104, "Connection reset by peer")
            return write(fd, chunk)

        self.patch(tlssend, "_socket_write", failing)

        def fetch():
            client = self._client()
            try:
                client.send("GET", self.url)
                _, length = client.head()
                return client.read(length)
            finally:
                client.close()

        body = await threads.deferToThread(fetch)
        self.assertLess(len(body), BIG)
        self.assertEqual(body, data[:len(body)])
        await self._idle(server)
        cut = [e for e in self.events if "TLS download cut" in e.get("log_format", "")]
        self.assertEqual(len(cut), 1)
        self.assertIn("Connection reset by peer", cut[0]["why"])
        aborted = [entry for entry in self.logged if entry[0] == b"GET" and entry[3]]
        self.assertEqual(len(aborted), 1, self.logged)
        self.assertEqual(self._tracebacks(), [])
        self.assertEqual(await threads.deferToThread(lambda: self._client().get(self.url)[1]), data)

    async def test_tls_1_2(self):
        server, data, _ = await self._server_with_blob(5 * 1024 * 1024 + 12345, ssl.TLSVersion.TLSv1_2)

        def fetch_twice():
            client = self._client()
            try:
                return client.sock.version(), client.get(self.url), client.get(self.url, "Range: bytes=7-2000006\r\n")
            finally:
                client.close()

        version, (_, whole), (_, part) = await threads.deferToThread(fetch_twice)
        self.assertEqual(version, "TLSv1.2")
        self.assertEqual(whole, data)
        self.assertEqual(part, data[7:2000007])
        self.assertEqual(len(self.senders), 2)

    async def test_pipelined_request_sent_during_the_body_is_answered_after_it(self):
        server, data, _ = await self._server_with_blob()

        def pipelined():
            client = self._client()
            try:
                client.send("GET", self.url)
                head, length = client.head()
                first = client.read(1 << 20)
                client.send("GET", "/v2/")  # arrives while the thread owns the connection
                first += client.read(length - len(first))
                second_head, second_length = client.head()
                return first, second_head, client.read(second_length)
            finally:
                client.close()

        first, second_head, second = await threads.deferToThread(pipelined)
        self.assertEqual(first, data)
        self.assertTrue(second_head.startswith(b"HTTP/1.1 200"), second_head[:80])
        self.assertEqual(second, b"{}")
        await self._idle(server)

    async def test_bytes_read_while_the_thread_sends_are_replayed_after_the_body(self):
        # Reading stops while the thread owns the connection; should anything resume it, what arrives
        # waits in the stand-in and reaches TLS and HTTP once the body is out.
        server, data, _ = await self._server_with_blob()
        client = await threads.deferToThread(self._client)
        self.addCleanup(client.close)

        def start():
            client.send("GET", self.url)
            return client.head()[1]

        length = await threads.deferToThread(start)
        for _ in range(500):
            if self.senders and self.senders[0]._started:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        sender = self.senders[0]
        sender.transport.startReading()
        await threads.deferToThread(client.send, "GET", "/v2/")
        for _ in range(500):
            if sender._parked.received or sender._finished:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(sender._parked.received, "nothing arrived while the thread was sending")

        def rest():
            body = client.read(length)
            head, second_length = client.head()
            return body, head, client.read(second_length)

        body, head, second = await threads.deferToThread(rest)
        self.assertEqual(body, data)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head[:80])
        self.assertEqual(second, b"{}")
        await self._idle(server)

    async def test_client_hang_up_mid_file_releases_everything_and_others_are_served(self):
        server, data, _ = await self._server_with_blob()
        await self._idle(server)
        before = set(os.listdir("/proc/self/fd"))

        def hang_up():
            client = self._client()
            client.send("GET", self.url)
            client.head()
            got = client.read(256 * 1024)
            client.reset()
            return len(got)

        self.assertLess(await threads.deferToThread(hang_up), BIG)
        await self._idle(server)
        await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(set(os.listdir("/proc/self/fd")) - before, set(), "descriptor left open")
        aborted = [entry for entry in self.logged if entry[0] == b"GET" and entry[3]]
        self.assertEqual(len(aborted), 1, self.logged)
        self.assertLess(aborted[0][2], BIG)
        self.assertTrue(self.senders[0]._started)
        self.assertEqual(len([e for e in self.events if "TLS download cut" in e.get("log_format", "")]), 1)
        self.assertEqual(self._tracebacks(), [])

        def fetch():
            client = self._client()
            try:
                return client.get(self.url)[1]
            finally:
                client.close()

        self.assertEqual(await threads.deferToThread(fetch), data)

    async def test_server_abort_while_the_client_stalls_stops_the_thread(self):
        server, data, _ = await self._server_with_blob()
        client = await threads.deferToThread(self._client)
        self.addCleanup(client.close)

        def start():
            client.send("GET", self.url)
            client.head()
            return client.read(64 * 1024)

        await threads.deferToThread(start)
        for _ in range(500):
            if self.senders and self.senders[0]._started:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        sender = self.senders[0]
        self.assertTrue(sender._started)
        # The client reads nothing more; the idle timeout (or a drain at shutdown) aborts the connection.
        sender.request.channel.forceAbortClient()
        await self._idle(server)
        self.assertTrue(sender.done.called)
        rest = await threads.deferToThread(client.read, BIG)
        self.assertLess(len(rest), BIG - 64 * 1024)
        self.assertEqual(self._tracebacks(), [])

    async def test_blob_replaced_or_removed_during_download_sends_the_old_whole_file(self):
        server, data, path = await self._server_with_blob()

        def change_midway(change):
            client = self._client()
            try:
                client.send("GET", self.url)
                _, length = client.head()
                body = client.read(256 * 1024)
                change()
                return body + client.read(length - len(body))
            finally:
                client.close()

        def replace():
            with open(path + ".new", "wb") as f:
                f.write(b"\xff" * BIG)
            os.replace(path + ".new", path)

        self.assertEqual(await threads.deferToThread(change_midway, replace), data)
        await self._idle(server)

    async def test_blob_cut_short_during_download_cuts_the_connection(self):
        server, data, path = await self._server_with_blob()

        def truncate_midway():
            client = self._client()
            try:
                client.send("GET", self.url)
                client.head()
                body = client.read(256 * 1024)
                os.truncate(path, BIG // 2)
                return body + client.read(BIG)
            finally:
                client.close()

        body = await threads.deferToThread(truncate_midway)
        self.assertLessEqual(len(body), BIG // 2)
        self.assertEqual(body, data[:len(body)], "bytes sent are a prefix of the blob, never mixed")
        await self._idle(server)
        self.assertEqual(self._tracebacks(), [])

    async def test_head_and_small_bodies_take_the_usual_path(self):
        server, data, _ = await self._server_with_blob()

        def requests():
            client = self._client()
            try:
                client.send("HEAD", self.url)
                head, length = client.head()
                small = client.get(self.url, "Range: bytes=0-1048574\r\n")[1]
                return head, length, small
            finally:
                client.close()

        head, length, small = await threads.deferToThread(requests)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head[:80])
        self.assertEqual(length, BIG)
        self.assertEqual(small, data[:1048575])
        self.assertEqual(self.senders, [])

    async def test_downloads_beyond_the_thread_cap_take_the_usual_path(self):
        self.patch(tlssend, "MAX_SENDERS", 1)
        server, data, _ = await self._server_with_blob(8 * 1024 * 1024)
        clients = [await threads.deferToThread(self._client) for _ in range(2)]
        for client in clients:
            self.addCleanup(client.close)

        def start(client):
            client.send("GET", self.url)
            return client.head()[1]

        lengths = [await threads.deferToThread(start, client) for client in clients]
        bodies = [threads.deferToThread(client.read, length) for client, length in zip(clients, lengths)]
        self.assertEqual([await body for body in bodies], [data, data])
        self.assertEqual(len(self.senders), 1)
        await self._idle(server)

    async def test_no_thread_to_be_had_cuts_that_download_only(self):
        server, data, _ = await self._server_with_blob(4 * 1024 * 1024)

        class NoThread:
            def __init__(self, *args, **kwargs):
                pass

            def start(self):
                raise RuntimeError("can't start new thread")

        self.patch(tlssend, "threading", SimpleNamespace(Thread=NoThread, Event=threading.Event))

        def fetch():
            client = self._client()
            try:
                client.send("GET", self.url)
                _, length = client.head()
                return length, client.read(length)
            finally:
                client.close()

        length, body = await threads.deferToThread(fetch)
        self.assertEqual(length, len(data))
        self.assertEqual(body, b"", "no byte of the body may go out once the connection was handed over")
        await self._idle(server)
        self.assertEqual(self._tracebacks(), [])
        response, _ = await server.request("GET", "/v2/")
        self.assertEqual(response.code, 200)
