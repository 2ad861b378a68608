"""
What a running regd has imported, for memory: a default-configured daemon
serving requests never loads what it was not configured to use (TLS, the web
pages' templates, S3, Redis, Prometheus, JWT), and each of those still loads
as soon as it is configured or, for the pages, first asked for.

The daemon runs in a child process, started as twistd starts it; on SIGUSR2
it writes the names of its imported modules to a file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import ssl
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from regd.daemon import memory
from tests.support.processes import free_port

# The child: twistd's own entry point, plus a SIGUSR2 handler that lists sys.modules.
CHILD = r"""
import os, signal, sys

def dump(signum, frame):
    with open(os.environ["MODULES_OUT"] + ".tmp", "w") as f:
        f.write("\n".join(sorted(sys.modules)))
    os.rename(os.environ["MODULES_OUT"] + ".tmp", os.environ["MODULES_OUT"])

signal.signal(signal.SIGUSR2, dump)
sys.argv = ["twistd", "--nodaemon", "--pidfile=", "regd", "--config", os.environ["REGD_CONFIG"]]
from twisted.scripts.twistd import run
run()
"""

NEVER_BY_DEFAULT = ("OpenSSL", "cryptography", "jinja2", "botocore", "txredisapi", "treq", "prometheus_client",
                    "jwt", "twisted.protocols.tls", "regd.web.app", "regd.storage.s3")


class Daemon:
    def __init__(self, case: SynchronousTestCase, extra_config: str = "", tls: bool = False, storage: str = ""):
        self.case = case
        self.port = free_port()
        self.tls = tls
        root = os.path.abspath(case.mktemp())
        os.makedirs(root)
        config = case.mktemp()
        with open(config, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\nhttp:\n  addr: 127.0.0.1:{self.port}\n{extra_config}"
                    + (storage or f"storage:\n  filesystem:\n    rootdirectory: {root}\n"))
        self.out = os.path.abspath(case.mktemp())
        env = {**os.environ, "REGD_CONFIG": config, "MODULES_OUT": self.out}
        env.pop("REGD_WORKER", None)
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        case.addCleanup(self.stop)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/v2/")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("regd did not start")
                time.sleep(0.1)

    def get(self, path: str, accept: str = "*/*") -> int:
        return self.request("GET", path, headers={"Accept": accept})[0]

    def request(self, method: str, path: str, body: bytes | None = None, headers=None) -> tuple[int, bytes]:
        if self.tls:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30, context=context)
        else:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def push_and_pull(self, size: int) -> None:
        """A blob pushed in one request and read back: storage works in this process."""
        body = os.urandom(size)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        status, _ = self.request("POST", f"/v2/memory/blobs/uploads/?digest={digest}", body,
                                 {"Content-Type": "application/octet-stream"})
        self.case.assertEqual(status, 201)
        status, pulled = self.request("GET", f"/v2/memory/blobs/{digest}")
        self.case.assertEqual((status, "sha256:" + hashlib.sha256(pulled).hexdigest()), (200, digest))

    def modules(self) -> set[str]:
        if os.path.exists(self.out):
            os.remove(self.out)
        self.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.out):
            if time.monotonic() > deadline:
                raise AssertionError("regd did not list its modules")
            time.sleep(0.05)
        with open(self.out) as f:
            return set(f.read().split())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def loaded(modules: set[str], name: str) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


class DefaultConfigurationTests(SynchronousTestCase):
    def test_a_default_regd_serving_requests_loads_only_what_it_uses(self):
        daemon = Daemon(self)
        self.assertEqual(daemon.get("/v2/_catalog"), 200)
        self.assertEqual(daemon.get("/v2/nothing/blobs/sha256:" + "0" * 64), 404)
        self.assertEqual(daemon.get("/v1/search?q=x"), 200)  # search (the index, SQLite) is on by default
        daemon.push_and_pull(3 << 20)
        modules = daemon.modules()
        self.assertIn("regd.index.service", modules)
        self.assertEqual([name for name in NEVER_BY_DEFAULT if loaded(modules, name)], [])
        # The web pages (on by default) are built when first asked for.
        self.assertEqual(daemon.get("/ui/", accept="text/html"), 200)
        modules = daemon.modules()
        self.assertTrue(loaded(modules, "jinja2"))
        self.assertIn("regd.web.app", modules)

    def test_tls_and_metrics_load_when_configured(self):
        from tests.support.certs import PKI
        pki = PKI(self.mktemp())
        daemon = Daemon(self, f"  tls:\n    certificate: {pki.server_chain}\n    key: {pki.server_key}\n"
                              f"  debug:\n    addr: 127.0.0.1:{free_port()}\n", tls=True)
        self.assertEqual(daemon.get("/v2/"), 200)
        daemon.push_and_pull(3 << 20)  # over TLS, with the download's sender thread
        modules = daemon.modules()
        for name in ("OpenSSL", "twisted.protocols.tls", "prometheus_client"):
            self.assertTrue(loaded(modules, name), name)


    def test_s3_over_plain_http_loads_no_tls(self):
        from tests.support.s3 import shared_moto
        moto = shared_moto()
        daemon = Daemon(self, storage="storage:\n" + moto.yaml(moto.new_bucket()) + "  redirect: {disable: true}\n")
        self.assertEqual(daemon.get("/v2/_catalog"), 200)  # a listing of the bucket
        daemon.push_and_pull(3 << 20)
        modules = daemon.modules()
        self.assertIn("regd.storage.s3", modules)
        self.assertTrue(loaded(modules, "botocore"))
        self.assertEqual([name for name in ("OpenSSL", "cryptography", "twisted.protocols.tls")
                          if loaded(modules, name)], [])

    def test_webhook_endpoints_load_no_tls_into_the_serving_process(self):
        daemon = Daemon(self, "notifications:\n  endpoints:\n  - {name: a, url: 'https://127.0.0.1:1/hook'}\n")
        daemon.push_and_pull(1 << 20)  # journalled for the endpoint before the 201
        modules = daemon.modules()
        self.assertIn("regd.notifications.service", modules)
        self.assertEqual([name for name in ("OpenSSL", "cryptography", "twisted.protocols.tls", "treq")
                          if loaded(modules, name)], [])


class ImportTwistedTests(SynchronousTestCase):
    def test_what_speaks_tls_through_twisted(self):
        from regd.config import load_config

        def uses(text: str) -> bool:
            path = self.mktemp()
            with open(path, "w") as f:
                f.write("version: 0.1\n" + text + ("" if "storage:" in text else "storage:\n  inmemory: {}\n"))
            config = load_config(path, {}).config
            return memory.uses_twisted_tls(config)
        self.assertFalse(uses(""))
        self.assertFalse(uses("auth:\n  htpasswd: {realm: r, path: /p}\n"))
        self.assertTrue(uses("http:\n  tls: {certificate: c.pem, key: k.pem}\n"))
        self.assertTrue(uses("http:\n  tls:\n    letsencrypt: {email: a@example.org, hosts: [r.example.org]}\n"))
        self.assertTrue(uses("storage:\n  s3: {bucket: b, region: us-east-1}\n"))  # AWS over HTTPS
        self.assertTrue(uses("storage:\n  s3: {bucket: b, regionendpoint: 'https://10.0.0.1:9000'}\n"))
        self.assertTrue(uses("storage:\n  s3: {bucket: b, regionendpoint: '10.0.0.1:9000'}\n"))
        self.assertFalse(uses("storage:\n  s3: {bucket: b, regionendpoint: 'http://10.0.0.1:9000'}\n"))
        self.assertFalse(uses("storage:\n  s3: {bucket: b, regionendpoint: '10.0.0.1:9000', secure: false}\n"))
        self.assertTrue(uses("redis:\n  addr: 127.0.0.1:6379\n  tls: {enabled: true}\n"))
        # The delivery process sends the POSTs, so even an HTTPS endpoint brings no TLS into this one.
        self.assertFalse(uses("notifications:\n  endpoints:\n  - {name: a, url: 'https://127.0.0.1:1/'}\n"))

    def test_in_a_process_that_has_the_reactor_it_changes_nothing(self):
        from twisted.internet import reactor  # noqa: F401  (as in every test process)
        self.assertFalse(memory.import_twisted(False))
