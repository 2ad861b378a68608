"""The lean delivery client against the same receivers as the treq sink, plus its HTTP/1.1 corner cases."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from regd.notifications.httpsink import DeliveryFailed, ReceiverTLSPolicy
from regd.notifications.rawsink import RawHTTPSink
from regd.notifications.settings import EndpointSettings
from tests.notifications import test_httpsink
from tests.notifications.test_httpsink import BODY, TYPE


class RawSinkTests(test_httpsink.SinkTests):
    """Every SinkTests case (headers, signature, non-2xx, timeout, receiver down, mutual TLS) on RawHTTPSink."""

    def sink(self, url, **settings):
        settings = EndpointSettings(name="t", url=url, **settings)
        policy = (ReceiverTLSPolicy(settings.ca_file, settings.client_certificate, settings.client_key)
                  if settings.ca_file or settings.client_certificate else None)
        sink = RawHTTPSink(settings, reactor, policy)
        self.addCleanup(sink.close)
        return sink

    async def test_tls_timers_run_on_the_sinks_own_reactor(self):
        """
        In the daemon the sink runs on the delivery thread's reactor: its TLS
        layer must not schedule on the global reactor (not thread-safe; it
        once cut a client's connection mid-push).
        """
        import os
        import traceback

        from twisted.protocols import tls
        from tests.support.certs import PKI
        from tests.support.receiver import Receiver

        defaulted = []
        default_clock = tls._get_default_clock

        def recording():
            defaulted.append(traceback.extract_stack())
            return default_clock()
        self.patch(tls, "_get_default_clock", recording)
        pki = PKI(os.path.abspath(self.mktemp()))
        receiver = Receiver()
        url = receiver.listen(self, pki.server_options())
        await self.sink(url, ca_file=pki.ca).deliver(BODY, TYPE, "e1")
        self.assertEqual(len(receiver.received), 1)
        from_the_sink = [s for s in defaulted if any(f.filename.endswith("regd/notifications/rawsink.py") for f in s)]
        self.assertEqual(from_the_sink, [])


class _Scripted(Protocol):
    """Answers each request with the next canned response; None means: close without answering."""

    def dataReceived(self, data):
        self.factory.requests.append(data)
        if b"\r\n\r\n" not in data:
            return
        answer = self.factory.answers.pop(0)
        if answer is None:
            self.transport.loseConnection()
            return
        self.transport.write(answer)
        if self.factory.close_after:
            self.transport.loseConnection()


class CornerCaseTests(TestCase):
    def serve(self, answers, close_after=False):
        factory = Factory.forProtocol(_Scripted)
        factory.answers, factory.requests, factory.close_after = list(answers), [], close_after
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sink = RawHTTPSink(EndpointSettings(name="t", url=f"http://127.0.0.1:{port.getHost().port}/hook?x=1"),
                           reactor)
        self.addCleanup(sink.close)
        return sink, factory

    async def test_content_length_chunked_and_keep_alive(self):
        sink, factory = self.serve([
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        ])
        for i in range(3):
            await sink.deliver(BODY, TYPE, f"e{i}")
        first = factory.requests[0]
        self.assertTrue(first.startswith(b"POST /hook?x=1 HTTP/1.1\r\n"))
        self.assertIn(b"Idempotency-Key: e0\r\n", first)
        self.assertTrue(first.endswith(b"\r\n\r\n" + BODY))
        self.assertEqual(len(factory.requests), 3)

    async def test_a_response_ended_by_close_and_http_1_0(self):
        sink, factory = self.serve([b"HTTP/1.0 200 OK\r\n\r\nbody until close", b"HTTP/1.0 200 OK\r\n\r\n"],
                                   close_after=True)
        await sink.deliver(BODY, TYPE, "e1")
        await sink.deliver(BODY, TYPE, "e2")  # a new connection: the first one could not be kept

    async def test_stale_keep_alive_connection_is_retried_at_once_but_only_once(self):
        sink, factory = self.serve([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", None,
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", None, None])
        await sink.deliver(BODY, TYPE, "e1")
        await sink.deliver(BODY, TYPE, "e2")  # closed without an answer on the kept connection: sent again
        self.assertEqual(sink.stale_retries, 1)
        with self.assertRaises(DeliveryFailed):  # and on a fresh connection too: a real failure
            await sink.deliver(BODY, TYPE, "e3")

    async def test_5xx_and_garbage_are_failures(self):
        sink, _ = self.serve([b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", b"SSH-2.0-nope\r\n\r\n"])
        with self.assertRaises(DeliveryFailed) as caught:
            await sink.deliver(BODY, TYPE, "e1")
        self.assertEqual(str(caught.exception), "HTTP 500")
        with self.assertRaises(DeliveryFailed):
            await sink.deliver(BODY, TYPE, "e2")
