# -*- test-case-name: tests.registry.test_service -*-
"""
The registry facade the HTTP layer talks to: one object that owns the
blob, upload, manifest and listing services over one storage driver, and
enforces read-only mode in one place.
"""

from __future__ import annotations

from regd.oci.errors import ReadOnly
from regd.oci.reference import is_valid_name
from regd.registry.blobs import BlobService
from regd.registry.listener import ListenerSet
from regd.registry.listing import ListingService
from regd.registry.manifests import ManifestService, UrlPolicy
from regd.registry.pending import PendingReferences
from regd.registry.uploads import UploadService
from regd.storage import paths


# An atomic small write lives for milliseconds; a spool is written to all along its upload
# (and a stalled one is cut off long before this by regd.limits).
TEMP_AGE = 600.0
SPOOL_AGE = 3600.0


class Registry:
    def __init__(self, driver, clock, *, delete_enabled: bool = False, readonly: bool = False,
                 url_policy: UrlPolicy = UrlPolicy(), validate_manifests: bool = True, listeners=(),
                 redirect: bool = False, cache=None):
        self.driver = driver
        self.clock = clock
        self.readonly = readonly
        self.delete_enabled = delete_enabled
        self.listeners = ListenerSet(listeners)
        self.pending = PendingReferences(driver, clock)
        self.blobs = BlobService(driver, self.listeners, delete_enabled, self.pending, redirect=redirect,
                                 cache=cache)
        self.uploads = UploadService(driver, self.blobs, self.listeners, clock)
        self.manifests = ManifestService(driver, self.blobs, self.listeners, delete_enabled=delete_enabled,
                                         url_policy=url_policy, validate=validate_manifests)
        self.listing = ListingService(driver)
        # The repository index (regd.index.RepositoryIndex) search and the web pages query;
        # set by whoever composes the daemon, None when there is none.
        self.index = None

    def add_listener(self, listener) -> None:
        self.listeners.add(listener)

    def check_writable(self) -> None:
        if self.readonly:
            raise ReadOnly()

    def new_spool(self, ends=None):
        """A request body's spool; C{ends} (a L{regd.registry.uploads.FinalBody}) when it ends an upload."""
        return self.uploads.new_spool(ends)

    def upload_sink(self, name: str, upload_id: str, start: int | None):
        """Where a PATCH body can be written in place (UploadService.body_sink), or None."""
        if self.readonly:
            return None
        return self.uploads.body_sink(name, upload_id, start)

    async def remove_leftovers(self) -> list[str]:
        """
        Remove what processes killed mid-write left (temp files, request-body
        spools, notes of pushes that never finished), if the driver keeps
        such things; safe while other instances share the storage.
        """
        remove = getattr(self.driver, "remove_leftovers", None)
        removed = list(await remove(TEMP_AGE, SPOOL_AGE)) if remove is not None else []
        await self.pending.expire()
        return removed

    async def purge_uploads(self, older_than: float, dry_run: bool = False) -> list[str]:
        names = await self.driver.walk_repositories(paths.REPOSITORIES, "_uploads")
        purged = await self.uploads.purge([n for n in names if is_valid_name(n)], older_than, dry_run)
        sweep = getattr(self.driver, "sweep_spool", None)
        if sweep is not None and not dry_run:
            # Bodies of requests a killed process never finished (S3 spool objects and multipart uploads).
            await sweep(older_than, self.clock.seconds())
        return purged
