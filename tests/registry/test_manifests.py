"""Manifest service: what a process keeps in memory never outlives what storage holds."""

from __future__ import annotations

import json
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regd.oci.digest import Digest
from regd.oci.errors import ManifestUnknown
from regd.registry.context import RequestContext
from regd.registry.service import Registry
from regd.storage import paths
from regd.storage.filesystem import FilesystemDriver
from regd.storage.threads import inline_runner

CTX = RequestContext()
OCI = "application/vnd.oci.image.manifest.v1+json"


class ManifestCacheTests(SynchronousTestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.registry = self.open_registry()

    def open_registry(self) -> Registry:
        return Registry(FilesystemDriver(self.root, inline_runner), Clock(), delete_enabled=True)

    def run_(self, coroutine):
        return self.successResultOf(defer.ensureDeferred(coroutine))

    def push(self, registry, name: str, reference: str) -> tuple[Digest, bytes]:
        config = b'{"os":"linux"}'
        digest = Digest.of(config)
        self.run_(registry.uploads.put_whole(name, digest, registry.uploads.spool_from_bytes(config), CTX))
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI, "layers": [],
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": str(digest), "size": len(config)}}).encode()
        self.run_(registry.manifests.put(name, reference, body, OCI, CTX))
        return Digest.of(body), body

    def test_manifest_removed_by_another_process_is_not_served_from_memory(self):
        digest, body = self.push(self.registry, "app", "v1")
        self.assertEqual(self.run_(self.registry.manifests.get("app", str(digest), CTX)).body, body)
        # Another process (a separate `regd garbage-collect`) removes the bytes; the links stay.
        os.unlink(os.path.join(self.root, paths.blob_data(digest)))
        for reference in (str(digest), "v1"):
            failure = self.failureResultOf(defer.ensureDeferred(
                self.registry.manifests.get("app", reference, CTX)), ManifestUnknown)
            self.assertIsInstance(failure.value, ManifestUnknown)

    def test_manifest_pushed_again_after_removal_is_served(self):
        digest, body = self.push(self.registry, "app", "v1")
        self.run_(self.registry.manifests.get("app", "v1", CTX))
        os.unlink(os.path.join(self.root, paths.blob_data(digest)))
        self.push(self.open_registry(), "app", "v1")  # pushed again through another instance
        self.assertEqual(self.run_(self.registry.manifests.get("app", "v1", CTX)).body, body)
