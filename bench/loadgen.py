"""
A cheap request-rate client: one thread, one epoll loop, N keep-alive
connections, each with one request in flight at a time.

Per response it does one `find`, a slice and a dict lookup, so on a 2-core
machine it stays well clear of the server's cost per request (an http.client
per thread would spend more CPU, and hold the GIL, for the same work).
Requests are pre-encoded bytes; only Content-Length framing is understood
(manifest GETs and blob HEADs never need chunked encoding).
"""

from __future__ import annotations

import selectors
import socket
import time

import attrs


@attrs.frozen
class RateResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class _Conn:
    __slots__ = ("sock", "buf", "sent_at", "header_end", "total")

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.sent_at = 0.0
        self.header_end = -1
        self.total = -1


def _connect(host: str, port: int) -> socket.socket:
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    return s


def content_length(head: bytes) -> int:
    lower = head.lower()
    i = lower.find(b"\r\ncontent-length:")
    if i < 0:
        if b"\r\ntransfer-encoding:" in lower:
            raise ValueError("chunked responses are not supported by the load generator")
        return 0
    end = lower.find(b"\r\n", i + 2)
    return int(lower[i + 17:end])


def hammer(host: str, port: int, request: bytes, *, head: bool, connections: int,
           duration: float, expect: int = 200) -> RateResult:
    """Send `request` over `connections` keep-alive sockets for `duration` seconds."""
    sel = selectors.EpollSelector()
    conns = []
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    ok = errors = 0
    now = time.perf_counter
    start = now()
    stop_at = start + duration
    for _ in range(connections):
        c = _Conn(_connect(host, port))
        conns.append(c)
        sel.register(c.sock, selectors.EVENT_READ, c)
        c.sent_at = now()
        c.sock.send(request)
    active = len(conns)
    while active:
        for key, _ in sel.select(1.0):
            c = key.data
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                continue
            if not data:
                # Server closed the connection: count it and reconnect.
                errors += 1
                sel.unregister(c.sock)
                c.sock.close()
                c.buf.clear()
                c.header_end = c.total = -1
                if now() < stop_at:
                    c.sock = _connect(host, port)
                    sel.register(c.sock, selectors.EVENT_READ, c)
                    c.sent_at = now()
                    c.sock.send(request)
                else:
                    active -= 1
                continue
            c.buf += data
            if c.header_end < 0:
                c.header_end = c.buf.find(b"\r\n\r\n")
                if c.header_end < 0:
                    continue
                head_bytes = bytes(c.buf[:c.header_end + 2])
                body = 0 if head else content_length(head_bytes)
                c.total = c.header_end + 4 + body
                status = int(head_bytes[9:12])
                statuses[status] = statuses.get(status, 0) + 1
                if status != expect:
                    errors += 1
                    ok -= 1
            if len(c.buf) < c.total:
                continue
            done = now()
            ok += 1
            latencies.append(done - c.sent_at)
            del c.buf[:c.total]
            c.header_end = c.total = -1
            if done < stop_at:
                c.sent_at = done
                c.sock.send(request)
            else:
                sel.unregister(c.sock)
                c.sock.close()
                active -= 1
    elapsed = now() - start
    sel.close()
    latencies.sort()

    def pct(p):
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return RateResult(requests=ok, errors=errors, seconds=elapsed,
                      p50_ms=pct(0.50), p99_ms=pct(0.99), statuses=statuses)


def build_request(method: str, path: str, host: str, port: int, headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: regd-bench"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
