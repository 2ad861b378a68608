# -*- test-case-name: tests.storage.test_s3client -*-
"""
S3 requests on the event loop: signed by botocore (SigV4, or SigV2 with
v4auth off), sent over treq, retried with backoff when S3 throttles (503
SlowDown, 429), fails (500, 502, 504) or does not answer in time.

Everything here speaks keys and bytes; what a key means is the driver's
business (regd.storage.s3). A request that still fails after its retries
raises L{StorageUnavailable}, which clients see as a 503 with the spec's JSON.
"""

from __future__ import annotations

import random
import ssl
import urllib.error
import urllib.request
import xml.etree.ElementTree as ElementTree
from types import SimpleNamespace
from urllib.parse import quote, urlencode, urlsplit

from botocore.auth import HmacV1Auth, HmacV1QueryAuth, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from twisted.internet import defer, error as neterror, tcp
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web import client as webclient
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from regd.storage.interfaces import PathNotFound, StorageError, StorageUnavailable

log = Logger()

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Failures of the connection itself: worth another try on a fresh connection.
RETRY_EXCEPTIONS = (neterror.ConnectError, neterror.ConnectionLost, neterror.ConnectionClosed,
                    neterror.TimeoutError, neterror.DNSLookupError, webclient.ResponseNeverReceived,
                    webclient.ResponseFailed, webclient.RequestTransmissionFailed)


class FilePart:
    """
    An upload part kept in a local file (a body of unknown length must be
    counted before its part's Content-Length can be declared). Sent from
    the file, so a failed attempt can be sent again.
    """

    def __init__(self, file, length: int):
        self.file = file
        self.length = length

    def __len__(self) -> int:
        return self.length

    def reader(self) -> "_Unclosed":
        self.file.seek(0)
        return _Unclosed(self.file)


class _Unclosed:
    """The part's file for FileBodyProducer, which closes what it read: the part's owner closes it."""

    def __init__(self, file):
        self._file = file

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        pass


@implementer(IBodyProducer)
class StreamedBody:
    """
    An upload part of known length written into its request as the bytes
    arrive (L{write}), never held whole. Bytes written before the request
    has a connection wait here, and C{blocking} says so; C{changed()} is
    called whenever C{blocking} may have changed (the connection to S3
    paused or resumed this producer, the request started or ended), so the
    writer can hold its own source back.

    Once any byte went to a connection the body cannot be sent again: the
    client then fails the request instead of retrying it.
    """

    def __init__(self, length: int, changed=lambda: None):
        self.length = length
        self.received = 0  # bytes given to write()
        self.written = 0  # bytes handed to a connection
        self.paused = False
        self.on_sent = None  # called once every byte was handed over (the client's deadline starts)
        self._changed = changed
        self._held: list[bytes] = []
        self._consumer = None
        self._finished = None
        self._error = None

    @property
    def blocking(self) -> bool:
        """More bytes now would only be held in memory: the source should pause."""
        if self._error is not None or self.written == self.length or self.lost:
            return False
        return bool(self._held) or self.paused

    @property
    def held(self) -> int:
        """Bytes written here that no connection has taken yet."""
        return sum(len(piece) for piece in self._held)

    @property
    def lost(self) -> bool:
        """The request this body was being written into ended early: the bytes sent are gone."""
        return self._consumer is None and self.written > 0

    def write(self, data: bytes) -> None:
        if self.received + len(data) > self.length:
            raise ValueError("more bytes than the part's declared length")
        self.received += len(data)
        if self._error is not None or self.lost:
            return  # the request fails; its writer learns it from there
        if self._consumer is None:
            self._held.append(data)  # until a connection takes the request (or a retry does)
            return
        self._hand_over(data)

    def _hand_over(self, data: bytes) -> None:
        self.written += len(data)
        self._consumer.write(data)
        if self.written == self.length:
            if self.on_sent is not None:
                self.on_sent()
            if not self._finished.called:
                self._finished.callback(None)

    def fail(self, reason: BaseException) -> None:
        """Give up on this part (its writer is gone): the request is abandoned and its connection dropped."""
        if self._error is not None:
            return
        self._error = reason
        self._held = []
        if self._finished is not None and not self._finished.called:
            self._finished.errback(reason)
        self._changed()

    # IBodyProducer, called by the HTTP client

    def startProducing(self, consumer):
        if self._error is not None:
            return defer.fail(self._error)
        self._consumer = consumer
        self._finished = finished = defer.Deferred(lambda _: self.stopProducing())
        held, self._held = self._held, []
        for piece in held:
            if self._consumer is None:
                break
            self._hand_over(piece)
        self._changed()
        return finished

    def pauseProducing(self) -> None:
        self.paused = True
        self._changed()

    def resumeProducing(self) -> None:
        self.paused = False
        self._changed()

    def stopProducing(self) -> None:
        # The request ended while sending (its connection went away, or it was cancelled).
        self._consumer = None
        self.paused = False
        self._changed()


