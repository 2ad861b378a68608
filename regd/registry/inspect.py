# -*- test-case-name: tests.registry.test_inspect -*-
"""
What a person browsing a tag wants to know about it, read from storage:
an image's layers and config (entrypoint, env, ports, labels, history), an
index's platforms, compressed sizes summed over layers, and the OCI
referrers that point at it. Read-only and reported to no listener: looking
at a page is not a pull.

Everything derived from a digest is immutable, so summaries are memoised by
digest; a missing child or config is simply not cached.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

import attrs

from regd.oci import mediatypes
from regd.oci.digest import Digest
from regd.oci.errors import ManifestUnknown, RegistryError
from regd.registry import links
from regd.storage import paths
from regd.storage.interfaces import StorageError

DESCRIPTION_KEY = "org.opencontainers.image.description"
MAX_CONFIG_BYTES = 1024 * 1024  # a bigger image config is not read for display


@attrs.frozen
class Layer:
    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()


@attrs.frozen
class HistoryEntry:
    created: str
    created_by: str
    comment: str
    empty_layer: bool


@attrs.frozen
class ImageConfig:
    os: str = ""
    architecture: str = ""
    variant: str = ""
    created: str = ""
    author: str = ""
    user: str = ""
    working_dir: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    history: tuple[HistoryEntry, ...] = ()


@attrs.frozen
class Platform:
    """One row of an index: a child manifest and what it runs on."""

    platform: str
    digest: Digest
    media_type: str
    size: int  # compressed, summed over the child's layers (0 when the child is absent)
    artifact_type: str = ""


@attrs.frozen
class Referrer:
    digest: Digest
    media_type: str
    artifact_type: str
    size: int
    annotations: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Summary:
    """What a tag row shows: compressed size and platforms (for indexes)."""

    digest: Digest
    media_type: str
    size: int
    platforms: tuple[str, ...] = ()


@attrs.frozen
class ManifestDetails:
    name: str
    reference: str
    digest: Digest
    media_type: str
    manifest_size: int
    size: int
    is_index: bool
    artifact_type: str = ""
    description: str = ""
    annotations: tuple[tuple[str, str], ...] = ()
    subject: Digest | None = None
    layers: tuple[Layer, ...] = ()
    config_digest: Digest | None = None
    config_media_type: str = ""
    config: ImageConfig | None = None
    platforms: tuple[Platform, ...] = ()
    referrers: tuple[Referrer, ...] = ()
    body: str = ""


def platform_text(platform: Any) -> str:
    if not isinstance(platform, dict):
        return "unknown"
    parts = [_s(platform.get("os")), _s(platform.get("architecture")), _s(platform.get("variant"))]
    text = "/".join(p for p in parts if p) or "unknown"
    version = _s(platform.get("os.version"))
    return f"{text} ({version})" if version else text


def _s(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict):
        return ()
    return tuple(sorted((str(k), v if isinstance(v, str) else json.dumps(v)) for k, v in value.items()))


def parse_image_config(body: bytes) -> ImageConfig:
    """The displayable parts of an OCI/Docker image config; tolerant of odd shapes."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ImageConfig()
    if not isinstance(document, dict):
        return ImageConfig()
    inner = document.get("config") if isinstance(document.get("config"), dict) else {}
    history = []
    for entry in document.get("history") if isinstance(document.get("history"), list) else []:
        if isinstance(entry, dict):
            history.append(HistoryEntry(_s(entry.get("created")), _s(entry.get("created_by")),
                                        _s(entry.get("comment")), entry.get("empty_layer") is True))
    ports = inner.get("ExposedPorts")
    volumes = inner.get("Volumes")
    return ImageConfig(
        os=_s(document.get("os")), architecture=_s(document.get("architecture")),
        variant=_s(document.get("variant")), created=_s(document.get("created")),
        author=_s(document.get("author")), user=_s(inner.get("User")), working_dir=_s(inner.get("WorkingDir")),
        entrypoint=_strings(inner.get("Entrypoint")), cmd=_strings(inner.get("Cmd")), env=_strings(inner.get("Env")),
        exposed_ports=tuple(sorted(str(p) for p in ports)) if isinstance(ports, dict) else (),
        volumes=tuple(sorted(str(v) for v in volumes)) if isinstance(volumes, dict) else (),
        labels=_pairs(inner.get("Labels")), history=tuple(history))


