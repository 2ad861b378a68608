"""Session cookies and CSRF tokens: signed, expiring, bound to one session, forgeries refused."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regd.web.sessions import SessionSigner

SECRET = b"s" * 32


class SessionTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.signer = SessionSigner(SECRET, self.clock, 3600)

    def test_round_trip_and_expiry(self):
        session = self.signer.issue("alice")
        value = self.signer.encode(session)
        self.assertEqual(self.signer.decode(value), session)
        self.clock.advance(3599)
        self.assertEqual(self.signer.decode(value).user, "alice")
        self.clock.advance(1)
        self.assertIsNone(self.signer.decode(value))

    def test_forgeries_and_garbage_are_no_session(self):
        value = self.signer.encode(self.signer.issue("alice")).decode()
        payload, _, mac = value.partition(".")
        other = SessionSigner(b"t" * 32, self.clock, 3600)
        forged_payload = other.encode(other.issue("admin")).decode().partition(".")[0]
        for bad in (payload + "." + mac[:-2] + "AA", forged_payload + "." + mac, payload, "", ".", "a.b.c",
                    "\xff", "x" * 5000, other.encode(other.issue("alice")).decode()):
            self.assertIsNone(self.signer.decode(bad.encode("utf-8")), bad[:40])
        self.assertIsNone(self.signer.decode(None))

    def test_a_new_instance_with_the_same_secret_accepts_the_cookie(self):
        value = self.signer.encode(self.signer.issue("alice"))
        self.assertEqual(SessionSigner(SECRET, self.clock, 3600).decode(value).user, "alice")

    def test_csrf_tokens_are_bound_to_their_session(self):
        first, second = self.signer.issue(None), self.signer.issue(None)
        self.assertNotEqual(first.sid, second.sid)
        token = self.signer.csrf_token(first)
        self.assertTrue(self.signer.check_csrf(first, token))
        self.assertFalse(self.signer.check_csrf(second, token))
        self.assertFalse(self.signer.check_csrf(None, token))
        self.assertFalse(self.signer.check_csrf(first, ""))
        self.assertFalse(self.signer.check_csrf(first, None))

    def test_short_secrets_are_refused(self):
        self.assertRaises(ValueError, SessionSigner, b"short", self.clock, 60)
