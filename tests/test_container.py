"""regd.container: registry:2's image command forms, the health check's request, the data volume's owner."""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from regd import container
from regd.config import parse_config

DEFAULT = container.DEFAULT_CONFIG


class CommandLineTests(SynchronousTestCase):
    def test_registry_image_forms(self):
        cases = {
            (): ["serve", DEFAULT],
            ("/etc/docker/registry/config.yml",): ["serve", "/etc/docker/registry/config.yml"],
            ("/srv/other.yaml",): ["serve", "/srv/other.yaml"],
            ("serve", "/c.yml"): ["serve", "/c.yml"],
            ("registry", "serve", "/c.yml"): ["serve", "/c.yml"],
            ("registry", "garbage-collect", "-m", "/c.yml"): ["garbage-collect", "-m", "/c.yml"],
            ("regd", "garbage-collect", "--dry-run", "/c.yml"): ["garbage-collect", "--dry-run", "/c.yml"],
            ("fsck", "/c.yml"): ["fsck", "/c.yml"],
            ("--help",): ["--help"],
            ("healthcheck",): ["healthcheck"],
        }
        for given, expected in cases.items():
            self.assertEqual(container.command_line(list(given)), expected, given)

    def test_anything_else_is_executed_as_given(self):
        self.assertIsNone(container.command_line(["python3", "-c", "print(1)"]))

    def test_config_argument(self):
        self.assertEqual(container._config_argument(["serve", "/a.yml"]), "/a.yml")
        self.assertEqual(container._config_argument(["fsck", "--config", "/b.yml"]), "/b.yml")
        self.assertEqual(container._config_argument(["fsck", "--config=/c.yml"]), "/c.yml")
        self.assertIsNone(container._config_argument(["serve"]))


class HealthRequestTests(SynchronousTestCase):
    BASE = "storage: {filesystem: {rootdirectory: /x}}\n"

    def request(self, text="", environ=None):
        return container.health_request(parse_config(self.BASE + text, environ or {}).config)

    def test_every_interface_is_asked_on_loopback(self):
        self.assertEqual(self.request(), ("127.0.0.1", 5000, False, "/"))
        self.assertEqual(self.request("http: {addr: '0.0.0.0:5001'}"), ("127.0.0.1", 5001, False, "/"))
        self.assertEqual(self.request("http: {addr: '[::]:5002'}"), ("::1", 5002, False, "/"))
        self.assertEqual(self.request("http: {addr: '10.1.2.3:5003'}"), ("10.1.2.3", 5003, False, "/"))

    def test_tls_and_prefix_from_the_environment(self):
        environ = {"REGISTRY_HTTP_TLS_CERTIFICATE": "/certs/c.crt", "REGISTRY_HTTP_TLS_KEY": "/certs/c.key",
                   "REGISTRY_HTTP_ADDR": ":443", "REGISTRY_HTTP_PREFIX": "/reg/"}
        self.assertEqual(self.request(environ=environ), ("127.0.0.1", 443, True, "/reg/"))


class StorageRootOwnerTests(SynchronousTestCase):
    def test_the_whole_tree_is_given_once(self):
        uid, gid = os.getuid(), os.getgid()
        chowned = []
        self.patch(os, "chown", lambda path, u, g: chowned.append(path))
        self.patch(os, "lchown", lambda path, u, g: chowned.append(path))
        said = []
        with tempfile.TemporaryDirectory() as root:
            os.makedirs(os.path.join(root, "docker", "registry"))
            open(os.path.join(root, "docker", "f"), "w").close()
            # Owned already: nothing is walked.
            container.own_storage_root(root, uid, gid, said.append)
            self.assertEqual((chowned, said), ([], []))
            # Someone else's: the root and everything below.
            container.own_storage_root(root, uid + 1, gid, said.append)
            self.assertEqual(sorted(os.path.relpath(p, root) for p in chowned),
                             [".", "docker", "docker/f", "docker/registry"])
            self.assertEqual(len(said), 1)

    def test_a_missing_root_is_created(self):
        with tempfile.TemporaryDirectory() as parent:
            root = os.path.join(parent, "data")
            container.own_storage_root(root, os.getuid(), os.getgid(), lambda line: None)
            self.assertTrue(os.path.isdir(root))


class ExecTests(SynchronousTestCase):
    def test_a_missing_program_is_one_line_and_127(self):
        said = []
        self.patch(container.sys, "stderr", type("W", (), {"write": lambda self, t: said.append(t),
                                                           "flush": lambda self: None})())
        self.assertEqual(container.main(["no-such-program-in-this-image"]), 127)
        self.assertIn("regd: cannot run no-such-program-in-this-image", "".join(said))
