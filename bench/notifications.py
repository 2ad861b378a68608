"""
Webhook benchmark: events delivered per second to a local receiver, the
push→delivery latency (p50/p99) while pushing, and how much five endpoints
(one of them dead) slow pushes down compared with none.

    .venv/bin/python bench/notifications.py [--pushes N] [--workers N] [--rounds N]

Receivers run in a process of their own, as they would on another machine:
in the pushing process they would take its interpreter lock from the
pushing threads and make any configuration with live endpoints look slower
than it is. The push-rate comparison runs each configuration --rounds
times, interleaved, and reports medians (the machine is noisy), both with
concurrent pushers (regd's CPU saturated) and with one pusher at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import Server, free_port  # noqa: E402


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class _ReceiverProtocol(asyncio.Protocol):
    """
    One keep-alive connection: reads each POST whole (head, then exactly
    Content-Length bytes), keeps the body with its arrival time and answers
    200. Bodies are parsed only when asked for, so the receiver's own CPU per
    event stays far below the registry's (the machine has 2 cores, and a
    real receiver would run on another one).
    """

    def __init__(self, receiver: Receiver):
        self.receiver = receiver
        self.buffer = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            self.receiver.bodies.append((time.monotonic(), body))
            self.transport.write(OK)


class Receiver:
    """Records the first arrival time of every digest (bodies parsed lazily), answering 200 at once."""

    def __init__(self, loop, port: int = 0):
        self.bodies: list[tuple[float, bytes]] = []
        self.digests: dict[str, float] = {}
        self.server = loop.run_until_complete(
            loop.create_server(lambda: _ReceiverProtocol(self), "127.0.0.1", port))
        self.port = self.server.sockets[0].getsockname()[1]

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def parsed_digests(self) -> dict[str, float]:
        """Digest -> first arrival, for every body received so far."""
        bodies, self.bodies = self.bodies, []
        for arrived, body in bodies:
            for event in json.loads(body)["events"]:
                self.digests.setdefault(event["target"].get("digest", ""), arrived)
        return dict(self.digests)


def _serve_receivers(ports: list[int], pipe) -> None:
    """The receivers' process: one asyncio loop for all of them, commands on the pipe."""
    loop = asyncio.new_event_loop()
    receivers = [Receiver(loop, port) for port in ports]
    done = loop.create_future()

    def command():
        request = pipe.recv()
        if request == "stop":
            done.set_result(None)
        else:
            pipe.send(receivers[request].parsed_digests())

    loop.add_reader(pipe.fileno(), command)
    loop.run_until_complete(done)
    for r in receivers:
        r.server.close()
    loop.close()


class ReceiverProcess:
    """Receivers on the given ports (0: a free one), served from a separate process."""

    def __init__(self, count: int, ports: list[int] | None = None):
        self.ports = ports or [free_port() for _ in range(count)]
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._pipe, child = context.Pipe()
        self._process = context.Process(target=_serve_receivers, args=(self.ports, child), daemon=True)
        self._process.start()
        deadline = time.monotonic() + 10
        while not all(_listening(p) for p in self.ports):
            assert time.monotonic() < deadline, "receivers did not start"
            time.sleep(0.02)

    def url(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[i]}/hook"

    @property
    def pid(self) -> int:
        return self._process.pid

    def digests(self, i: int = 0) -> dict[str, float]:
        """Digest -> first arrival (time.monotonic(), the same clock in every process)."""
        self._pipe.send(i)
        return self._pipe.recv()

    def stop(self):
        self._pipe.send("stop")
        self._process.join(10)


def _listening(port: int) -> bool:
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def endpoints_yaml(urls: list[str], batch: int = 1) -> str:
    lines = ["notifications:", "  endpoints:"]
    for i, url in enumerate(urls):
        lines += [f"    - name: ep{i}", f"      url: {url}", "      timeout: 1s", "      backoff: 100ms",
                  "      maxbackoff: 200ms", f"      batch: {batch}"]
    return "\n".join(lines) + "\n"


def push_blobs(port: int, count: int, workers: int, tag: str,
               answered: dict[str, float] | None = None) -> tuple[float, dict[str, float]]:
    """Single-request blob pushes; returns (seconds, digest -> push start time); fills C{answered} (digest -> answer)."""
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
            if answered is not None:
                answered[digest] = time.monotonic()
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
    parser.add_argument("--only", choices=["delivery", "ratio"], help="run one part")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per push-rate configuration")
    options = parser.parse_args()
    rows = [("events per POST (batch)", str(options.batch), "")]

    if options.only != "ratio":
        rows += delivery_rows(options)
    if options.only != "delivery":
        rows += ratio_rows(options)
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>18}  {target}")
    return 0


