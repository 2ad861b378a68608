"""
Webhook benchmark: events delivered per second to a local receiver, the
push→delivery latency (p50/p99) while pushing, and how much five endpoints
(one of them dead) slow pushes down compared with none.

    .venv/bin/python bench/notifications.py [--pushes N] [--workers N]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import Server, free_port  # noqa: E402


class Receiver:
    """Records the arrival time of every event id, answering 200 at once."""

    def __init__(self, port: int = 0):
        self.arrivals: dict[str, float] = {}
        self.digests: dict[str, float] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                now = time.monotonic()
                with receiver.lock:
                    for event in json.loads(body)["events"]:
                        receiver.arrivals.setdefault(event["id"], now)
                        receiver.digests.setdefault(event["target"].get("digest", ""), now)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def stop(self):
        self.server.shutdown()


def endpoints_yaml(urls: list[str], batch: int = 1) -> str:
    lines = ["notifications:", "  endpoints:"]
    for i, url in enumerate(urls):
        lines += [f"    - name: ep{i}", f"      url: {url}", "      timeout: 1s", "      backoff: 100ms",
                  "      maxbackoff: 200ms", f"      batch: {batch}"]
    return "\n".join(lines) + "\n"


def push_blobs(port: int, count: int, workers: int, tag: str) -> tuple[float, dict[str, float]]:
    """Single-request blob pushes; returns (seconds, digest -> push start time)."""
    started: dict[str, float] = {}
    next_index = iter(range(count))
    lock = threading.Lock()

    def worker():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            data = f"{tag}-{i}-".encode() + os.urandom(64)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            started[digest] = time.monotonic()
            connection.request("POST", f"/v2/bench/n/blobs/uploads/?digest={digest}", body=data)
            response = connection.getresponse()
            response.read()
            assert response.status == 201, response.status
        connection.close()

    begin = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - begin, started


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1, help="events per POST (the reference sends 1)")
    options = parser.parse_args()
    rows = [("events per POST (batch)", str(options.batch), "")]

    # Delivery capacity: a backlog built while the receiver is down, drained once it is up.
    port = free_port()
    server = Server("regd", endpoints_yaml([f"http://127.0.0.1:{port}/hook"], options.batch))
    try:
        server.start()
        _, started = push_blobs(server.port, options.pushes, options.workers, "backlog")
        receiver = Receiver(port)
        begin = time.monotonic()
        deadline = begin + 120
        while len(receiver.digests) < len(started) and time.monotonic() < deadline:
            time.sleep(0.01)
        drained = max(receiver.digests.values()) - begin
        rows.append(("backlog drain rate", f"{len(receiver.digests) / drained:.0f} events/s", ">= 1000"))
        receiver.stop()
    finally:
        server.stop()

    receiver = Receiver()
    server = Server("regd", endpoints_yaml([receiver.url()], options.batch))
    try:
        server.start()
        seconds, started = push_blobs(server.port, options.pushes, options.workers, "rate")
        deadline = time.monotonic() + 120
        while len(receiver.digests) < len(started) and time.monotonic() < deadline:
            time.sleep(0.05)
        first = min(started.values())
        last = max(receiver.digests[d] for d in started if d in receiver.digests)
        delivered = sum(1 for d in started if d in receiver.digests)
        latencies = [(receiver.digests[d] - t) * 1000 for d, t in started.items() if d in receiver.digests]
        rows += [("events delivered", f"{delivered}/{len(started)}", ""),
                 ("delivery rate while pushing", f"{delivered / (last - first):.0f} events/s", ""),
                 ("push→delivery latency p50", f"{percentile(latencies, 50):.1f} ms", ""),
                 ("push→delivery latency p99", f"{percentile(latencies, 99):.1f} ms", "< 100 ms"),
                 ("push rate with 1 endpoint", f"{options.pushes / seconds:.0f} pushes/s", "")]
    finally:
        server.stop()

    rates = {}
    live = [Receiver() for _ in range(4)]
    dead = f"http://127.0.0.1:{free_port()}/hook"
    for label, extra in (("none", ""),
                         ("five, one dead", endpoints_yaml([r.url() for r in live] + [dead], options.batch))):
        server = Server("regd", extra)
        try:
            server.start()
            push_blobs(server.port, 100, options.workers, f"warm-{label}")
            seconds, _ = push_blobs(server.port, options.pushes, options.workers, label)
            rates[label] = options.pushes / seconds
        finally:
            server.stop()
    ratio = rates["five, one dead"] / rates["none"]
    rows += [("push rate, no endpoints", f"{rates['none']:.0f} pushes/s", ""),
             ("push rate, 5 endpoints (1 dead)", f"{rates['five, one dead']:.0f} pushes/s", ""),
             ("ratio (5 endpoints / none)", f"{ratio:.2f}", ">= 0.95")]
    receiver.stop()
    for r in live:
        r.stop()
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>18}  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
