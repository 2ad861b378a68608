# -*- test-case-name: tests.web.test_sessions -*-
"""
Browser sessions without server-side state: the cookie carries the user, a
random session id and an expiry, signed with HMAC-SHA256 under a key derived
from the shared secret, so any instance with the same secret accepts it.
CSRF tokens are an HMAC of the session id under a second derived key: a form
token is valid only with the cookie it was issued for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets

import attrs

COOKIE = b"regd_session"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@attrs.frozen
class Session:
    user: str | None
    sid: str
    expires: int

    @property
    def anonymous(self) -> bool:
        return self.user is None


class SessionSigner:
    """Issues, signs and checks session cookies and their CSRF tokens."""

    def __init__(self, secret: bytes, clock, max_age: float):
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._cookie_key = hmac.new(secret, b"regd-ui-session-v1", hashlib.sha256).digest()
        self._csrf_key = hmac.new(secret, b"regd-ui-csrf-v1", hashlib.sha256).digest()
        self._clock = clock
        self.max_age = int(max_age)

    def issue(self, user: str | None) -> Session:
        """A new session (a new id: logging in never keeps a pre-login id)."""
        return Session(user, secrets.token_urlsafe(18), int(self._clock.seconds()) + self.max_age)

    def encode(self, session: Session) -> bytes:
        payload = _b64(json.dumps([session.user, session.sid, session.expires], separators=(",", ":")).encode())
        mac = _b64(hmac.new(self._cookie_key, payload.encode("ascii"), hashlib.sha256).digest())
        return f"{payload}.{mac}".encode("ascii")

    def decode(self, value: bytes | None) -> Session | None:
        """The session in a cookie value, or None when forged, malformed or expired."""
        if not value or len(value) > 4096:
            return None
        try:
            payload, _, mac = value.decode("ascii").partition(".")
            expected = _b64(hmac.new(self._cookie_key, payload.encode("ascii"), hashlib.sha256).digest())
            if not hmac.compare_digest(expected, mac):
                return None
            user, sid, expires = json.loads(_unb64(payload))
        except (UnicodeDecodeError, ValueError, TypeError):
            return None
        if not (user is None or isinstance(user, str)) or not isinstance(sid, str) or not isinstance(expires, int):
            return None
        if expires <= self._clock.seconds():
            return None
        return Session(user, sid, expires)

    def csrf_token(self, session: Session) -> str:
        return _b64(hmac.new(self._csrf_key, session.sid.encode("utf-8"), hashlib.sha256).digest())

    def check_csrf(self, session: Session | None, token: str | None) -> bool:
        if session is None or not token:
            return False
        return hmac.compare_digest(self.csrf_token(session), token)
