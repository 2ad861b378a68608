"""
The registry service on S3 (a real moto server): an upload handled by three
instances in turn, upload purging, catalog, garbage collection and fsck.
Each "instance" is its own Registry over its own S3Driver on one bucket.
"""

from __future__ import annotations

import json
import os
import time

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from regd.oci.digest import Digest
from regd.registry.fsck import StorageCheck
from regd.registry.gc import GarbageCollector
from regd.registry.service import Registry
from regd.storage import paths
from regd.storage.s3 import S3Driver
from tests.registry.test_gc import CTX, OCI
from tests.support.s3 import s3_settings, shared_moto

PART = 64 * 1024


class ShiftedClock:
    """Wall-clock time (S3 stamps objects with it), moved by C{ahead} seconds."""

    def __init__(self):
        self.ahead = 0.0

    def seconds(self) -> float:
        return time.time() + self.ahead


class RegistryOnS3Tests(TestCase):
    def setUp(self):
        self.server = shared_moto()
        self.bucket = self.server.new_bucket()
        self.clock = ShiftedClock()
        self.a, self.b, self.c = (self.instance() for _ in range(3))

    def instance(self) -> Registry:
        driver = S3Driver(s3_settings(self.server, self.bucket, rootdirectory="/r", chunksize=PART,
                                      multipartcopychunksize=PART, multipartcopythresholdsize=PART),
                          reactor, min_part=PART)
        self.addCleanup(driver.client.close)
        return Registry(driver, self.clock, delete_enabled=True)

    def keys(self):
        return self.server.keys(self.bucket)

    async def blob(self, registry: Registry, name: str, data: bytes) -> Digest:
        digest = Digest.of(data)
        await registry.uploads.put_whole(name, digest, registry.uploads.spool_from_bytes(data), CTX)
        return digest

    async def image(self, registry: Registry, name: str, tag: str, layer: bytes) -> Digest:
        config = await self.blob(registry, name, b'{"os":"linux"}')
        layer_digest = await self.blob(registry, name, layer)
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": str(config), "size": 14},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": str(layer_digest), "size": len(layer)}]}).encode()
        await registry.manifests.put(name, tag, body, OCI, CTX)
        return Digest.of(body)

    async def test_an_upload_started_continued_and_finished_on_three_instances(self):
        data = os.urandom(3 * PART + 999)
        cut = 2 * PART + 5
        upload_id = await self.a.uploads.start("team/app")
        await self.b.uploads.append("team/app", upload_id, self.b.uploads.spool_from_bytes(data[:cut]), 0, cut - 1)
        self.assertEqual(await self.a.uploads.status("team/app", upload_id), cut)
        await self.c.uploads.append("team/app", upload_id, self.c.uploads.spool_from_bytes(data[cut:]),
                                    cut, len(data) - 1)
        info = await self.c.uploads.commit("team/app", upload_id, Digest.of(data), None, CTX)
        self.assertEqual(info.size, len(data))
        served = await self.a.blobs.open("team/app", Digest.of(data), CTX)
        self.assertEqual(await served._reader.read_all(), data)
        # Nothing of the upload is left in the bucket: only the blob and its link.
        self.assertEqual([k for k in self.keys() if "/_uploads/" in k or "/regd/spool/" in k], [])

    async def test_a_wrong_digest_publishes_nothing(self):
        from regd.oci.errors import DigestInvalid
        data = os.urandom(2 * PART)
        upload_id = await self.a.uploads.start("app")
        await self.b.uploads.append("app", upload_id, self.b.uploads.spool_from_bytes(data), 0, len(data) - 1)
        with self.assertRaises(DigestInvalid):
            await self.c.uploads.commit("app", upload_id, Digest.of(b"something else"), None, CTX)
        self.assertEqual([k for k in self.keys() if "/blobs/" in k], [])

    async def test_purge_catalog_gc_and_fsck(self):
        image = await self.image(self.a, "team/app", "v1", b"layer one")
        orphan = await self.blob(self.b, "team/app", b"never referenced")
        stale = await self.a.uploads.start("team/other")
        await self.a.uploads.append("team/other", stale,
                                    self.a.uploads.spool_from_bytes(os.urandom(2 * PART)), 0, 2 * PART - 1)
        self.assertEqual(await self.c.listing.repositories(), ["team/app"])

        self.clock.ahead = 8 * 24 * 3600  # a week and a day later
        purged = await self.c.purge_uploads(7 * 24 * 3600)
        self.assertEqual(purged, [paths.upload_dir("team/other", stale)])
        self.assertEqual([k for k in self.keys() if "/_uploads/" in k or "/regd/spool/" in k], [])

        report = await GarbageCollector(self.b, self.clock, grace=3600).run()
        self.assertEqual(report.blobs_deleted, [str(orphan)])
        self.assertIsNone(await self.a.blobs.global_size(orphan))
        self.assertIsNotNone(await self.a.blobs.global_size(image))

        problems = await StorageCheck(self.c, False).run()
        # Unlike registry:2, collection also removes the repository's link to the bytes it removed.
        self.assertEqual(problems.dangling_links, [])
        self.assertEqual(report.links_pruned, 1)
        self.assertEqual(problems.corrupt_blobs, [])
        layer = Digest.of(b"layer one")
        await self.a.driver.put_content(paths.blob_data(layer), b"layer 0ne")  # bit rot
        problems = await StorageCheck(self.c, False).run()
        self.assertEqual([str(d) for d in problems.corrupt_blobs], [str(layer)])


class CommandLineOnS3Tests(TestCase):
    def run_cli(self, *args):
        import subprocess
        import sys
        return subprocess.run([sys.executable, "-m", "regd.cli", *args], capture_output=True, text=True, timeout=120)

    def test_fsck_on_a_bucket(self):
        server = shared_moto()
        bucket = server.new_bucket()
        config = self.mktemp()
        with open(config, "w") as f:
            f.write("storage:\n" + server.yaml(bucket, rootdirectory="/r"))
        result = self.run_cli("fsck", config)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("0 blobs and 0 links checked", result.stdout)
        with open(config, "w") as f:
            f.write("storage:\n" + server.yaml("no-such-bucket"))
        result = self.run_cli("fsck", config)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr.strip().splitlines(),
                         [f"regd: storage.s3: S3 at {server.endpoint}, bucket no-such-bucket: the bucket does not exist"])
