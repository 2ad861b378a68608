# -*- test-case-name: tests.registry.test_manifests -*-
"""
Manifests and indexes: stored as blobs, reachable through revision links,
named by tags. A manifest becomes visible only after everything it
references was found, and the bytes served are exactly the bytes pushed.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict

import attrs

from regd.oci import mediatypes
from regd.oci.digest import Digest
from regd.oci.errors import (
    DigestInvalid, ManifestBlobUnknown, ManifestInvalid, ManifestUnknown, RequestTooLarge, Unsupported,
)
from regd.oci.mediatypes import Manifest
from regd.registry import links
from regd.registry.blobs import BlobService
from regd.registry.context import RequestContext
from regd.registry.listener import DELETE, MANIFEST, PULL, PUSH, TAG, ListenerSet, RegistryEvent
from regd.storage import paths
from regd.storage.interfaces import PathNotFound


@attrs.frozen
class StoredManifest:
    digest: Digest
    media_type: str
    body: bytes
    parsed: Manifest | None = attrs.field(eq=False, default=None)


@attrs.frozen
class UrlPolicy:
    """registry:2's validation.manifests.urls: foreign layer URLs must match allow and not deny."""

    allow: tuple[re.Pattern, ...] = ()
    deny: tuple[re.Pattern, ...] = ()

    def permits(self, url: str) -> bool:
        """No allow list means any http(s) URL, as registry:2 does; deny always applies."""
        if not url.lower().startswith(("http://", "https://")) or "#" in url:
            return False
        if self.allow and not any(p.search(url) for p in self.allow):
            return False
        return not any(p.search(url) for p in self.deny)


class _ContentCache:
    """Bounded LRU of manifest bodies by digest: content never changes under a digest."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024):
        self._items: OrderedDict[Digest, StoredManifest] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes

    def get(self, digest: Digest) -> StoredManifest | None:
        item = self._items.get(digest)
        if item is not None:
            self._items.move_to_end(digest)
        return item

    def put(self, item: StoredManifest) -> None:
        if item.digest in self._items or len(item.body) > self._max:
            return
        self._items[item.digest] = item
        self._bytes += len(item.body)
        while self._bytes > self._max:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old.body)

    def discard(self, digest: Digest) -> None:
        item = self._items.pop(digest, None)
        if item is not None:
            self._bytes -= len(item.body)


def media_type_of(body: bytes) -> str:
    """Media type of stored manifest bytes (what we serve as Content-Type)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return mediatypes.OCI_MANIFEST
    if not isinstance(document, dict):
        return mediatypes.OCI_MANIFEST
    inner = document.get("mediaType")
    if isinstance(inner, str) and inner:
        return inner
    if document.get("schemaVersion") == 1:
        return mediatypes.DOCKER_SCHEMA1_SIGNED if "signatures" in document else mediatypes.DOCKER_SCHEMA1
    return mediatypes.OCI_INDEX if "manifests" in document else mediatypes.OCI_MANIFEST


