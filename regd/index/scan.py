# -*- test-case-name: tests.index.test_index -*-
"""
Reading what the index holds out of storage. Events and a full rebuild go
through the same functions here, so an index kept by events and one rebuilt
from storage cannot disagree on anything storage records.
"""

from __future__ import annotations

import json

import attrs

from regd.oci import mediatypes
from regd.oci.digest import Digest
from regd.oci.errors import RegistryError
from regd.oci.reference import is_valid_name, is_valid_tag
from regd.registry import links
from regd.storage import paths
from regd.storage.interfaces import PathNotFound, StorageError

DESCRIPTION_KEY = "org.opencontainers.image.description"
# Image configs are small; a bigger one is not read just for a label.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_DESCRIPTION = 4096
_UNKNOWN_PLATFORM = "unknown/unknown"  # buildx attestation manifests inside an index


@attrs.frozen
class TagScan:
    tag: str
    digest: str
    media_type: str
    size: int
    platforms: tuple[str, ...]
    pushed_at: float | None
    description: str


@attrs.frozen
class RepositoryScan:
    """
    A repository as storage shows it. C{tags} maps each tag looked at to its
    scan, or None when the tag is gone; C{complete}: every tag was looked at,
    so tags the index has and this lacks are gone too.
    """

    name: str
    exists: bool
    complete: bool
    tags: dict = attrs.field(factory=dict)
    admin_description: str | None = None


def _text(value) -> str:
    return value[:MAX_DESCRIPTION] if isinstance(value, str) else ""


def _platform(descriptor) -> str:
    platform = descriptor.platform or {}
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(p for p in parts if isinstance(p, str) and p) or _UNKNOWN_PLATFORM


class Scanner:
    def __init__(self, driver, manifests):
        self._driver = driver
        self._manifests = manifests

    async def repository_names(self) -> list[str]:
        return sorted(r for r in await self._driver.walk_repositories(paths.REPOSITORIES) if is_valid_name(r))

    async def admin_description(self, name: str) -> str | None:
        try:
            return (await self._driver.get_content(paths.index_description(name))).decode("utf-8", "replace")
        except PathNotFound:
            return None

    async def repository(self, name: str, tags=None) -> RepositoryScan:
        """Scan C{name}: every tag (C{tags} None) or only those named."""
        if not is_valid_name(name) or not await links.exists(self._driver, paths.manifests(name)):
            return RepositoryScan(name, exists=False, complete=True)
        complete = tags is None
        if complete:
            tags = [t for t in await links.list_or_empty(self._driver, paths.tags(name)) if is_valid_tag(t)]
        found = {}
        for tag in sorted(set(tags)):
            found[tag] = await self.tag(name, tag)
        return RepositoryScan(name, True, complete, found, await self.admin_description(name))

    async def tag(self, name: str, tag: str) -> TagScan | None:
        link = paths.tag_current_link(name, tag)
        digest = await links.read_link(self._driver, link)
        if digest is None:
            return None
        try:
            pushed_at = (await self._driver.stat(link)).modified
            stored = await self._manifests.load(digest)
        except (StorageError, RegistryError):
            return None
        parsed = self._parse(stored.body, stored.media_type)
        if parsed is None:
            return TagScan(tag, str(digest), stored.media_type, 0, (), pushed_at, "")
        size, platforms, description = await self._describe(parsed)
        return TagScan(tag, str(digest), stored.media_type, size, platforms, pushed_at, description)

    @staticmethod
    def _parse(body: bytes, media_type: str):
        try:
            return mediatypes.parse_manifest(body, media_type)
        except Exception:  # whatever was stored, a page must still render
            return None

    async def _describe(self, parsed) -> tuple[int, tuple[str, ...], str]:
        """(compressed size, platforms, description) of a manifest or an index."""
        if not parsed.is_index:
            return sum(layer.size for layer in parsed.layers), (), await self._description(parsed)
        layers: dict[Digest, int] = {}
        platforms = []
        description = _text((parsed.annotations or {}).get(DESCRIPTION_KEY))
        for child in parsed.manifests:
            platform = _platform(child)
            if platform == _UNKNOWN_PLATFORM:
                continue
            platforms.append(platform)
            try:
                stored = await self._manifests.load(child.digest)
            except (StorageError, RegistryError):
                continue
            inner = self._parse(stored.body, stored.media_type)
            if inner is None or inner.is_index:
                continue
            layers.update((layer.digest, layer.size) for layer in inner.layers)
            if not description:
                description = await self._description(inner)
        return sum(layers.values()), tuple(platforms), description

    async def _description(self, parsed) -> str:
        """The manifest's annotation, else the image config's label; "" if none."""
        annotated = _text((parsed.annotations or {}).get(DESCRIPTION_KEY))
        if annotated:
            return annotated
        config = parsed.config
        if config is None or config.size > MAX_CONFIG_BYTES:
            return ""
        try:
            document = json.loads(await self._driver.get_content(paths.blob_data(config.digest)))
            labels = (document.get("config") or {}).get("Labels") or {}
            return _text(labels.get(DESCRIPTION_KEY)) if isinstance(labels, dict) else ""
        except (StorageError, ValueError, TypeError, AttributeError, RecursionError):
            return ""
