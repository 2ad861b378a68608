"""The storage check: corrupt blobs, bad and dangling links, repair."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regd.oci.digest import Digest
from regd.registry.fsck import StorageCheck
from regd.registry.service import Registry
from regd.storage import paths
from regd.storage.filesystem import FilesystemDriver
from regd.storage.threads import inline_runner
from tests.registry.test_gc import CTX, OCI


class FsckTests(SynchronousTestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.registry = Registry(FilesystemDriver(self.root, inline_runner), Clock())
        import json
        self.layer = self.put_blob(b"layer bytes")
        self.config = self.put_blob(b'{"os":"linux"}')
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": str(self.config), "size": 14},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": str(self.layer), "size": 11}]}).encode()
        self.manifest = Digest.of(body)
        self.successResultOf(defer.ensureDeferred(self.registry.manifests.put("app", "v1", body, OCI, CTX)))

    def put_blob(self, data: bytes) -> Digest:
        digest = Digest.of(data)
        self.successResultOf(defer.ensureDeferred(self.registry.uploads.put_whole(
            "app", digest, self.registry.uploads.spool_from_bytes(data), CTX)))
        return digest

    def check(self, repair=False):
        return self.successResultOf(defer.ensureDeferred(StorageCheck(self.registry, repair).run()))

    def full(self, path: str) -> str:
        return os.path.join(self.root, path)

    def test_clean_tree(self):
        problems = self.check()
        self.assertTrue(problems.clean)
        self.assertEqual(problems.blobs_checked, 3)
        self.assertEqual(problems.links_checked, 5)  # 2 layer links, 1 revision, tag current + index

    def test_finds_and_repairs(self):
        with open(self.full(paths.blob_data(self.layer)), "r+b") as f:
            f.write(b"X")  # bit rot
        shutil.rmtree(self.full(paths.blob_dir(self.config)))  # lost blob: its links dangle
        with open(self.full(paths.tag_current_link("app", "v1")), "w") as f:
            f.write("garbage")
        problems = self.check()
        self.assertEqual(problems.corrupt_blobs, [str(self.layer)])
        self.assertEqual(problems.dangling_links, [paths.layer_link("app", self.config)])
        self.assertEqual(problems.bad_links, [paths.tag_current_link("app", "v1")])
        self.assertFalse(problems.clean)
        repaired = self.check(repair=True)
        self.assertEqual(len(repaired.repaired), 4)
        quarantined = self.full(f"regd/quarantine/sha256-{self.layer.hex}")
        self.assertTrue(os.path.exists(quarantined))
        self.assertFalse(os.path.exists(self.full(paths.tag_dir("app", "v1"))))
        # Quarantining the layer left its link dangling; the same pass removed it.
        self.assertIn(f"removed {paths.layer_dir('app', self.layer)}", repaired.repaired)
        self.assertTrue(self.check().clean)

    def crash_leftovers(self):
        """What SIGKILL in the middle of atomic writes leaves: directories holding only a temp file."""
        temp = "." + "0123456789abcdef" * 2 + ".tmp"
        other = Digest.of(b"never finished")
        leftovers = [
            paths.layer_link("app", other),  # a blob link being written
            paths.revision_link("app", other),  # a manifest's revision link
            paths.tag_current_link("app", "crashed"),  # a tag's current link ...
            paths.tag_index_link("app", "crashed", other),  # ... and its index entry
            paths.tag_current_link("app", "half"),  # a tag whose index was written, not its current link
            paths.blob_data(other),  # a manifest's bytes
            paths.upload_started_at("app", "0b4f0f64-42f3-4a3a-8f0e-5b4c1b6b7c11"),  # an upload's start
        ]
        for path in leftovers:
            os.makedirs(os.path.dirname(self.full(path)), exist_ok=True)
            with open(self.full(path) + temp, "wb") as f:
                f.write(b"sha256:")
        index = self.full(paths.tag_index_link("app", "half", self.manifest))
        os.makedirs(os.path.dirname(index))
        with open(index, "w") as f:
            f.write(str(self.manifest))

    def test_a_tree_only_a_crash_touched_has_nothing_to_repair(self):
        self.crash_leftovers()
        problems = self.check()
        self.assertTrue(problems.clean, problems)
        self.assertEqual(problems.leftovers, 5)
        self.assertEqual(self.check(repair=True).repaired, [])

    def test_tags_that_cannot_be_fetched_are_not_listed(self):
        self.crash_leftovers()
        listed = self.successResultOf(defer.ensureDeferred(self.registry.listing.tags("app", None, None)))
        self.assertEqual(listed.items, ("v1",))
        # A tag whose manifest bytes are gone is not listed either; pagination counts listed tags only.
        self.successResultOf(defer.ensureDeferred(self.registry.manifests.put(
            "app", "v2", self.successResultOf(defer.ensureDeferred(
                self.registry.manifests.load(self.manifest))).body, OCI, CTX)))
        for tag in ("a", "b"):
            os.makedirs(os.path.dirname(self.full(paths.tag_current_link("app", tag))))
            with open(self.full(paths.tag_current_link("app", tag)), "w") as f:
                f.write(str(Digest.of(b"gone")))
        page = self.successResultOf(defer.ensureDeferred(self.registry.listing.tags("app", 1, None)))
        self.assertEqual((page.items, page.next_last), (("v1",), "v1"))
        page = self.successResultOf(defer.ensureDeferred(self.registry.listing.tags("app", 1, "v1")))
        self.assertEqual((page.items, page.next_last), (("v2",), None))

    def test_cli_exit_codes(self):
        config = os.path.join(self.root, "..", "regd.yml")
        with open(config, "w") as f:
            f.write(f"storage:\n  filesystem:\n    rootdirectory: {self.root}\n")
        command = [os.path.join(os.path.dirname(sys.executable), "regd"), "fsck", "--config", config]
        clean = subprocess.run(command, capture_output=True, text=True, timeout=60)
        self.assertEqual(clean.returncode, 0, clean.stdout + clean.stderr)
        os.remove(self.full(paths.blob_data(self.layer)))
        os.rmdir(os.path.dirname(self.full(paths.blob_data(self.layer))))
        broken = subprocess.run(command, capture_output=True, text=True, timeout=60)
        self.assertEqual(broken.returncode, 1)
        self.assertIn(f"dangling link {paths.layer_link('app', self.layer)}", broken.stdout)
