"""A real webhook receiver on 127.0.0.1 that records what it gets and can be told to fail or stall."""

from __future__ import annotations

import json

from klein import Klein
from twisted.internet import defer, reactor
from twisted.web.server import Site


class Receiver:
    app = Klein()

    def __init__(self):
        self.received = []  # (headers dict, body bytes)
        self.fail_next = 0
        self.stall = False
        self.stalled = 0  # requests read whole and left unanswered while stall was set
        self.port = None
        self.waiters = []

    @app.route("/hook", methods=["POST"])
    def hook(self, request):
        body = request.content.read()
        if self.stall:
            self.stalled += 1
            return defer.Deferred()  # never answers
        if self.fail_next:
            self.fail_next -= 1
            request.setResponseCode(503)
            return b"try later"
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.received.append((headers, body))
        waiters, self.waiters = self.waiters, []
        for count, d in waiters:
            if self.event_count() >= count:
                d.callback(None)
            else:
                self.waiters.append((count, d))
        return b"ok"

    def events(self) -> list[dict]:
        out = []
        for _, body in self.received:
            document = json.loads(body)
            out.extend(document["events"] if isinstance(document, dict) else [e["data"] for e in document])
        return out

    def event_count(self) -> int:
        return len(self.events())

    def wait_for(self, count: int) -> defer.Deferred:
        if self.event_count() >= count:
            return defer.succeed(None)
        d = defer.Deferred()
        self.waiters.append((count, d))
        return d

    def listen(self, testcase, tls_options=None) -> str:
        site = Site(self.app.resource())
        if tls_options is None:
            self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
            scheme = "http"
        else:
            self.port = reactor.listenSSL(0, site, tls_options, interface="127.0.0.1")
            scheme = "https"
        testcase.addCleanup(self.port.stopListening)
        return f"{scheme}://127.0.0.1:{self.port.getHost().port}/hook"
