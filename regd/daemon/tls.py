# -*- test-case-name: tests.test_tls -*-
"""
Native TLS from `http.tls`: a certificate bundle (leaf + intermediates), its
key, TLS 1.2 or newer, optional cipher suites and client CAs (mutual TLS).

The server's context factory re-reads the files on SIGHUP and when they
change on disk; new connections get the new certificate, open ones are not
touched, and a broken new file is logged and ignored (the old one stays).
"""

from __future__ import annotations

import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

# Go (registry:2) cipher suite names -> OpenSSL names (TLS 1.2; TLS 1.3 suites are fixed).
GO_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
}
MINIMUM = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": ssl.TLSVersion.TLSv1_3}

# The server's order, as Go's (registry:2): AES-128-GCM first (TLS 1.3's mandatory suite), about 12 %
# cheaper per byte than AES-256-GCM to encrypt here and, for the client, to decrypt; OpenSSL's own order,
# which a Python server otherwise keeps, puts AES-256 first. ChaCha20 still wins for clients that list it
# first (devices without AES instructions; PRIORITIZE_CHACHA below).
TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
TLS12_DEFAULT = ("ECDH+AESGCM+AES128:ECDH+AESGCM:ECDH+CHACHA20:DH+AESGCM:DH+CHACHA20:ECDH+AES256:DH+AES256:"
                 "ECDH+AES128:DH+AES:RSA+AESGCM:RSA+AES:!aNULL:!MD5:!DSS")
OP_PRIORITIZE_CHACHA = 1 << 21  # SSL_OP_PRIORITIZE_CHACHA (OpenSSL 1.1.1+); pyOpenSSL has no name for it


class TLSConfigError(Exception):
    """A TLS setting or file that cannot be used; one line naming the key."""


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"http.tls.{key}: cannot read {path}: {e.strerror or e}") from None


def build_options(tls_config) -> ssl.CertificateOptions:
    """CertificateOptions from http.tls, or TLSConfigError naming what is wrong."""
    if not tls_config.certificate or not tls_config.key:
        raise TLSConfigError("http.tls: certificate and key are both required")
    return options_from_pem(tls_config, _read(tls_config.certificate, "certificate"), _read(tls_config.key, "key"),
                            tls_config.certificate, tls_config.key)


def options_from_pem(tls_config, chain_pem: bytes, key_pem: bytes, chain_name: str = "the certificate",
                     key_name: str = "the key") -> ssl.CertificateOptions:
    """CertificateOptions for a PEM chain and key (files, or an ACME certificate), with http.tls's policy."""
    if tls_config.minimumtls not in MINIMUM:
        raise TLSConfigError(f"http.tls.minimumtls: {tls_config.minimumtls} is not allowed; use tls1.2 or tls1.3")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise TLSConfigError(f"http.tls.certificate: {chain_name} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError):
        raise TLSConfigError(f"http.tls.key: {key_name} is not an unencrypted PEM private key") from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TLSConfigError(f"http.tls.key: {key_name} does not match the certificate {chain_name}")
    kwargs = {"acceptableCiphers": ssl.AcceptableCiphers.fromOpenSSLCipherString(TLS12_DEFAULT)}
    if tls_config.ciphersuites:
        unknown = [c for c in tls_config.ciphersuites if c not in GO_CIPHERS]
        if unknown:
            raise TLSConfigError(f"http.tls.ciphersuites: unknown or unsupported suite {unknown[0]}")
        kwargs["acceptableCiphers"] = ssl.AcceptableCiphers.fromOpenSSLCipherString(
            ":".join(GO_CIPHERS[c] for c in tls_config.ciphersuites))
    if tls_config.clientcas:
        cas = []
        for path in tls_config.clientcas:
            try:
                cas.extend(crypto.X509.from_cryptography(c) for c in x509.load_pem_x509_certificates(
                    _read(path, "clientcas")))
            except ValueError:
                raise TLSConfigError(f"http.tls.clientcas: {path} holds no PEM certificate") from None
        kwargs.update(verify=True, caCerts=cas, requireCertificate=True)
    leaf, *intermediates = [crypto.X509.from_cryptography(c) for c in chain]
    return ServerOptions(
        privateKey=crypto.PKey.from_cryptography_key(key), certificate=leaf, extraCertChain=intermediates,
        raiseMinimumTo=MINIMUM[tls_config.minimumtls], **kwargs)


class ServerOptions(ssl.CertificateOptions):
    """CertificateOptions whose context also takes the server's TLS 1.3 suite order."""

    def getContext(self) -> SSL.Context:
        fresh = self._context is None
        context = super().getContext()
        if fresh:
            context.set_tls13_ciphersuites(TLS13_SUITES)
            context.set_options(OP_PRIORITIZE_CHACHA)
        return context


@implementer(IOpenSSLContextFactory)
class ReloadingServerContext:
    """Hands each new connection the context of the current certificate files."""

    def __init__(self, tls_config, options: ssl.CertificateOptions | None = None):
        self._config = tls_config
        self._options = options or build_options(tls_config)
        self._stamp = self._files_stamp()

    def use(self, options: ssl.CertificateOptions) -> None:
        """Serve new connections with these options from now on (ACME renewals)."""
        options.getContext()
        self._options = options

    def _files_stamp(self):
        paths = [self._config.certificate, self._config.key, *self._config.clientcas]
        stamp = []
        for path in paths:
            try:
                st = os.stat(path)
                stamp.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamp.append((path, None, None, None))
        return tuple(stamp)

    def getContext(self) -> SSL.Context:
        return self._options.getContext()

    def reload(self) -> bool:
        """Re-read the files now; True if the new ones are in use."""
        if not self._config.certificate:
            return False  # certificates come from ACME
        self._stamp = self._files_stamp()
        try:
            options = build_options(self._config)
            options.getContext()
        except (TLSConfigError, SSL.Error) as e:
            log.error("TLS reload failed, keeping the current certificate: {error}", error=str(e))
            return False
        self._options = options
        log.info("TLS certificate reloaded from {path}", path=self._config.certificate)
        return True

    def reload_if_changed(self) -> bool:
        if not self._config.certificate or self._files_stamp() == self._stamp:
            return False
        return self.reload()
