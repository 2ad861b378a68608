# -*- test-case-name: tests.notifications.test_delivery -*-
"""
Webhook delivery off the event loop that serves requests.

The request path only appends each event to the durable journal (and the
request waits for that). Delivery runs in one thread of its own, on a
private Twisted reactor, with its own connection to the journal: the
endpoints' loops, their HTTP clients, retries, backoff timers and
bookkeeping never take a turn of the serving reactor.

The delivery side is fed from the journal, not from memory: a wake-up from
this process, and a poll that notices commits by other processes (several
workers share one journal; only the one built with deliver=True runs this)
both read the rows past the last sequence number each endpoint has seen.
Sequence numbers are assigned under SQLite's write lock, so commit order is
sequence order and the "after the last one seen" read never skips a row.
"""

from __future__ import annotations

import threading

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

POLL_INTERVAL = 0.1  # seconds between checks for events journaled by other processes
PAGE = 10_000


def _private_reactor():
    """A reactor instance that is not the global one, for the delivery thread."""
    try:
        from twisted.internet.epollreactor import EPollReactor
        return EPollReactor()
    except ImportError:  # not Linux
        from twisted.internet.pollreactor import PollReactor
        return PollReactor()


class DeliveryThread:
    """
    A reactor running in a daemon thread. L{call} runs a function there and
    gives its result back as a Deferred on the caller's reactor.
    """

    def __init__(self, main_reactor, name: str = "regd-webhooks"):
        self.main = main_reactor
        self.reactor = _private_reactor()
        self._name = name
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self.reactor.run, kwargs={"installSignalHandlers": False},
                                        name=self._name, daemon=True)
        self._thread.start()

    def call(self, function, *args, **kwargs) -> defer.Deferred:
        """Deferred (on the main reactor) for C{function(*args)} run in the delivery thread."""
        result: defer.Deferred = defer.Deferred()

        def back(outcome):
            if isinstance(outcome, Failure):
                self.main.callFromThread(result.errback, outcome)
            else:
                self.main.callFromThread(result.callback, outcome)

        def run():
            defer.maybeDeferred(function, *args, **kwargs).addBoth(back)

        self.reactor.callFromThread(run)
        return result

    def stop(self) -> None:
        if self._thread is None:
            return
        self.reactor.callFromThread(self.reactor.stop)
        self._thread.join(5)
        self._thread = None


class JournalFeed:
    """
    Runs in the delivery thread: hands each endpoint the journal rows past
    the last sequence number it has seen, on a wake-up or when the journal
    changed under another connection.
    """

    def __init__(self, journal, endpoints, clock, interval: float = POLL_INTERVAL):
        self._journal = journal
        self._endpoints = endpoints
        self._clock = clock
        self._interval = interval
        self._version = None
        self._scheduled = None
        self._timer = None
        self._stopped = False

    def start(self) -> None:
        self._tick()

    def wake(self) -> None:
        """Something was journaled in this process: read it on the next turn (coalesced)."""
        if self._scheduled is None and not self._stopped:
            self._scheduled = self._clock.callLater(0, self._woken)

    def _woken(self) -> None:
        self._scheduled = None
        self.poll()

    def _tick(self) -> None:
        self._timer = None
        if self._stopped:
            return
        try:
            version = self._journal.data_version()
            if version != self._version:
                self._version = version
                self.poll()
        except Exception:
            log.failure("notifications: reading the journal failed")
        self._timer = self._clock.callLater(self._interval, self._tick)

    def poll(self) -> None:
        for endpoint in self._endpoints:
            if endpoint.stopped:
                continue
            while True:
                rows = self._journal.pending_after(endpoint.name, endpoint.last_seq, PAGE)
                for row in rows:
                    endpoint.enqueue(row)
                if len(rows) < PAGE:
                    break

    def stop(self) -> None:
        self._stopped = True
        for call in (self._scheduled, self._timer):
            if call is not None and call.active():
                call.cancel()
        self._scheduled = self._timer = None
