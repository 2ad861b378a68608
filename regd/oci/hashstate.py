# -*- test-case-name: tests.oci.test_hashstate -*-
"""
A sha256 whose running state can be saved and restored, so an upload's hash
survives the process: any instance that takes the next chunk carries on
from the stored state instead of hashing everything received so far again.

hashlib objects cannot be serialized; rehashes (sha2 with serializable
state, as fast as hashlib here) can. The state is trusted only together with
the byte offset it covers, and the digest is still checked at commit.
"""

from __future__ import annotations

import hashlib

import rehashes

from regd.oci.digest import CANONICAL


class ResumableSha256:
    """The hashlib subset regd uses (update, copy, digest, hexdigest), plus state."""

    name = CANONICAL

    def __init__(self, _inner=None):
        self._inner = _inner if _inner is not None else rehashes.PySha256()

    def update(self, data) -> None:
        self._inner.update(bytes(data) if not isinstance(data, bytes) else data)

    def copy(self) -> "ResumableSha256":
        return ResumableSha256(rehashes.PySha256.deserialize(self._inner.serialize()))

    def digest(self) -> bytes:
        # finalize consumes the hasher; finish a copy so this one can go on.
        out = rehashes.PySha256.deserialize(self._inner.serialize()).finalize()
        return bytes.fromhex(out) if isinstance(out, str) else bytes(out)

    def hexdigest(self) -> str:
        return self.digest().hex()

    def state(self) -> bytes:
        return bytes(self._inner.serialize())

    @classmethod
    def restore(cls, state: bytes) -> "ResumableSha256":
        """Raises ValueError for bytes that are not a saved state."""
        try:
            return cls(rehashes.PySha256.deserialize(state))
        except Exception as e:  # the extension raises its own error types
            raise ValueError("not a sha256 hash state") from e


def running_hasher(algorithm: str = CANONICAL):
    """A hasher for bodies being received: resumable for sha256."""
    if algorithm == CANONICAL:
        return ResumableSha256()
    return hashlib.new(algorithm)


def encode_state(offset: int, hasher: ResumableSha256, boot: str = "") -> bytes:
    """C{boot}: the kernel boot the state is written in (see UploadService._stored_hasher)."""
    raw = b"%d:" % offset + hasher.state().hex().encode("ascii")
    return raw + b":" + boot.encode("ascii") if boot else raw


def decode_state(raw: bytes) -> tuple[int, ResumableSha256, str] | None:
    """(offset, hasher, boot) from a stored state ('' for a state that names none), or None when unreadable."""
    try:
        offset, _, rest = raw.partition(b":")
        state, _, boot = rest.partition(b":")
        return int(offset), ResumableSha256.restore(bytes.fromhex(state.decode("ascii"))), boot.decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
