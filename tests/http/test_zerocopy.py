"""Zero-copy (sendfile) blob downloads on plain TCP, over real loopback sockets."""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor, task, threads
from twisted.python.threadpool import ThreadPool
from twisted.protocols import policies
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import TestCase

from regd.http import zerocopy
from regd.storage.filesystem import FilesystemDriver
from regd.storage.threads import thread_pool_runner
from tests.support.server import RegistryServer, header, simple_image

BIG = 24 * 1024 * 1024


def _payload(size: int) -> bytes:
    block = os.urandom(1 << 20)
    return b"".join(i.to_bytes(8, "big") + block[8:] for i in range(size >> 20)) + block[: size % (1 << 20)]


class _Raw:
    """A blocking HTTP/1.1 client with a small receive buffer, run in a thread."""

    def __init__(self, port: int, path: str, headers: str = ""):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n".encode())
        self.head = b""
        self.body = b""
        while b"\r\n\r\n" not in self.head:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("connection closed before the response head")
            self.head += chunk
        self.head, _, self.body = self.head.partition(b"\r\n\r\n")
        for line in self.head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                self.length = int(line.split(b":")[1])

    def read(self, at_least: int) -> None:
        while len(self.body) < at_least:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return
            self.body += chunk

    def read_to_end(self) -> bool:
        """Read until Content-Length or EOF; False if the connection was cut."""
        try:
            self.read(self.length)
        except ConnectionResetError:
            return False
        return len(self.body) == self.length

    def close(self):
        self.sock.close()