PART_BODIES = (FilePart, StreamedBody)


class S3Error(StorageError):
    """An S3 error answer: HTTP status plus the S3 error code from its XML body."""

    def __init__(self, status: int, code: str, message: str, key: str = ""):
        super().__init__(f"S3 {status} {code}: {message}" + (f" ({key})" if key else ""))
        self.status = status
        self.code = code


def xml_children(element, name: str):
    return [e for e in element.iter() if e.tag.rsplit("}", 1)[-1] == name]


def xml_text(element, name: str, default: str = "") -> str:
    for e in element:
        if e.tag.rsplit("}", 1)[-1] == name:
            return e.text or ""
    return default


def parse_error(status: int, body: bytes, key: str = "") -> S3Error:
    code, message = {403: "AccessDenied", 404: "NoSuchKey"}.get(status, f"HTTP{status}"), ""
    try:
        root = ElementTree.fromstring(body) if body else None
    except ElementTree.ParseError:
        root = None
    if root is not None:
        code = xml_text(root, "Code", code)
        message = xml_text(root, "Message", "")
    return S3Error(status, code, message or "request failed", key)


def endpoint_of(settings) -> tuple[str, str, bool]:
    """(scheme, host[:port], path_style) for the configured endpoint."""
    scheme = "https" if settings.secure else "http"
    if settings.regionendpoint:
        endpoint = settings.regionendpoint
        if "://" not in endpoint:
            endpoint = f"{scheme}://{endpoint}"
        parts = urlsplit(endpoint)
        scheme, host = parts.scheme, parts.netloc
        path_style = True if settings.forcepathstyle is None else settings.forcepathstyle
    else:
        dual = "dualstack." if settings.usedualstack else ""
        host = f"s3.{dual}{settings.region}.amazonaws.com"
        path_style = bool(settings.forcepathstyle)
    return scheme, host, path_style


def static_credentials(settings):
    """A credentials provider: the configured keys, or botocore's standard chain."""
    if settings.accesskey:
        frozen = ReadOnlyCredentials(settings.accesskey, settings.secretkey, settings.sessiontoken or None)
        return lambda: frozen
    import botocore.session
    found = botocore.session.get_session().get_credentials()
    if found is None:
        raise StorageUnavailable("storage.s3: no accesskey/secretkey and no AWS credentials found "
                                 "(environment, shared credentials file or instance role)")
    return found.get_frozen_credentials


@implementer(webclient.IPolicyForHTTPS)
class _NoVerifyPolicy:
    """storage.s3.skipverify: TLS without checking the server's certificate (test setups only)."""

    def creatorForNetloc(self, hostname, port):
        from twisted.internet.ssl import CertificateOptions, TLSVersion
        from twisted.internet._sslverify import ClientTLSOptions
        options = CertificateOptions(verify=False, raiseMinimumTo=TLSVersion.TLSv1_2)
        creator = ClientTLSOptions(hostname.decode("ascii"), options.getContext())
        # ClientTLSOptions checks the name after the handshake; skipverify means not at all.
        creator._identityVerifyingInfoCallback = lambda connection, where, ret: None
        return creator


_UNSIGNED_PAYLOAD = SimpleNamespace(s3={"payload_signing_enabled": False})

# Socket reads on connections to S3: a blob streamed through regd (redirects off) arrives in
# pieces of this size instead of Twisted's 64 KiB, so each byte costs fewer trips through Python.
# Measured on a 512 MiB pull from moto: 1 MiB reads cost regd 0.26-0.35 s of CPU against
# 0.55-0.8 s with 64 KiB ones.
READ_SIZE = 1024 * 1024


