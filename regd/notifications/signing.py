# -*- test-case-name: tests.notifications.test_signing -*-
"""
Standard Webhooks signatures: HMAC-SHA256 over "{id}.{timestamp}.{body}",
sent as `webhook-signature: v1,<base64>`; one signature per configured
secret, so receivers keep verifying while a secret is rotated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


def secret_bytes(secret: str) -> bytes:
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX):])
    return secret.encode("utf-8")


def sign(message_id: str, timestamp: int, body: bytes, secrets: tuple[str, ...] | list[str]) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(secret_bytes(s), signed, hashlib.sha256).digest()).decode()
        for s in secrets)


def signature_headers(message_id: str, timestamp: int, body: bytes, secrets) -> dict[str, str]:
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(message_id, timestamp, body, secrets)}


class InvalidSignature(Exception):
    pass


def verify(headers: dict[str, str], body: bytes, secrets, now: float, tolerance: float = 300) -> None:
    """Raise InvalidSignature unless one signature matches one secret, in time."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        offered = lowered["webhook-signature"].split()
    except (KeyError, ValueError):
        raise InvalidSignature("missing or malformed webhook headers") from None
    if abs(now - timestamp) > tolerance:
        raise InvalidSignature("timestamp outside the tolerance")
    expected = sign(message_id, timestamp, body, list(secrets)).split()
    for candidate in offered:
        if any(hmac.compare_digest(candidate, e) for e in expected):
            return
    raise InvalidSignature("no signature matches")
