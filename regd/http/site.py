# -*- test-case-name: tests.http.test_site -*-
"""
The Site and Request that make request bodies stream into storage.

twisted.web writes every request body to a temporary file before the
resource runs. RegdRequest replaces that file with a body spool from the
storage driver, so a layer goes from the socket into the storage filesystem
once, hashed on the way, and the service can adopt it with a rename.
"""

from __future__ import annotations

import re
import time
from io import BytesIO
from urllib.parse import parse_qs, unquote_to_bytes

from twisted.logger import Logger
from twisted.protocols import policies
from twisted.web import server

from regd.http.limits import ConnectionCounter, ConnectionGuard, ConnectionLimits, _ClosedTransport
from regd.randomids import random_ids
from regd.registry.uploads import FinalBody

API_VERSION_HEADER = b"Docker-Distribution-API-Version"
API_VERSION = b"registry/2.0"
REQUEST_ID_HEADER = b"X-Request-Id"
log = Logger()
# A DNS name or an IP literal, with an optional port: anything else (`..`, `a/..`) is refused before routing.
_VALID_HOST = re.compile(rb"(?:[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


class RegdRequest(server.Request):
    """A request whose large bodies go straight into a storage spool."""

    spool_factory = None
    upload_sink = None  # (name, upload_id, start) -> a body sink written in place, or None
    credentials_required = False  # access control is on: anonymous bodies never touch an upload in place
    prefix = ""  # http.prefix, before /v2
    spool_threshold = 65536
    max_body_size = 0
    extra_headers: dict = {}

    def __init__(self, channel, *args, **kwargs):
        super().__init__(channel, *args, **kwargs)
        self.request_id = random_ids.hex()  # pooled: no system call (and lock hand-over) per request
        self.started = time.monotonic()
        self._received = 0
        self._too_large = False
        self.storage_error = None  # an OSError met while spooling the body
        self.aborted = False  # the client hung up before the response ended
        self._processing = False
        # Counted from the request line on, so a body still arriving holds a shutdown back.
        site = getattr(channel, "site", None)
        if site is not None and hasattr(site, "request_started"):
            site.request_started(self)

    def gotLength(self, length):
        guard = getattr(self.channel.transport, "head_received", None) if self.channel else None
        if guard is not None:
            guard(self, length is None or length > 0)
        if self.max_body_size and length is not None and length > self.max_body_size:
            self._refuse_too_large()
            return
        if self.spool_factory is not None and (length is None or length >= self.spool_threshold):
            # The method is set on the request only after the body; the channel has it already.
            method = getattr(self.channel, "_command", None) or self.method
            sink = self._upload_sink() if method == b"PATCH" else None
            if sink is not None:
                self.content = sink
                _read_in_large_pieces(self.channel)
                return
            ends = _ends_upload(self, method)
            try:
                self.content = self.spool_factory(ends)
            except OSError as e:  # no room even for an empty spool file
                self._storage_failed(e)
                return
            _read_in_large_pieces(self.channel)
            expect_length = getattr(self.content, "expect_length", None)
            if expect_length is not None and length is not None:
                expect_length(length)  # a spool that sends bytes on (S3) declares them as they come
            if method != b"PATCH":  # this body ends its upload: no hash state to save
                fast = getattr(self.content, "prefer_fast_hash", None)
                if fast is not None:
                    fast()
            elif _appends_to_an_upload(self):  # hashed once, into the upload's own running hash
                skip = getattr(self.content, "skip_hash", None)
                if skip is not None:
                    skip()
            set_producer = getattr(self.content, "set_producer", None)
            if set_producer is not None and self.channel is not None:
                # A spool that sends bytes on (S3) pauses the socket while they would pile up.
                set_producer(self.channel.transport)
        else:
            self.content = BytesIO()

    def _upload_sink(self):
        """
        For a PATCH of an upload (known from the request line, before the
        body arrives): a sink that writes the body straight onto the end of
        the upload's data, or None to spool it as any other body. Only a
        choice of where bytes go; the handler checks everything as usual.
        """
        if self.upload_sink is None:
            return None
        if self.credentials_required and self.getHeader(b"authorization") is None:
            # Refused by the handler anyway; spooled (and dropped) so that nobody without
            # credentials holds an upload's file, even for the length of one body.
            return None
        target = _upload_target(getattr(self.channel, "_path", None), self.prefix)
        if target is None:
            return None
        start = _range_start(self)
        if start is False:  # a malformed Content-Range: the handler answers it
            return None
        try:
            return self.upload_sink(target[0], target[1], start)
        except Exception:
            log.failure("opening an upload to write a PATCH body in place; spooling it instead")
            return None

    def isSecure(self):
        """
        Asked several times per request (Klein, Location headers, the access
        log); a connection's transport never changes, so its answer is kept
        on the channel instead of adapting the transport each time.
        """
        if self._forceSSL or self.channel is None:
            return super().isSecure()
        secure = getattr(self.channel, "_regd_secure", None)
        if secure is None:
            secure = self.channel._regd_secure = self.channel.isSecure()
        return secure

    @property
    def body_bytes(self) -> int:
        return self._received

    def handleContentChunk(self, data):
        if self._too_large:
            return
        self._received += len(data)
        if self.max_body_size and self._received > self.max_body_size:
            self._refuse_too_large()
            return
        if self.storage_error is not None:
            return
        try:
            self.content.write(data)
        except OSError as e:
            self._storage_failed(e)

    def _storage_failed(self, error: OSError) -> None:
        """
        The body cannot be stored (disk full, I/O error): drop what was
        spooled, so no half-written file stays, read the rest into nowhere,
        and answer once the request is in, so the client sees the error
        instead of a dropped connection.
        """
        self.storage_error = error
        spool, self.content = self.content, BytesIO()
        if spool is not None:
            try:
                spool.close()
            except OSError:
                pass

    def _refuse_too_large(self):
        """Answer 413 and drop the connection: reading on would only waste disk."""
        self._too_large = True
        if self.content is None:
            self.content = BytesIO()
        body = (b'{"errors":[{"code":"SIZE_INVALID","message":"request body exceeds the configured limit"}]}')
        transport = self.channel.transport if self.channel else None
        if transport is not None:
            transport.write(
                b"HTTP/1.1 413 Request Entity Too Large\r\nContent-Type: application/json\r\n"
                + b"Connection: close\r\n" + API_VERSION_HEADER + b": " + API_VERSION + b"\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            transport.loseConnection()

    def connectionLost(self, reason):
        """
        The client went away, maybe before the response ended (an aborted
        pull). twisted.web leaves the producer registered, so the channel and
        its pull-to-push adapter would keep each other (and the request)
        until a full garbage collection; unregister it and drop the
        transport (ConnectionGuard frees the socket's unsent bytes). An
        unfinished request is logged and counted, as finished ones are.
        """
        channel = self.channel
        if channel is not None and self.producer is not None:
            channel.unregisterProducer()
            self.producer = None
        site = getattr(channel, "site", None) if channel is not None else None
        super().connectionLost(reason)
        self.transport = None
        if site is not None and self._processing and not self.finished and hasattr(site, "aborted"):
            self.aborted = True
            site.aborted(self)

    def requestReceived(self, command, path, version):
        body_complete = getattr(self.channel.transport, "body_complete", None) if self.channel else None
        if body_complete is not None:
            body_complete()
        super().requestReceived(command, path, version)

    def process(self):
        self._processing = True
        self.setHeader(REQUEST_ID_HEADER, self.request_id.encode("ascii"))
        for name, values in self.extra_headers.items():
            self.responseHeaders.setRawHeaders(name, list(values))
        if b"/v2" in self.path:
            self.setHeader(API_VERSION_HEADER, API_VERSION)
        if self.storage_error is not None:
            from regd.http.errors import render_registry_error, storage_failure
            self.site = self.channel.site
            body = render_registry_error(self, storage_failure(self, self.storage_error))
            self.write(body)
            self.finish()
            return
        problem = _unroutable(self)
        if problem is not None:
            log.info("refused {method!r} {uri!r}: {problem}", method=self.method, uri=self.uri[:200], problem=problem)
            self.site = self.channel.site
            body = b'{"errors":[{"code":"UNSUPPORTED","message":"%s"}]}' % problem.encode("ascii")
            self.setResponseCode(400)
            self.setHeader(b"Content-Type", b"application/json")
            self.setHeader(b"Content-Length", b"%d" % len(body))
            self.write(body)
            self.finish()
            return
        super().process()


# Socket reads for a large request body: fewer, larger pieces cut the Python
# work per byte (parsing, hashing and writing calls) without holding more
# than one piece per connection.
BODY_READ_SIZE = 256 * 1024


def _read_in_large_pieces(channel) -> None:
    transport = getattr(channel, "transport", None)
    while isinstance(transport, policies.ProtocolWrapper):
        transport = transport.transport
    if transport is not None and getattr(transport, "bufferSize", BODY_READ_SIZE) < BODY_READ_SIZE:
        transport.bufferSize = BODY_READ_SIZE


def _range_start(request):
    """Where a body's Content-Range starts: an int, None without one, False when malformed."""
    from regd.http.ranges import parse_upload_range
    raw = request.getHeader(b"content-range")
    try:
        wanted = parse_upload_range(raw.decode("latin-1") if raw is not None else None)
    except Exception:  # malformed: the handler answers it
        return False
    return wanted[0] if wanted is not None else None


def _appends_to_an_upload(request) -> bool:
    """A PATCH whose Content-Range starts past 0: a later chunk of an upload."""
    start = _range_start(request)
    return start is not None and start is not False and start > 0


# The upload route, /v2/<name>/blobs/uploads/<id> (api.py), read from a request line.
_UPLOAD_PATH = re.compile(r"/v2/(.+?)/blobs/uploads/([^/]+)")


def _upload_target(path: bytes | None, prefix: str) -> tuple[str, str] | None:
    """(name, upload id) when C{path} is an upload's URL below C{prefix}, else None."""
    if not path:
        return None
    try:
        text = unquote_to_bytes(path.split(b"?", 1)[0]).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.startswith(prefix):
        return None
    match = _UPLOAD_PATH.fullmatch(text, len(prefix))
    return (match[1], match[2]) if match else None


_UPLOAD_PUT = re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<id>[^/]+)")
_UPLOAD_POST = re.compile(r"/v2/(?P<name>.+)/blobs/uploads/?")


def _ends_upload(request, method) -> FinalBody | None:
    """
    Whether the request line announces a body that ends an upload with its
    digest (PUT of the last body without Content-Range, or a monolithic
    POST), read at head time from the channel: the spool may then send the
    body toward its blob as it arrives. A wrong guess costs nothing: the
    handler checks everything as for any body.
    """
    raw = getattr(request.channel, "_path", None) or request.uri
    if method not in (b"PUT", b"POST") or not raw or request.getHeader(b"content-range") is not None:
        return None
    try:
        path, _, query = raw.decode("ascii").partition("?")
    except UnicodeDecodeError:
        return None
    fields = parse_qs(query)
    digest = fields.get("digest")
    if not digest or "mount" in fields:
        return None
    match = (_UPLOAD_PUT if method == b"PUT" else _UPLOAD_POST).search(path)
    if match is None or match.end() != len(path):
        return None
    return FinalBody(match["name"], match.groupdict().get("id"), digest[0])


def _unroutable(request) -> str | None:
    """Why routing would fail with an internal error (werkzeug, Klein), or None."""
    host = request.getHeader(b"host")
    if host is not None and not _VALID_HOST.fullmatch(host):
        return "invalid Host header"
    try:
        unquote_to_bytes(request.path).decode("utf-8")
    except UnicodeDecodeError:
        return "path is not UTF-8 after percent-decoding"
    return None


class RegdSite(server.Site):
    """
    A Site whose requests spool bodies into storage; form bodies are never
    parsed (a huge form POST would otherwise be read into memory).
    C{spool_factory(ends)} makes a body's spool; C{ends} is a
    L{FinalBody} for a body that ends an upload, else None.
    """

    def __init__(self, resource, spool_factory=None, *, upload_sink=None, credentials_required: bool = False,
                 prefix: str = "",
                 spool_threshold: int = 65536,
                 max_body_size: int = 0, extra_headers=None, access_log: bool = True,
                 limits: ConnectionLimits = ConnectionLimits(), **kwargs):
        kwargs.setdefault("parsePOSTFormSubmission", False)
        kwargs.setdefault("logFormatter", access_log_line)
        super().__init__(resource, **kwargs)
        self.displayTracebacks = False
        self.access_log = access_log
        # False when TLS wraps this site (the check would then see plaintext anyway).
        self.plain_http = True
        self._wrapping = policies.WrappingFactory(self)
        self.in_flight = 0
        self._idle_waiters = []
        self.metrics = None  # an HTTPMetrics, when the debug address serves /metrics
        self.connections = ConnectionCounter(limits, self.reactor)

        class _Request(RegdRequest):
            pass

        _Request.spool_factory = staticmethod(spool_factory) if spool_factory else None
        _Request.upload_sink = staticmethod(upload_sink) if upload_sink else None
        _Request.credentials_required = credentials_required
        _Request.prefix = prefix.rstrip("/")
        _Request.spool_threshold = spool_threshold
        _Request.max_body_size = max_body_size
        _Request.extra_headers = dict(extra_headers or {})
        self.requestFactory = _Request

    def request_started(self, request) -> None:
        self.in_flight += 1
        request.notifyFinish().addBoth(self._request_ended)

    def _request_ended(self, _):
        self.in_flight -= 1
        if self.in_flight == 0:
            waiting, self._idle_waiters = self._idle_waiters, []
            for d in waiting:
                d.callback(None)

    def when_idle(self):
        """A Deferred that fires once no request is in progress."""
        from twisted.internet import defer
        if self.in_flight == 0:
            return defer.succeed(None)
        d = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        if self.plain_http:
            protocol = _RefuseTLSOnPlainHTTP(self._wrapping, protocol)
        return ConnectionGuard(self._wrapping, protocol, self, getattr(addr, "host", str(addr)))

    def log(self, request):
        if self.metrics is not None:
            self.metrics.observe(request)
        if self.access_log:
            super().log(request)

    def aborted(self, request) -> None:
        """A request whose client hung up before the response ended: logged and counted like the others."""
        if self.metrics is not None:
            self.metrics.observe_aborted(request)
        if self.access_log:
            super().log(request)


def access_log_line(timestamp: str, request) -> str:
    """The combined log format, plus the request id that the response header and events carry."""
    from twisted.web.http import combinedLogFormatter
    line = f"{combinedLogFormatter(timestamp, request)} request_id={getattr(request, 'request_id', '-')}"
    return line + " aborted=true" if getattr(request, "aborted", False) else line


_TLS_HANDSHAKE = b"\x16\x03"


class _RefuseTLSOnPlainHTTP(policies.ProtocolWrapper):
    """
    Answer a TLS ClientHello on a plain-HTTP port with 400 at once.

    Docker tries HTTPS first even for insecure registries; twisted.web would
    wait for a request line that never comes, and docker only falls back to
    HTTP after its 10 s handshake timeout, on every push and pull.
    """

    _first = True

    def dataReceived(self, data: bytes) -> None:
        if self._first:
            self._first = False
            if data.startswith(_TLS_HANDSHAKE):
                self.transport.write(
                    b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                    b"Client sent an HTTPS request to an HTTP server.\n")
                self.transport.loseConnection()
                return
        self.wrappedProtocol.dataReceived(data)


_PLAIN_HTTP_ON_TLS = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                      b"Content-Length: 48\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")


