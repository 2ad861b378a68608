"""examples/webhook_receiver.py as CI runs it: signatures checked, duplicates dropped, failed commands retried."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from regd.notifications.events import ENVELOPE_MEDIA_TYPE
from regd.notifications.signing import signature_headers
from tests.support.processes import free_port

RECEIVER = Path(__file__).resolve().parents[2] / "examples" / "webhook_receiver.py"
SECRET = "whsec_" + "ZXhhbXBsZS1yZWNlaXZlci1zZWNyZXQ="


@pytest.fixture
def receiver(tmp_path):
    port = free_port()
    err = tmp_path / "receiver.err"
    command = [sys.executable, str(RECEIVER), "--port", str(port), "--secret", "whsec_b2xkLW9uZQ==",
               "--secret", SECRET, "--state", str(tmp_path / "seen.sqlite3"), "--only-action", "push",
               "--exec", f"test -e {tmp_path / 'ok'} && cat >> {tmp_path / 'out.jsonl'} && echo >> {tmp_path / 'out.jsonl'}"]
    process = subprocess.Popen(command, stderr=open(err, "wb"), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while b"listening" not in (err.read_bytes() if err.exists() else b""):
        assert time.monotonic() < deadline and process.poll() is None, "receiver did not start"
        time.sleep(0.05)
    yield port, tmp_path
    process.terminate()
    process.wait(10)


def post(port: int, events: list[dict], secret: str = SECRET) -> int:
    body = json.dumps({"events": events}).encode()
    headers = {"Content-Type": ENVELOPE_MEDIA_TYPE,
               **signature_headers(events[0]["id"], int(time.time()), body, (secret,))}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/hook", body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def event(event_id: str, action: str = "push") -> dict:
    return {"id": event_id, "timestamp": "2026-01-01T00:00:00Z", "action": action,
            "target": {"repository": "team/app", "tag": "v1"}, "request": {}, "actor": {}, "source": {}}


def test_verifies_dedups_and_retries_failed_commands(receiver):
    port, tmp = receiver
    out = tmp / "out.jsonl"
    assert post(port, [event("e1")], secret="whsec_d3Jvbmc=") == 401  # not signed with a known secret
    assert post(port, [event("e1")]) == 500  # the command failed: the registry will send it again
    assert not out.exists()
    (tmp / "ok").touch()
    assert post(port, [event("e1"), event("p1", action="pull")]) == 200
    assert post(port, [event("e1")]) == 200  # a duplicate: acknowledged, not run again
    handled = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert [e["id"] for e in handled] == ["e1"]  # pulls are filtered by --only-action
