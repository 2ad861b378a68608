# -*- test-case-name: tests.notifications.test_service -*-
"""
NotificationService: the registry listener that journals each event before
the request is answered, then hands it to every endpoint that wants it.

In the daemon the endpoints run in a delivery process of their own
(L{regd.notifications.process}), fed from the journal; without one (unit
tests) they run here, on the given clock. With deliver=False this process
only journals: another process sharing the journal delivers (one per journal).
"""

from __future__ import annotations

import json
import socket
import uuid

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from regd.notifications.endpoint import Endpoint
from regd.notifications.events import to_distribution
from regd.notifications.journal import JournalEntry
from regd.notifications.settings import redacted_url
from regd.registry.listener import IRegistryListener

log = Logger()


class JournalUnavailable(Exception):
    """The journal could not be opened; requests go on without events."""


@implementer(IRegistryListener)
class NotificationService(service.Service):
    def __init__(self, settings, journal, sink_factory, clock, *, source_addr: str = "",
                 instance_id: str | None = None, on_stop=(), thread_pool=None, deliver: bool = True,
                 delivery=None):
        self.settings = settings
        self.journal = journal
        self.clock = clock
        self.source_addr = source_addr or socket.gethostname()
        self.instance_id = instance_id or str(uuid.uuid4())
        self.deliver = deliver
        # A DeliveryProcess, or None: deliver here, on `clock`.
        self._delivery = delivery if deliver else None
        if self._delivery is not None:
            from regd.notifications.process import RemoteEndpoint
            self.endpoints = [RemoteEndpoint(s, journal, clock) for s in settings.endpoints]
            self._delivery.on_figures = self._figures
        else:
            self.endpoints = [Endpoint(s, journal, sink_factory(s), clock) for s in settings.endpoints]
        self._opened = False
        self._broken: Exception | None = None  # why the journal could not open
        self._waiting_for_journal: list[defer.Deferred] = []
        self._on_stop = list(on_stop)
        # The journal's own thread: started first, stopped after the journal closed.
        self._thread_pool = thread_pool

    def endpoint(self, name: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.name == name), None)

    def registry_event(self, event):
        """
        Journal the event (the request waits for this Deferred), then queue it
        for every endpoint that wants it and has room. Plain Deferreds rather
        than a coroutine: this runs once per request, on the reactor thread.
        """
        targets = [e for e in self.endpoints if e.accepts(event)]
        if not targets:
            return None
        if self._opened:
            return self._record(event, targets)
        if self._broken is not None:
            return defer.fail(self._broken)
        waiting: defer.Deferred = defer.Deferred()
        self._waiting_for_journal.append(waiting)
        return waiting.addCallback(lambda _: self._record(event, targets))

    def _record(self, event, targets):
        entry = to_distribution(event, now=self.clock.seconds(), source_addr=self.source_addr,
                                instance_id=self.instance_id,
                                include_references=self.settings.include_references)
        body = json.dumps(entry)
        admitted = [e for e in targets if e.admit(len(body))]
        if not admitted:
            return None
        created = self.clock.seconds()

        def queue(seq):
            if self._delivery is not None:
                for endpoint in admitted:
                    endpoint.admitted(len(body))
                self._delivery.wake()
                return
            if not self.deliver:
                return
            record = JournalEntry(seq, entry["id"], created, body)
            for endpoint in admitted:
                endpoint.enqueue(record)

        return self.journal.append(entry["id"], body, tuple(e.name for e in admitted)).addCallback(queue)

    def startService(self):
        super().startService()
        if self._thread_pool is not None:
            self._thread_pool.start()
        d = defer.ensureDeferred(self._start())
        d.addErrback(lambda f: log.failure("notifications: failed to start", f))

    async def _start(self) -> None:
        try:
            await self.journal.open()
        except Exception as e:
            # Requests must not hang on a journal that will never open: they go on, without events.
            log.failure("notifications: the journal {path} cannot be opened; NO events will be sent",
                        path=self.settings.journal)
            self._broken = JournalUnavailable(f"{self.settings.journal}: {e}")
            waiting, self._waiting_for_journal = self._waiting_for_journal, []
            for d in waiting:
                d.errback(self._broken)
            return
        self._opened = True
        waiting, self._waiting_for_journal = self._waiting_for_journal, []
        for d in waiting:
            d.callback(None)
        if not self.deliver:
            return
        if self._delivery is None:
            for endpoint in self.endpoints:
                await endpoint.start()
            return
        self._delivery.start()

    def _figures(self, figures: dict) -> None:
        """An endpoint's figures, as the delivery process reports them."""
        endpoint = self.endpoint(figures["endpoint"])
        if endpoint is not None:
            endpoint.update(figures)

    async def _drain_and_close(self) -> None:
        # Deliver what we can within the drain time; the rest stays in the journal.
        await defer.gatherResults([e.drain(self.settings.drain_timeout) for e in self.endpoints])
        for stop in self._on_stop:
            await defer.maybeDeferred(stop)

    def _requeue(self, endpoint, revived) -> None:
        endpoint.stats.dead_letters = max(0, endpoint.stats.dead_letters - len(revived))
        endpoint.requeue([JournalEntry(e.seq, e.event_id, e.created, e.body) for e in revived])

    # ----------------------------------------------------------------------

    async def stopService(self):
        super().stopService()
        if self._delivery is not None:
            # Bounded even if the delivery process is stuck: the journal keeps what is owed.
            await self._delivery.stop(self.settings.drain_timeout + 5)
            for stop in self._on_stop:
                await defer.maybeDeferred(stop)
        elif self.deliver:
            await self._drain_and_close()
        else:
            for stop in self._on_stop:
                await defer.maybeDeferred(stop)
        if self._opened:
            await self.journal.close()
        if self._thread_pool is not None:
            self._thread_pool.stop()

    async def replay(self, name: str, seqs: list[int] | None = None, event_ids: list[str] | None = None) -> int:
        """Dead letters back to the queue: all of them, or those named by seq or event id."""
        endpoint = self.endpoint(name)
        revived = await self.journal.replay(name, seqs, event_ids)
        if self._delivery is not None:
            endpoint.stats.dead_letters = max(0, endpoint.stats.dead_letters - len(revived))
            await self._delivery.requeue(name, [e.seq for e in revived])
        elif self.deliver:
            self._requeue(endpoint, revived)
        return len(revived)

    async def status(self) -> dict:
        # The journal first, the delivery process's figures second: a failure is counted there before
        # its dead letter is written here, so figures read after the counts are never older than they
        # are (the other order could show a dead letter beside fewer failures than it took).
        counts = {endpoint.name: await self.journal.counts(endpoint.name) for endpoint in self.endpoints}
        if self._delivery is not None:
            await self._delivery.refresh()
        report = {}
        for endpoint in self.endpoints:
            pending, dead = counts[endpoint.name]
            stats = endpoint.stats
            report[endpoint.name] = {
                "url": redacted_url(endpoint.settings.url), "pending": endpoint.pending,
                "pending_bytes": endpoint.pending_bytes, "queue_full": stats.full,
                "oldest_pending_age_seconds": round(endpoint.oldest_pending_age(), 3),
                "attempts": stats.attempts, "successes": stats.successes, "failures": stats.failures,
                "delivered_events": stats.delivered_events, "dead_letters": dead, "dropped": stats.dropped,
                "last_error": stats.last_error, "journal_pending": pending,
            }
        return report