class _RefusePlainHTTPOnTLS(policies.ProtocolWrapper):
    """
    Outside TLS on a TLS port: a request line in plain text (a method's
    letters where a ClientHello's 0x16 belongs) gets a short 400 saying the
    server speaks TLS, instead of a handshake error and a dropped connection.
    """

    _first = True

    def makeConnection(self, transport):
        self._addresses = (transport.getPeer(), transport.getHost())
        super().makeConnection(transport)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        # TLS keeps itself alive in a cycle (its OpenSSL connection points back at it) until a
        # full garbage collection; this wrapper alone holds the socket and its unsent bytes.
        self.transport = _ClosedTransport(self._addresses)

    def dataReceived(self, data: bytes) -> None:
        if self._first and data:
            self._first = False
            if data[:1].isalpha():
                self.transport.write(_PLAIN_HTTP_ON_TLS)
                self.transport.loseConnection()
                return
        self.wrappedProtocol.dataReceived(data)


class RefusePlainHTTPOnTLS(policies.WrappingFactory):
    """Wraps a TLS factory (TLSMemoryBIOFactory) so plain HTTP sent to it is answered."""

    protocol = _RefusePlainHTTPOnTLS


def tls_listener_factory(context_factory, site):
    """What a TLS port listens with: TLS around the site, plain HTTP answered with 400."""
    from twisted.protocols.tls import TLSMemoryBIOFactory
    return RefusePlainHTTPOnTLS(TLSMemoryBIOFactory(context_factory, False, site))
