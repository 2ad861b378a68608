"""Garbage collection: mark from manifests, indexes and referrers; grace; dry runs; untagged manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regd.oci.digest import Digest
from regd.registry.context import RequestContext
from regd.registry.gc import GarbageCollector
from regd.registry.service import Registry
from regd.storage import paths
from regd.storage.filesystem import FilesystemDriver
from regd.storage.threads import inline_runner

CTX = RequestContext()
OCI = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


class WallClock:
    """File times are wall-clock times, so the collector's clock must be too."""

    def seconds(self) -> float:
        return time.time()


class GCTests(SynchronousTestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.clock = WallClock()
        self.registry = Registry(FilesystemDriver(self.root, inline_runner), self.clock, delete_enabled=True)

    def run_(self, coroutine):
        return self.successResultOf(defer.ensureDeferred(coroutine))

    def blob(self, name: str, data: bytes) -> Digest:
        digest = Digest.of(data)
        self.run_(self.registry.uploads.put_whole(name, digest, self.registry.uploads.spool_from_bytes(data), CTX))
        return digest

    def image(self, name: str, tag: str | None, layer: bytes, **extra) -> tuple[Digest, dict]:
        config = self.blob(name, b'{"os":"linux"}')
        layer_digest = self.blob(name, layer)
        document = {"schemaVersion": 2, "mediaType": OCI,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(config),
                               "size": 14},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(layer_digest),
                                "size": len(layer)}], **extra}
        body = json.dumps(document).encode()
        digest = Digest.of(body)
        self.run_(self.registry.manifests.put(name, tag or str(digest), body, OCI, CTX))
        return digest, {"mediaType": OCI, "digest": str(digest), "size": len(body)}

    def age_everything(self, seconds: float = 7200):
        """Make every stored file look as if written C{seconds} ago."""
        past = time.time() - seconds
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                os.utime(os.path.join(directory, name), (past, past))

    def exists(self, digest: Digest) -> bool:
        return os.path.exists(os.path.join(self.root, paths.blob_data(digest)))

    def collect(self, **kwargs):
        return self.run_(GarbageCollector(self.registry, self.clock, **kwargs).run())

    def test_sweeps_orphans_older_than_grace_only(self):
        image, _ = self.image("app", "v1", b"layer-1")
        old_orphan = self.blob("app", b"never referenced")
        self.age_everything()
        fresh_orphan = self.blob("app", b"just uploaded")
        dry = self.collect(grace=3600, dry_run=True)
        self.assertEqual(dry.blobs_deleted, [str(old_orphan)])
        self.assertTrue(self.exists(old_orphan))  # a dry run deletes nothing
        report = self.collect(grace=3600)
        self.assertEqual(report.blobs_deleted, [str(old_orphan)])
        self.assertFalse(self.exists(old_orphan))
        self.assertTrue(self.exists(fresh_orphan))
        self.assertTrue(self.exists(image))
        stored = self.run_(self.registry.manifests.get("app", "v1", CTX))
        for descriptor in json.loads(stored.body)["layers"]:
            self.assertTrue(self.exists(Digest.parse(descriptor["digest"])))

    def test_grace_zero_sweeps_at_once(self):
        orphan = self.blob("app", b"orphan")
        self.assertEqual(self.collect(grace=0).blobs_deleted, [str(orphan)])

    def test_a_reference_refreshes_an_old_blob(self):
        layer = self.blob("app", b"old layer")
        self.age_everything()
        self.image("app", "v2", b"old layer")  # a new manifest uses the old blob: touched
        self.run_(self.registry.manifests.untag("app", "v2", CTX))
        report = self.collect(grace=3600, delete_untagged=True)
        self.assertNotIn(str(layer), report.blobs_deleted)

    def test_delete_untagged_keeps_index_children_and_referrers(self):
        old, _ = self.image("app", "latest", b"old-layer")
        new, _ = self.image("app", "latest", b"new-layer")  # retag: old is untagged now
        child, child_descriptor = self.image("multi", None, b"arm-layer")
        index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [child_descriptor]}).encode()
        self.run_(self.registry.manifests.put("multi", "v1", index, INDEX, CTX))
        signature, _ = self.image("app", None, b"signature",
                                  subject={"mediaType": OCI, "digest": str(new), "size": 1},
                                  artifactType="application/vnd.example.sig")
        self.age_everything()
        report = self.collect(grace=3600, delete_untagged=True)
        deleted = {d for _, d in report.manifests_deleted}
        self.assertEqual(deleted, {str(old)})
        self.assertFalse(self.exists(old))
        self.assertFalse(self.exists(Digest.of(b"old-layer")))
        for kept in (new, child, signature, Digest.of(b"arm-layer"), Digest.of(b"new-layer")):
            self.assertTrue(self.exists(kept), kept)
        self.run_(self.registry.manifests.get("multi", str(child), CTX))


class CLITests(SynchronousTestCase):
    def test_dry_run_lists_and_deletes_nothing(self):
        root = os.path.abspath(self.mktemp())
        registry = Registry(FilesystemDriver(root, inline_runner), Clock())
        data = b"orphan bytes"
        digest = Digest.of(data)
        self.successResultOf(defer.ensureDeferred(registry.uploads.put_whole(
            "r", digest, registry.uploads.spool_from_bytes(data), CTX)))
        os.makedirs(os.path.join(root, paths.manifests("r")))
        config = os.path.join(root, "..", "config.yml")
        with open(config, "w") as f:
            f.write(f"storage:\n  filesystem:\n    rootdirectory: {root}\n")
        command = [os.path.join(os.path.dirname(sys.executable), "regd"), "garbage-collect", "--config", config,
                   "--grace", "0s"]
        dry = subprocess.run(command + ["--dry-run"], capture_output=True, text=True, timeout=60)
        self.assertEqual(dry.returncode, 0, dry.stderr)
        self.assertIn(f"would delete blob {digest}", dry.stdout)
        self.assertTrue(os.path.exists(os.path.join(root, paths.blob_data(digest))))
        real = subprocess.run(command, capture_output=True, text=True, timeout=60)
        self.assertIn(f"deleted blob {digest}", real.stdout)
        self.assertFalse(os.path.exists(os.path.join(root, paths.blob_data(digest))))