def delivery_rows(options) -> list[tuple[str, str, str]]:
    rows = []
    # Delivery capacity: a backlog built while the receiver is down, drained once it is up.
    port = free_port()
    server = Server("regd", endpoints_yaml([f"http://127.0.0.1:{port}/hook"], options.batch))
    try:
        server.start()
        _, started = push_blobs(server.port, options.pushes, options.workers, "backlog")
        receiver = ReceiverProcess(1, [port])
        begin = time.monotonic()
        deadline = begin + 120
        while len(arrived := receiver.digests()) < len(started) and time.monotonic() < deadline:
            time.sleep(0.05)
        drained = max(arrived.values()) - begin
        rows.append(("backlog drain rate", f"{len(arrived) / drained:.0f} events/s", ">= 1000"))
        receiver.stop()
    finally:
        server.stop()

    receiver = ReceiverProcess(1)
    server = Server("regd", endpoints_yaml([receiver.url()], options.batch))
    try:
        server.start()
        answered: dict[str, float] = {}
        seconds, started = push_blobs(server.port, options.pushes, options.workers, "rate", answered)
        deadline = time.monotonic() + 120
        while len(arrived := receiver.digests()) < len(started) and time.monotonic() < deadline:
            time.sleep(0.05)
        first = min(started.values())
        last = max(arrived[d] for d in started if d in arrived)
        delivered = sum(1 for d in started if d in arrived)
        latencies = [(arrived[d] - t) * 1000 for d, t in started.items() if d in arrived]
        # From the moment the client saw its push succeed (the event is journaled by then) to delivery.
        after_answer = [max(0.0, arrived[d] - t) * 1000 for d, t in answered.items() if d in arrived]
        rows += [("events delivered", f"{delivered}/{len(started)}", ""),
                 ("delivery rate while pushing", f"{delivered / (last - first):.0f} events/s", ""),
                 ("push answered→delivery latency p50", f"{percentile(after_answer, 50):.1f} ms", ""),
                 ("push answered→delivery latency p99", f"{percentile(after_answer, 99):.1f} ms", "< 100 ms"),
                 ("push started→delivery latency p50", f"{percentile(latencies, 50):.1f} ms", ""),
                 ("push started→delivery latency p99", f"{percentile(latencies, 99):.1f} ms", "< 100 ms"),
                 ("push rate with 1 endpoint", f"{options.pushes / seconds:.0f} pushes/s", "")]
    finally:
        server.stop()
        receiver.stop()

    return rows


def ratio_rows(options) -> list[tuple[str, str, str]]:
    rows = []
    live = ReceiverProcess(4)
    dead = [f"http://127.0.0.1:{free_port()}/hook" for _ in range(5)]
    configurations = {
        "none": "",
        "5 dead": endpoints_yaml(dead, options.batch),
        "4 live": endpoints_yaml([live.url(i) for i in range(4)], options.batch),
        "4 live + 1 dead": endpoints_yaml([live.url(i) for i in range(4)] + dead[:1], options.batch),
    }
    for workers in (options.workers, 1):
        rates: dict[str, list[float]] = {label: [] for label in configurations}
        for round_number in range(options.rounds):
            for label, extra in configurations.items():
                server = Server("regd", extra)
                try:
                    server.start()
                    push_blobs(server.port, 100, workers, f"warm-{label}-{round_number}")
                    count = options.pushes if workers > 1 else max(200, options.pushes // 4)
                    seconds, _ = push_blobs(server.port, count, workers, f"{label}-{round_number}")
                    rates[label].append(count / seconds)
                finally:
                    server.stop()
        rate = {label: statistics.median(values) for label, values in rates.items()}
        rows += [(f"push rate, {workers} pusher(s), {label}", f"{rate[label]:.0f} pushes/s", "")
                 for label in configurations]
        rows += [(f"ratio, {workers} pusher(s): 5 endpoints (1 dead) / none",
                  f"{rate['4 live + 1 dead'] / rate['none']:.2f}", ">= 0.95"),
                 (f"ratio, {workers} pusher(s): 4 live + 1 dead / 4 live (cost of the dead one)",
                  f"{rate['4 live + 1 dead'] / rate['4 live']:.2f}", ">= 0.95"),
                 (f"ratio, {workers} pusher(s): 5 dead / none (cost of the journal)",
                  f"{rate['5 dead'] / rate['none']:.2f}", "")]
    live.stop()
    return rows


if __name__ == "__main__":
    sys.exit(main())
