# -*- test-case-name: tests.registry.test_blobs -*-
"""
Blobs: one global content-addressed store, and per-repository links that
decide which repositories may serve which blobs.
"""

from __future__ import annotations

import copy

import attrs

from regd.cache.descriptors import BlobDescriptorCache
from regd.cache.interfaces import Descriptor
from regd.oci.digest import Digest
from regd.oci.errors import BlobUnknown, Unsupported
from regd.registry import links
from regd.registry.context import RequestContext
from regd.registry.listener import BLOB, DELETE, MOUNT, PULL, ListenerSet, RegistryEvent
from regd.registry.pending import PendingReferences
from regd.storage import paths
from regd.storage.interfaces import PathNotFound


@attrs.frozen
class BlobInfo:
    digest: Digest
    size: int


class ServedBlob:
    """
    A blob opened for a client: streams through the storage reader and
    reports a pull once every requested byte was written.
    """

    def __init__(self, reader, info: BlobInfo, on_complete):
        self._reader = reader
        self.info = info
        self.size = info.size
        self._on_complete = on_complete

    def stream_to(self, consumer, offset: int = 0, length: int | None = None):
        d = self._reader.stream_to(consumer, offset, length)
        d.addCallback(lambda _: self._on_complete())
        return d

    def send_with(self, sender, offset: int, length: int):
        """
        Hand the reader's file descriptor to C{sender(fd, offset, length)}
        (zero-copy sending, see L{regd.http.zerocopy}) and report the pull
        once it fires. None if the storage reader has no descriptor (memory,
        S3): the caller then streams with L{stream_to}.
        """
        fd_of = getattr(self._reader, "sendfile_fd", None)
        fd = fd_of() if fd_of is not None else None
        if fd is None:
            return None
        d = sender(fd, offset, length)
        d.addCallback(lambda _: self._on_complete())
        return d

    def close(self) -> None:
        self._reader.close()


