# -*- test-case-name: tests.registry.test_gc -*-
"""
Garbage collection that needs no downtime: mark every blob a manifest or
index (and their children and referrers) needs, then sweep unmarked blobs
older than the grace period.

Pushes go on meanwhile: a blob uploaded, mounted, or referenced by a
manifest PUT has its modified time refreshed, and every blob is stat'ed
again just before it is removed, so only blobs nobody touched within the
grace period go. With `delete_untagged`, manifests no tag reaches (directly,
as an index child, or as a referrer of a kept manifest) are unlinked first.
"""

from __future__ import annotations

import attrs
from twisted.logger import Logger

from regd.oci import mediatypes
from regd.oci.digest import Digest
from regd.oci.errors import RegistryError
from regd.registry import links
from regd.registry.context import SYSTEM as _GC_CONTEXT
from regd.storage import paths
from regd.storage.interfaces import PathNotFound

log = Logger()


@attrs.define
class Report:
    marked: set = attrs.field(factory=set)
    blobs_deleted: list = attrs.field(factory=list)
    manifests_deleted: list = attrs.field(factory=list)  # (repository, digest)
    bytes_freed: int = 0


class GarbageCollector:
    def __init__(self, registry, clock, *, grace: float = 3600.0, delete_untagged: bool = False,
                 dry_run: bool = False):
        self._registry = registry
        self._driver = registry.driver
        self._clock = clock
        self.grace = grace
        self.delete_untagged = delete_untagged
        self.dry_run = dry_run

    async def run(self) -> Report:
        report = Report()
        for name in await self._registry.listing.repositories():
            await self._mark_repository(name, report)
        await self._sweep(report)
        return report

    # -- mark ------------------------------------------------------------

    async def _mark_repository(self, name: str, report: Report) -> None:
        revisions = await links.linked_digests(self._driver, paths.revisions(name))
        if not self.delete_untagged:
            roots = revisions
        else:
            roots = []
            for tag in await links.list_or_empty(self._driver, paths.tags(name)):
                digest = await links.read_link(self._driver, paths.tag_current_link(name, tag))
                if digest is not None:
                    roots.append(digest)
        kept: set[Digest] = set()
        pending = list(roots)
        while pending:
            digest = pending.pop()
            if digest in kept:
                continue
            kept.add(digest)
            report.marked.add(digest)
            parsed = await self._parse(digest)
            if parsed is None:
                continue
            for descriptor in parsed.blobs:
                report.marked.add(descriptor.digest)
            pending.extend(d.digest for d in parsed.manifests)
            # Artifacts (signatures, SBOMs) attached to a kept manifest stay with it.
            pending.extend(await links.linked_digests(self._driver, paths.referrers(name, digest)))
        for digest in revisions:
            if digest not in kept and await self._older_than_grace(paths.revision_link(name, digest)):
                report.manifests_deleted.append((name, str(digest)))
                if not self.dry_run:
                    await self._registry.manifests.delete(name, str(digest), _GC_CONTEXT, force=True)
            elif digest not in kept:
                report.marked.add(digest)  # too young to judge: keep it and what it needs
                parsed = await self._parse(digest)
                for descriptor in (parsed.blobs + parsed.manifests) if parsed else ():
                    report.marked.add(descriptor.digest)

    async def _parse(self, digest: Digest):
        try:
            stored = await self._registry.manifests.load(digest)
            return mediatypes.parse_manifest(stored.body, stored.media_type)
        except (RegistryError, ValueError):
            return None

    async def _older_than_grace(self, path: str) -> bool:
        try:
            info = await self._driver.stat(path)
        except PathNotFound:
            return False
        return self._clock.seconds() - info.modified >= self.grace

    # -- sweep -----------------------------------------------------------

    async def _sweep(self, report: Report) -> None:
        for digest in await links.stored_blobs(self._driver):
            if digest in report.marked:
                continue
            data = paths.blob_data(digest)
            # Checked again now, just before deleting: a push may have touched it meanwhile.
            if not await self._older_than_grace(data):
                continue
            try:
                size = (await self._driver.stat(data)).size
            except PathNotFound:
                continue
            report.blobs_deleted.append(str(digest))
            report.bytes_freed += size
            if not self.dry_run:
                await links.delete_if_present(self._driver, paths.blob_dir(digest))
                self._registry.manifests.forget(digest)
