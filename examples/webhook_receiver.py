#!/usr/bin/env python3
"""
A webhook receiver for regd (or any registry:2-compatible registry) that
triggers CI work on push.

It listens for POSTs, verifies Standard Webhooks signatures when given
secrets, drops events it has already seen (by event id, remembered in a
small SQLite file, because delivery is at least once), and for each new
event either prints it or runs a command with the event JSON on stdin:

    webhook_receiver.py --port 8080 --secret "$WEBHOOK_SECRET" \\
        --only-action push --exec 'jq -r .target.repository | xargs ci-trigger'

Standard library only, so it can be copied onto any CI machine.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def verify(headers, body: bytes, secrets: list[str], tolerance: float = 300) -> bool:
    try:
        message_id = headers["webhook-id"]
        timestamp = int(headers["webhook-timestamp"])
        offered = headers["webhook-signature"].split()
    except (KeyError, TypeError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    signed = f"{message_id}.{timestamp}.".encode() + body
    for secret in secrets:
        key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return True
    return False


class Seen:
    """Event ids already handled, kept across restarts."""

    def __init__(self, path: str):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, at REAL)")
        self._lock = threading.Lock()

    def first_time(self, event_id: str) -> bool:
        with self._lock:
            try:
                self._db.execute("INSERT INTO seen VALUES (?, ?)", (event_id, time.time()))
                return True
            except sqlite3.IntegrityError:
                return False

    def forget(self, event_id: str) -> None:
        """Handling failed: let the registry's retry run it again."""
        with self._lock:
            self._db.execute("DELETE FROM seen WHERE id = ?", (event_id,))


def events_of(body: bytes, content_type: str) -> list[dict]:
    document = json.loads(body)
    if isinstance(document, list):  # CloudEvents batch
        return [e["data"] for e in document]
    if "specversion" in document:  # single CloudEvent
        return [document["data"]]
    return document["events"]  # registry:2 envelope


def make_handler(options, seen: Seen):
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 keep-alive: every answer has a Content-Length, and an idle
        # connection is closed after `timeout` seconds (the registry then
        # opens a new one for its next POST).
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True
        timeout = options.idle_timeout

        def answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if options.secret and not verify({k.lower(): v for k, v in self.headers.items()}, body, options.secret):
                self.answer(401)
                return
            try:
                events = events_of(body, self.headers.get("Content-Type", ""))
            except (ValueError, KeyError, TypeError):
                self.answer(400)
                return
            for event in events:
                if options.only_action and event.get("action") not in options.only_action:
                    continue
                if not seen.first_time(event["id"]):
                    print(f"duplicate {event['id']} ignored", file=sys.stderr, flush=True)
                    continue
                if not handle(options, event):
                    # 500: the registry keeps the event and sends it again later, same id.
                    seen.forget(event["id"])
                    print(f"command failed for {event['id']}; asking for a retry", file=sys.stderr, flush=True)
                    self.answer(500)
                    return
            self.answer(200)

        def log_message(self, format, *args):
            pass

    return Handler


def handle(options, event: dict) -> bool:
    """Run the command (or print); False if the command failed."""
    line = json.dumps(event)
    if options.exec:
        return subprocess.run(options.exec, shell=True, input=line.encode(), check=False).returncode == 0
    print(line, flush=True)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--secret", action="append", default=[],
                        help="signing secret (repeat while rotating); without it signatures are not checked")
    parser.add_argument("--state", default="webhook-receiver.sqlite3", help="where seen event ids are kept")
    parser.add_argument("--only-action", action="append", default=[], help="e.g. push (repeatable)")
    parser.add_argument("--exec", help="shell command run per new event, event JSON on stdin")
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate chain")
    parser.add_argument("--tls-key", help="private key for --tls-cert")
    parser.add_argument("--idle-timeout", type=float, default=30.0,
                        help="seconds before an idle keep-alive connection is closed")
    options = parser.parse_args(argv)
    server = ThreadingHTTPServer((options.host, options.port), make_handler(options, Seen(options.state)))
    if options.tls_cert:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(options.tls_cert, options.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening on {options.host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
