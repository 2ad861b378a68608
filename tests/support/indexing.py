"""Pushing images straight through the registry service (no HTTP), for index tests and benchmarks."""

from __future__ import annotations

import json

from regd.oci.digest import Digest
from regd.registry.context import RequestContext
from regd.storage import paths

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DESCRIPTION = "org.opencontainers.image.description"


def context(actor: str | None = None) -> RequestContext:
    return RequestContext(request_id="t", addr="127.0.0.1", host="localhost", method="PUT",
                          user_agent="test", actor=actor)


async def put_blob(registry, name: str, data: bytes) -> Digest:
    digest = Digest.of(data)
    await registry.driver.put_content(paths.blob_data(digest), data)
    await registry.blobs.link(name, digest)
    return digest


async def image_document(registry, name: str, *, layers=(b"layer",), label: str | None = None,
                         annotation: str | None = None, platform=("linux", "amd64")) -> dict:
    config = {"architecture": platform[1], "os": platform[0], "config": {}}
    if label is not None:
        config["config"]["Labels"] = {DESCRIPTION: label}
    config_bytes = json.dumps(config).encode()
    config_digest = await put_blob(registry, name, config_bytes)
    document = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(config_digest),
                   "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": str(await put_blob(registry, name, data)), "size": len(data)} for data in layers],
    }
    if annotation is not None:
        document["annotations"] = {DESCRIPTION: annotation}
    return document


async def push_image(registry, name: str, tag: str | None, *, actor: str | None = None, **kwargs) -> Digest:
    document = await image_document(registry, name, **kwargs)
    body = json.dumps(document).encode()
    reference = tag if tag is not None else str(Digest.of(body))
    digest, _ = await registry.manifests.put(name, reference, body, OCI_MANIFEST, context(actor))
    return digest


async def push_index(registry, name: str, tag: str, platforms, *, actor: str | None = None,
                     annotation: str | None = None) -> Digest:
    children = []
    for number, platform in enumerate(platforms):
        document = await image_document(registry, name, layers=(f"{platform}-{number}".encode(),),
                                        platform=platform)
        body = json.dumps(document).encode()
        digest, _ = await registry.manifests.put(name, str(Digest.of(body)), body, OCI_MANIFEST, context(actor))
        children.append({"mediaType": OCI_MANIFEST, "digest": str(digest), "size": len(body),
                         "platform": {"os": platform[0], "architecture": platform[1]}})
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
    if annotation is not None:
        index["annotations"] = {DESCRIPTION: annotation}
    digest, _ = await registry.manifests.put(name, tag, json.dumps(index).encode(), OCI_INDEX, context(actor))
    return digest