@implementer(IAgentEndpointFactory)
class _LargeReads:
    """Endpoints as treq's Agent makes them (TCP, TLS for https), whose sockets read READ_SIZE at once."""

    def __init__(self, reactor, policy):
        self._reactor = reactor
        self._policy = policy

    def endpointForURI(self, uri):
        endpoint = HostnameEndpoint(self._reactor, uri.host.decode("ascii"), uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return _GrowReads(endpoint)


@implementer(IStreamClientEndpoint)
class _GrowReads:
    def __init__(self, endpoint):
        self._endpoint = endpoint

    def connect(self, factory):
        return self._endpoint.connect(factory).addCallback(_grow_reads)


def _grow_reads(protocol):
    transport = protocol.transport
    while transport is not None and not isinstance(transport, tcp.Connection):
        transport = getattr(transport, "transport", None)  # under TLS: the socket's own
    if transport is not None:
        transport.bufferSize = max(transport.bufferSize, READ_SIZE)
    return protocol


class S3Client:
    """
    One bucket's worth of S3 requests. C{credentials} is a callable giving
    botocore ReadOnlyCredentials (refreshed by botocore when they expire).
    """

    retries = 6
    backoff = 0.1  # seconds; doubled per attempt, with jitter, capped at max_backoff
    max_backoff = 3.0
    timeout = 60.0  # seconds to the response head

    def __init__(self, settings, credentials, reactor, http=None, pool_size: int = 64):
        self.settings = settings
        self.bucket = settings.bucket
        self.region = settings.region or "us-east-1"
        self.scheme, self.host, self.path_style = endpoint_of(settings)
        self._credentials = credentials
        self._reactor = reactor
        if http is None and reactor is not None:
            import treq.client
            pool = webclient.HTTPConnectionPool(reactor, persistent=True)
            pool.maxPersistentPerHost = pool_size
            pool.retryAutomatically = False  # retries are ours, and only where they are safe
            policy = _NoVerifyPolicy() if settings.skipverify else webclient.BrowserLikePolicyForHTTPS()
            http = treq.client.HTTPClient(webclient.Agent.usingEndpointFactory(
                reactor, _LargeReads(reactor, policy), pool=pool))
            self._pool = pool
        else:
            self._pool = None
        self._http = http
        self._random = random.Random()

    # -- addressing and signing --------------------------------------------

    def url(self, key: str = "", query: dict | None = None) -> str:
        quoted = quote(key, safe="/-_.~")
        if self.path_style:
            base = f"{self.scheme}://{self.host}/{self.bucket}/{quoted}"
        else:
            base = f"{self.scheme}://{self.bucket}.{self.host}/{quoted}"
        if query:
            base += "?" + urlencode(sorted(query.items()), quote_via=quote, safe="-_.~")
        return base

    def sign(self, method: str, url: str, headers: dict, body=b"") -> dict:
        part = isinstance(body, PART_BODIES)
        request = AWSRequest(method=method, url=url, data=b"" if part else body, headers=dict(headers))
        if part:
            # An upload part is signed without hashing its bytes (UNSIGNED-PAYLOAD, which
            # botocore also sends for streamed uploads): a streamed part's bytes are not all
            # here yet, and none are hashed twice on the event loop. They were hashed as they
            # arrived, and the digest is checked before the blob is published. SigV2 never
            # signs a body. Its Content-Length is not signed either: the HTTP client sends it.
            request.context["client_config"] = _UNSIGNED_PAYLOAD
        credentials = self._credentials()
        if self.settings.v4auth:
            S3SigV4Auth(credentials, "s3", self.region).add_auth(request)
        else:
            HmacV1Auth(credentials).add_auth(request)
        return dict(request.headers.items())

    def presign(self, key: str, method: str = "GET", expires: int = 1200) -> str:
        """A URL anyone holding it may use for C{expires} seconds (blob redirects)."""
        request = AWSRequest(method=method, url=self.url(key), data=b"", headers={})
        credentials = self._credentials()
        if self.settings.v4auth:
            S3SigV4QueryAuth(credentials, "s3", self.region, expires=expires).add_auth(request)
        else:
            HmacV1QueryAuth(credentials, expires=expires).add_auth(request)
        return request.url

    # -- requests ----------------------------------------------------------

    async def request(self, method: str, key: str = "", *, query: dict | None = None,
                      headers: dict | None = None, body: bytes = b"", ok=(200,),
                      stream: bool = False, timeout: float | None = None):
        """
        Send a request, retrying what is safe to retry. Returns the treq
        response with its body read (C{response.body}), or unread when
        C{stream} is set. Error answers raise L{S3Error} (404 for a missing
        key raises L{PathNotFound}); persistent failures L{StorageUnavailable}.
        """
        url = self.url(key, query)
        streamed = isinstance(body, StreamedBody)
        attempt = 0
        while True:
            attempt += 1
            expired, cancelled, deadline = [], [], []
            try:
                signed = self.sign(method, url, headers or {}, body)
                if isinstance(body, FilePart):
                    data = webclient.FileBodyProducer(body.reader())
                elif streamed:
                    data = body
                else:
                    data = body if (body or method in ("PUT", "POST")) else None
                pending = self._http.request(
                    method, url, headers=Headers({k: [v] for k, v in signed.items()}), data=data, unbuffered=True)

                def arm(pending=pending):
                    # Our own deadline, so a timeout (retried) is told apart from a caller's cancel (not).
                    deadline.append(self._reactor.callLater(
                        timeout or self.timeout, lambda: (expired.append(True), pending.cancel())))
                if streamed and body.written < body.length:
                    body.on_sent = arm  # its bytes come at the pace of the request they arrive on
                else:
                    arm()
                outer = defer.Deferred(lambda _: (cancelled.append(True), pending.cancel()))
                pending.addBoth(lambda result: None if (outer.called or cancelled) else outer.callback(result))
                try:
                    response = await outer
                finally:
                    if streamed:
                        body.on_sent = None
                    for call in deadline:
                        if call.active():
                            call.cancel()
                if response.code in ok and stream:
                    return response
                content = await response.content()
            except defer.CancelledError as e:
                if not expired:
                    raise
                problem, status = neterror.TimeoutError(f"no answer within {timeout or self.timeout:.0f}s"), None
            except RETRY_EXCEPTIONS as e:
                problem, status = e, None
            else:
                if response.code in ok:
                    response.body = content
                    return response
                status = response.code
                problem = parse_error(response.code, content, key)
                if status not in RETRY_STATUSES:
                    if status == 404 and problem.code in ("NoSuchKey", "NoSuchUpload", "NotFound", "HTTP404"):
                        raise PathNotFound(key)
                    if status in (301, 400, 403, 404):
                        raise StorageUnavailable(f"S3 refused {method} on bucket {self.bucket}: {problem}")
                    raise problem
            if streamed and body.written:
                # Its bytes were sent as they arrived and are gone: the part cannot be sent again.
                log.warn("S3 {method} {key} of a streamed part failed: {problem}", method=method, key=key,
                         problem=str(problem))
                raise StorageUnavailable(f"S3 {method} of a streamed part failed after its bytes were sent: "
                                         f"{problem}")
            if attempt >= self.retries:
                log.warn("S3 {method} {key} failed {attempts} times: {problem}", method=method, key=key,
                         attempts=attempt, problem=str(problem))
                raise StorageUnavailable(f"S3 {method} failed after {attempt} attempts: {problem}")
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + self._random.random() / 2)
            log.debug("S3 {method} {key}: {problem}; retrying in {delay:.2f}s", method=method, key=key,
                      problem=str(problem), delay=delay)
            await deferLater(self._reactor, delay, lambda: None)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    # -- the startup check ---------------------------------------------------

    def check_bucket_blocking(self, prefix: str, timeout: float = 10.0) -> None:
        """
        Before the reactor runs: list one key under the root, so a wrong
        endpoint, wrong credentials or a missing bucket stop the daemon with
        one line. Raises StorageUnavailable naming the problem.
        """
        url = self.url("", {"list-type": "2", "max-keys": "1", "prefix": prefix})
        headers = self.sign("GET", url, {})
        context = None
        if self.scheme == "https" and self.settings.skipverify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(url, headers=headers, method="GET")
        where = f"{self.scheme}://{self.host}, bucket {self.bucket}"
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
                answer.read()
        except urllib.error.HTTPError as e:
            problem = parse_error(e.code, e.read())
            hints = {"NoSuchBucket": "the bucket does not exist",
                     "InvalidAccessKeyId": "the access key is not known (check accesskey/secretkey)",
                     "SignatureDoesNotMatch": "the secret key is wrong (check secretkey)",
                     "AccessDenied": "access denied (check the credentials and the bucket policy)",
                     "PermanentRedirect": "the bucket is in another region (check region)",
                     "AuthorizationHeaderMalformed": "the region does not match the bucket (check region)"}
            raise StorageUnavailable(f"S3 at {where}: {hints.get(problem.code, str(problem))}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise StorageUnavailable(f"S3 at {where} is unreachable: {reason}") from None


def check_bucket(settings) -> None:
    """The startup check, before any reactor runs; raises StorageUnavailable with one line."""
    S3Client(settings, static_credentials(settings), reactor=None).check_bucket_blocking(
        settings.rootdirectory.strip("/") + "/" if settings.rootdirectory.strip("/") else "")
