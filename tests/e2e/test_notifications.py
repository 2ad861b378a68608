"""
Webhooks from a regd process to the example receiver (a real program on
127.0.0.1, over HTTP and HTTPS): docker push events, and no event lost
across a SIGKILL while the receiver is down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.test_durability import push_image
from tests.support import e2e_http
from tests.support.certs import PKI
from tests.support.processes import RegdProcess, free_port

pytestmark = pytest.mark.e2e

RECEIVER = Path(__file__).resolve().parents[2] / "examples" / "webhook_receiver.py"
SECRET = "whsec_" + "c2VjcmV0LWZvci10ZXN0cw=="


class Receiver:
    """examples/webhook_receiver.py as a process; new events are JSON lines on its stdout."""

    def __init__(self, workdir: Path, port: int, tls: PKI | None = None):
        self.workdir, self.port, self.tls = workdir, port, tls
        self.out = workdir / f"receiver-{port}.out"
        self.err = workdir / f"receiver-{port}.err"
        self.popen = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    def start(self):
        command = [sys.executable, str(RECEIVER), "--port", str(self.port), "--secret", SECRET,
                   "--state", str(self.workdir / "seen.sqlite3")]
        if self.tls:
            command += ["--tls-cert", self.tls.server_chain, "--tls-key", self.tls.server_key]
        self.popen = subprocess.Popen(command, stdout=open(self.out, "ab"), stderr=open(self.err, "ab"),
                                      start_new_session=True)
        deadline = time.monotonic() + 10
        while b"listening" not in self.err.read_bytes() if self.err.exists() else True:
            assert time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.05)

    def stop(self):
        if self.popen:
            self.popen.terminate()
            self.popen.wait(10)
            self.popen = None

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def wait_for(self, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.events()) < count:
            assert time.monotonic() < deadline, f"{len(self.events())} of {count} events arrived"
            time.sleep(0.1)
        return self.events()


class NotifyingRegd(RegdProcess):
    def __init__(self, root, receiver: Receiver, workdir, extra: str = ""):
        super().__init__(root, workdir=workdir)
        self.receiver = receiver
        self.extra = extra

    def config_text(self) -> str:
        return super().config_text() + (
            "notifications:\n"
            "  endpoints:\n"
            "    - name: ci\n"
            f"      url: {self.receiver.url}\n"
            "      timeout: 2s\n"
            "      backoff: 100ms\n"
            "      maxbackoff: 500ms\n"
            f"      secret: {SECRET}\n"
            "      ignore:\n"
            "        actions: [pull]\n" + self.extra)


@pytest.fixture
def parts(tmp_path):
    started = []
    yield started, tmp_path
    for process in reversed(started):
        process.stop()


def test_docker_push_events_over_https(parts, docker_daemon):
    started, tmp = parts
    pki = PKI(str(tmp / "pki"))
    receiver = Receiver(tmp, free_port(), tls=pki)
    started.append(receiver)
    receiver.start()
    regd = NotifyingRegd(tmp / "root", receiver, tmp, extra=f"      tls:\n        ca: {pki.ca}\n")
    started.append(regd)
    regd.start()
    ref = f"{regd.host}/events/demo:1"
    tar = tmp / "rootfs.tar"
    from tests.support.images import write_rootfs_tar
    write_rootfs_tar(tar, {"etc/motd": 2_000}, seed="events")
    docker_daemon.docker("import", str(tar), ref)
    docker_daemon.docker("push", ref)
    manifest_digest = e2e_http.manifest_digest(regd.url, "events/demo", "1")
    events = receiver.wait_for(3)
    manifest = [e for e in events if e["target"].get("tag") == "1"]
    assert len(manifest) == 1, events
    event = manifest[0]
    assert event["action"] == "push"
    assert event["target"]["digest"] == manifest_digest
    assert event["target"]["repository"] == "events/demo"
    assert event["target"]["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert event["target"]["url"] == f"{regd.url}/v2/events/demo/manifests/{manifest_digest}"
    assert event["request"]["method"] == "PUT" and event["request"]["useragent"].startswith("docker/")
    assert set(event) == {"id", "timestamp", "action", "target", "request", "actor", "source"}
    blobs = [e for e in events if e["target"]["mediaType"] == "application/octet-stream"]
    assert len(blobs) == 2 and all(e["action"] == "push" for e in blobs)
    docker_daemon.docker("rmi", ref)


def test_no_event_lost_across_sigkill_with_receiver_down(parts):
    started, tmp = parts
    receiver = Receiver(tmp, free_port())
    started.append(receiver)
    regd = NotifyingRegd(tmp / "root", receiver, tmp)
    started.append(regd)
    regd.start()  # the receiver is down
    manifests = [push_image(regd.url, f"many/r{i % 5}", f"t{i}", os.urandom(8), 2_000) for i in range(50)]
    regd.popen.kill()
    regd.popen.wait(10)
    regd.popen = None
    receiver.start()
    regd.start()
    events = receiver.wait_for(150)
    assert len(events) == 150
    assert len({e["id"] for e in events}) == 150
    pushed = {e["target"]["digest"] for e in events if e["target"].get("tag")}
    assert pushed == set(manifests)
    # Anything delivered twice was delivered with the same id (the receiver dropped it as a duplicate).
    duplicates = [line for line in receiver.err.read_text().splitlines() if line.startswith("duplicate ")]
    assert all(line.split()[1] in {e["id"] for e in events} for line in duplicates)
