"""Resumable sha256: same digests as hashlib, state round trips, bad states refused."""

from __future__ import annotations

import hashlib
import os

from twisted.trial.unittest import SynchronousTestCase

from regd.oci.hashstate import ResumableSha256, decode_state, encode_state, running_hasher


class ResumableSha256Tests(SynchronousTestCase):
    def test_matches_hashlib_across_a_save_and_restore(self):
        data = os.urandom(200_001)
        first = running_hasher()
        first.update(data[:70_000])
        offset, resumed, boot = decode_state(encode_state(70_000, first, "boot-1"))
        self.assertEqual((offset, boot), (70_000, "boot-1"))
        resumed.update(memoryview(data)[70_000:])
        self.assertEqual(resumed.hexdigest(), hashlib.sha256(data).hexdigest())

    def test_digest_does_not_consume_and_copy_is_independent(self):
        h = ResumableSha256()
        h.update(b"ab")
        twin = h.copy()
        self.assertEqual(h.hexdigest(), hashlib.sha256(b"ab").hexdigest())
        h.update(b"c")
        self.assertEqual(h.hexdigest(), hashlib.sha256(b"abc").hexdigest())
        self.assertEqual(twin.hexdigest(), hashlib.sha256(b"ab").hexdigest())

    def test_a_state_that_names_no_boot_reads_with_an_empty_one(self):
        offset, _, boot = decode_state(encode_state(5, running_hasher()))
        self.assertEqual((offset, boot), (5, ""))

    def test_unreadable_states(self):
        for raw in (b"", b"x:00", b"5:zz", b"5:" + b"00" * 3, b"\xff:00"):
            self.assertIsNone(decode_state(raw), raw)

    def test_other_algorithms_use_hashlib(self):
        self.assertEqual(running_hasher("sha512").name, "sha512")