class BlobService:
    """
    Blob HEAD/GET lookups read through the blob-descriptor cache
    (L{regd.cache}); deletes and garbage collection tell it to forget. What
    uploads, mounts and manifest checks decide on always comes from storage.
    """

    def __init__(self, driver, listeners: ListenerSet, delete_enabled: bool, pending: PendingReferences,
                 redirect: bool = False, cache: BlobDescriptorCache | None = None):
        self.cache = cache if cache is not None else BlobDescriptorCache()
        self._driver = driver
        self.pending = pending
        self._listeners = listeners
        self._delete_enabled = delete_enabled
        # Clients fetch blob bytes straight from the storage when it can hand out URLs (S3).
        self._redirect = redirect and getattr(driver, "redirect_url", None) is not None

    def using(self, driver) -> BlobService:
        """This service over C{driver}: the same storage, seen from inside one of its jobs (in_one_job)."""
        twin = copy.copy(self)
        twin._driver = driver
        twin.pending = self.pending.using(driver)
        return twin

    async def global_size(self, digest: Digest, reclaim: bool = True) -> int | None:
        """
        Size of the blob in the global store, or None if it is absent. A blob
        a running garbage collection has condemned (moved aside, not yet
        deleted) is taken back first unless C{reclaim} is false: whoever asks
        needs it, and putting it back is always safe (see regd.registry.pending).
        """
        try:
            info = await self._driver.stat(paths.blob_data(digest))
        except PathNotFound:
            if not reclaim or not await self.reclaim(digest):
                return None
            try:
                info = await self._driver.stat(paths.blob_data(digest))
            except PathNotFound:
                return None
        return info.size

    async def reclaim(self, digest: Digest) -> bool:
        """
        Put a condemned blob back in the store; True if the blob is in the
        store now, False if neither the store nor a collection holds it.
        """
        # Looked up first: a stat is cheaper than a move that fails (a thread hop, or an S3 copy),
        # and nearly every new blob asks. A blob condemned just after the look-up is put back by
        # the collector itself, which reads the pending notes after condemning (regd.registry.pending).
        if await links.exists(self._driver, paths.condemned_blob(digest)):
            try:
                await self._driver.move(paths.condemned_blob(digest), paths.blob_data(digest))
                return True
            except PathNotFound:
                pass
        # Not condemned, or no longer: the collector may have put it back since the caller found the
        # store without it (it does for blobs a pending note or a new link names), so look again.
        return await links.exists(self._driver, paths.blob_data(digest))

    async def is_linked(self, name: str, digest: Digest) -> bool:
        return await links.read_link(self._driver, paths.layer_link(name, digest)) == digest

    async def _linked(self, name: str, digest: Digest) -> Descriptor | None:
        if not await self.is_linked(name, digest):
            return None
        size = await self.global_size(digest)
        return None if size is None else Descriptor(digest, size)

    async def stat(self, name: str, digest: Digest, *, fresh: bool = False) -> BlobInfo:
        """
        The blob as this repository sees it; L{BlobUnknown} unless linked and
        present. Served from the blob-descriptor cache unless C{fresh}.
        """
        if fresh:
            found = await self._linked(name, digest)
        else:
            found = await self.cache.linked(name, digest, lambda: self._linked(name, digest))
        if found is None:
            raise BlobUnknown(detail={"digest": str(digest)})
        return BlobInfo(digest, found.size)

    async def open(self, name: str, digest: Digest, context: RequestContext) -> ServedBlob:
        info = await self.stat(name, digest)
        try:
            reader = await self._driver.reader(paths.blob_data(digest))
        except PathNotFound:
            # Known to the cache but not in the store: condemned by a running collection (take it
            # back, as a storage lookup would), or gone (the cache must forget it).
            if not await self.reclaim(digest):
                await self.cache.invalidate(digest)
                raise BlobUnknown(detail={"digest": str(digest)}) from None
            try:
                reader = await self._driver.reader(paths.blob_data(digest))
            except PathNotFound:
                raise BlobUnknown(detail={"digest": str(digest)}) from None

        def pulled():
            return self._listeners.emit(RegistryEvent(
                PULL, BLOB, name, context, digest=digest, size=info.size,
                media_type="application/octet-stream"))

        return ServedBlob(reader, BlobInfo(digest, reader.size), pulled)

    async def redirect_url(self, name: str, digest: Digest, context: RequestContext) -> str | None:
        """
        A URL the client may fetch the blob from directly, or None when
        redirects are off or the driver has none. The pull is reported now,
        as registry:2 does: the bytes no longer pass through here.
        """
        if not self._redirect:
            return None
        info = await self.stat(name, digest)
        url = await self._driver.redirect_url(paths.blob_data(digest), "GET")
        if url is not None:
            await self._listeners.emit(RegistryEvent(
                PULL, BLOB, name, context, digest=digest, size=info.size, media_type="application/octet-stream"))
        return url

    async def link(self, name: str, digest: Digest, touch: bool = True) -> None:
        # Touching the bytes tells a concurrent garbage collection they are in use again
        # (not needed for bytes this request has just written).
        if touch:
            await self.touch(digest)
        await links.write_link(self._driver, paths.layer_link(name, digest), digest)

    async def store_and_link(self, name: str, digest: Digest, data: bytes) -> None:
        """
        Write a small blob's bytes (already verified against C{digest}) and
        link it to C{name}: in one durable write where the driver can write
        several objects at once (put_contents), else one after the other.
        """
        items = [(paths.blob_data(digest), data), (paths.layer_link(name, digest), str(digest).encode("ascii"))]
        put_contents = getattr(self._driver, "put_contents", None)
        if put_contents is not None:
            await put_contents(items)
            return
        for path, body in items:
            await self._driver.put_content(path, body)

    async def touch(self, digest: Digest) -> None:
        try:
            await self._driver.touch(paths.blob_data(digest))
        except PathNotFound:
            pass

    async def mount(self, name: str, source: str, digest: Digest, context: RequestContext) -> BlobInfo | None:
        """
        Make a blob of C{source} reachable in C{name} without moving bytes.
        Returns None when the source does not have it (the caller then starts
        an ordinary upload, as the spec asks).
        """
        async with self.pending.holding(name, [digest]):
            try:
                info = await self.stat(source, digest, fresh=True)
            except BlobUnknown:
                return None
            await self.link(name, digest)
        await self._listeners.emit(RegistryEvent(
            MOUNT, BLOB, name, context, digest=digest, size=info.size,
            media_type="application/octet-stream", from_repository=source))
        return info

    async def delete(self, name: str, digest: Digest, context: RequestContext) -> None:
        """Unlink a blob from a repository; the bytes go only with garbage collection."""
        if not self._delete_enabled:
            raise Unsupported("deletes are disabled on this registry")
        if not await self.is_linked(name, digest):
            raise BlobUnknown(detail={"digest": str(digest)})
        await links.delete_if_present(self._driver, paths.layer_dir(name, digest))
        await self.cache.invalidate_repo_link(name, digest)
        await self._listeners.emit(RegistryEvent(DELETE, BLOB, name, context, digest=digest))

    async def forget(self, digests) -> None:
        """
        These blobs' bytes are being or were removed (garbage collection, fsck
        repair): no cache may know them any more. Raises CacheUnavailable from a
        strict cache (a separate GC process) that cannot reach Redis.
        """
        await self.cache.invalidate_many(list(digests))