class Inspector:
    """Reads manifests, configs and referrers of one registry for display."""

    def __init__(self, registry, max_cached: int = 50_000):
        self._registry = registry
        self._driver = registry.driver
        self._summaries: OrderedDict[Digest, Summary] = OrderedDict()
        self._max = max_cached

    async def _parsed(self, digest: Digest):
        stored = await self._registry.manifests.load(digest)
        try:
            return stored, mediatypes.parse_manifest(stored.body, stored.media_type)
        except RegistryError:
            return stored, None

    async def summary(self, name: str, digest: Digest) -> Summary:
        """Compressed size and platforms of a manifest or index, memoised by digest."""
        cached = self._summaries.get(digest)
        if cached is not None:
            return cached
        stored, parsed = await self._parsed(digest)
        complete = True
        if parsed is None:
            result = Summary(digest, stored.media_type, 0)
        elif parsed.is_index:
            total, platforms = 0, []
            for child in parsed.manifests:
                try:
                    child_summary = await self.summary(name, child.digest)
                    total += child_summary.size
                except (ManifestUnknown, StorageError):
                    complete = False
                platforms.append(platform_text(child.platform))
            result = Summary(digest, stored.media_type, total, tuple(platforms))
        else:
            result = Summary(digest, stored.media_type, sum(layer.size for layer in parsed.layers))
        if complete:
            self._summaries[digest] = result
            if len(self._summaries) > self._max:
                self._summaries.popitem(last=False)
        return result

    async def details(self, name: str, reference: str) -> ManifestDetails:
        """Everything the tag page shows; L{ManifestUnknown} when C{reference} is not in C{name}."""
        digest = await self._registry.manifests.resolve(name, reference)
        stored, parsed = await self._parsed(digest)
        body = _pretty(stored.body)
        if parsed is None:
            return ManifestDetails(name, reference, digest, stored.media_type, len(stored.body), 0, False, body=body)
        annotations = _pairs(parsed.annotations)
        referrers = await self.referrers(name, digest)
        common = dict(name=name, reference=reference, digest=digest, media_type=stored.media_type,
                      manifest_size=len(stored.body), artifact_type=parsed.artifact_type or "",
                      annotations=annotations, subject=parsed.subject.digest if parsed.subject else None,
                      referrers=referrers, body=body)
        if parsed.is_index:
            rows = []
            for child in parsed.manifests:
                try:
                    size = (await self.summary(name, child.digest)).size
                except (ManifestUnknown, StorageError):
                    size = 0
                rows.append(Platform(platform_text(child.platform), child.digest, child.media_type, size,
                                     child.artifact_type or ""))
            return ManifestDetails(size=sum(r.size for r in rows), is_index=True, platforms=tuple(rows),
                                   description=dict(annotations).get(DESCRIPTION_KEY, ""), **common)
        config = None
        if parsed.config is not None and parsed.config.size <= MAX_CONFIG_BYTES and \
                parsed.config.media_type in (mediatypes.OCI_IMAGE_CONFIG, mediatypes.DOCKER_IMAGE_CONFIG):
            config_body = await self._small_blob(name, parsed.config.digest)
            if config_body is not None:
                config = parse_image_config(config_body)
        description = dict(annotations).get(DESCRIPTION_KEY) or \
            (dict(config.labels).get(DESCRIPTION_KEY, "") if config else "")
        layers = tuple(Layer(d.media_type, d.digest, d.size, d.urls) for d in parsed.layers)
        return ManifestDetails(
            size=sum(layer.size for layer in layers), is_index=False, layers=layers, description=description,
            config_digest=parsed.config.digest if parsed.config else None,
            config_media_type=parsed.config.media_type if parsed.config else "", config=config, **common)

    async def referrers(self, name: str, subject: Digest) -> tuple[Referrer, ...]:
        found = await self._registry.manifests.referrers(name, subject, None)
        rows = []
        for entry in found:
            try:
                rows.append(Referrer(Digest.parse(entry["digest"]), entry.get("mediaType", ""),
                                     entry.get("artifactType", ""), int(entry.get("size", 0)),
                                     _pairs(entry.get("annotations"))))
            except (RegistryError, ValueError, TypeError):
                continue
        return tuple(rows)

    async def _small_blob(self, name: str, digest: Digest) -> bytes | None:
        """A blob linked in C{name}, if present and small enough to show."""
        try:
            if not await self._registry.blobs.is_linked(name, digest):
                return None
            size = await self._registry.blobs.global_size(digest)
            if size is None or size > MAX_CONFIG_BYTES:
                return None
            return await self._driver.get_content(paths.blob_data(digest))
        except StorageError:
            return None

    async def tag_digest(self, name: str, tag: str) -> Digest | None:
        return await links.read_link(self._driver, paths.tag_current_link(name, tag))


def _pretty(body: bytes, limit: int = 256 * 1024) -> str:
    try:
        text = json.dumps(json.loads(body), indent=2, sort_keys=False)
    except (ValueError, UnicodeDecodeError, RecursionError):
        text = body.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "\n…"
