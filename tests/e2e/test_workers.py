"""
regd.workers: 2 — two regd processes on one port under one `twistd regd`:
requests land on both, webhook events journaled by both are delivered once
each to a real receiver, a killed worker comes back, SIGTERM stops them all.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_durability import push_image
from tests.e2e.test_notifications import SECRET, Receiver
from tests.support.processes import RegdProcess, free_port

pytestmark = pytest.mark.e2e


class WorkersRegd(RegdProcess):
    def __init__(self, root, workdir, receiver: Receiver, workers: int = 2):
        super().__init__(root, workdir=workdir)
        self.receiver, self.workers = receiver, workers

    def config_text(self) -> str:
        return super().config_text() + (
            f"regd:\n  workers: {self.workers}\n"
            "log:\n  accesslog:\n    disabled: true\n"
            "notifications:\n"
            "  endpoints:\n"
            "    - name: ci\n"
            f"      url: {self.receiver.url}\n"
            "      timeout: 2s\n"
            "      backoff: 100ms\n"
            f"      secret: {SECRET}\n")

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children")
        return sorted(int(p) for p in children.read_text().split()) if children.exists() else []

    def answering_workers(self, want: set[str], timeout: float = 30) -> set[str]:
        """X-Regd-Worker values seen on fresh connections until C{want} were all seen."""
        seen: set[str] = set()
        deadline = time.monotonic() + timeout
        while not want <= seen and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=5) as answer:
                    seen.add(answer.headers.get("X-Regd-Worker", ""))
            except OSError:
                time.sleep(0.1)
        return seen


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.fixture
def parts(tmp_path):
    started = []
    yield started, tmp_path
    for process in reversed(started):
        pids = process.worker_pids() if isinstance(process, WorkersRegd) and process.popen else []
        process.stop()
        for pid in pids:  # never leave a worker behind, whatever happened
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_two_workers_share_the_port_deliver_once_restart_and_stop_together(parts):
    started, tmp = parts
    receiver = Receiver(tmp, free_port())
    started.append(receiver)
    receiver.start()
    regd = WorkersRegd(tmp / "root", tmp, receiver)
    started.append(regd)
    regd.start()
    first = regd.worker_pids()
    assert len(first) == 2, regd.logs()
    assert regd.answering_workers({"0", "1"}) == {"0", "1"}, regd.logs()

    # Each push is several requests on new connections: both workers journal events.
    manifests = [push_image(regd.url, f"workers/r{i % 3}", f"t{i}", os.urandom(8), 3_000) for i in range(8)]
    events = receiver.wait_for(24)
    time.sleep(1.0)  # anything sent twice would arrive now
    events = receiver.events()
    assert len(events) == 24 and len({e["id"] for e in events}) == 24
    assert {e["target"]["digest"] for e in events if e["target"].get("tag")} == set(manifests)
    assert len({e["source"]["instanceID"] for e in events}) == 2  # journaled by both workers
    duplicates = [line for line in receiver.err.read_text().splitlines() if line.startswith("duplicate ")]
    assert duplicates == []  # delivered exactly once: only worker 0 delivers

    # A worker that dies is replaced; the other serves meanwhile.
    os.kill(first[1], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (first[1] in regd.worker_pids() or len(regd.worker_pids()) < 2):
        time.sleep(0.1)
    second = regd.worker_pids()
    assert len(second) == 2 and first[1] not in second and first[0] in second, regd.logs()
    assert regd.answering_workers({"0", "1"}) == {"0", "1"}, regd.logs()
    push_image(regd.url, "workers/after", "t", os.urandom(8), 3_000)
    assert len(receiver.wait_for(27)) == 27

    # SIGTERM to the one service stops every worker, cleanly.
    supervisor = regd.popen
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(60) == 0, regd.logs()
    regd.popen = None
    assert not any(_alive(pid) for pid in second)
    assert "regd.workers: every worker stopped" in regd.logs()
