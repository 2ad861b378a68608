"""Filesystem-only guarantees: atomic placement, spools on the storage filesystem, threads."""

from __future__ import annotations

import os
import threading

from twisted.internet import defer, reactor
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from regd.storage.filesystem import FilesystemDriver
from regd.storage.interfaces import PathNotFound
from regd.storage.threads import inline_runner, thread_pool_runner


class FilesystemTests(SynchronousTestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.driver = FilesystemDriver(self.root, inline_runner)

    def all_files(self):
        found = []
        for directory, _dirs, files in os.walk(self.root):
            found.extend(os.path.relpath(os.path.join(directory, f), self.root) for f in files)
        return sorted(found)

    def test_writes_survive_their_directory_being_removed_once_empty(self):
        """A collection removes a blob's empty directory just as a writer made it: the writer makes it again."""
        from regd.storage import filesystem
        real = filesystem._make_directory
        undone = []

        def makedirs_then_lose_it(name):
            real(name)
            if "/blobs/" in name and name not in undone and not os.listdir(name):
                undone.append(name)
                self.assertTrue(self.successResultOf(self.driver.remove_empty_directory(
                    os.path.relpath(name, self.root))))
        self.patch(filesystem, "_make_directory", makedirs_then_lose_it)
        self.successResultOf(self.driver.put_content("blobs/a/data", b"manifest"))
        self.successResultOf(self.driver.put_content("uploads/u/data", b"layer"))
        self.successResultOf(self.driver.move("uploads/u/data", "blobs/b/data"))
        spool = self.driver.new_spool()
        spool.write(b"whole")
        self.assertEqual(self.successResultOf(self.driver.publish_spool(spool, "blobs/c/data")), 5)
        self.assertEqual(len(undone), 3)
        for name, data in (("a", b"manifest"), ("b", b"layer"), ("c", b"whole")):
            self.assertEqual(self.successResultOf(self.driver.get_content(f"blobs/{name}/data")), data)
        self.assertFalse(self.successResultOf(self.driver.remove_empty_directory("blobs/a")))

    def test_put_transient_replaces_atomically_and_leaves_no_temporary_files(self):
        for i in range(3):
            self.successResultOf(self.driver.put_transient("regd/gc/pending/n", b"v%d" % i))
        self.assertEqual(self.all_files(), ["regd/gc/pending/n"])
        self.assertEqual(self.successResultOf(self.driver.get_content("regd/gc/pending/n")), b"v2")

    def test_put_transient_makes_its_directory_when_missing(self):
        self.successResultOf(self.driver.put_transient("regd/gc/pending/first", b"note"))
        self.successResultOf(self.driver.put_transient("regd/gc/pending/second", b"note"))
        self.assertEqual(self.all_files(), ["regd/gc/pending/first", "regd/gc/pending/second"])

    def test_directories_are_made_with_their_missing_parents(self):
        from regd.storage.filesystem import _make_directory
        _make_directory(os.path.join(self.root, "a", "b", "c"))
        _make_directory(os.path.join(self.root, "a", "b", "c"))  # there already: fine
        _make_directory(os.path.join(self.root, "a", "d"))
        self.assertTrue(os.path.isdir(os.path.join(self.root, "a", "b", "c")))
        self.assertTrue(os.path.isdir(os.path.join(self.root, "a", "d")))

    def test_delete_removes_a_file_a_directory_tree_or_a_symlink_itself(self):
        self.successResultOf(self.driver.put_content("tree/a/link", b"x"))
        self.successResultOf(self.driver.put_content("file", b"x"))
        os.symlink(os.path.join(self.root, "tree"), os.path.join(self.root, "alias"))
        self.successResultOf(self.driver.delete("alias"))
        self.assertTrue(os.path.isdir(os.path.join(self.root, "tree", "a")))
        self.successResultOf(self.driver.delete("tree"))
        self.successResultOf(self.driver.delete("file"))
        self.assertEqual(os.listdir(self.root), [])
        self.failureResultOf(self.driver.delete("file"), PathNotFound)

    def test_in_one_job_runs_every_step_as_one_job_of_the_runner(self):
        jobs = []

        def counting_runner(function, *args):
            jobs.append(function.__name__)
            return inline_runner(function, *args)
        driver = FilesystemDriver(self.root, counting_runner, inline_reads=False)

        async def steps(inner):
            await inner.put_transient("regd/gc/pending/n", b"note")
            await inner.put_contents([("blobs/x/data", b"bytes"), ("repos/r/x/link", b"x")])
            size = (await inner.stat("blobs/x/data")).size
            await inner.delete("regd/gc/pending/n")
            return size
        self.assertEqual(self.successResultOf(driver.in_one_job(steps)), 5)
        self.assertEqual(jobs, ["_in_one_job"])
        self.assertEqual(self.all_files(), ["blobs/x/data", "repos/r/x/link"])
        # The driver itself still hands each call to its runner.
        self.successResultOf(driver.put_content("a/link", b"y"))
        self.assertEqual(jobs, ["_in_one_job", "_put_content"])

    def test_in_one_job_fails_as_its_failing_step_did_and_stops_there(self):
        async def steps(inner):
            await inner.put_content("a/link", b"x")
            await inner.get_content("missing")
            await inner.put_content("b/link", b"never")
        self.failureResultOf(self.driver.in_one_job(steps), PathNotFound)
        self.assertEqual(self.all_files(), ["a/link"])

    def test_in_one_job_refuses_steps_that_wait_on_something_else(self):
        elsewhere = defer.Deferred()

        async def steps(inner):
            await elsewhere
        self.failureResultOf(self.driver.in_one_job(steps), RuntimeError)

    def test_put_contents_writes_every_object_and_leaves_no_temporary_files(self):
        self.successResultOf(self.driver.put_contents([("blobs/x/data", b"bytes"), ("repos/r/x/link", b"x")]))
        self.successResultOf(self.driver.put_contents([("blobs/x/data", b"again"), ("repos/r/x/link", b"y")]))
        self.assertEqual(self.all_files(), ["blobs/x/data", "repos/r/x/link"])
        self.assertEqual(self.successResultOf(self.driver.get_content("blobs/x/data")), b"again")
        self.assertEqual(self.successResultOf(self.driver.get_content("repos/r/x/link")), b"y")

    def test_put_contents_that_fails_leaves_nothing_behind(self):
        """The second object cannot be written: neither becomes visible, no temporary file stays."""
        os.makedirs(os.path.join(self.root, "blocked"))
        with open(os.path.join(self.root, "blocked", "file"), "wb"):
            pass
        self.failureResultOf(self.driver.put_contents([("blobs/x/data", b"bytes"), ("blocked/file/link", b"x")]),
                             FileExistsError)
        self.assertEqual(self.all_files(), ["blocked/file"])

    def test_put_content_leaves_no_temporary_files(self):
        for i in range(3):
            self.successResultOf(self.driver.put_content("a/b/link", b"v%d" % i))
        self.assertEqual(self.all_files(), ["a/b/link"])

    def test_spool_lives_under_root_and_is_adopted_by_rename(self):
        spool = self.driver.new_spool()
        self.assertTrue(spool.path.startswith(os.path.join(self.root, "regd", "spool") + os.sep))
        spool.write(b"x" * 1000)
        inode = os.stat(spool.path).st_ino
        self.successResultOf(self.driver.store_spool(spool, "docker/registry/v2/repositories/r/_uploads/u/data"))
        target = os.path.join(self.root, "docker/registry/v2/repositories/r/_uploads/u/data")
        self.assertEqual(os.stat(target).st_ino, inode)
        spool.close()
        self.assertTrue(os.path.exists(target))
        self.assertEqual(os.listdir(os.path.join(self.root, "regd", "spool")), [])

    def test_unadopted_spool_is_deleted_on_close(self):
        spool = self.driver.new_spool()
        spool.write(b"partial")
        spool.close()
        self.assertFalse(os.path.exists(spool.path))

    def test_failed_append_is_rolled_back(self):
        self.successResultOf(self.driver.put_content("data", b"12345"))
        spool = self.driver.new_spool()
        spool.write(b"67890")

        class BrokenHasher:
            def update(self, data):
                raise OSError("disk on fire")

        self.failureResultOf(self.driver.store_spool(spool, "data", hasher=BrokenHasher()), OSError)
        self.assertEqual(self.successResultOf(self.driver.get_content("data")), b"12345")

    def test_appender_writes_in_place_and_keeps_what_it_is_told_to(self):
        self.successResultOf(self.driver.put_content("data", b"12345"))
        inode = os.stat(os.path.join(self.root, "data")).st_ino
        appender = self.driver.open_append("data")
        self.assertEqual(appender.offset, 5)
        appender.write(b"678")
        appender.write(b"90")
        self.assertEqual(appender.size, 5)
        appender.seek(0)
        self.assertEqual(appender.read(), b"67890")
        appender.keep()
        appender.close()
        self.assertEqual(self.successResultOf(self.driver.get_content("data")), b"1234567890")
        self.assertEqual(os.stat(os.path.join(self.root, "data")).st_ino, inode)  # no copy, no rename
        self.assertEqual(self.all_files(), ["data"])  # and no spool

    def test_appender_closed_without_keep_cuts_the_file_back(self):
        self.successResultOf(self.driver.put_content("data", b"12345"))
        appender = self.driver.open_append("data")
        closed = []
        appender.when_closed(lambda: closed.append(True))
        appender.write(b"half a chunk")
        appender.close()
        appender.close()
        self.assertEqual(self.successResultOf(self.driver.get_content("data")), b"12345")
        self.assertEqual(closed, [True])

    def test_appender_hashes_what_it_writes_or_reads_it_back(self):
        import hashlib
        self.successResultOf(self.driver.put_content("data", b"head"))
        appender = self.driver.open_append("data")
        appender.hasher = hashlib.sha256()
        appender.write(b"tail bytes")
        self.assertEqual(appender.hasher.hexdigest(), hashlib.sha256(b"tail bytes").hexdigest())
        later = hashlib.sha256(b"head")
        self.successResultOf(appender.hash_into(later))
        self.assertEqual(later.hexdigest(), hashlib.sha256(b"headtail bytes").hexdigest())
        appender.close()

    def test_no_appender_for_an_absent_empty_or_busy_file(self):
        self.assertIsNone(self.driver.open_append("absent"))
        self.successResultOf(self.driver.put_content("empty", b""))
        self.assertIsNone(self.driver.open_append("empty"))
        self.successResultOf(self.driver.put_content("data", b"12345"))
        first = self.driver.open_append("data")
        # Another writer (this process or another: an flock) gets none while the first is open.
        self.assertIsNone(FilesystemDriver(self.root, inline_runner).open_append("data"))
        first.close()
        second = self.driver.open_append("data")
        self.assertIsNotNone(second)
        second.close()

    def test_nothing_moves_or_appends_to_a_file_an_appender_writes(self):
        import errno
        self.successResultOf(self.driver.put_content("data", b"12345"))
        appender = self.driver.open_append("data")
        appender.write(b"678")
        failure = self.failureResultOf(self.driver.move("data", "blob"), OSError)
        self.assertEqual(failure.value.errno, errno.EBUSY)
        spool = self.driver.new_spool()
        spool.write(b"xyz")
        self.failureResultOf(self.driver.store_spool(spool, "data"), OSError)
        appender.close()  # not kept: cut back
        # Two movers of one file hold shared locks: neither is refused for the other.
        with open(os.path.join(self.root, "data"), "rb") as other:
            import fcntl
            fcntl.flock(other.fileno(), fcntl.LOCK_SH)
            self.assertIsNone(self.driver.open_append("data"))
            self.successResultOf(self.driver.move("data", "blob"))
        self.assertEqual(self.successResultOf(self.driver.get_content("blob")), b"12345")

    def test_appender_does_not_cut_a_file_moved_away_meanwhile(self):
        """Belt and braces: a path that no longer names the file (upload cancelled) is left alone."""
        self.successResultOf(self.driver.put_content("data", b"12345"))
        appender = self.driver.open_append("data")
        appender.write(b"678")
        os.rename(os.path.join(self.root, "data"), os.path.join(self.root, "elsewhere"))
        appender.close()
        self.assertEqual(self.successResultOf(self.driver.get_content("elsewhere")), b"12345678")

    def test_leftovers_of_killed_processes_are_removed_and_live_ones_kept(self):
        import subprocess
        import sys
        import time

        from regd.storage import filesystem

        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        spools = os.path.join(self.root, "regd", "spool")
        os.makedirs(spools)
        old = time.time() - 7200

        def make(relative, age=None):
            full = os.path.join(self.root, relative)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                f.write(b"x")
            if age is not None:
                os.utime(full, (age, age))
            return relative

        hex_ = "0123456789abcdef" * 2
        owner = filesystem._OWNER
        removed = {
            make(f"docker/registry/v2/repositories/r/_manifests/tags/t/current/link.{hex_}.tmp", old),
            make(f"regd/spool/{owner}.{dead.pid}.{hex_}"),  # its process is gone: at once
            make(f"regd/spool/other-host-1.1.{hex_}", old),  # another host's, long untouched
            make(f"regd/spool/{hex_}", old),  # named before owners were
        }
        kept = {
            make(f"docker/registry/v2/repositories/r/_layers/sha256/ab/link.{hex_}.tmp"),  # being written now
            make("docker/registry/v2/repositories/r/_layers/sha256/ab/link", old),
            make(f"regd/spool/{owner}.{os.getpid()}.{hex_}", old),  # this process's own
            make(f"regd/spool/other-host-1.1.{'f' * 32}"),  # another host's, in use
            make("docker/registry/v2/blobs/sha256/ab/abcd/data", old),
        }
        live = self.driver.new_spool()
        live.write(b"uploading")
        self.assertEqual(set(self.successResultOf(self.driver.remove_leftovers(600, 3600))), removed)
        self.assertEqual(set(self.all_files()), kept | {os.path.relpath(live.path, self.root)})
        live.close()

    def test_directories_and_files_follow_umask(self):
        old = os.umask(0o022)
        try:
            self.successResultOf(self.driver.put_content("d/f", b"."))
        finally:
            os.umask(old)
        self.assertEqual(os.stat(os.path.join(self.root, "d")).st_mode & 0o777, 0o755)
        self.assertEqual(os.stat(os.path.join(self.root, "d", "f")).st_mode & 0o777, 0o644)


class ThreadPoolTests(TestCase):
    async def test_real_thread_pool(self):
        pool = ThreadPool(minthreads=1, maxthreads=2, name="test-storage")
        pool.start()
        self.addCleanup(pool.stop)
        driver = FilesystemDriver(self.mktemp(), thread_pool_runner(reactor, pool), inline_reads=False)
        await driver.put_content("x/y", b"threaded")
        self.assertEqual((await driver.stat("x/y")).size, 8)
        self.assertEqual(await driver.list("x"), ["y"])
        self.assertEqual(await driver.get_content("x/y"), b"threaded")
        spool = driver.new_spool()
        spool.write(b"abc")
        self.assertEqual(await driver.store_spool(spool, "x/z"), 3)

    async def test_one_job_runs_off_the_reactor_thread(self):
        pool = ThreadPool(minthreads=1, maxthreads=2, name="test-storage")
        pool.start()
        self.addCleanup(pool.stop)
        driver = FilesystemDriver(self.mktemp(), thread_pool_runner(reactor, pool), inline_reads=False)
        seen = []

        async def steps(inner):
            await inner.put_content("x/y", b"threaded")
            seen.append(threading.current_thread())
            return await inner.get_content("x/y")
        self.assertEqual(await driver.in_one_job(steps), b"threaded")
        self.assertEqual(len(seen), 1)
        self.assertIsNot(seen[0], threading.main_thread())
