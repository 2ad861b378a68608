# -*- test-case-name: tests.oci.test_mediatypes -*-
"""
Manifest media types and the parsing of manifests into the descriptors they
reference, so the registry can check that everything a manifest points at
exists before the manifest becomes visible.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from regd.oci.digest import Digest
from regd.oci.errors import ManifestInvalid, RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_IMAGE_CONFIG = "application/vnd.docker.container.image.v1+json"

IMAGE_MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
SUPPORTED = IMAGE_MANIFESTS | INDEXES
SCHEMA1 = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED, "application/json"})

# Layers clients may push with "urls" and without the blob (foreign layers).
NON_DISTRIBUTABLE = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})

MAX_MANIFEST_SIZE = 4 * 1024 * 1024


class ManifestSchemaUnsupported(RegistryError):
    code = "MANIFEST_INVALID"
    status = 400
    message = "manifest schema version 1 is not supported; push with schema 2 or OCI"


@attrs.frozen
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None
    annotations: dict[str, str] | None = attrs.field(default=None, eq=False, hash=False)
    platform: dict[str, Any] | None = attrs.field(default=None, eq=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        if self.urls:
            out["urls"] = list(self.urls)
        if self.platform:
            out["platform"] = self.platform
        return out

    @property
    def non_distributable(self) -> bool:
        return self.media_type in NON_DISTRIBUTABLE


@attrs.frozen
class Manifest:
    """A parsed manifest or index: what it is and what it references."""

    media_type: str
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None
    artifact_type: str | None
    annotations: dict[str, str] | None = attrs.field(eq=False, hash=False)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEXES

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Blob descriptors (config first, then layers)."""
        return ((self.config,) if self.config else ()) + self.layers

    def referrer_artifact_type(self) -> str | None:
        """The artifactType the referrers API reports for this manifest."""
        if self.artifact_type:
            return self.artifact_type
        if self.config is not None:
            return self.config.media_type
        return None


def _invalid(reason: str, **detail: Any) -> ManifestInvalid:
    return ManifestInvalid(f"manifest invalid: {reason}", detail=detail or None)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise _invalid(f"{where} is not an object")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise _invalid(f"{where}.mediaType missing")
    digest_text = value.get("digest")
    if not isinstance(digest_text, str):
        raise _invalid(f"{where}.digest missing")
    try:
        digest = Digest.parse(digest_text)
    except RegistryError:
        raise _invalid(f"{where}.digest invalid", digest=digest_text[:256]) from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}.size invalid")
    urls = value.get("urls")
    if urls is None:
        urls = []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _invalid(f"{where}.urls invalid")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid(f"{where}.artifactType invalid")
    annotations = value.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
    ):
        raise _invalid(f"{where}.annotations invalid")
    platform = value.get("platform")
    if platform is not None and not isinstance(platform, dict):
        raise _invalid(f"{where}.platform invalid")
    return Descriptor(media_type, digest, size, tuple(urls), artifact_type, annotations, platform)


def _descriptor_list(value: Any, where: str) -> tuple[Descriptor, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _invalid(f"{where} is not a list")
    return tuple(_descriptor(v, f"{where}[{i}]") for i, v in enumerate(value))


def detect_media_type(document: dict[str, Any], declared: str | None) -> str:
    """
    Decide the media type of a pushed manifest from the Content-Type the
    client declared and the mediaType field inside, refusing contradictions.
    """
    inner = document.get("mediaType")
    if inner is not None and not isinstance(inner, str):
        raise _invalid("mediaType is not a string")
    declared = (declared or "").split(";")[0].strip() or None
    if document.get("schemaVersion") == 1 or declared in SCHEMA1 - {"application/json"} or inner in SCHEMA1:
        raise ManifestSchemaUnsupported()
    if declared in SUPPORTED:
        if inner is not None and inner != declared:
            raise _invalid("mediaType does not match Content-Type", mediaType=inner, contentType=declared)
        return declared
    if inner in SUPPORTED:
        return inner
    # Neither names a type. Guessing from the structure would store (and
    # later serve) a type the client never stated, so refuse as registry:2
    # does and say how to fix the push.
    if inner is None:
        raise _invalid("manifest has no mediaType and its Content-Type names no manifest type: "
                       "send the manifest's media type as Content-Type or in mediaType",
                       contentType=declared)
    raise _invalid("unknown manifest media type", contentType=declared, mediaType=inner)


def parse_manifest(body: bytes, declared_type: str | None) -> Manifest:
    """Parse and validate a pushed manifest body; raises L{ManifestInvalid}."""
    if len(body) > MAX_MANIFEST_SIZE:
        raise _invalid("manifest too large", size=len(body), limit=MAX_MANIFEST_SIZE)
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _invalid("not valid JSON") from None
    if not isinstance(document, dict):
        raise _invalid("not a JSON object")
    media_type = detect_media_type(document, declared_type)
    if document.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")
    subject = document.get("subject")
    subject_descriptor = _descriptor(subject, "subject") if subject is not None else None
    artifact_type = document.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType is not a string")
    annotations = document.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        raise _invalid("annotations is not an object")
    if media_type in INDEXES:
        manifests = _descriptor_list(document.get("manifests"), "manifests")
        if "manifests" not in document:
            raise _invalid("index has no manifests")
        return Manifest(media_type, None, (), manifests, subject_descriptor, artifact_type, annotations)
    if "config" not in document:
        raise _invalid("manifest has no config")
    config = _descriptor(document["config"], "config")
    if "layers" not in document:
        raise _invalid("manifest has no layers")
    layers = _descriptor_list(document["layers"], "layers")
    if media_type == DOCKER_MANIFEST and not layers:
        raise _invalid("docker manifest has no layers")
    return Manifest(media_type, config, layers, (), subject_descriptor, artifact_type, annotations)


def negotiate(stored_type: str, accept_header: str | None) -> bool:
    """
    True if a client sending this Accept header can take the stored type.

    Clients that send no Accept, or a wildcard, get what is stored. Clients
    that list types only get one of those; the caller answers 404 otherwise,
    as registry:2 does when it cannot convert.
    """
    if not accept_header:
        return True
    accepted = {part.split(";")[0].strip() for part in accept_header.split(",")}
    accepted.discard("")
    if not accepted or "*/*" in accepted or "application/*" in accepted:
        return True
    if stored_type in accepted:
        return True
    # Clients that only say application/json still take whatever is stored.
    return accepted <= {"application/json"}