class ManifestService:
    def __init__(self, driver, blobs: BlobService, listeners: ListenerSet, *, delete_enabled: bool,
                 url_policy: UrlPolicy = UrlPolicy(), validate: bool = True):
        self._driver = driver
        self._blobs = blobs
        self._listeners = listeners
        self._delete_enabled = delete_enabled
        self._url_policy = url_policy
        self._validate = validate
        self._cache = _ContentCache()

    # -- reading ---------------------------------------------------------

    async def resolve(self, name: str, reference: str) -> Digest:
        """Digest a tag or digest reference points at in this repository."""
        if ":" in reference:
            digest = Digest.parse(reference)
            if await links.read_link(self._driver, paths.revision_link(name, digest)) != digest:
                raise ManifestUnknown(detail={"name": name, "reference": reference})
            return digest
        digest = await links.read_link(self._driver, paths.tag_current_link(name, reference))
        if digest is None:
            raise ManifestUnknown(detail={"name": name, "tag": reference})
        return digest

    async def load(self, digest: Digest) -> StoredManifest:
        cached = self._cache.get(digest)
        if cached is not None:
            # Bytes never change under a digest, but another process (a
            # separate garbage collection, another instance) may have removed
            # them: memory is only trusted while storage still holds them.
            if await self._blobs.global_size(digest) is not None:
                return cached
            self._cache.discard(digest)
            raise ManifestUnknown(detail={"digest": str(digest)})
        try:
            body = await self._driver.get_content(paths.blob_data(digest))
        except PathNotFound:
            if not await self._blobs.reclaim(digest):
                raise ManifestUnknown(detail={"digest": str(digest)}) from None
            try:
                body = await self._driver.get_content(paths.blob_data(digest))
            except PathNotFound:
                raise ManifestUnknown(detail={"digest": str(digest)}) from None
        item = StoredManifest(digest, media_type_of(body), body)
        self._cache.put(item)
        return item

    async def get(self, name: str, reference: str, context: RequestContext,
                  report: bool = True) -> StoredManifest:
        digest = await self.resolve(name, reference)
        item = await self.load(digest)
        if report:
            await self._listeners.emit(RegistryEvent(
                PULL, MANIFEST, name, context, digest=digest, size=len(item.body),
                media_type=item.media_type, tag=None if ":" in reference else reference))
        return item

    # -- writing ---------------------------------------------------------

    async def put(self, name: str, reference: str, body: bytes, content_type: str | None,
                  context: RequestContext) -> tuple[Digest, Manifest]:
        if len(body) > mediatypes.MAX_MANIFEST_SIZE:
            raise RequestTooLarge("manifest exceeds the size limit",
                                  detail={"size": len(body), "limit": mediatypes.MAX_MANIFEST_SIZE})
        parsed = mediatypes.parse_manifest(body, content_type)
        tag = None
        if ":" in reference:
            wanted = Digest.parse(reference)
            digest = Digest.of(body, wanted.algorithm)
            if digest != wanted:
                raise DigestInvalid(detail={"expected": str(wanted), "received": str(digest)})
        else:
            tag = reference
            digest = Digest.of(body)
        referenced = [digest] + [d.digest for d in parsed.blobs + parsed.manifests]
        # Announced before anything is checked, withdrawn once linked: a
        # collection running anywhere keeps all of it (regd.registry.pending).
        async with self._blobs.pending.holding(name, referenced):
            if self._validate:
                await self._check_references(name, parsed)
            if await self._blobs.global_size(digest) is None:
                await self._driver.put_content(paths.blob_data(digest), body)
            await links.write_link(self._driver, paths.revision_link(name, digest), digest)
            if parsed.subject is not None:
                await links.write_link(self._driver, paths.referrer_link(name, parsed.subject.digest, digest),
                                       digest)
            if tag is not None:
                await links.write_link(self._driver, paths.tag_index_link(name, tag, digest), digest)
                await links.write_link(self._driver, paths.tag_current_link(name, tag), digest)
        self._cache.put(StoredManifest(digest, parsed.media_type, body, parsed))
        references = tuple(d.digest for d in parsed.blobs + parsed.manifests)
        await self._listeners.emit(RegistryEvent(
            PUSH, MANIFEST, name, context, digest=digest, size=len(body), media_type=parsed.media_type,
            tag=tag, references=references))
        return digest, parsed

    async def _check_references(self, name: str, parsed: Manifest) -> None:
        """
        Everything the manifest names must be here, with the size it says:
        a descriptor whose size differs from the stored blob would make
        clients fail (or be fooled) after a successful push.
        """
        missing, wrong_size = [], []
        for descriptor in parsed.blobs:
            if descriptor.urls and descriptor.non_distributable:
                bad = [u for u in descriptor.urls if not self._url_policy.permits(u)]
                if bad:
                    raise ManifestInvalid("manifest invalid: layer URL not allowed",
                                          detail={"digest": str(descriptor.digest), "url": bad[0][:512]})
                continue
            size = await self._blobs.global_size(descriptor.digest) \
                if await self._blobs.is_linked(name, descriptor.digest) else None
            if size is None:
                missing.append(descriptor)
            elif size != descriptor.size:
                wrong_size.append((descriptor, size))
        for descriptor in parsed.manifests:
            if await links.read_link(self._driver, paths.revision_link(name, descriptor.digest)) != descriptor.digest \
                    or await self._blobs.global_size(descriptor.digest) is None:
                missing.append(descriptor)
                continue
            size = await self._blobs.global_size(descriptor.digest)
            if size is None:
                missing.append(descriptor)
            elif size != descriptor.size:
                wrong_size.append((descriptor, size))
        if missing:
            raise ManifestBlobUnknown(detail={"digest": str(missing[0].digest),
                                              "missing": [str(d.digest) for d in missing[:16]]})
        if wrong_size:
            descriptor, stored = wrong_size[0]
            raise ManifestInvalid("manifest invalid: descriptor size does not match the stored content",
                                  detail={"digest": str(descriptor.digest), "size": descriptor.size,
                                          "stored": stored})
        # In use again: a garbage collection running now must not sweep them (its grace period).
        for descriptor in parsed.blobs + parsed.manifests:
            await self._blobs.touch(descriptor.digest)

    # -- deleting --------------------------------------------------------

    def _require_delete(self) -> None:
        if not self._delete_enabled:
            raise Unsupported("deletes are disabled on this registry")

    def forget(self, digest: Digest) -> None:
        """Drop a cached body whose blob is gone (garbage collection)."""
        self._cache.discard(digest)

    async def delete(self, name: str, reference: str, context: RequestContext, force: bool = False) -> None:
        """
        Delete by digest (manifest and every tag on it) or by tag (untag only).
        C{force}: the garbage collector's own removal, allowed with deletes
        disabled and reported to no listener.
        """
        if not force:
            self._require_delete()
        if ":" not in reference:
            await self.untag(name, reference, context)
            return
        digest = await self.resolve(name, reference)
        stored = await self.load(digest)
        for tag in await links.list_or_empty(self._driver, paths.tags(name)):
            if await links.read_link(self._driver, paths.tag_current_link(name, tag)) == digest:
                await links.delete_if_present(self._driver, paths.tag_dir(name, tag))
        await links.delete_if_present(self._driver, paths.revision_dir(name, digest))
        parsed = self._parse_stored(stored)
        if parsed is not None and parsed.subject is not None:
            await links.delete_if_present(
                self._driver, paths.referrer_link(name, parsed.subject.digest, digest).rsplit("/", 1)[0])
        if not force:
            await self._listeners.emit(RegistryEvent(
                DELETE, MANIFEST, name, context, digest=digest, size=len(stored.body),
                media_type=stored.media_type))

    async def untag(self, name: str, tag: str, context: RequestContext) -> None:
        self._require_delete()
        digest = await links.read_link(self._driver, paths.tag_current_link(name, tag))
        if digest is None or not await links.delete_if_present(self._driver, paths.tag_dir(name, tag)):
            raise ManifestUnknown(detail={"name": name, "tag": tag})
        await self._listeners.emit(RegistryEvent(DELETE, TAG, name, context, digest=digest, tag=tag))

    # -- referrers -------------------------------------------------------

    @staticmethod
    def _parse_stored(stored: StoredManifest) -> Manifest | None:
        if stored.parsed is not None:
            return stored.parsed
        try:
            return mediatypes.parse_manifest(stored.body, stored.media_type)
        except Exception:
            return None

    async def referrers(self, name: str, subject: Digest, artifact_type: str | None) -> list[dict]:
        """Descriptors of the manifests in C{name} whose subject is C{subject}."""
        found = []
        for digest in await links.linked_digests(self._driver, paths.referrers(name, subject)):
            if await links.read_link(self._driver, paths.revision_link(name, digest)) != digest:
                continue
            try:
                stored = await self.load(digest)
            except ManifestUnknown:
                continue
            parsed = self._parse_stored(stored)
            if parsed is None or parsed.subject is None or parsed.subject.digest != subject:
                continue
            kind = parsed.referrer_artifact_type()
            if artifact_type is not None and kind != artifact_type:
                continue
            entry = {"mediaType": stored.media_type, "digest": str(digest), "size": len(stored.body)}
            if kind:
                entry["artifactType"] = kind
            if parsed.annotations:
                entry["annotations"] = parsed.annotations
            found.append(entry)
        return found
