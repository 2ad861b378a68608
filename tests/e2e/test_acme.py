"""Certificates from an ACME CA: Debian's pebble issues, regd serves them, caches them, renews them."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time

import pytest
from cryptography import x509

from tests.support.certs import PKI
from tests.support.processes import ProcessFailed, RegdProcess, free_port, require_tool, tail

pytestmark = pytest.mark.e2e


def served_certificate(port: int) -> x509.Certificate | None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    except OSError:
        return None


class ACMERegd(RegdProcess):
    def __init__(self, root, workdir, directory: str, ca: str, http_port: int, renew: str = "720h"):
        super().__init__(root, workdir=workdir)
        self.directory, self.ca, self.http_port, self.renew = directory, ca, http_port, renew

    def config_text(self) -> str:
        return super().config_text() + (
            "  tls:\n"
            "    letsencrypt:\n"
            f"      cachefile: {self.workdir / 'acme-cache.pem'}\n"
            "      email: ops@example.com\n"
            "      hosts: [localhost]\n"
            f"      directoryurl: {self.directory}\n"
            f"      directorycafile: {self.ca}\n"
            f"      httpaddr: 127.0.0.1:{self.http_port}\n"
            f"      renewbefore: {self.renew}\n")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ProcessFailed(f"regd exited:\n{tail(self.log_path)}")
            if served_certificate(self.port) is not None:
                return
            time.sleep(0.1)
        raise ProcessFailed(f"regd not serving TLS:\n{tail(self.log_path)}")

    def wait_for_issuer(self, word: str, timeout: float = 60) -> x509.Certificate:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            certificate = served_certificate(self.port)
            if certificate is not None and word in certificate.issuer.rfc4514_string():
                return certificate
            time.sleep(0.2)
        raise AssertionError(f"no certificate from {word}:\n{tail(self.log_path)}")


@pytest.fixture
def pebble(tmp_path):
    binary = require_tool("pebble")
    pki = PKI(str(tmp_path / "pebble-pki"))
    port, http_port = free_port(), free_port()
    config = tmp_path / "pebble.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{port}", "managementListenAddress": f"127.0.0.1:{free_port()}",
        "certificate": pki.server_chain, "privateKey": pki.server_key,
        "httpPort": http_port, "tlsPort": free_port()}}))
    log = open(tmp_path / "pebble.log", "wb")
    env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
    process = subprocess.Popen([binary, "-config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    deadline = time.monotonic() + 20
    while served_certificate(port) is None:
        assert time.monotonic() < deadline and process.poll() is None, (tmp_path / "pebble.log").read_text()
        time.sleep(0.1)
    yield f"https://127.0.0.1:{port}/dir", pki.ca, http_port
    process.terminate()
    process.wait(10)
    log.close()


def test_issue_cache_and_renew_with_pebble(pebble, tmp_path):
    directory, ca, http_port = pebble
    regd = ACMERegd(tmp_path / "root", tmp_path, directory, ca, http_port)
    try:
        regd.start()
        first = regd.wait_for_issuer("Pebble")
        assert "localhost" in first.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        regd.stop()
        regd.start()  # from the cache: the same certificate, no new order
        assert regd.wait_for_issuer("Pebble").serial_number == first.serial_number
        regd.stop()
        regd.renew = "876000h"  # everything is "about to expire": renew at start
        regd.start()
        deadline = time.monotonic() + 60
        while regd.wait_for_issuer("Pebble").serial_number == first.serial_number:
            assert time.monotonic() < deadline, tail(regd.log_path)
            time.sleep(0.2)
    finally:
        regd.stop()
