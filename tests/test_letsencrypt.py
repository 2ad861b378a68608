"""The ACME certificate manager's decisions, with a Clock and a fake CA."""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regd.config import TLSConfig
from regd.daemon.letsencrypt import (
    ACMEConfigError, CertificateManager, ChallengeResource, parse_settings, self_signed, split_cache,
)
from regd.storage.threads import inline_runner


def certificate_for(hosts, days: float, now: float) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake CA")])
    start = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in hosts]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class FakeContext:
    def __init__(self):
        self.used = []

    def use(self, options):
        self.used.append(options)


class ManagerTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.cache = os.path.join(os.path.abspath(self.mktemp()), "cache.pem")
        self.settings = parse_settings({"cachefile": self.cache, "hosts": ["reg.example"], "renewbefore": "720h"})
        self.issued = []
        self.context = FakeContext()

    def fake_issue(self, settings, responder):
        chain, key = certificate_for(settings.hosts, 90, self.clock.seconds())
        self.issued.append(chain)
        return chain, key

    def manager(self):
        return CertificateManager(self.settings, self.context, TLSConfig(), self.clock, inline_runner,
                                  ChallengeResource(), issue=self.fake_issue)

    def test_issues_caches_and_renews_near_expiry(self):
        manager = self.manager()
        self.successResultOf(manager.check())
        self.assertEqual(len(self.issued), 1)
        self.assertEqual(split_cache(open(self.cache, "rb").read())[0], self.issued[0])
        self.successResultOf(manager.check())  # 90 days left: nothing to do
        self.assertEqual(len(self.issued), 1)
        self.clock.advance(61 * 24 * 3600)  # 29 days left: renew
        self.successResultOf(manager.check())
        self.assertEqual(len(self.issued), 2)
        self.assertEqual(len(self.context.used), 2)

    def test_a_fresh_process_uses_the_cache(self):
        self.successResultOf(self.manager().check())
        again = self.manager()
        self.successResultOf(again.check())
        self.assertEqual(len(self.issued), 1)
        self.assertEqual(again.current, self.issued[0])

    def test_failures_keep_the_current_certificate_and_retry_later(self):
        manager = self.manager()
        self.successResultOf(manager.check())
        self.clock.advance(80 * 24 * 3600)

        def broken(settings, responder):
            raise RuntimeError("CA unreachable")

        manager._issue = broken
        self.successResultOf(manager.check())  # logged, not raised
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(len(self.context.used), 1)

    def test_settings_errors(self):
        for raw, message in [({"hosts": ["a"]}, "http.tls.letsencrypt.cachefile: required"),
                             ({"cachefile": "/c"}, "http.tls.letsencrypt.hosts: a list of host names is required")]:
            with self.assertRaises(ACMEConfigError) as caught:
                parse_settings(raw)
            self.assertEqual(str(caught.exception), message)

    def test_placeholder_and_challenge_resource(self):
        chain, key = self_signed(["reg.example"])
        self.assertIn(b"BEGIN CERTIFICATE", chain)
        resource = ChallengeResource()
        resource.publish("tok", "tok.thumb")
        from twisted.web.test.requesthelper import DummyRequest
        request = DummyRequest([b""])
        request.path = b"/.well-known/acme-challenge/tok"
        self.assertEqual(resource.render_GET(request), b"tok.thumb")
        resource.withdraw("tok")
        self.assertEqual(resource.render_GET(request), b"not found")