class _Responses:
    """Reads pipelined HTTP/1.1 responses with a Content-Length, one after another, from a blocking socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def _fill(self):
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise AssertionError("connection closed")
        self.buffer += chunk

    def next(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(head[9:12]), body


class ZeroCopyTests(TestCase):
    def setUp(self):
        self.calls = []
        real = os.sendfile

        def counting(*args):
            sent = real(*args)
            self.calls.append(sent)
            return sent

        self.patch(zerocopy.os, "sendfile", counting)

    async def _server_with_blob(self, size=BIG):
        server = RegistryServer(self)
        self.logged = []
        log = server.site.log

        def recording(request):
            self.logged.append((request.method, request.code, request.sentLength))
            return log(request)

        server.site.log = recording
        data = _payload(size)
        digest = await server.push_blob("demo/zc", data)
        path = os.path.join(server.root, "docker", "registry", "v2", "blobs", "sha256", digest[7:9], digest[7:], "data")
        return server, data, digest, path

    async def _idle(self, server):
        """Wait (up to 10 s) until the server has no request in progress."""
        idle = server.site.when_idle()
        timer = reactor.callLater(10, idle.cancel)
        await idle
        timer.cancel()

    async def test_whole_blob_and_ranges_use_sendfile_and_log_byte_counts(self):
        server, data, digest, _ = await self._server_with_blob()
        url = f"/v2/demo/zc/blobs/{digest}"
        response, body = await server.request("GET", url)
        self.assertEqual(response.code, 200)
        self.assertEqual(body, data)
        self.assertTrue(self.calls, "sendfile was not used on plain TCP")
        self.assertEqual(sum(self.calls), len(data))
        cases = {
            "bytes=0-0": (0, 1),
            "bytes=100-199": (100, 100),
            f"bytes={BIG - 10}-": (BIG - 10, 10),
            "bytes=-4096": (BIG - 4096, 4096),
            f"bytes=5000000-{BIG + 99}": (5_000_000, BIG - 5_000_000),
        }
        for spec, (start, length) in cases.items():
            response, body = await server.request("GET", url, headers={"Range": spec})
            self.assertEqual(response.code, 206, spec)
            self.assertEqual(body, data[start:start + length], spec)
            self.assertEqual(header(response, "Content-Range"), f"bytes {start}-{start + length - 1}/{BIG}")
        await self._idle(server)
        gets = [entry for entry in self.logged if entry[0] == b"GET"]
        self.assertEqual(gets[0], (b"GET", 200, BIG))
        self.assertEqual([entry[2] for entry in gets[1:]], [length for _, length in cases.values()])

    async def test_keep_alive_connection_serves_requests_after_a_zero_copy_body(self):
        server, data, digest, _ = await self._server_with_blob(3 * 1024 * 1024)

        def two_requests():
            first = _Raw(server.port.getHost().port, f"/v2/demo/zc/blobs/{digest}")
            try:
                self.assertTrue(first.read_to_end())
                body, extra = first.body[:first.length], first.body[first.length:]
                first.sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
                while b"\r\n\r\n{}" not in extra:
                    chunk = first.sock.recv(65536)
                    if not chunk:
                        break
                    extra += chunk
                return body, extra
            finally:
                first.close()

        body, second = await threads.deferToThread(two_requests)
        self.assertEqual(body, data)
        self.assertTrue(second.startswith(b"HTTP/1.1 200"), second[:100])

    async def test_client_hang_up_mid_file_releases_everything(self):
        server, data, digest, _ = await self._server_with_blob()
        before = set(os.listdir("/proc/self/fd"))

        def hang_up():
            client = _Raw(server.port.getHost().port, f"/v2/demo/zc/blobs/{digest}")
            client.read(256 * 1024)
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.close()  # a reset, as a killed client would leave
            return len(client.body)

        got = await threads.deferToThread(hang_up)
        self.assertLess(got, BIG)
        await self._idle(server)
        await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(set(os.listdir("/proc/self/fd")) - before, set(), "descriptor left open")
        # The server goes on serving.
        response, body = await server.request("GET", f"/v2/demo/zc/blobs/{digest}", headers={"Range": "bytes=0-9"})
        self.assertEqual(body, data[:10])

    async def test_blob_replaced_during_download_sends_the_old_whole_file(self):
        server, data, digest, path = await self._server_with_blob()

        def replace_midway():
            client = _Raw(server.port.getHost().port, f"/v2/demo/zc/blobs/{digest}")
            try:
                client.read(256 * 1024)
                with open(path + ".new", "wb") as f:
                    f.write(b"\xff" * BIG)
                os.replace(path + ".new", path)
                whole = client.read_to_end()
                return whole, client.body
            finally:
                client.close()

        whole, body = await threads.deferToThread(replace_midway)
        self.assertTrue(whole)
        self.assertEqual(body, data)

    async def test_blob_removed_during_download_sends_the_old_whole_file(self):
        server, data, digest, path = await self._server_with_blob()

        def remove_midway():
            client = _Raw(server.port.getHost().port, f"/v2/demo/zc/blobs/{digest}")
            try:
                client.read(256 * 1024)
                os.unlink(path)
                return client.read_to_end(), client.body
            finally:
                client.close()

        whole, body = await threads.deferToThread(remove_midway)
        self.assertTrue(whole)
        self.assertEqual(body, data)

    async def test_blob_cut_short_during_download_cuts_the_connection(self):
        server, data, digest, path = await self._server_with_blob()

        def truncate_midway():
            client = _Raw(server.port.getHost().port, f"/v2/demo/zc/blobs/{digest}")
            try:
                client.read(256 * 1024)
                os.truncate(path, BIG // 2)
                return client.read_to_end(), client.body
            finally:
                client.close()

        whole, body = await threads.deferToThread(truncate_midway)
        self.assertFalse(whole, "a short file must never look like a whole body")
        self.assertLessEqual(len(body), BIG // 2)
        self.assertEqual(body, data[:len(body)], "bytes sent are a prefix of the blob, never mixed")
        await self._idle(server)

    async def test_channel_paused_by_a_full_buffer_goes_on_after_a_zero_copy_body(self):
        """
        A pipelined blob GET whose head is queued behind a response the client has not read yet: the
        transport had paused the HTTP channel when the sendfile producer took its slot, and reading was
        paused for the pipelined requests behind it. Once the body is out, the channel must be resumed,
        or the connection never reads again.
        """
        pool = ThreadPool(minthreads=1, maxthreads=2, name="test-storage")
        pool.start()
        self.addCleanup(pool.stop)
        # Storage in real threads: the manifest GET is answered a reactor turn later, after the pipelined
        # requests behind it were read and buffered (more than the channel takes before it stops reading).
        root = self.mktemp()
        driver = FilesystemDriver(root, thread_pool_runner(reactor, pool), inline_reads=False)
        server = RegistryServer(self, driver=driver, root=root)
        data = _payload(256 * 1024)
        digest = await server.push_blob("demo/zc", data)
        document = await simple_image(server, "demo/zc")
        document["annotations"] = {"pad": "x" * 200_000}  # a response well over the transport's 64 KiB
        response, _, manifest = await server.push_manifest("demo/zc", "big", document)
        self.assertEqual(response.code, 201)
        connections = []
        build = server.site.buildProtocol

        def recording(addr):
            protocol = build(addr)
            connections.append(protocol)
            return protocol

        self.patch(server.site, "buildProtocol", recording)
        address = ("127.0.0.1", server.port.getHost().port)
        client = await threads.deferToThread(socket.create_connection, address, 20)
        self.addCleanup(client.close)
        while not connections or connections[0].transport is None:
            await task.deferLater(reactor, 0.01, lambda: None)
        # Small kernel buffers both ways, so the unread manifest stays in the transport's own buffer.
        connections[0].transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # 20 KiB of pipelined requests, more than the channel buffers before it stops reading, whose answers
        # stay well under the transport's 64 KiB (a buffer that fills pauses and resumes the channel anew).
        fillers = 20
        filler = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"

        def pipeline():
            client.sendall(b"GET /v2/demo/zc/manifests/big HTTP/1.1\r\nHost: x\r\n"
                           b"Accept: application/vnd.oci.image.manifest.v1+json\r\n\r\n"
                           + f"GET /v2/demo/zc/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                           + filler * fillers)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            reader = _Responses(client)
            answers = [reader.next() for _ in range(2 + fillers)]
            client.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            answers.append(reader.next())
            return answers

        answers = await threads.deferToThread(pipeline)
        self.assertEqual([status for status, _ in answers], [200] * (3 + fillers))
        self.assertEqual(answers[0][1], manifest)
        self.assertEqual(answers[1][1], data)
        self.assertTrue(self.calls, "the blob went by sendfile")


class BodiesThroughPythonTests(TestCase):
    async def test_a_body_read_by_python_leaves_in_sends_above_twisteds_128_kib(self):
        # Memory (and S3) storage hand out no file: the body passes through Python. Each
        # send may take what the socket has room for; at 128 KiB a call, a 1 GiB pull from
        # S3 cost 8,200 trips through the reactor.
        from regd.storage.memory import InMemoryDriver
        from twisted.internet import tcp

        sent = []
        real = tcp.Server.writeSomeData

        def counting(transport, data):
            result = real(transport, data)
            if isinstance(result, int):
                sent.append(result)
            return result

        self.patch(tcp.Server, "writeSomeData", counting)
        server = RegistryServer(self, driver=InMemoryDriver())
        data = _payload(BIG)
        digest = await server.push_blob("demo/mem", data)
        sent.clear()
        response, body = await server.request("GET", f"/v2/demo/mem/blobs/{digest}")
        self.assertEqual((response.code, body), (200, data))
        self.assertGreater(max(sent), 128 * 1024)
        self.assertLess(len(sent), BIG // (128 * 1024))


class TransportDetectionTests(TestCase):
    def test_tls_anywhere_in_the_chain_disables_zero_copy(self):
        class Channel:
            pass

        class Request:
            pass

        tls = TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol)
        wrapper = policies.ProtocolWrapper.__new__(policies.ProtocolWrapper)
        wrapper.transport = tls
        tls.transport = object()
        request, request.channel = Request(), Channel()
        request.channel.transport = wrapper
        self.assertIsNone(zerocopy.plain_tcp_transport(request))

    def test_non_tcp_transport_disables_zero_copy(self):
        from twisted.internet.testing import StringTransport

        class Channel:
            transport = StringTransport()

        class Request:
            channel = Channel()

        self.assertIsNone(zerocopy.plain_tcp_transport(Request()))




class TLSDownloadTests(TestCase):
    """Over TLS the producer path runs, with the TLS layer taking large writes whole: bytes must be exact."""

    async def test_whole_blob_and_a_range_over_tls(self):
        import ssl

        from tests.support.certs import PKI

        calls = []
        self.patch(zerocopy.os, "sendfile", lambda *args: calls.append(args) or os.sendfile(*args))
        server = RegistryServer(self)
        data = _payload(5 * 1024 * 1024 + 12345)
        digest = await server.push_blob("demo/tls", data)
        pki = PKI(os.path.abspath(self.mktemp()))
        server.site.plain_http = False
        port = reactor.listenSSL(0, server.site, pki.server_options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        context = ssl.create_default_context(cafile=pki.ca)
        context.check_hostname = False

        def fetch(headers=""):
            with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=20) as raw:
                with context.wrap_socket(raw) as sock:
                    sock.sendall(f"GET /v2/demo/tls/blobs/{digest} HTTP/1.1\r\nHost: localhost\r\n"
                                 f"Connection: close\r\n{headers}\r\n".encode())
                    received = b""
                    while True:
                        chunk = sock.recv(1 << 20)
                        if not chunk:
                            break
                        received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            return head, body

        head, body = await threads.deferToThread(fetch)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head[:80])
        self.assertEqual(body, data)
        head, body = await threads.deferToThread(fetch, "Range: bytes=1000-2099999\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 206"), head[:80])
        self.assertEqual(body, data[1000:2100000])
        self.assertEqual(calls, [], "no sendfile under TLS")
