"""The twistd plugin: options, composition, and refusing to start on bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.application.internet import TimerService
from twisted.trial.unittest import SynchronousTestCase

from regd.daemon import tap

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


class TapTests(SynchronousTestCase):
    def write_config(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_make_service_builds_listener_storage_and_purging(self):
        root = os.path.abspath(self.mktemp())
        options = tap.Options()
        options.parseOptions(["--config", self.write_config(
            f"version: 0.1\nhttp:\n  addr: 127.0.0.1:0\nstorage:\n  filesystem:\n    rootdirectory: {root}\n")])
        service = tap.makeService(options)
        kinds = {type(s) for s in service}
        self.assertIn(tap.ListenerService, kinds)
        self.assertIn(tap.ThreadPoolService, kinds)
        self.assertIn(TimerService, kinds)

    def test_the_index_is_built_unless_search_and_ui_are_both_off(self):
        from regd.index.upkeep import IndexService
        root = os.path.abspath(self.mktemp())
        base = f"version: 0.1\nhttp:\n  addr: 127.0.0.1:0\nstorage:\n  filesystem:\n    rootdirectory: {root}\n"
        for extra, expected in [("", True), ("search: {enabled: false}\n", True),
                                ("search: {enabled: false}\nui: {enabled: false}\n", False)]:
            options = tap.Options()
            options.parseOptions(["--config", self.write_config(base + extra)])
            upkeep = [s for s in tap.makeService(options) if isinstance(s, IndexService)]
            self.assertEqual(bool(upkeep), expected, extra)
            if upkeep:
                self.assertEqual(upkeep[0].index._path, os.path.join(root, "regd", "index", "index.db"))

    def test_an_index_path_that_cannot_be_written_is_refused(self):
        blocker = self.write_config("a file, not a directory")
        options = tap.Options()
        stderr = []
        self.patch(sys, "stderr", type("W", (), {"write": lambda _self, text: stderr.append(text)})())
        with self.assertRaises(SystemExit):
            options.parseOptions(["--config", self.write_config(
                f"storage:\n  inmemory: {{}}\nindex:\n  path: {blocker}/index.db\n")])
        self.assertEqual(len(stderr), 1)
        self.assertIn("index.path: cannot create", stderr[0])

    def test_bad_configuration_is_one_line_and_exit_1(self):
        options = tap.Options()
        stderr = []
        self.patch(sys, "stderr", type("W", (), {"write": lambda _self, text: stderr.append(text)})())
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(["--config", self.write_config("http:\n  addr: nonsense\n")])
        self.assertEqual(caught.exception.code, 1)
        self.assertEqual(stderr, ["regd: configuration error: http.addr: expected host:port "
                                  "(e.g. :5000 or 127.0.0.1:5000), got 'nonsense'\n"])

    def test_workers_make_a_supervisor_and_a_worker_adopts_its_socket(self):
        from regd.daemon.workers import AdoptedListenerService, OrphanWatch, WorkerSupervisor
        root = os.path.abspath(self.mktemp())
        config = self.write_config(f"http:\n  addr: 127.0.0.1:0\nstorage:\n  filesystem:\n"
                                   f"    rootdirectory: {root}\nregd:\n  workers: 3\n")
        options = tap.Options()
        options.parseOptions(["--config", config])
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("REGD_")})
        supervisor = [s for s in tap.makeService(options)]
        self.assertEqual([type(s) for s in supervisor], [WorkerSupervisor])
        self.assertEqual(supervisor[0].count, 3)
        self.assertEqual(supervisor[0].argv[-3:], ["regd.cli", "serve", os.path.abspath(config)][-3:])
        self.patch(os, "environ", {**os.environ, "REGD_WORKER": "1", "REGD_LISTEN_FD": "3",
                                   "REGD_SUPERVISOR_PID": str(os.getppid())})
        worker = {type(s) for s in tap.makeService(options)}
        self.assertIn(AdoptedListenerService, worker)
        self.assertIn(OrphanWatch, worker)
        self.assertNotIn(tap.ListenerService, worker)
        self.assertNotIn(TimerService, worker)  # purging and GC run in worker 0 only

    def test_workers_need_shared_storage(self):
        options = tap.Options()
        stderr = []
        self.patch(sys, "stderr", type("W", (), {"write": lambda _self, text: stderr.append(text)})())
        with self.assertRaises(SystemExit):
            options.parseOptions(["--config", self.write_config("storage: {inmemory: {}}\nregd: {workers: 2}\n")])
        self.assertEqual(stderr, ["regd: configuration error: regd.workers: several workers need storage they "
                                  "share (filesystem or s3), not inmemory\n"])

    def test_listen_description(self):
        self.assertEqual(tap.listen_description("", 5000), "tcp:5000")
        self.assertEqual(tap.listen_description("127.0.0.1", 5000), "tcp:5000:interface=127.0.0.1")
        self.assertEqual(tap.listen_description("::1", 5000), "tcp6:5000:interface=\\:\\:1")

    def test_twistd_refuses_to_start(self):
        result = subprocess.run(
            [TWISTD, "--nodaemon", "--pidfile=", "regd", "--config", self.write_config("storage:\n  s3: {}\n")],
            capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stderr.strip().splitlines(),
                         ["regd: configuration error: storage.s3.bucket: a bucket name is required"])

    def test_s3_that_cannot_be_used_ends_the_process_with_one_line(self):
        from tests.support.processes import free_port
        from tests.support.s3 import MotoServer, shared_moto
        server = shared_moto()
        unused = free_port()
        cases = [
            (server.yaml("no-such-bucket"),
             f"storage.s3: S3 at http://127.0.0.1:{server.port}, bucket no-such-bucket: the bucket does not exist"),
            (server.yaml("b").replace(server.endpoint, f"http://127.0.0.1:{unused}"),
             f"storage.s3: S3 at http://127.0.0.1:{unused}, bucket b is unreachable: [Errno 111] Connection refused"),
        ]
        checking = MotoServer.checking_credentials()
        self.addCleanup(checking.stop)
        bucket = checking.new_bucket()
        right_key, right_secret = checking.access_key, checking.secret_key
        where = f"S3 at http://127.0.0.1:{checking.port}, bucket {bucket}"
        checking.secret_key = "wrong-secret"
        cases.append((checking.yaml(bucket), f"storage.s3: {where}: the secret key is wrong (check secretkey)"))
        checking.access_key, checking.secret_key = right_key, right_secret
        for storage, line in cases:
            result = self.run_twistd("storage:\n" + storage)
            self.assertNotEqual(result.returncode, 0)
            self.assertEqual(result.stderr.strip().splitlines(), [f"regd: configuration error: {line}"])

    def run_twistd(self, config: str) -> subprocess.CompletedProcess:
        return subprocess.run([TWISTD, "--nodaemon", "--pidfile=", "regd", "--config", self.write_config(config)],
                              capture_output=True, text=True, timeout=60)

    def test_listeners_that_cannot_listen_end_the_process_with_one_line(self):
        import socket
        held = socket.socket()
        self.addCleanup(held.close)
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        root = os.path.abspath(self.mktemp())
        storage = f"storage:\n  filesystem:\n    rootdirectory: {root}\n"
        result = self.run_twistd(storage + f"http:\n  addr: 127.0.0.1:{busy}\n")
        self.assertEqual((result.returncode, result.stderr.splitlines()),
                         (1, [f"regd: cannot listen on http.addr 127.0.0.1:{busy}: Address already in use"]))
        result = self.run_twistd(storage + f"http:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:{busy}\n")
        self.assertEqual((result.returncode, result.stderr.splitlines()),
                         (1, [f"regd: cannot listen on http.debug.addr 127.0.0.1:{busy}: Address already in use"]))

    def test_a_root_that_is_not_a_writable_directory_refuses_to_start(self):
        afile = os.path.abspath(self.mktemp())
        with open(afile, "w") as f:
            f.write("x")
        for root in [afile, os.path.join(afile, "below")]:
            result = self.run_twistd(f"storage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: 127.0.0.1:0\n")
            self.assertEqual(result.returncode, 1)
            self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
            self.assertRegex(result.stderr, rf"^regd: configuration error: storage.filesystem.rootdirectory: "
                                            rf"{root} is not a writable directory \(.+\)\n$")

    def test_read_only_mode_is_logged_at_start(self):
        from twisted.logger import capturedLogs
        root = os.path.abspath(self.mktemp())
        for readonly, expected in [(False, 0), (True, 1)]:
            options = tap.Options()
            options.parseOptions(["--config", self.write_config(
                f"http:\n  addr: 127.0.0.1:0\nstorage:\n  filesystem:\n    rootdirectory: {root}\n"
                f"  maintenance:\n    readonly:\n      enabled: {str(readonly).lower()}\n")])
            with capturedLogs() as events:
                tap.makeService(options)
            self.assertEqual(len([e for e in events if "read-only mode" in e.get("log_format", "")]), expected)

    def test_free_space_under_the_threshold_fails_the_probe(self):
        from twisted.internet import defer

        from regd.config import parse_config
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        for threshold, fails in [(1, False), (1 << 62, True)]:
            config = parse_config(f"storage:\n  filesystem:\n    rootdirectory: {root}\n"
                                  f"regd:\n  limits:\n    freespace: {threshold}\n", {}).config
            d = defer.ensureDeferred(tap.free_space_probe(config)())
            if fails:
                self.assertIn("storage nearly full", str(self.failureResultOf(d, OSError).value))
            else:
                self.successResultOf(d)


class WebUIWiringTests(SynchronousTestCase):
    def site_resource(self, extra: str):
        from regd.daemon.services import ListenerService
        root = os.path.abspath(self.mktemp())
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"version: 0.1\nhttp:\n  addr: 127.0.0.1:0\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {root}\n{extra}")
        options = tap.Options()
        options.parseOptions(["--config", path])
        service = tap.makeService(options)
        listener = next(s for s in service if isinstance(s, ListenerService) and s.what == "http.addr")
        return listener.factory.resource

    def test_the_ui_is_mounted_unless_switched_off(self):
        from regd.web.mount import UIMount
        self.assertIsInstance(self.site_resource(""), UIMount)
        self.assertNotIsInstance(self.site_resource("ui:\n  enabled: false\n"), UIMount)
