# -*- test-case-name: tests.http.test_zerocopy -*-
"""
Streaming response bodies.

Klein finishes a request as soon as a handler's result is written, so a
handler that wants to stream returns this Resource instead: Klein renders it
and stays out of the way, and we finish the request when the last byte went
out. When storage hands out a file descriptor, the body goes with
sendfile(2) on plain TCP (L{regd.http.zerocopy}) and, over TLS, is encrypted
onto the socket by a thread (L{regd.http.tlssend}) if it is big; otherwise
backpressure comes from the storage reader's producer (small TLS bodies,
memory and S3 storage).
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.web.resource import Resource
from zope.interface import implementer
from twisted.web.server import NOT_DONE_YET

from regd.http.zerocopy import SendfileProducer, bulk_writes, plain_tcp_transport, tls_layer


class StreamingBody(Resource):
    isLeaf = True
    log = Logger()
    zero_copy = True

    def __init__(self, blob, offset: int, length: int):
        super().__init__()
        self._blob = blob
        self._offset = offset
        self._length = length

    def render(self, request):
        gone = []
        request.notifyFinish().addErrback(gone.append)
        d = self._send_file(request) if self.zero_copy else None
        if d is None:
            bulk_writes(request)
            d = self._blob.stream_to(_Pump(request), self._offset, self._length)
        else:
            d.addBoth(self._closed)

        def done(_):
            if not gone and not request.finished:
                request.finish()

        def aborted(failure):
            # The client went away mid-body: normal for pulls, not an error.
            self._blob.close()
            self.log.debug("blob stream ended early: {why}", why=failure.getErrorMessage())

        d.addCallbacks(done, aborted)
        return NOT_DONE_YET

    def _send_file(self, request):
        send_with = getattr(self._blob, "send_with", None)
        if send_with is None or self._length <= 0:
            return None
        transport = plain_tcp_transport(request)
        if transport is not None:
            def sender(fd, offset, length):
                return SendfileProducer(request, transport, fd, offset, length).start()
        elif tls_layer(request) is None:
            return None  # neither plain TCP nor TLS: the connection is going
        else:
            # Imported here: it loads pyOpenSSL's binding, which a regd without TLS never loads.
            from regd.http.tlssend import MIN_BODY, TLSFileSender, fast_tls_parts
            tls = fast_tls_parts(request) if self._length >= MIN_BODY else None
            if tls is None:
                return None

            def sender(fd, offset, length):
                return TLSFileSender(request, *tls, fd, offset, length).start()

        return send_with(sender, self._offset, self._length)

    def _closed(self, result):
        self._blob.close()
        return result


@implementer(IConsumer, IPushProducer)
class _Pump:
    """
    Drives a storage reader's pull producer as a push producer: it is asked
    for the next piece straight from the transport's "buffer drained"
    call, instead of through twisted.web's cooperator (a timer hop per
    piece), which kept TLS downloads well below what the CPU allows. Push
    producers (S3) are passed through untouched.
    """

    def __init__(self, request):
        self._request = request
        self._pull = None
        self._paused = False
        self._running = False

    def registerProducer(self, producer, streaming):
        if streaming:
            self._request.registerProducer(producer, True)
            return
        self._pull = producer
        self._request.registerProducer(self, True)
        self._run()

    def unregisterProducer(self):
        self._pull = None
        self._request.unregisterProducer()

    def write(self, data):
        self._request.write(data)

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._run()

    def stopProducing(self):
        pull, self._pull = self._pull, None
        if pull is not None:
            pull.stopProducing()

    def _run(self):
        if self._running:
            return
        self._running = True
        try:
            while not self._paused and self._pull is not None:
                self._pull.resumeProducing()
        finally:
            self._running = False
