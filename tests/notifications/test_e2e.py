"""
Webhooks from a real regd process (twistd) to real receivers on 127.0.0.1:
a clean stop with a receiver that never answers is bounded and keeps every
event for the next start; CloudEvents, signing-key rotation, retries after
failures, and the admin endpoint on http.debug.addr, end to end.

(tests/e2e/test_notifications.py covers docker push over HTTPS and the
SIGKILL scenario with 50 images.)
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
import urllib.request

import pytest

from tests.e2e.test_durability import push_blob, push_image
from tests.e2e.test_notifications import SECRET, Receiver
from tests.support.processes import RegdProcess, free_port

OLD_SECRET = SECRET
NEW_SECRET = "whsec_" + "bmV3LXNlY3JldC1hZnRlci1yb3RhdGlvbg=="


class WebhookRegd(RegdProcess):
    def __init__(self, root, workdir, notifications: str, debug_port: int | None = None):
        super().__init__(root, workdir=workdir)
        self.notifications = notifications
        self.debug_port = debug_port

    def config_text(self) -> str:
        text = super().config_text()
        if self.debug_port:
            text += f"  debug:\n    addr: 127.0.0.1:{self.debug_port}\n"
        return text + self.notifications

    def journal_rows(self) -> list[tuple[str, str, int]]:
        """
        (endpoint, event id, dead) for every delivery still owed, read from
        the journal on disk: delivery rows, and the endpoints named by events
        the delivery process has not yet written rows for.
        """
        db = sqlite3.connect(str(self.root / "regd" / "notifications.sqlite3"))
        try:
            return [row[1:] for row in db.execute(
                "SELECT d.seq, d.endpoint, e.id, d.dead FROM deliveries d JOIN events e ON e.seq = d.seq "
                "UNION ALL SELECT e.seq, t.value, e.id, 0 FROM events e, json_each(e.targets) t "
                "WHERE e.seq > (SELECT value FROM meta WHERE key = 'fan_out') ORDER BY 1").fetchall()]
        finally:
            db.close()


def endpoint_yaml(url: str, **keys) -> str:
    lines = ["notifications:", "  endpoints:", "    - name: ci", f"      url: {url}"]
    lines += [f"      {key}: {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def parts(tmp_path):
    started = []
    yield started, tmp_path
    for process in reversed(started):
        process.stop()


class BlackHole:
    """Accepts connections and reads requests, but never answers: a stalled receiver."""

    def __init__(self):
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/hook"

    def stop(self):
        self.socket.close()


def test_clean_stop_is_bounded_and_keeps_undelivered_events(parts):
    started, tmp = parts
    hole = BlackHole()
    started.append(hole)
    regd = WebhookRegd(tmp / "root", tmp, endpoint_yaml(hole.url, timeout="60s", backoff="100ms")
                       .replace("notifications:\n", "notifications:\n  draintimeout: 1s\n"))
    started.append(regd)
    regd.start()
    digests = [push_blob(regd.url, "stall/me", f"blob {i}".encode()) for i in range(3)]
    rows = regd.journal_rows()
    assert [r[0] for r in rows] == ["ci"] * 3  # journaled before each push was answered
    ids = [r[1] for r in rows]

    begin = time.monotonic()
    assert regd.stop(term_timeout=30) == 0
    assert time.monotonic() - begin < 10, "SIGTERM waited on a receiver that never answers"
    assert regd.journal_rows() == [("ci", i, 0) for i in ids]  # kept, not dead-lettered

    receiver = Receiver(tmp, free_port())
    started.append(receiver)
    receiver.start()
    again = WebhookRegd(tmp / "root", tmp, endpoint_yaml(receiver.url, secret=SECRET))
    started.append(again)
    again.start()
    events = receiver.wait_for(3)
    assert [e["id"] for e in events] == ids  # same ids, same order
    assert [e["target"]["digest"] for e in events] == digests
    deadline = time.monotonic() + 10
    while again.journal_rows() and time.monotonic() < deadline:  # delivery marks are group-committed
        time.sleep(0.05)
    assert again.journal_rows() == []


def test_cloudevents_with_rotated_secrets_and_retries(parts):
    started, tmp = parts
    receiver = Receiver(tmp, free_port())  # knows only the old secret, as during a rotation
    started.append(receiver)
    receiver.start()
    regd = WebhookRegd(tmp / "root", tmp, endpoint_yaml(
        receiver.url, format="cloudevents", secrets=f"[{NEW_SECRET}, {OLD_SECRET}]", backoff="100ms"))
    started.append(regd)
    regd.start()
    digest = push_image(regd.url, "cloud/app", "v1", b"seed", 1_000)
    events = receiver.wait_for(3)
    manifest = [e for e in events if e["target"].get("tag") == "v1"]
    assert len(manifest) == 1 and manifest[0]["target"]["digest"] == digest
    assert manifest[0]["target"]["url"] == f"{regd.url}/v2/cloud/app/manifests/{digest}"


def test_failures_retry_then_dead_letters_replay_through_the_debug_address(parts):
    started, tmp = parts
    port = free_port()  # nothing listens yet: every attempt fails
    debug_port = free_port()
    regd = WebhookRegd(tmp / "root", tmp, endpoint_yaml(f"http://127.0.0.1:{port}/hook", maxretries=2,
                                                        backoff="50ms", secret=SECRET), debug_port=debug_port)
    started.append(regd)
    regd.start()
    digest = push_blob(regd.url, "dead/letter", b"undeliverable")
    admin = f"http://127.0.0.1:{debug_port}/debug/notifications"
    deadline = time.monotonic() + 20
    while True:
        status = json.loads(urllib.request.urlopen(admin, timeout=5).read())["endpoints"]["ci"]
        # Dead letters are counted in the journal, the queue by the delivery process: it may
        # still hold the event for a moment after the journal made it a dead letter.
        if status["dead_letters"] == 1 and status["pending"] == 0:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["failures"] == 2 and "refused" in status["last_error"].lower()
    dead = json.loads(urllib.request.urlopen(f"{admin}/ci/deadletters", timeout=5).read())["deadletters"]
    assert [d["event"]["target"]["digest"] for d in dead] == [digest]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/metrics", timeout=5).read().decode()
    assert 'regd_notifications_dead_letters{endpoint="ci"} 1.0' in metrics

    receiver = Receiver(tmp, port)
    started.append(receiver)
    receiver.start()
    replay = urllib.request.Request(f"{admin}/ci/deadletters/replay?id={dead[0]['id']}", method="POST")
    assert json.loads(urllib.request.urlopen(replay, timeout=5).read())["replayed"] == 1
    [event] = receiver.wait_for(1)
    assert event["id"] == dead[0]["id"] and event["target"]["digest"] == digest
