"""Native TLS: bundles with intermediates, TLS 1.2+, mutual TLS, reload without restart, clear startup errors."""

from __future__ import annotations

import os
import shutil
import socket
import ssl as stdlib_ssl
import subprocess
import sys

import attrs
from twisted.internet import reactor, task, threads
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase, TestCase

from regd.config import TLSConfig
from regd.daemon.tls import ReloadingServerContext, TLSConfigError, build_options
from regd.http.site import tls_listener_factory
from tests.support.certs import PKI
from tests.support.server import RegistryServer


def handshake(port: int, ca: str, *, maximum=None, client=None) -> tuple[str, str]:
    """Blocking TLS handshake + GET /v2/; returns (TLS version, peer certificate serial)."""
    context = stdlib_ssl.create_default_context(cafile=ca)
    if maximum is not None:
        context.minimum_version = stdlib_ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    if client:
        context.load_cert_chain(*client)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            reply = tls.recv(4096)
            assert reply.startswith(b"HTTP/1.1 200"), reply
            der = tls.getpeercert(binary_form=True)
            from cryptography import x509
            return tls.version(), str(x509.load_der_x509_certificate(der).serial_number)


def negotiated_cipher(port: int, ca: str, *, tls12_ciphers: str | None = None) -> str:
    """The cipher suite a Python client gets (TLS 1.2 only, in the client's order, when tls12_ciphers is given)."""
    context = stdlib_ssl.create_default_context(cafile=ca)
    if tls12_ciphers:
        context.maximum_version = stdlib_ssl.TLSVersion.TLSv1_2
        context.set_ciphers(tls12_ciphers)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.cipher()[0]


class BuildOptionsTests(SynchronousTestCase):
    def setUp(self):
        self.pki = PKI(os.path.abspath(self.mktemp()))

    def config(self, **changes):
        return attrs.evolve(TLSConfig(certificate=self.pki.server_chain, key=self.pki.server_key), **changes)

    def assert_error(self, config, expected):
        with self.assertRaises(TLSConfigError) as caught:
            build_options(config)
        self.assertEqual(str(caught.exception), expected)

    def test_clear_errors(self):
        self.assert_error(self.config(certificate="/nope.pem"),
                          "http.tls.certificate: cannot read /nope.pem: No such file or directory")
        self.assert_error(self.config(key=self.pki.client_key),
                          f"http.tls.key: {self.pki.client_key} does not match the certificate {self.pki.server_chain}")
        self.assert_error(self.config(key=self.pki.server_chain),
                          f"http.tls.key: {self.pki.server_chain} is not an unencrypted PEM private key")
        self.assert_error(self.config(minimumtls="tls1.0"),
                          "http.tls.minimumtls: tls1.0 is not allowed; use tls1.2 or tls1.3")
        self.assert_error(self.config(ciphersuites=("TLS_RSA_WITH_RC4_128_SHA",)),
                          "http.tls.ciphersuites: unknown or unsupported suite TLS_RSA_WITH_RC4_128_SHA")
        self.assertIsNotNone(build_options(self.config(ciphersuites=("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",))))

    def test_twistd_refuses_to_start_with_a_mismatched_key(self):
        config = os.path.abspath(self.mktemp())
        with open(config, "w") as f:
            f.write(f"storage:\n  inmemory: {{}}\n"
                    f"http:\n  addr: 127.0.0.1:0\n  tls:\n    certificate: {self.pki.server_chain}\n"
                    f"    key: {self.pki.client_key}\n")
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        result = subprocess.run([twistd, "-n", "--pidfile=", "regd", "--config", config],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.strip().splitlines(), [
            f"regd: configuration error: http.tls.key: {self.pki.client_key} does not match the certificate "
            f"{self.pki.server_chain}"])


