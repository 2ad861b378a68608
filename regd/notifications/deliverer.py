# -*- test-case-name: tests.notifications.test_delivery -*-
"""
The delivery process: `python -m regd.notifications.deliverer`, started,
watched and stopped by regd (L{regd.notifications.process}).

It has an interpreter of its own, so the endpoints' loops, their HTTP
clients, retries and journal bookkeeping never take the interpreter lock
from the process that serves requests. It reads events only from the
journal (woken by regd after its commits, and polling for commits of other
worker processes); regd talks to it with AMP over a pipe pair: stdin from
regd, fd 3 back to it. Its log goes to stdout, which is regd's.

One delivery process per journal: it takes an exclusive lock beside the
journal first, so a replacement started while an old one is still
finishing (after regd was SIGKILLed, say) waits instead of sending the
same events at the same time. It ends when regd tells it to (after
draining) or when the pipe from regd closes (regd is gone: the journal
keeps whatever was not delivered). SIGINT and SIGTERM are ignored: a
terminal's Ctrl-C or systemd's stop reach regd, which then stops it.

Delivery marks are committed in batches every BOOKKEEPING_DELAY (failed
attempts and dead letters at once): losing a batch to a crash only means
sending those events again (at least once, with the same ids), and few
commits here means few times regd's journal appends find the write lock
taken. These commits also copy the WAL back into the database (regd's
rarely do).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import types

from twisted.internet import defer, task
from twisted.logger import Logger, globalLogBeginner
from twisted.protocols import amp

from regd.notifications.delivery import JournalFeed
from regd.notifications.endpoint import Endpoint
from regd.notifications.ipc import Figures, Report, Requeue, Start, Stop, Wake
from regd.notifications.journal import Journal
from regd.notifications.settings import parse_notifications

log = Logger()

BOOKKEEPING_DELAY = 0.1  # seconds a delivery mark waits, so that the marks meanwhile share its commit
FIGURES_INTERVAL = 0.25  # seconds between figure updates to regd (only endpoints whose figures changed)
LOCK_RETRY = 0.2
FIGURE_KEYS = ("attempts", "successes", "failures", "delivered_events", "dead_letters", "last_error")


def lock_path(journal: str) -> str:
    return journal + ".deliverer.lock"


def make_sink(endpoint_settings, reactor):
    from regd.notifications.httpsink import ReceiverTLSPolicy
    from regd.notifications.rawsink import RawHTTPSink
    policy = None
    if endpoint_settings.ca_file or endpoint_settings.client_certificate:
        policy = ReceiverTLSPolicy(endpoint_settings.ca_file, endpoint_settings.client_certificate,
                                   endpoint_settings.client_key)
    return RawHTTPSink(endpoint_settings, reactor, policy)


class Deliverer:
    """The endpoints, their sinks and the journal feed, on this process's reactor."""

    def __init__(self, raw: dict, journal_path: str, reactor, report=lambda name, figures: None):
        self.settings, _ = parse_notifications(raw, journal_path)
        self.reactor = reactor

        # SQLite inline, on this reactor's thread; delivery marks share a commit every BOOKKEEPING_DELAY.
        self.journal = Journal(self.settings.journal, defer.maybeDeferred, wallclock=reactor.seconds,
                               clock=reactor, marks_delay=BOOKKEEPING_DELAY)
        self.sinks = [make_sink(s, reactor) for s in self.settings.endpoints]
        self.endpoints = [Endpoint(s, self.journal, sink, reactor)
                          for s, sink in zip(self.settings.endpoints, self.sinks)]
        self.feed: JournalFeed | None = None
        self._report = report
        self._sent: dict[str, dict] = {}
        self._figures = task.LoopingCall(self.send_figures)
        self._figures.clock = reactor
        self._lock_fd: int | None = None
        self._opened = False
        self._stopped = False

    async def start(self) -> None:
        await self._take_lock()
        if self._stopped:
            return
        await self.journal.open()
        self._opened = True
        self.journal.fan_out_pending()  # what regd journaled while no delivery process ran
        for endpoint in self.endpoints:
            await endpoint.start()
        if self._stopped:
            return
        self.feed = JournalFeed(self.journal, self.endpoints, self.reactor)
        self.feed.start()
        self._figures.start(FIGURES_INTERVAL)
        log.info("notifications: delivering to {count} endpoints (delivery process {pid})",
                 count=len(self.endpoints), pid=os.getpid())

    async def _take_lock(self) -> None:
        path = lock_path(self.settings.journal)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        told = False
        while not self._stopped:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                return
            except BlockingIOError:
                if not told:
                    log.info("notifications: another delivery process holds {path}; waiting for it to end", path=path)
                    told = True
                await task.deferLater(self.reactor, LOCK_RETRY, lambda: None)
        os.close(fd)

    def wake(self) -> None:
        if self.feed is not None:
            self.feed.wake()

    def requeue(self, name: str, seqs: list[int]) -> int:
        """Revived dead letters (journal rows pending again): queued behind what is queued."""
        endpoint = next((e for e in self.endpoints if e.name == name), None)
        if endpoint is None or not self._opened or self._stopped:
            return 0
        entries = self.journal.pending_among(name, seqs)
        endpoint.stats.dead_letters = max(0, endpoint.stats.dead_letters - len(entries))
        endpoint.requeue(entries)
        return len(entries)

    def figures(self, endpoint) -> dict:
        report = {key: getattr(endpoint.stats, key) for key in FIGURE_KEYS}
        report.update(pending=endpoint.pending, pending_bytes=endpoint.pending_bytes,
                      oldest_pending_age=round(endpoint.oldest_pending_age(), 3))
        return report

    def send_figures(self) -> None:
        for endpoint in self.endpoints:
            figures = self.figures(endpoint)
            if figures != self._sent.get(endpoint.name):
                self._sent[endpoint.name] = figures
                self._report(endpoint.name, figures)

    async def stop(self, drain: bool) -> None:
        """With C{drain}: deliver what can be within the drain time first. The journal keeps the rest."""
        if self._stopped:
            return
        self._stopped = True
        if self._figures.running:
            self._figures.stop()
        if self.feed is not None:
            if drain:  # events journaled since the last wake-up are drained too
                try:
                    self.feed.poll()
                except Exception:
                    log.failure("notifications: reading the journal failed")
            self.feed.stop()
        if drain and self._opened:
            await defer.gatherResults([e.drain(self.settings.drain_timeout) for e in self.endpoints])
        for endpoint in self.endpoints:
            endpoint.stop()
        await defer.gatherResults([sink.close() for sink in self.sinks])
        if self._opened:
            self.send_figures()
            await self.journal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None


