# -*- test-case-name: tests.http.test_limits -*-
"""
Connection limits: how many connections a server and each client address
may hold, how long a request head may take, and how slowly a body may
arrive. Without them one client holding thousands of sockets, or sending a
byte a second, takes the descriptors every other client needs.

Each refusal is answered when HTTP still allows it (503 at accept, 408 for
a head or body too slow), closes the connection, and is counted by reason
in RegdSite.refusals (exported on /metrics).
"""

from __future__ import annotations

import resource as _resource

import attrs
from twisted.logger import Logger
from twisted.protocols import policies

log = Logger()

_API_VERSION = b"Docker-Distribution-API-Version: registry/2.0\r\n"


@attrs.frozen
class ConnectionLimits:
    """0 switches a limit off."""

    max_connections: int = 0
    max_per_client: int = 0
    head_timeout: float = 0.0
    body_timeout: float = 0.0  # the window over which min_body_rate is measured
    min_body_rate: int = 0  # bytes per second, averaged over body_timeout


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) in force after."""
    soft, hard = _resource.getrlimit(_resource.RLIMIT_NOFILE)
    if hard == _resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != _resource.RLIM_INFINITY else max(soft, 1048576)
        try:
            _resource.setrlimit(_resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.warn("cannot raise the descriptor limit from {soft} to {hard}: {e}", soft=soft, hard=hard, e=e)
    return soft, hard


def _error(status: bytes, code: str, message: str) -> bytes:
    body = b'{"errors":[{"code":"%s","message":"%s"}]}' % (code.encode(), message.encode())
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nConnection: close\r\n" + _API_VERSION
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


_BUSY = _error(b"503 Service Unavailable", "TOOMANYREQUESTS", "too many connections; try again later")
_HEAD_TOO_SLOW = _error(b"408 Request Timeout", "UNSUPPORTED", "request head not received in time")
_BODY_TOO_SLOW = _error(b"408 Request Timeout", "BLOB_UPLOAD_INVALID", "request body arrived too slowly")


class ConnectionGuard(policies.ProtocolWrapper):
    """Wraps one HTTP connection: counts it, and enforces the head deadline and body rate."""

    def __init__(self, factory, wrapped, site, peer: str):
        super().__init__(factory, wrapped)
        self.site, self.peer = site, peer
        self._refused = None
        self._head_timer = None
        self._body_timer = None
        self._body_mark = 0
        self._request = None
        self._between_requests = True

    # accepting

    def makeConnection(self, transport):
        self._addresses = (transport.getPeer(), transport.getHost())
        reason = self.site.connections.admit(self.peer)
        if reason is None:
            super().makeConnection(transport)
            self._start_head_timer()
            return
        self._refused = reason
        self.transport = transport
        transport.write(_BUSY)
        transport.loseConnection()

    # A connection's addresses never change: asked for on every request (twisted.web, Klein,
    # Location headers), they are answered without a getsockname(2) each time.

    def getPeer(self):
        return self._addresses[0]

    def getHost(self):
        return self._addresses[1]

    def dataReceived(self, data):
        if self._refused is not None:
            return
        if self._between_requests and self._head_timer is None:
            self._start_head_timer()
        super().dataReceived(data)

    def connectionLost(self, reason):
        self._cancel_timers()
        if self._refused is None:
            self.site.connections.release(self.peer)
            super().connectionLost(reason)
        # Reference cycles in twisted.web, Klein and werkzeug keep the protocols of a
        # finished connection alive until a full garbage collection; this wrapper is the
        # only one holding the socket's transport, and with it any unsent response bytes
        # (a megabyte per aborted blob download). Let that go now.
        self.transport = _ClosedTransport(self._addresses)

    # request head

    def _start_head_timer(self):
        timeout = self.site.connections.limits.head_timeout
        if timeout > 0:
            self._head_timer = self.site.connections.clock.callLater(timeout, self._cut, "head", _HEAD_TOO_SLOW)

    def head_received(self, request, expects_body: bool) -> None:
        """Called by the request once all headers are in."""
        self._between_requests = False
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        self._head_timer = None
        limits = self.site.connections.limits
        if expects_body and limits.body_timeout > 0 and limits.min_body_rate > 0:
            self._request = request
            self._body_mark = request.body_bytes
            self._body_timer = self.site.connections.clock.callLater(limits.body_timeout, self._check_body_rate)
        request.notifyFinish().addBoth(self._request_done)

    def body_complete(self) -> None:
        if self._body_timer is not None and self._body_timer.active():
            self._body_timer.cancel()
        self._body_timer = None
        self._request = None

    def _request_done(self, _):
        self.body_complete()
        self._between_requests = True

    def _check_body_rate(self):
        limits = self.site.connections.limits
        received = self._request.body_bytes - self._body_mark
        if received < limits.min_body_rate * limits.body_timeout:
            self._cut("body", _BODY_TOO_SLOW)
            return
        self._body_mark = self._request.body_bytes
        self._body_timer = self.site.connections.clock.callLater(limits.body_timeout, self._check_body_rate)

    def _cut(self, reason: str, answer: bytes):
        self._head_timer = self._body_timer = None
        self.site.connections.refused(reason)
        log.info("closing the connection from {peer}: request {reason} too slow", peer=self.peer, reason=reason)
        self._cancel_timers()
        request, self._request = self._request, None
        if request is None or not request.startedWriting:
            self.transport.write(answer)
        self.transport.loseConnection()

    def _cancel_timers(self):
        for timer in (self._head_timer, self._body_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._head_timer = self._body_timer = None


class _ClosedTransport:
    """What a connection's protocols see once it closed: addresses, and writes that go nowhere."""

    connected = False
    disconnecting = disconnected = True

    def __init__(self, addresses):
        self._peer, self._host = addresses

    def getPeer(self):
        return self._peer

    def getHost(self):
        return self._host

    def write(self, data):
        pass

    def writeSequence(self, data):
        pass

    def loseConnection(self):
        pass

    def abortConnection(self):
        pass

    def registerProducer(self, producer, streaming):
        producer.stopProducing()

    def unregisterProducer(self):
        pass

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class ConnectionCounter:
    """Connections held, in total and per client address; refusals counted by reason."""

    def __init__(self, limits: ConnectionLimits, clock):
        self.limits, self.clock = limits, clock
        self.total = 0
        self.by_peer: dict[str, int] = {}
        self.refusals: dict[str, int] = {"total": 0, "client": 0, "head": 0, "body": 0}

    def admit(self, peer: str) -> str | None:
        limits = self.limits
        if limits.max_connections and self.total >= limits.max_connections:
            return self.refused("total")
        if limits.max_per_client and self.by_peer.get(peer, 0) >= limits.max_per_client:
            return self.refused("client")
        self.total += 1
        self.by_peer[peer] = self.by_peer.get(peer, 0) + 1
        return None

    def release(self, peer: str) -> None:
        self.total -= 1
        left = self.by_peer.get(peer, 1) - 1
        if left:
            self.by_peer[peer] = left
        else:
            self.by_peer.pop(peer, None)

    def refused(self, reason: str) -> str:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1
        return reason
