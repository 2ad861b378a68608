"""Upload sessions: resume after restart, verification, concurrency, purge."""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regd.oci.digest import Digest
from regd.oci.errors import BlobUnknown, BlobUploadInvalid, BlobUploadUnknown, DigestInvalid, RangeInvalid, SizeInvalid
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

    def continued_after_a_reboot(self, durable_appends: bool, lost: bool):
        """
        An upload's first chunk and its saved hash state, then "a reboot"
        (the state names an earlier boot), where C{lost} says the chunk's
        bytes did not survive it (zeros of the same length, as a filesystem
        may show unsynced bytes after a crash). Commits the rest with the
        client's digest: (the commit's Deferred, the data, re-hashes made).
        """
        data = os.urandom(30_000)
        a = self.registry
        a.uploads.boot = "boot-before"
        upload_id = run(self, a.uploads.start("demo"))
        run(self, a.uploads.append("demo", upload_id, self.spool(a, data[:10_000]), 0, 9_999))
        if lost:
            with open(self.data_file(upload_id), "r+b") as f:
                f.write(bytes(10_000))
        b = self.make_registry()
        b.uploads.boot = "boot-after"
        b.driver.durable_appends = durable_appends
        rehashed = []
        original = b.driver.digest_file
        b.driver.digest_file = lambda *args: rehashed.append(args) or original(*args)
        run(self, b.uploads.append("demo", upload_id, self.spool(b, data[10_000:]), 10_000, 29_999))
        return defer.ensureDeferred(b.uploads.commit("demo", upload_id, Digest.of(data), None, CTX)), data, rehashed

    def test_after_a_reboot_a_saved_hash_state_is_not_trusted(self):
        """Bytes lost with the machine are found by hashing the stored file again, never published."""
        committed, data, rehashed = self.continued_after_a_reboot(durable_appends=False, lost=True)
        self.failureResultOf(committed, DigestInvalid)
        self.assertNotEqual(rehashed, [])
        self.assertFalse(os.path.exists(os.path.join(self.root, paths.blob_data(Digest.of(data)))))

    def test_where_appends_are_durable_another_boots_state_is_used(self):
        """S3's parts are stored when acknowledged: another instance's state spares reading the upload back."""
        committed, data, rehashed = self.continued_after_a_reboot(durable_appends=True, lost=False)
        self.assertEqual(self.successResultOf(committed).size, len(data))
        self.assertEqual(rehashed, [])

    def sink(self, registry, upload_id, data: bytes, start):
        sink = registry.upload_sink("demo", upload_id, start)
        self.assertIsNotNone(sink)
        sink.write(data)
        return sink

    def data_file(self, upload_id):
        return os.path.join(self.root, paths.upload_data("demo", upload_id))

    def test_a_later_chunk_is_written_in_place(self):
        data = os.urandom(90_000)
        uploads = self.registry.uploads
        upload_id = run(self, uploads.start("demo"))
        self.assertIsNone(self.registry.upload_sink("demo", upload_id, 0))  # no bytes yet: spool + rename
        run(self, uploads.append("demo", upload_id, self.spool(self.registry, data[:30_000]), 0, 29_999))
        inode = os.stat(self.data_file(upload_id)).st_ino
        sink = self.sink(self.registry, upload_id, data[30_000:60_000], 30_000)
        self.assertEqual(os.path.getsize(self.data_file(upload_id)), 60_000)  # straight into the upload's data
        self.assertEqual(run(self, uploads.append("demo", upload_id, sink, 30_000, 59_999)), 60_000)
        sink = self.sink(self.registry, upload_id, data[60_000:], None)  # no Content-Range: at the end
        self.assertEqual(run(self, uploads.append("demo", upload_id, sink)), 90_000)
        self.assertEqual(os.stat(self.data_file(upload_id)).st_ino, inode)
        self.assertEqual(os.listdir(os.path.join(self.root, paths.SPOOL)), [])
        info = run(self, uploads.commit("demo", upload_id, Digest.of(data), None, CTX))
        self.assertEqual(info.size, len(data))
        with open(os.path.join(self.root, paths.blob_data(Digest.of(data))), "rb") as f:
            self.assertEqual(f.read(), data)

    def test_a_refused_or_unfinished_chunk_leaves_the_upload_as_it_was(self):
        data = os.urandom(40_000)
        uploads = self.registry.uploads
        upload_id = run(self, uploads.start("demo"))
        run(self, uploads.append("demo", upload_id, self.spool(self.registry, data[:20_000]), 0, 19_999))
        # Out of order: no sink (the body is spooled and the handler answers 416).
        self.assertIsNone(self.registry.upload_sink("demo", upload_id, 19_000))
        # A body that ends early (client gone, request refused): closed without append.
        self.sink(self.registry, upload_id, b"x" * 5000, 20_000).close()
        self.assertEqual(os.path.getsize(self.data_file(upload_id)), 20_000)
        # A Content-Range that does not match the body.
        sink = self.sink(self.registry, upload_id, b"y" * 5000, 20_000)
        fail(self, uploads.append("demo", upload_id, sink, 20_000, 29_999), SizeInvalid)
        self.assertEqual(os.path.getsize(self.data_file(upload_id)), 20_000)
        self.assertEqual(run(self, uploads.status("demo", upload_id)), 20_000)
        # Routed to another upload than its request line named (never expected): refused, cut back.
        other = run(self, uploads.start("demo"))
        sink = self.sink(self.registry, upload_id, b"z" * 5000, 20_000)
        fail(self, uploads.append("demo", other, sink, 20_000, 24_999), BlobUploadInvalid)
        self.assertEqual(os.path.getsize(self.data_file(upload_id)), 20_000)
        sink = self.sink(self.registry, upload_id, data[20_000:], 20_000)
        run(self, uploads.append("demo", upload_id, sink, 20_000, 39_999))
        info = run(self, uploads.commit("demo", upload_id, Digest.of(data), None, CTX))
        self.assertEqual(info.size, len(data))

    def test_a_sink_holds_the_upload_until_it_is_closed(self):
        uploads = self.registry.uploads
        upload_id = run(self, uploads.start("demo"))
        run(self, uploads.append("demo", upload_id, self.spool(self.registry, b"a" * 100)))
        sink = self.sink(self.registry, upload_id, b"b" * 100, 100)
        self.assertIsNone(self.registry.upload_sink("demo", upload_id, 100))  # one writer at a time
        status = defer.ensureDeferred(uploads.status("demo", upload_id))
        cancel = defer.ensureDeferred(uploads.cancel("demo", upload_id))
        self.assertNoResult(status)
        self.assertNoResult(cancel)
        sink.close()
        self.assertEqual(self.successResultOf(status), 100)
        self.successResultOf(cancel)
        self.assertFalse(os.path.exists(os.path.join(self.root, paths.upload_dir("demo", upload_id))))

    def test_another_instance_continues_an_upload_in_place(self):
        """
        A second service on the same root takes the next chunks in place: it
        carries the saved hash state on and feeds it the chunk from storage
        (it had no running hash when the body began); nothing is re-hashed.
        """
        data = os.urandom(100_000)
        a, b, c = self.registry, self.make_registry(), self.make_registry()
        rehashed = []
        for registry in (a, b, c):
            original = registry.driver.digest_file
            registry.driver.digest_file = lambda *args, original=original: rehashed.append(args) or original(*args)
        upload_id = run(self, a.uploads.start("demo"))
        run(self, a.uploads.append("demo", upload_id, self.spool(a, data[:25_000]), 0, 24_999))
        run(self, a.uploads.append("demo", upload_id, self.sink(a, upload_id, data[25_000:50_000], 25_000),
                                   25_000, 49_999))
        sink = self.sink(b, upload_id, data[50_000:75_000], 50_000)
        self.assertIsNone(sink.hasher)
        run(self, b.uploads.append("demo", upload_id, sink, 50_000, 74_999))
        # a's cached offset is stale now: its sink must start where the data ends, and it must not trust its hash.
        self.assertIsNone(a.upload_sink("demo", upload_id, 50_000))
        sink = self.sink(a, upload_id, data[75_000:], 75_000)
        self.assertIsNone(sink.hasher)
        run(self, a.uploads.append("demo", upload_id, sink, 75_000, 99_999))
        info = run(self, c.uploads.commit("demo", upload_id, Digest.of(data), None, CTX))
        self.assertEqual(info.size, len(data))
        self.assertEqual(rehashed, [])
        with open(os.path.join(self.root, paths.blob_data(Digest.of(data))), "rb") as f:
            self.assertEqual(f.read(), data)

    def test_no_sink_for_unknown_uploads_names_or_read_only_registries(self):
        upload_id = run(self, self.registry.uploads.start("demo"))
        run(self, self.registry.uploads.append("demo", upload_id, self.spool(self.registry, b"a" * 10)))
        self.assertIsNone(self.registry.upload_sink("demo", "not-an-id", None))
        self.assertIsNone(self.registry.upload_sink("Bad..Name", upload_id, None))
        self.assertIsNone(self.registry.upload_sink("other", upload_id, None))
        readonly = Registry(FilesystemDriver(self.root, inline_runner), self.clock, readonly=True)
        self.assertIsNone(readonly.upload_sink("demo", upload_id, None))

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

    def test_small_body_is_stored_and_linked_without_a_spool(self):
        """A body held in memory: checked first, then blob and link written, the event after both."""
        seen = []
        data = b"small layer"
        digest = Digest.of(data)

        class Checker:
            def registry_event(inner, event):
                seen.append(os.path.exists(os.path.join(self.root, paths.blob_data(digest))))
                seen.append(os.path.exists(os.path.join(self.root, paths.layer_link("demo", digest))))

        self.registry.add_listener(Checker())
        info = run(self, self.registry.uploads.put_small("demo", digest, data, CTX))
        self.assertEqual((info.digest, info.size), (digest, len(data)))
        self.assertEqual(seen, [True, True])
        with open(os.path.join(self.root, paths.blob_data(digest)), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(run(self, self.registry.blobs.stat("demo", digest)).size, len(data))
        spool = os.path.join(self.root, "regd", "spool")
        self.assertEqual(os.listdir(spool) if os.path.isdir(spool) else [], [])
        # The same bytes again, in another repository: linked to the one stored copy.
        run(self, self.registry.uploads.put_small("other", digest, data, CTX))
        self.assertEqual(run(self, self.registry.blobs.stat("other", digest)).size, len(data))
        self.assertEqual(len(self.recorder.events), 2)

    def test_small_body_is_one_storage_job_that_holds_its_note_while_it_writes(self):
        """
        The pending note, the look-ups, the blob and link writes and the
        note's removal go to the storage runner as one job, in the order of
        the collection protocol: the note names the blob while it is written.
        """
        data = b"one job"
        digest = Digest.of(data)
        pending = os.path.join(self.root, paths.PENDING)
        jobs, notes = [], []

        class Watched(FilesystemDriver):
            def _put_contents(inner, items):
                notes.extend(open(os.path.join(pending, n), "rb").read() for n in os.listdir(pending))
                return super()._put_contents(items)

        def runner(function, *args):
            jobs.append(function.__name__)
            return inline_runner(function, *args)
        registry = Registry(Watched(self.root, runner, inline_reads=False), self.clock, listeners=[self.recorder])
        run(self, registry.uploads.put_small("demo", digest, data, CTX))
        self.assertEqual(jobs, ["_in_one_job"])
        self.assertEqual(len(notes), 1)
        self.assertIn(str(digest).encode(), notes[0])
        self.assertIn(b'"demo"', notes[0])
        self.assertEqual(os.listdir(pending), [])
        self.assertEqual(run(self, registry.blobs.stat("demo", digest, fresh=True)).size, len(data))
        self.assertEqual([(e.action, e.digest) for e in self.recorder.events], [("push", digest)])

    def test_small_body_with_a_wrong_digest_writes_nothing(self):
        wrong = Digest.of(b"something else")
        fail(self, self.registry.uploads.put_small("demo", wrong, b"data", CTX), DigestInvalid)
        self.assertFalse(os.path.exists(os.path.join(self.root, paths.blob_data(wrong))))
        self.assertFalse(os.path.exists(os.path.join(self.root, paths.layer_link("demo", wrong))))
        self.assertEqual(self.recorder.events, [])

    def test_small_body_takes_back_a_blob_a_collection_condemned(self):
        data = b"condemned meanwhile"
        digest = Digest.of(data)
        run(self, self.registry.uploads.put_small("demo", digest, data, CTX))
        os.makedirs(os.path.dirname(os.path.join(self.root, paths.condemned_blob(digest))), exist_ok=True)
        os.replace(os.path.join(self.root, paths.blob_data(digest)), os.path.join(self.root, paths.condemned_blob(digest)))
        run(self, self.registry.uploads.put_small("other", digest, data, CTX))
        self.assertFalse(os.path.exists(os.path.join(self.root, paths.condemned_blob(digest))))
        self.assertEqual(run(self, self.registry.blobs.stat("other", digest, fresh=True)).size, len(data))

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
