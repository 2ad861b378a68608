"""Test certificates: a CA, a server certificate for 127.0.0.1 (with an intermediate), a client certificate."""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer_name, issuer_key, *, ca: bool, usage=None, ip: str | None = None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName("localhost")]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class PKI:
    """Writes ca.pem, server.pem (leaf + intermediate), server.key, client.pem, client.key into a directory."""

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        tag = os.urandom(4).hex()  # distinct names, so several test CAs can share one trust bundle
        ca_key = _key()
        ca = _cert(f"regd test CA {tag}", ca_key, None, ca_key, ca=True)
        mid_key = _key()
        mid = _cert(f"regd test intermediate {tag}", mid_key, ca.subject, ca_key, ca=True)
        server_key = _key()
        server = _cert("127.0.0.1", server_key, mid.subject, mid_key, ca=False,
                       usage=ExtendedKeyUsageOID.SERVER_AUTH, ip="127.0.0.1")
        client_key = _key()
        client = _cert("ci-client", client_key, ca.subject, ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        pem = serialization.Encoding.PEM
        self.ca = self._write("ca.pem", ca.public_bytes(pem))
        self.server_chain = self._write("server.pem", server.public_bytes(pem) + mid.public_bytes(pem))
        self.server_key = self._write("server.key", _pem_key(server_key))
        self.client_cert = self._write("client.pem", client.public_bytes(pem))
        self.client_key = self._write("client.key", _pem_key(client_key))

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def server_options(self, require_client: bool = False):
        """Twisted CertificateOptions for a test HTTPS server."""
        from OpenSSL import crypto
        from twisted.internet import ssl
        with open(self.server_chain, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
        with open(self.server_key, "rb") as f:
            key = crypto.PKey.from_cryptography_key(serialization.load_pem_private_key(f.read(), None))
        leaf, *extra = [crypto.X509.from_cryptography(c) for c in chain]
        kwargs = {}
        if require_client:
            with open(self.ca, "rb") as f:
                kwargs = {"verify": True, "caCerts": [crypto.load_certificate(crypto.FILETYPE_PEM, f.read())],
                          "requireCertificate": True}
        return ssl.CertificateOptions(privateKey=key, certificate=leaf, extraCertChain=extra, **kwargs)


def token_signing_pair(directory: str, name: str = "issuer") -> tuple[str, str]:
    """A self-signed EC P-256 certificate and key for a token issuer: (certificate path, key path)."""
    os.makedirs(directory, exist_ok=True)
    key = _key()
    certificate = _cert(f"regd token {name}", key, None, key, ca=False)
    cert_path = os.path.join(directory, f"{name}.pem")
    key_path = os.path.join(directory, f"{name}.key")
    with open(cert_path, "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(_pem_key(key))
    return cert_path, key_path
