# -*- test-case-name: tests.notifications.test_rawsink -*-
"""
A lean webhook POST client for the delivery process: one keep-alive
connection per endpoint, one request in flight (the endpoint's loop sends
one batch at a time), the request head pre-built as bytes, and just enough
HTTP/1.1 response parsing (Content-Length, chunked, or until close).

treq/Agent cost about a millisecond of CPU per POST; this costs a small
fraction of it, which is what lets deliveries keep up with pushes without
taking CPU from the reactor that serves them. Same contract as
L{regd.notifications.httpsink.HTTPSink}: the timeout bounds the whole
exchange, 2xx/3xx is delivered, anything else fails; a POST on a kept-alive
connection the receiver had already closed (no response byte came back) is
sent again at once on a new connection, without counting as a failure.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol

from regd.notifications.httpsink import DeliveryFailed, attempt_within
from regd.notifications.signing import signature_headers

STALE_RETRIES = 1
MAX_HEAD = 64 * 1024


class _NoResponse(Exception):
    """The connection closed before the first byte of a response."""


class _Connection(Protocol):
    def __init__(self):
        self._waiting: defer.Deferred | None = None
        self._buffer = b""
        self._got_bytes = False
        self.open = False
        self.reusable = False
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.open = True

    def request(self, data: bytes) -> defer.Deferred:
        """Deferred[int status] once the whole response was read."""
        self._buffer, self._got_bytes, self.reusable = b"", False, False
        self._state = self._read_head
        self._waiting = defer.Deferred(self._cancel)
        self.transport.write(data)
        return self._waiting

    def _cancel(self, _):
        self._waiting = None
        self.transport.abortConnection()

    def dataReceived(self, data):
        if self._waiting is None:  # nothing asked for (a stray byte): this connection is not reusable
            self.transport.loseConnection()
            return
        self._got_bytes = True
        self._buffer += data
        try:
            while self._waiting is not None and self._state():
                pass
        except ValueError as e:
            self._fail(DeliveryFailed(f"bad response: {e}"))
            self.transport.loseConnection()

    def connectionLost(self, reason=None):
        self.open = False
        self.reusable = False
        if not self.lost.called:
            self.lost.callback(None)
        if self._waiting is not None:
            if self._state == self._read_to_close:
                self._done(self._status)
            elif self._got_bytes:
                self._fail(DeliveryFailed(f"connection closed mid-response: {reason.getErrorMessage()}"))
            else:
                self._fail(_NoResponse(reason.getErrorMessage() if reason else "closed"))

    # -- parsing states: return True to run again on the buffer -------------

    def _read_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise ValueError("response head too large")
            return False
        head, self._buffer = self._buffer[:end], self._buffer[end + 4:]
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError(repr(lines[0][:80]))
        status = int(parts[1])
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            return True
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        self._status = status
        keep = parts[0] == b"HTTP/1.1" and b"close" not in headers.get(b"connection", b"")
        if status in (204, 304):
            return self._finish(keep)
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            self._keep, self._state = keep, self._read_chunk_size
            return True
        if b"content-length" in headers:
            self._left, self._keep, self._state = int(headers[b"content-length"]), keep, self._read_body
            return True
        self._state = self._read_to_close
        return True

    def _read_body(self) -> bool:
        taken = min(self._left, len(self._buffer))
        self._left -= taken
        self._buffer = self._buffer[taken:]
        if self._left:
            return False
        return self._finish(self._keep)

    def _read_chunk_size(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            return False
        size = int(self._buffer[:end].split(b";")[0].strip() or b"0", 16)
        self._buffer = self._buffer[end + 2:]
        if size == 0:
            self._state = self._read_trailer
        else:
            self._left, self._state = size + 2, self._read_chunk
        return True

    def _read_chunk(self) -> bool:
        taken = min(self._left, len(self._buffer))
        self._left -= taken
        self._buffer = self._buffer[taken:]
        if self._left:
            return False
        self._state = self._read_chunk_size
        return True

    def _read_trailer(self) -> bool:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            return False
        line, self._buffer = self._buffer[:end], self._buffer[end + 2:]
        if line:
            return True
        return self._finish(self._keep)

    def _read_to_close(self) -> bool:
        self._buffer = b""
        return False

    def _finish(self, keep: bool) -> bool:
        self.reusable = keep and not self._buffer
        self._done(self._status)
        return False

    def _done(self, status: int):
        waiting, self._waiting = self._waiting, None
        waiting.callback(status)

    def _fail(self, error: Exception):
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(error)


class RawHTTPSink:
    stale_retries = 0

    def __init__(self, settings, reactor, tls_policy=None):
        self._settings = settings
        self._clock = reactor
        parts = urlsplit(settings.url)
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = (parts.scheme == "https" and self._port == 443) or (parts.scheme == "http" and self._port == 80)
        host_header = host if default_port else f"{host}:{self._port}"
        fixed = [f"POST {target} HTTP/1.1", f"Host: {host_header}", "User-Agent: regd-notifications"]
        for name, values in settings.headers.items():
            fixed += [f"{name}: {value}" for value in values]
        self._head = ("\r\n".join(fixed) + "\r\n").encode("latin-1")
        endpoint = HostnameEndpoint(reactor, self._host, self._port, timeout=max(1, int(settings.timeout)))
        if parts.scheme == "https":
            from twisted.web.client import BrowserLikePolicyForHTTPS
            policy = tls_policy or BrowserLikePolicyForHTTPS()
            # clock: the TLS layer's timers must run on the reactor this sink was given,
            # never on another (the global one, in a process where they differ).
            endpoint = wrapClientTLS(policy.creatorForNetloc(self._host.encode("idna"), self._port), endpoint,
                                     clock=reactor)
        self._endpoint = endpoint
        self._connection: _Connection | None = None
        self._closing: list[defer.Deferred] = []

    def _request_bytes(self, body: bytes, content_type: str, message_id: str) -> bytes:
        lines = [f"Content-Type: {content_type}", f"Idempotency-Key: {message_id}", f"Content-Length: {len(body)}"]
        if self._settings.secrets:
            for name, value in signature_headers(message_id, int(self._clock.seconds()), body,
                                                 self._settings.secrets).items():
                lines.append(f"{name}: {value}")
        return self._head + ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def deliver(self, body: bytes, content_type: str, message_id: str) -> None:
        exchange = defer.ensureDeferred(self._exchange(self._request_bytes(body, content_type, message_id)))
        await attempt_within(self._clock, self._settings.timeout, exchange, on_failure=self._drop)

    async def _exchange(self, request: bytes) -> int:
        for tries_left in range(STALE_RETRIES, -1, -1):
            connection = self._connection
            reused = connection is not None and connection.open and connection.reusable
            if not reused:
                self._drop()
                connection = await connectProtocol(self._endpoint, _Connection())
                self._connection = connection
            try:
                status = await connection.request(request)
            except _NoResponse as e:
                self._connection = None
                if reused and tries_left:
                    self.stale_retries += 1
                    continue
                raise DeliveryFailed(f"connection closed without a response: {e}") from None
            if not connection.reusable:
                self._drop()
            return status
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and connection.open:
            self._closing = [d for d in self._closing if not d.called] + [connection.lost]
            connection.transport.loseConnection()

    def close(self):
        """Deferred: fires once every connection this sink opened is closed."""
        self._drop()
        return defer.gatherResults([d for d in self._closing if not d.called])
