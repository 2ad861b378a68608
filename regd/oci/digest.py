# -*- test-case-name: tests.oci.test_digest -*-
"""
Content digests: parsing, validation and incremental hashing.

Only algorithms we can verify are accepted; an unverifiable digest would let
unverified bytes become visible, which is never allowed.
"""

from __future__ import annotations

import hashlib
import re

import attrs

from regd.oci.errors import DigestInvalid

# algorithm name -> length of the lowercase hex encoding
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
CANONICAL = "sha256"

_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


@attrs.frozen(order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> "Digest":
        """Parse C{alg:hex}, raising L{DigestInvalid} on anything else."""
        if not isinstance(text, str) or len(text) > 256 or not _GRAMMAR.match(text):
            raise DigestInvalid("invalid digest", detail={"digest": str(text)[:256]})
        algorithm, _, encoded = text.partition(":")
        size = ALGORITHMS.get(algorithm)
        if size is None:
            raise DigestInvalid("unsupported digest algorithm", detail={"digest": text})
        if len(encoded) != size or not re.fullmatch(r"[a-f0-9]+", encoded):
            raise DigestInvalid("invalid digest encoding", detail={"digest": text})
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = CANONICAL) -> "Digest":
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self):
        return new_hasher(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def new_hasher(algorithm: str = CANONICAL):
    if algorithm not in ALGORITHMS:
        raise DigestInvalid("unsupported digest algorithm", detail={"algorithm": algorithm})
    return hashlib.new(algorithm)


def is_digest(text: str) -> bool:
    """True if C{text} looks like a digest rather than a tag (tags have no ':')."""
    return ":" in text