class TLSServerTests(TestCase):
    async def start(self, **changes):
        self.pki = PKI(os.path.abspath(self.mktemp()))
        tls = attrs.evolve(TLSConfig(certificate=self.pki.server_chain, key=self.pki.server_key), **changes)
        self.context = ReloadingServerContext(tls)
        server = RegistryServer(self)
        server.site.plain_http = False
        # What the daemon listens with on a TLS port (regd.daemon.tap).
        port = reactor.listenTCP(0, tls_listener_factory(self.context, server.site), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    async def test_plain_http_on_the_tls_port_gets_a_400_saying_so(self):
        await self.start()

        def plain(request: bytes) -> bytes:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                sock.sendall(request)
                reply = b""
                while chunk := sock.recv(4096):
                    reply += chunk
                return reply

        for request in [b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", b"PUT /v2/x/manifests/t HTTP/1.1\r\n"]:
            reply = await threads.deferToThread(plain, request)
            self.assertTrue(reply.startswith(b"HTTP/1.0 400 Bad Request\r\n"), reply)
            self.assertTrue(reply.endswith(b"\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"), reply)
        version, _ = await threads.deferToThread(handshake, self.port, self.pki.ca)  # TLS still served
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))

    async def test_chain_with_intermediate_and_tls12_minimum(self):
        await self.start()
        version, _ = await threads.deferToThread(handshake, self.port, self.pki.ca)
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        for old in (stdlib_ssl.TLSVersion.TLSv1, stdlib_ssl.TLSVersion.TLSv1_1):
            with self.assertRaises((stdlib_ssl.SSLError, ConnectionError)):
                await threads.deferToThread(handshake, self.port, self.pki.ca, maximum=old)

    async def test_aes_128_gcm_first_whatever_the_client_prefers_unless_chacha(self):
        """Python's client (like OpenSSL's default) lists AES-256 first; the server's order wins."""
        await self.start()
        cipher = await threads.deferToThread(negotiated_cipher, self.port, self.pki.ca)
        self.assertEqual(cipher, "TLS_AES_128_GCM_SHA256")
        both = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:" \
               "ECDHE-RSA-AES128-GCM-SHA256"
        cipher = await threads.deferToThread(negotiated_cipher, self.port, self.pki.ca, tls12_ciphers=both)
        self.assertIn(cipher, ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"))
        chacha_first = "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:" + both
        cipher = await threads.deferToThread(negotiated_cipher, self.port, self.pki.ca, tls12_ciphers=chacha_first)
        self.assertIn(cipher, ("ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"))

    async def test_configured_ciphersuites_are_the_only_tls12_ones(self):
        await self.start(ciphersuites=("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                                       "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"))
        cipher = await threads.deferToThread(negotiated_cipher, self.port, self.pki.ca,
                                             tls12_ciphers="ECDHE+AESGCM:ECDHE+CHACHA20")
        self.assertIn(cipher, ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384"))

    async def test_openssl_s_client_old_versions_refused(self):
        if not shutil.which("openssl"):
            self.skipTest("openssl not installed") if os.environ.get("CI") != "true" else self.fail("no openssl")
        await self.start()
        for flag, refused in (("-tls1", True), ("-tls1_1", True), ("-tls1_2", False)):
            result = await threads.deferToThread(
                subprocess.run, ["openssl", "s_client", flag, "-connect", f"127.0.0.1:{self.port}",
                                 "-CAfile", self.pki.ca, "-cipher", "DEFAULT:@SECLEVEL=0"],
                input=b"", capture_output=True, timeout=30)
            self.assertEqual(result.returncode != 0, refused, (flag, result.stdout[-300:]))

    async def test_client_certificate_required_when_clientcas_set(self):
        self.pki = PKI(os.path.abspath(self.mktemp()))
        tls = TLSConfig(certificate=self.pki.server_chain, key=self.pki.server_key, clientcas=(self.pki.ca,))
        server = RegistryServer(self)
        server.site.plain_http = False
        port = await SSL4ServerEndpoint(reactor, 0, ReloadingServerContext(tls), interface="127.0.0.1").listen(
            server.site)
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        version, _ = await threads.deferToThread(handshake, number, self.pki.ca,
                                                 client=(self.pki.client_cert, self.pki.client_key))
        self.assertTrue(version.startswith("TLS"))
        with self.assertRaises((stdlib_ssl.SSLError, ConnectionError, AssertionError)):
            await threads.deferToThread(handshake, number, self.pki.ca)

    async def test_certificate_reload_keeps_open_connections(self):
        await self.start()
        _, first_serial = await threads.deferToThread(handshake, self.port, self.pki.ca)
        context = stdlib_ssl.create_default_context(cafile=self.pki.ca)
        raw = socket.create_connection(("127.0.0.1", self.port))
        held = context.wrap_socket(raw, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        await threads.deferToThread(held.do_handshake)
        self.addCleanup(held.close)
        fresh = PKI(os.path.abspath(self.mktemp()))  # new CA too: trust both below
        shutil.copy(fresh.server_chain, self.pki.server_chain)
        shutil.copy(fresh.server_key, self.pki.server_key)
        self.assertTrue(self.context.reload_if_changed())
        self.assertFalse(self.context.reload_if_changed())
        _, second_serial = await threads.deferToThread(handshake, self.port, fresh.ca)
        self.assertNotEqual(first_serial, second_serial)

        def old_connection_still_works():
            held.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return held.recv(100)

        self.assertTrue((await threads.deferToThread(old_connection_still_works)).startswith(b"HTTP/1.1 200"))

    async def test_broken_new_files_keep_the_old_certificate(self):
        await self.start()
        with open(self.pki.server_key, "w") as f:
            f.write("not a key")
        self.assertFalse(self.context.reload_if_changed())
        version, _ = await threads.deferToThread(handshake, self.port, self.pki.ca)
        self.assertTrue(version.startswith("TLS"))

    async def test_rotation_under_load_fails_no_request(self):
        await self.start()
        fresh = [PKI(os.path.abspath(self.mktemp())) for _ in range(3)]
        bundle = os.path.abspath(self.mktemp())
        with open(bundle, "wb") as out:  # clients trust the old and every new CA
            for pki in [self.pki] + fresh:
                out.write(open(pki.ca, "rb").read())
        import threading
        stop = threading.Event()
        results = []

        def client():
            while not stop.is_set():
                try:
                    handshake(self.port, bundle)
                    results.append(True)
                except Exception as e:  # any failure counts
                    results.append(e)

        workers = [threading.Thread(target=client) for _ in range(4)]
        for worker in workers:
            worker.start()
        try:
            for pki in fresh:
                await task.deferLater(reactor, 0.2, lambda: None)
                shutil.copy(pki.server_chain, self.pki.server_chain)
                shutil.copy(pki.server_key, self.pki.server_key)
                self.assertTrue(self.context.reload())
            await task.deferLater(reactor, 0.2, lambda: None)
        finally:
            stop.set()
            await threads.deferToThread(lambda: [w.join(10) for w in workers])
        failures = [r for r in results if r is not True]
        self.assertEqual(failures, [])
        self.assertGreater(len(results), 20)
