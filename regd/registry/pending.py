# -*- test-case-name: tests.registry.test_gc -*-
"""
Pending references: storage-visible notes that an operation is about to link
content, so that a garbage collection running in any process, on any
instance sharing the storage, leaves that content alone.

The protocol has two sides, and each writes before it reads:

- a writer (manifest PUT, upload commit, cross-repository mount) writes its
  note (repository + every digest it will reference) *before* it checks that
  the content exists, and removes the note only after its links are written;
- the collector *condemns* a blob (moves its bytes to regd/gc/condemned),
  then reads the notes, then re-reads the links (in that order: a note gone
  by then was dropped after its links were written), and deletes condemned
  bytes only if neither names them; otherwise it puts them back.

So at least one side sees the other: either the writer finds the blob
condemned (it takes it back, see BlobService.reclaim, or fails with
BLOB_UNKNOWN if the collector deleted it first), or the collector finds the
note or the new link and restores the blob. Nothing here lives in one
process's memory, and it needs nothing of the storage beyond atomic small
writes, listings and moves, so it works the same on a shared filesystem or
an object store.
"""

from __future__ import annotations

import contextlib
import json

from twisted.logger import Logger

from regd.oci.digest import Digest
from regd.oci.errors import RegistryError
from regd.randomids import random_ids
from regd.registry import links
from regd.storage import paths
from regd.storage.interfaces import PathNotFound, StorageError

log = Logger()

# A note older than this belongs to a process that died mid-operation.
LIFETIME = 3600.0


class PendingReferences:
    def __init__(self, driver, clock):
        self._driver = driver
        self._clock = clock

    def using(self, driver) -> PendingReferences:
        """The same notes written and read through C{driver} (see BlobService.using)."""
        return PendingReferences(driver, self._clock)

    @contextlib.asynccontextmanager
    async def holding(self, repository: str, digests):
        """Keep C{digests} safe from collection while the body of the block links them."""
        note = random_ids.hex()
        body = json.dumps({"repository": repository, "created": self._clock.seconds(),
                           "digests": sorted({str(d) for d in digests})}).encode()
        # Not fsynced where the driver can skip it: a note only matters while its writer lives.
        write = getattr(self._driver, "put_transient", None) or self._driver.put_content
        await write(paths.pending_note(note), body)
        try:
            yield
        finally:
            try:
                await links.delete_if_present(self._driver, paths.pending_note(note))
            except StorageError:
                log.failure("could not remove pending-reference note {note}", note=note)

    async def read(self) -> list[tuple[str, set[Digest]]]:
        """(repository, digests) of every live note; expired ones are ignored."""
        now = self._clock.seconds()
        found = []
        for note in await links.list_or_empty(self._driver, paths.PENDING):
            if note.endswith(".tmp"):
                continue
            try:
                document = json.loads(await self._driver.get_content(paths.pending_note(note)))
                if now - float(document["created"]) > LIFETIME:
                    continue
                found.append((str(document["repository"]),
                              {Digest.parse(d) for d in document["digests"]}))
            except PathNotFound:
                continue  # finished meanwhile
            except (ValueError, KeyError, TypeError, RegistryError):
                log.warn("unreadable pending-reference note {note} ignored", note=note)
        return found

    async def all_digests(self) -> set[Digest]:
        return {d for _, digests in await self.read() for d in digests}

    async def expire(self) -> int:
        """Remove notes left by processes that died mid-operation; how many went."""
        now = self._clock.seconds()
        removed = 0
        for note in await links.list_or_empty(self._driver, paths.PENDING):
            if note.endswith(".tmp"):
                continue
            try:
                document = json.loads(await self._driver.get_content(paths.pending_note(note)))
                created = float(document["created"])
            except PathNotFound:
                continue
            except (ValueError, KeyError, TypeError):
                created = float("-inf")
            if now - created > LIFETIME and await links.delete_if_present(self._driver, paths.pending_note(note)):
                removed += 1
        return removed