class DelivererProtocol(amp.AMP):
    """The child's end of the pipe pair."""

    def __init__(self, reactor, on_lost=None):
        super().__init__()
        self.reactor = reactor
        self.deliverer: Deliverer | None = None
        self._on_lost = on_lost or (lambda: None)

    @Start.responder
    def start(self, notifications: str, journal: str, log: str):
        begin_logging(json.loads(log))
        self.deliverer = Deliverer(json.loads(notifications), journal, self.reactor, self._report)
        defer.ensureDeferred(self.deliverer.start()).addErrback(
            lambda f: (_log_failure(f, "notifications: the delivery process could not start"), self._quit()))
        return {}

    @Wake.responder
    def wake(self):
        if self.deliverer is not None:
            self.deliverer.wake()
        return {}

    @Requeue.responder
    def requeue(self, endpoint: str, seqs: list[int]):
        return {"queued": self.deliverer.requeue(endpoint, seqs) if self.deliverer is not None else 0}

    @Report.responder
    def report(self):
        endpoints = self.deliverer.endpoints if self.deliverer is not None else []
        return {"figures": [json.dumps({"endpoint": e.name, **self.deliverer.figures(e)}) for e in endpoints]}

    @Stop.responder
    def stop(self):
        if self.deliverer is None:
            return {}
        return defer.ensureDeferred(self.deliverer.stop(drain=True)).addCallback(lambda _: {})

    def _report(self, name: str, figures: dict) -> None:
        self.callRemote(Figures, figures=json.dumps({"endpoint": name, **figures}))

    def _quit(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        # regd closed the pipe: after a Stop, or because it is gone. Either way, stop here too.
        done = defer.ensureDeferred(self.deliverer.stop(drain=False)) if self.deliverer else defer.succeed(None)
        done.addErrback(_log_failure, "notifications: stopping the delivery process failed")
        done.addBoth(lambda _: self._on_lost())


def _log_failure(failure, message):
    log.failure(message, failure)


def begin_logging(config: dict) -> None:
    """regd's log settings, on stdout (regd's own stdout): one log stream for both processes."""
    from regd.logging import make_observer
    settings = types.SimpleNamespace(level=config.get("level", "info"), formatter=config.get("formatter", "text"),
                                     fields=dict(config.get("fields") or {}, process="regd-webhooks"))
    globalLogBeginner.beginLoggingTo([make_observer(settings, sys.stdout)], redirectStandardIO=False,
                                     discardBuffer=True)


def main() -> None:
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    StandardIO(DelivererProtocol(reactor, on_lost=reactor.stop), stdin=0, stdout=3, reactor=reactor)
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()
