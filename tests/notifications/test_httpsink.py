"""The HTTP sink against a real receiver: HTTP, HTTPS with a private CA, mutual TLS, failures, timeouts."""

import json
import os

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from regd.notifications.httpsink import DeliveryFailed, HTTPSink, make_client
from regd.notifications.settings import EndpointSettings
from regd.notifications.signing import verify
from tests.support.certs import PKI
from tests.support.receiver import Receiver

BODY = json.dumps({"events": [{"id": "e1", "action": "push", "target": {"repository": "r"}}]}).encode()
TYPE = "application/vnd.docker.distribution.events.v1+json"


class SinkTests(TestCase):
    def sink(self, url, **settings):
        settings = EndpointSettings(name="t", url=url, **settings)
        client, pool = make_client(reactor, settings)
        self.addCleanup(pool.closeCachedConnections)
        return HTTPSink(settings, client, reactor)

    async def test_post_with_headers_signature_and_idempotency_key(self):
        receiver = Receiver()
        url = receiver.listen(self)
        sink = self.sink(url, headers={"Authorization": ("Bearer token-1",)}, secrets=("s3cret",))
        await sink.deliver(BODY, TYPE, "e1")
        [(headers, body)] = receiver.received
        self.assertEqual(body, BODY)
        self.assertEqual(headers["content-type"], TYPE)
        self.assertEqual(headers["idempotency-key"], "e1")
        self.assertEqual(headers["authorization"], "Bearer token-1")
        verify(headers, body, ["s3cret"], now=reactor.seconds())

    async def test_non_2xx_is_a_failure(self):
        receiver = Receiver()
        receiver.fail_next = 1
        sink = self.sink(receiver.listen(self))
        with self.assertRaises(DeliveryFailed) as caught:
            await sink.deliver(BODY, TYPE, "e1")
        self.assertEqual(str(caught.exception), "HTTP 503")
        await sink.deliver(BODY, TYPE, "e1")
        self.assertEqual(len(receiver.received), 1)

    async def test_timeout_bounds_the_whole_exchange(self):
        receiver = Receiver()
        receiver.stall = True
        sink = self.sink(receiver.listen(self), timeout=0.3)
        with self.assertRaises(DeliveryFailed) as caught:
            await sink.deliver(BODY, TYPE, "e1")
        self.assertIn("timed out", str(caught.exception))

    async def test_receiver_down(self):
        receiver = Receiver()
        url = receiver.listen(self)
        await receiver.port.stopListening()
        with self.assertRaises(DeliveryFailed):
            await self.sink(url).deliver(BODY, TYPE, "e1")

    async def test_https_with_private_ca_and_mutual_tls(self):
        pki = PKI(os.path.abspath(self.mktemp()))
        receiver = Receiver()
        url = receiver.listen(self, pki.server_options(require_client=True))
        sink = self.sink(url, ca_file=pki.ca, client_certificate=pki.client_cert, client_key=pki.client_key)
        await sink.deliver(BODY, TYPE, "e1")
        self.assertEqual(len(receiver.received), 1)
        without_client = self.sink(url, ca_file=pki.ca)
        with self.assertRaises(DeliveryFailed):
            await without_client.deliver(BODY, TYPE, "e2")
        untrusted = self.sink(url)
        with self.assertRaises(DeliveryFailed):
            await untrusted.deliver(BODY, TYPE, "e3")


class LoggingTests(TestCase):
    async def test_failures_are_logged_without_secrets_or_header_values(self):
        from twisted.logger import capturedLogs, formatEvent

        from regd.notifications.endpoint import Endpoint
        from regd.notifications.journal import Journal, JournalEntry
        from regd.storage.threads import inline_runner

        receiver = Receiver()
        receiver.fail_next = 5
        settings = EndpointSettings(name="ci", url=receiver.listen(self), headers={"Authorization": ("Bearer tok-XYZ",)},
                                    secrets=("sekrit-123",), backoff=10.0)
        client, pool = make_client(reactor, settings)
        self.addCleanup(pool.closeCachedConnections)
        journal = Journal(os.path.join(os.path.abspath(self.mktemp()), "j.sqlite3"), inline_runner)
        self.successResultOf(journal.open())
        endpoint = Endpoint(settings, journal, HTTPSink(settings, client, reactor), reactor)
        await endpoint.start()
        seq = self.successResultOf(journal.append("e1", BODY.decode(), ("ci",)))
        with capturedLogs() as events:
            endpoint.enqueue(JournalEntry(seq, "e1", 0.0, BODY.decode()))
            while endpoint.stats.failures == 0:
                await task.deferLater(reactor, 0.01, lambda: None)
        endpoint.stop()
        journal._close()
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("delivery to ci failed (attempt 1, event e1, 1 in batch): HTTP 503", text)
        self.assertNotIn("tok-XYZ", text)
        self.assertNotIn("sekrit-123", text)


class _ClosesIdleConnections:
    """
    Answers the first request on each connection with a keep-alive 200, then
    closes that connection when the next request arrives on it without
    answering: the race of a receiver closing an idle connection just as a
    POST is sent on it.
    """

    def __init__(self, testcase):
        from twisted.internet.protocol import Factory, Protocol

        server = self
        self.answered = 0
        self.dropped = 0

        class OneRequestPerConnection(Protocol):
            def connectionMade(self):
                self.buffer = b""
                self.served = False

            def dataReceived(self, data):
                self.buffer += data
                head, sep, rest = self.buffer.partition(b"\r\n\r\n")
                if not sep:
                    return
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                if len(rest) < length:
                    return
                self.buffer = rest[length:]
                if self.served:
                    server.dropped += 1
                    self.transport.loseConnection()
                    return
                self.served = True
                server.answered += 1
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

        port = reactor.listenTCP(0, Factory.forProtocol(OneRequestPerConnection), interface="127.0.0.1")
        testcase.addCleanup(port.stopListening)
        self.url = f"http://127.0.0.1:{port.getHost().port}/hook"


class StaleConnectionTests(TestCase):
    async def test_post_on_a_connection_the_receiver_closed_is_sent_again_at_once(self):
        receiver = _ClosesIdleConnections(self)
        settings = EndpointSettings(name="t", url=receiver.url)
        client, pool = make_client(reactor, settings)
        self.addCleanup(pool.closeCachedConnections)
        sink = HTTPSink(settings, client, reactor)
        for i in range(3):
            await sink.deliver(BODY, TYPE, f"e{i}")  # none of them fails
        self.assertEqual(receiver.answered, 3)
        self.assertEqual(receiver.dropped, 2)
        self.assertEqual(sink.stale_retries, 2)

    async def test_a_receiver_that_always_drops_the_request_still_fails(self):
        from twisted.internet.protocol import Factory, Protocol

        class Drop(Protocol):
            def dataReceived(self, data):
                self.transport.loseConnection()

        port = reactor.listenTCP(0, Factory.forProtocol(Drop), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        settings = EndpointSettings(name="t", url=f"http://127.0.0.1:{port.getHost().port}/hook")
        client, pool = make_client(reactor, settings)
        self.addCleanup(pool.closeCachedConnections)
        with self.assertRaises(DeliveryFailed):
            await HTTPSink(settings, client, reactor).deliver(BODY, TYPE, "e1")
