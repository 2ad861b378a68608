# -*- test-case-name: tests.registry.test_blobs -*-
"""
Link files: the small text files that make content reachable by name.

A link holds a canonical digest with no newline. Links written by the
reference registry are read the same way; anything that does not parse is
treated as absent rather than trusted.
"""

from __future__ import annotations

from twisted.internet import defer

from regd.oci.digest import Digest
from regd.oci.errors import RegistryError
from regd.storage import paths
from regd.storage.interfaces import PathNotFound


async def read_link(driver, path: str) -> Digest | None:
    try:
        raw = await driver.get_content(path)
    except PathNotFound:
        return None
    try:
        return Digest.parse(raw.decode("ascii").strip())
    except (RegistryError, UnicodeDecodeError):
        return None


def write_link(driver, path: str, digest: Digest) -> defer.Deferred:
    return driver.put_content(path, str(digest).encode("ascii"))


async def exists(driver, path: str) -> bool:
    try:
        await driver.stat(path)
    except PathNotFound:
        return False
    return True


async def delete_if_present(driver, path: str) -> bool:
    try:
        await driver.delete(path)
    except PathNotFound:
        return False
    return True


async def list_or_empty(driver, path: str) -> list[str]:
    try:
        return await driver.list(path)
    except PathNotFound:
        return []


async def linked_digests(driver, base: str) -> list[Digest]:
    """Digests named by the links at C{base}/<alg>/<hex>/link (revisions, referrers, layers)."""
    found = []
    for alg in await list_or_empty(driver, base):
        for hex_ in await list_or_empty(driver, f"{base}/{alg}"):
            digest = await read_link(driver, f"{base}/{alg}/{hex_}/link")
            if digest is not None:
                found.append(digest)
    return found


async def stored_blobs(driver) -> list[Digest]:
    """Every digest in the global blob store (blobs/<alg>/<hh>/<hex>), whatever its state."""
    found = []
    for alg in await list_or_empty(driver, paths.BLOBS):
        for prefix in await list_or_empty(driver, f"{paths.BLOBS}/{alg}"):
            for hex_ in await list_or_empty(driver, f"{paths.BLOBS}/{alg}/{prefix}"):
                try:
                    found.append(Digest.parse(f"{alg}:{hex_}"))
                except RegistryError:
                    continue
    return found
