# -*- test-case-name: tests.notifications.test_service -*-
"""
NotificationService: the registry listener that journals each event before
the request is answered, then hands it to every endpoint that wants it.
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
from regd.registry.listener import IRegistryListener

log = Logger()


@implementer(IRegistryListener)
class NotificationService(service.Service):
    def __init__(self, settings, journal, sink_factory, clock, *, source_addr: str = "",
                 instance_id: str | None = None, on_stop=(), thread_pool=None):
        self.settings = settings
        self.journal = journal
        self.clock = clock
        self.source_addr = source_addr or socket.gethostname()
        self.instance_id = instance_id or str(uuid.uuid4())
        self.endpoints = [Endpoint(s, journal, sink_factory(s), clock) for s in settings.endpoints]
        self._ready = defer.Deferred()
        self._on_stop = list(on_stop)
        # The journal's own thread: started first, stopped after the journal closed.
        self._thread_pool = thread_pool

    def endpoint(self, name: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.name == name), None)

    async def registry_event(self, event) -> None:
        targets = [e for e in self.endpoints if e.accepts(event)]
        if not targets:
            return
        await self._ready
        entry = to_distribution(event, now=self.clock.seconds(), source_addr=self.source_addr,
                                instance_id=self.instance_id,
                                include_references=self.settings.include_references)
        body = json.dumps(entry)
        seq = await self.journal.append(entry["id"], body, tuple(e.name for e in targets))
        record = JournalEntry(seq, entry["id"], self.clock.seconds(), body)
        for endpoint in targets:
            endpoint.enqueue(record)

    def startService(self):
        super().startService()
        if self._thread_pool is not None:
            self._thread_pool.start()
        d = defer.ensureDeferred(self._start())
        d.addErrback(lambda f: log.failure("notifications: journal failed to open", f))

    async def _start(self) -> None:
        await self.journal.open()
        self._ready.callback(None)
        for endpoint in self.endpoints:
            await endpoint.start()

    async def stopService(self):
        super().stopService()
        # Deliver what we can within the drain time; the rest stays in the journal.
        await defer.gatherResults([e.drain(self.settings.drain_timeout) for e in self.endpoints])
        for stop in self._on_stop:
            await defer.maybeDeferred(stop)
        if self._ready.called:
            await self.journal.close()
        if self._thread_pool is not None:
            self._thread_pool.stop()

    async def replay(self, name: str, seqs: list[int] | None = None) -> int:
        endpoint = self.endpoint(name)
        revived = await self.journal.replay(name, seqs)
        endpoint.stats.dead_letters = max(0, endpoint.stats.dead_letters - len(revived))
        endpoint.requeue([JournalEntry(e.seq, e.event_id, e.created, e.body) for e in revived])
        return len(revived)

    async def status(self) -> dict:
        report = {}
        for endpoint in self.endpoints:
            pending, dead = await self.journal.counts(endpoint.name)
            stats = endpoint.stats
            report[endpoint.name] = {
                "url": endpoint.settings.url.split("?")[0], "pending": endpoint.pending,
                "oldest_pending_age_seconds": round(endpoint.oldest_pending_age(), 3),
                "attempts": stats.attempts, "successes": stats.successes, "failures": stats.failures,
                "delivered_events": stats.delivered_events, "dead_letters": dead, "dropped": stats.dropped,
                "last_error": stats.last_error, "journal_pending": pending,
            }
        return report
