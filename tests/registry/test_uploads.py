"""Upload sessions: resume after restart, verification, concurrency, purge."""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regd.oci.digest import Digest
from regd.oci.errors import BlobUnknown, BlobUploadUnknown, DigestInvalid, RangeInvalid
from regd.registry.context import RequestContext
from regd.registry.service import Registry
from regd.registry.uploads import format_started_at, parse_started_at
from regd.storage import paths
from regd.storage.filesystem import FilesystemDriver
from regd.storage.threads import inline_runner

CTX = RequestContext(request_id="r1", addr="127.0.0.1:1", method="PUT")


class Recorder:
    def __init__(self):
        self.events = []

    def registry_event(self, event):
        self.events.append(event)


def run(testcase, coroutine):
    return testcase.successResultOf(defer.ensureDeferred(coroutine))


def fail(testcase, coroutine, error):
    return testcase.failureResultOf(defer.ensureDeferred(coroutine), error)


class UploadTests(SynchronousTestCase):
    def setUp(self):
        self.root = self.mktemp()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.recorder = Recorder()
        self.registry = self.make_registry()

    def make_registry(self):
        driver = FilesystemDriver(self.root, inline_runner)
        return Registry(driver, self.clock, delete_enabled=True, listeners=[self.recorder])

    def spool(self, registry, data: bytes):
        return registry.uploads.spool_from_bytes(data)

    def test_resume_after_restart(self):
        data = os.urandom(100_000)
        uploads = self.registry.uploads
        upload_id = run(self, uploads.start("demo"))
        run(self, uploads.append("demo", upload_id, self.spool(self.registry, data[:60_000]), 0, 59_999))
        # A new process: no in-memory session, the disk is the truth.
        restarted = self.make_registry()
        self.assertEqual(run(self, restarted.uploads.status("demo", upload_id)), 60_000)
        run(self, restarted.uploads.append("demo", upload_id, self.spool(restarted, data[60_000:]), 60_000, 99_999))
        digest = Digest.of(data)
        info = run(self, restarted.uploads.commit("demo", upload_id, digest, None, CTX))
        self.assertEqual(info.size, len(data))
        with open(os.path.join(self.root, paths.blob_data(digest)), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertFalse(os.path.exists(os.path.join(self.root, paths.upload_dir("demo", upload_id))))

    def test_chunks_spread_over_processes(self):
        """
        Three processes on one storage take turns: each one's cached offset and
        running hash go stale while another appends, and must not be trusted.
        """
        data = os.urandom(90_000)
        a, b, c = self.registry, self.make_registry(), self.make_registry()
        upload_id = run(self, a.uploads.start("demo"))
        run(self, a.uploads.append("demo", upload_id, self.spool(a, data[:30_000]), 0, 29_999))
        run(self, b.uploads.append("demo", upload_id, self.spool(b, data[30_000:60_000]), 30_000, 59_999))
        self.assertEqual(run(self, a.uploads.status("demo", upload_id)), 60_000)
        run(self, a.uploads.append("demo", upload_id, self.spool(a, data[60_000:80_000]), 60_000, 79_999))
        fail(self, b.uploads.append("demo", upload_id, self.spool(b, b"x"), 60_000, 60_000), RangeInvalid)
        info = run(self, c.uploads.commit("demo", upload_id, Digest.of(data), self.spool(c, data[80_000:]), CTX))
        self.assertEqual(info.size, len(data))
        with open(os.path.join(self.root, paths.blob_data(Digest.of(data))), "rb") as f:
            self.assertEqual(f.read(), data)
        fail(self, a.uploads.status("demo", upload_id), BlobUploadUnknown)

    def test_hash_state_travels_through_storage(self):
        """The next process carries on from the saved hash state: nothing is re-hashed."""
        data = os.urandom(50_000)
        a, b = self.registry, self.make_registry()
        rehashed = []
        original = b.driver.digest_file
        b.driver.digest_file = lambda *args: rehashed.append(args) or original(*args)
        upload_id = run(self, a.uploads.start("demo"))
        run(self, a.uploads.append("demo", upload_id, self.spool(a, data[:20_000]), 0, 19_999))
        run(self, b.uploads.append("demo", upload_id, self.spool(b, data[20_000:]), 20_000, 49_999))
        run(self, b.uploads.commit("demo", upload_id, Digest.of(data), None, CTX))
        self.assertEqual(rehashed, [])

    def test_stale_or_broken_hash_state_is_not_trusted(self):
        """A state that does not cover exactly the stored bytes means a re-hash, never a wrong digest."""
        for bad in (b"10:" + b"00" * 104, b"garbage", b""):
            data = os.urandom(30_000)
            a, b = self.registry, self.make_registry()
            upload_id = run(self, a.uploads.start("demo"))
            run(self, a.uploads.append("demo", upload_id, self.spool(a, data[:10_000]), 0, 9_999))
            run(self, a.driver.put_content(paths.upload_hash_state("demo", upload_id), bad))
            run(self, b.uploads.append("demo", upload_id, self.spool(b, data[10_000:]), 10_000, 29_999))
            info = run(self, b.uploads.commit("demo", upload_id, Digest.of(data), None, CTX))
            self.assertEqual(info.size, len(data))

    def test_sessions_finished_elsewhere_do_not_accumulate(self):
        a, b = self.registry, self.make_registry()
        a.uploads.max_sessions = 3
        for i in range(10):
            data = b"%d" % i
            upload_id = run(self, a.uploads.start("demo"))
            run(self, a.uploads.append("demo", upload_id, self.spool(a, data)))
            run(self, b.uploads.commit("demo", upload_id, Digest.of(data), None, CTX))
        self.assertLessEqual(a.uploads.in_progress(), 3)

    def test_listener_fires_only_after_blob_is_in_place(self):
        seen = []
        data = b"durable"
        digest = Digest.of(data)

        class Checker:
            def registry_event(inner, event):
                seen.append(os.path.exists(os.path.join(self.root, paths.blob_data(digest))))
                seen.append(os.path.exists(os.path.join(self.root, paths.layer_link("demo", digest))))

        self.registry.add_listener(Checker())
        run(self, self.registry.uploads.put_whole("demo", digest, self.spool(self.registry, data), CTX))
        self.assertEqual(seen, [True, True])
        self.assertEqual([(e.action, e.kind, str(e.digest)) for e in self.recorder.events],
                         [("push", "blob", str(digest))])

    def test_digest_mismatch_leaves_nothing_visible(self):
        uploads = self.registry.uploads
        upload_id = run(self, uploads.start("demo"))
        wrong = Digest.of(b"something else")
        fail(self, uploads.commit("demo", upload_id, wrong, self.spool(self.registry, b"data"), CTX), DigestInvalid)
        self.assertFalse(os.path.exists(os.path.join(self.root, paths.blob_data(wrong))))
        fail(self, self.registry.blobs.stat("demo", wrong), BlobUnknown)
        self.assertEqual(self.recorder.events, [])

    def test_out_of_order_chunk(self):
        uploads = self.registry.uploads
        upload_id = run(self, uploads.start("demo"))
        run(self, uploads.append("demo", upload_id, self.spool(self.registry, b"abc"), 0, 2))
        failure = fail(self, uploads.append("demo", upload_id, self.spool(self.registry, b"def"), 5, 7), RangeInvalid)
        self.assertEqual(failure.value.headers["Range"], "0-2")

    def test_many_uploads_of_the_same_blob_end_consistent(self):
        data = os.urandom(10_000)
        digest = Digest.of(data)
        ids = [run(self, self.registry.uploads.start(f"repo{i % 2}")) for i in range(8)]
        for i, upload_id in enumerate(ids):
            run(self, self.registry.uploads.append(f"repo{i % 2}", upload_id, self.spool(self.registry, data)))
        for i, upload_id in enumerate(ids):
            run(self, self.registry.uploads.commit(f"repo{i % 2}", upload_id, digest, None, CTX))
        for repo in ("repo0", "repo1"):
            self.assertEqual(run(self, self.registry.blobs.stat(repo, digest)).size, len(data))
        with open(os.path.join(self.root, paths.blob_data(digest)), "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), digest.hex)

    def test_purge_by_started_at(self):
        uploads = self.registry.uploads
        old = run(self, uploads.start("demo"))
        self.clock.advance(3600)
        new = run(self, uploads.start("demo"))
        # "demo" has no manifest yet: its uploads are found all the same.
        self.assertEqual(run(self, self.registry.purge_uploads(1800, dry_run=True)),
                         [paths.upload_dir("demo", old)])
        self.assertEqual(run(self, uploads.status("demo", old)), 0)
        run(self, self.registry.purge_uploads(1800))
        fail(self, uploads.status("demo", old), BlobUploadUnknown)
        self.assertEqual(run(self, uploads.status("demo", new)), 0)

    def test_purge_spares_an_upload_whose_start_is_being_written(self):
        fresh = paths.upload_dir("demo", "0b4f0f64-42f3-4a3a-8f0e-5b4c1b6b7c11")
        crashed = paths.upload_dir("demo", "1b4f0f64-42f3-4a3a-8f0e-5b4c1b6b7c11")
        for directory in (fresh, crashed):
            full = os.path.join(self.root, directory)
            os.makedirs(full)
            with open(os.path.join(full, "startedat." + "ab" * 16 + ".tmp"), "w"):
                pass
        past = self.clock.seconds() - 7200
        os.utime(os.path.join(self.root, crashed), (past, past))
        os.utime(os.path.join(self.root, fresh), (self.clock.seconds(), self.clock.seconds()))
        self.assertEqual(run(self, self.registry.purge_uploads(1800)), [crashed])
        self.assertTrue(os.path.isdir(os.path.join(self.root, fresh)))

    def test_started_at_format_roundtrip(self):
        self.assertEqual(format_started_at(1735787045), "2025-01-02T03:04:05Z")
        self.assertEqual(parse_started_at("2025-01-02T03:04:05Z"), 1735787045.0)
        self.assertEqual(parse_started_at("2025-01-02T03:04:05.123456789Z"), 1735787045.0)
        self.assertIsNone(parse_started_at("yesterday"))
