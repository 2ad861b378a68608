"""The twistd plugin: options, composition, and refusing to start on bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.trial.unittest import SynchronousTestCase

from regd import tap

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
        self.assertIn(StreamServerEndpointService, kinds)
        self.assertIn(tap.ThreadPoolService, kinds)
        self.assertIn(TimerService, kinds)

    def test_bad_configuration_is_one_line_and_exit_1(self):
        options = tap.Options()
        stderr = []
        self.patch(sys, "stderr", type("W", (), {"write": lambda _self, text: stderr.append(text)})())
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(["--config", self.write_config("http:\n  addr: nonsense\n")])
        self.assertEqual(caught.exception.code, 1)
        self.assertEqual(stderr, ["regd: configuration error: http.addr: expected host:port "
                                  "(e.g. :5000 or 127.0.0.1:5000), got 'nonsense'\n"])

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
                         ["regd: configuration error: storage.s3: this storage driver is not available "
                          "in regd (use filesystem)"])
