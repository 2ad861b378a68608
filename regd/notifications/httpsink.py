# -*- test-case-name: tests.notifications.test_httpsink -*-
"""
One POST per delivery attempt through a pooled, keep-alive treq client.

The timeout bounds the whole exchange (connect, headers and body), not
only the wait for headers as treq's own timeout does. Any 2xx or 3xx is
delivered; everything else, and every transport error, is a failure.

One exception: a POST written on a pooled keep-alive connection that the
receiver had already closed (receivers close idle connections; the close
and our request cross on the wire) never reached the receiver's handler.
It is sent again at once on a new connection, and is neither a failed
attempt nor a backoff.
"""

from __future__ import annotations

import attrs
import treq
from twisted.internet import defer
from twisted.internet.error import ConnectionClosed
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.client import RequestTransmissionFailed, ResponseNeverReceived
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from regd.notifications.signing import signature_headers


class DeliveryFailed(Exception):
    pass


@implementer(IPolicyForHTTPS)
@attrs.frozen
class ReceiverTLSPolicy:
    """Verify the receiver with a given CA file, and present a client certificate if configured."""

    ca_file: str = ""
    certificate: str = ""
    key: str = ""

    def creatorForNetloc(self, hostname, port):
        trust = None
        if self.ca_file:
            with open(self.ca_file, "rb") as f:
                trust = Certificate.loadPEM(f.read())
        client = None
        if self.certificate:
            with open(self.certificate, "rb") as cert, open(self.key, "rb") as key:
                client = PrivateCertificate.loadPEM(cert.read() + b"\n" + key.read())
        return optionsForClientTLS(hostname.decode("ascii"), trustRoot=trust, clientCertificate=client)


def make_client(reactor, settings):
    """A keep-alive treq client for one endpoint, and its pool (closed on stop)."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 2
    policy = (ReceiverTLSPolicy(settings.ca_file, settings.client_certificate, settings.client_key)
              if (settings.ca_file or settings.client_certificate) else BrowserLikePolicyForHTTPS())
    return treq.client.HTTPClient(Agent(reactor, contextFactory=policy, pool=pool)), pool


class HTTPSink:
    def __init__(self, settings, client, clock):
        self._settings = settings
        self._client = client
        self._clock = clock

    async def deliver(self, body: bytes, content_type: str, message_id: str) -> None:
        headers = {name: list(values) for name, values in self._settings.headers.items()}
        headers["Content-Type"] = [content_type]
        headers["Idempotency-Key"] = [message_id]
        if self._settings.secrets:
            for name, value in signature_headers(message_id, int(self._clock.seconds()), body,
                                                 self._settings.secrets).items():
                headers[name] = [value]
        await attempt_within(self._clock, self._settings.timeout, defer.ensureDeferred(self._exchange(body, headers)))

    async def _exchange(self, body: bytes, headers) -> int:
        # Every cached connection may be stale: one more try than the pool holds, then a real failure.
        for tries_left in range(STALE_RETRIES, -1, -1):
            try:
                response = await self._client.post(self._settings.url, data=_Body(body), headers=headers)
            except (ResponseNeverReceived, RequestTransmissionFailed) as e:
                if tries_left and _closed_by_peer(e):
                    self.stale_retries += 1
                    continue
                raise
            await treq.content(response)  # read it all, so the connection goes back to the pool
            return response.code
        raise AssertionError("unreachable")

    stale_retries = 0


@implementer(IBodyProducer)
class _Body:
    """
    The request body, written in one go. (treq would wrap bytes in a
    FileBodyProducer, which runs on the global reactor's cooperator: wrong
    when the client runs on the delivery thread's own reactor.)
    """

    def __init__(self, data: bytes):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self._data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


STALE_RETRIES = 3  # > HTTPConnectionPool.maxPersistentPerHost as make_client sets it


def _closed_by_peer(error) -> bool:
    """The connection closed before any response byte: the receiver never handled the request."""
    return any(reason.check(ConnectionClosed) for reason in getattr(error, "reasons", ()))


async def attempt_within(clock, timeout: float, exchange: defer.Deferred, on_failure=lambda: None) -> None:
    """
    Await one delivery attempt under the endpoint's timeout. Every failure
    becomes DeliveryFailed (after C{on_failure}, e.g. dropping a connection
    that may be half-used), except a cancel from outside (shutdown), which
    is not a failed attempt and passes through.
    """
    timed_out = []

    def expire():
        timed_out.append(True)
        exchange.cancel()

    timer = clock.callLater(timeout, expire)
    try:
        status = await exchange
    except defer.CancelledError:
        on_failure()
        if not timed_out:
            raise
        raise DeliveryFailed(f"timed out after {timeout:g}s") from None
    except DeliveryFailed:
        on_failure()
        raise
    except Exception as e:
        on_failure()
        if timed_out:
            raise DeliveryFailed(f"timed out after {timeout:g}s") from None
        raise DeliveryFailed(f"{type(e).__name__}: {_describe(e)}") from None
    finally:
        if timer.active():
            timer.cancel()
    if not 200 <= status < 400:
        raise DeliveryFailed(f"HTTP {status}")


def _describe(error: Exception) -> str:
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return str(error)[:200]
