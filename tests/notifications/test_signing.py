"""Standard Webhooks signing and verification, with rotation."""

import base64

from twisted.trial.unittest import SynchronousTestCase

from regd.notifications.signing import InvalidSignature, signature_headers, verify


class SigningTests(SynchronousTestCase):
    def test_roundtrip_and_rotation(self):
        body = b'{"events":[]}'
        headers = signature_headers("msg_1", 1_700_000_000, body, ["new-secret", "old-secret"])
        self.assertEqual(len(headers["webhook-signature"].split()), 2)
        verify(headers, body, ["old-secret"], now=1_700_000_010)
        verify(headers, body, ["new-secret"], now=1_700_000_010)

    def test_whsec_secrets_are_base64(self):
        secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
        headers = signature_headers("id", 10, b"x", [secret])
        verify(headers, b"x", [secret], now=10)
        self.assertRaises(InvalidSignature, verify, headers, b"x", ["k" * 24 + "nope"], now=10)

    def test_rejections(self):
        headers = signature_headers("id", 1000, b"body", ["s"])
        self.assertRaises(InvalidSignature, verify, headers, b"tampered", ["s"], now=1000)
        self.assertRaises(InvalidSignature, verify, headers, b"body", ["other"], now=1000)
        self.assertRaises(InvalidSignature, verify, headers, b"body", ["s"], now=2000)
        self.assertRaises(InvalidSignature, verify, {}, b"body", ["s"], now=1000)
        verify({k.upper(): v for k, v in headers.items()}, b"body", ["s"], now=1000)
