"""Digest parsing and hashing."""

import hashlib

from hypothesis import given
from twisted.trial.unittest import SynchronousTestCase

from regd.oci.digest import Digest, is_digest, new_hasher
from regd.oci.errors import DigestInvalid
from tests.support.strategies import sha256_digests


class DigestTests(SynchronousTestCase):
    def test_parse_valid(self):
        d = Digest.parse("sha256:" + "a" * 64)
        self.assertEqual((d.algorithm, d.hex), ("sha256", "a" * 64))
        self.assertEqual(Digest.parse("sha512:" + "0" * 128).algorithm, "sha512")

    def test_parse_invalid(self):
        for text in ["sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha256:" + "g" * 64, "md5:" + "a" * 32,
                     "sha256", ":abc", "sha256:", "x" * 300, "sha256:" + "a" * 64 + "\n", 42]:
            self.assertRaises(DigestInvalid, Digest.parse, text)

    def test_error_is_400_digest_invalid(self):
        with self.assertRaises(DigestInvalid) as caught:
            Digest.parse("nope")
        self.assertEqual((caught.exception.status, caught.exception.code), (400, "DIGEST_INVALID"))

    @given(sha256_digests)
    def test_roundtrip(self, text):
        self.assertEqual(str(Digest.parse(text)), text)

    def test_of_and_hasher(self):
        self.assertEqual(Digest.of(b"abc").hex, hashlib.sha256(b"abc").hexdigest())
        self.assertEqual(Digest.of(b"abc", "sha512").hex, hashlib.sha512(b"abc").hexdigest())
        self.assertEqual(new_hasher().name, "sha256")
        self.assertRaises(DigestInvalid, new_hasher, "md5")
        self.assertTrue(is_digest("sha256:x"))
        self.assertFalse(is_digest("latest"))
