# -*- test-case-name: tests.notifications.test_endpoint -*-
"""
One endpoint's delivery loop: its own in-order queue, its own retries with
exponential backoff and jitter, so a slow or dead receiver never delays
another endpoint or a push. Events leave the queue when delivered, or as
dead letters after `maxretries` attempts or `maxage`.
"""

from __future__ import annotations

import json
import random
from collections import deque

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from regd.notifications.events import envelope
from regd.notifications.journal import JournalEntry

log = Logger()


@attrs.define
class EndpointStats:
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    delivered_events: int = 0
    dead_letters: int = 0
    dropped: int = 0
    last_error: str = ""


def backoff_delay(settings, attempts: int, jitter: float) -> float:
    """Delay before retry number C{attempts}: doubling from `backoff`, capped, with jitter in [d/2, d]."""
    delay = min(settings.max_backoff, settings.backoff * (2 ** max(attempts - 1, 0)))
    return delay * (0.5 + jitter / 2)


class Endpoint:
    def __init__(self, settings, journal, sink, clock, jitter=random.random):
        self.settings = settings
        self.name = settings.name
        self.stats = EndpointStats()
        self._journal = journal
        self._sink = sink
        self._clock = clock
        self._jitter = jitter
        self._queue: deque[JournalEntry] = deque()
        self._held: list[JournalEntry] = []
        self._loading = True
        self._busy = False
        self._retry = None
        self._stopped = False
        self._idle: list[defer.Deferred] = []
        self._in_flight: defer.Deferred | None = None

    def accepts(self, event) -> bool:
        if event.action in self.settings.ignored_actions:
            return False
        return not (event.media_type and event.media_type in self.settings.ignored_media_types)

    # -- queue -----------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._held)

    def oldest_pending_age(self) -> float:
        heads = ([self._queue[0]] if self._queue else []) + self._held[:1]
        if not heads:
            return 0.0
        return max(0.0, self._clock.seconds() - min(h.created for h in heads))

    async def start(self) -> None:
        loaded = await self._journal.pending(self.name)
        known = {e.seq for e in loaded}
        self._queue.extend(loaded)
        self._queue.extend(e for e in self._held if e.seq not in known)
        self._held = []
        self._loading = False
        if loaded:
            log.info("notifications: {count} pending events for endpoint {endpoint}", count=len(loaded),
                     endpoint=self.name)
        self._kick()

    def enqueue(self, entry: JournalEntry) -> None:
        if self.pending >= self.settings.queue_limit:
            self.stats.dropped += 1
            self.stats.dead_letters += 1
            log.error("notifications: queue of endpoint {endpoint} is full ({limit} events); event {id} "
                      "goes to its dead letters ({dropped} so far)", endpoint=self.name,
                      limit=self.settings.queue_limit, id=entry.event_id, dropped=self.stats.dropped)
            self._journal.failed(self.name, [entry.seq], "queue limit reached", dead=True).addErrback(
                lambda f: log.failure("notifications: journal update failed", f))
            return
        if self._loading:
            self._held.append(entry)
        else:
            self._queue.append(entry)
            self._kick()

    def requeue(self, entries: list[JournalEntry]) -> None:
        """Replayed dead letters go to the back of the queue."""
        for entry in entries:
            self.enqueue(entry)

    # -- delivery loop ---------------------------------------------------

    def _kick(self) -> None:
        if self._busy or self._retry is not None or self._stopped or not self._queue:
            if not self._busy and not self._queue:
                self._notify_idle()
            return
        self._busy = True
        self._in_flight = defer.ensureDeferred(self._deliver_head())
        self._in_flight.addErrback(self._loop_error)
        self._in_flight.addBoth(self._after_attempt)

    @staticmethod
    def _loop_error(failure):
        if not failure.check(defer.CancelledError):
            log.failure("notifications: delivery loop error", failure)

    def _after_attempt(self, _):
        self._busy = False
        self._in_flight = None
        self._kick()

    async def _deliver_head(self) -> None:
        batch = [self._queue[i] for i in range(min(self.settings.batch, len(self._queue)))]
        body, content_type = envelope([json.loads(e.body) for e in batch], self.settings.format)
        message_id = batch[0].event_id if len(batch) == 1 else f"{batch[0].event_id}+{len(batch) - 1}"
        self.stats.attempts += 1
        try:
            await self._sink.deliver(body, content_type, message_id)
        except defer.CancelledError:
            raise
        except Exception as e:
            await self._failed(batch, str(e) or type(e).__name__)
            return
        self.stats.successes += 1
        self.stats.delivered_events += len(batch)
        for _ in batch:
            self._queue.popleft()
        # Not awaited: the next POST need not wait for this bookkeeping, which is
        # group-committed; if it is lost in a crash the event is sent again, same id.
        self._journal.delivered(self.name, [e.seq for e in batch]).addErrback(
            lambda f: log.failure("notifications: journal update failed", f))

    async def _failed(self, batch: list[JournalEntry], error: str) -> None:
        self.stats.failures += 1
        self.stats.last_error = error
        attempts = batch[0].attempts + 1
        now = self._clock.seconds()
        limit = self.settings.max_retries
        expired = (limit and attempts >= limit) or now - batch[0].created >= self.settings.max_age
        log.warn("notifications: delivery to {endpoint} failed (attempt {attempts}): {error}",
                 endpoint=self.name, attempts=attempts, error=error)
        for i, entry in enumerate(batch):
            self._queue[i] = attrs.evolve(entry, attempts=attempts, last_error=error)
        await self._journal.failed(self.name, [e.seq for e in batch], error, dead=bool(expired))
        if expired:
            for _ in batch:
                self._queue.popleft()
            self.stats.dead_letters += len(batch)
            log.error("notifications: {count} events for {endpoint} moved to dead letters after {attempts} "
                      "attempts: {error}", count=len(batch), endpoint=self.name, attempts=attempts, error=error)
            return
        if self._stopped:
            return  # the journal keeps it for the next start
        delay = backoff_delay(self.settings, attempts, self._jitter())
        self._retry = self._clock.callLater(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._kick()

    # -- stopping --------------------------------------------------------

    def _notify_idle(self) -> None:
        waiting, self._idle = self._idle, []
        for d in waiting:
            if not d.called:
                d.callback(None)

    def drain(self, timeout: float) -> defer.Deferred:
        """Fires when the queue is empty or C{timeout} passed; then the loop stops."""
        d: defer.Deferred = defer.Deferred()
        if not self._queue and not self._busy:
            d.callback(None)
        else:
            self._idle.append(d)
            if self._retry is not None:  # one more try now rather than after the backoff
                self._retry.cancel()
                self._retry = None
                self._kick()
        timer = self._clock.callLater(timeout, lambda: d.called or d.callback(None))

        def stop(_):
            if timer.active():
                timer.cancel()
            self.stop()

        return d.addBoth(stop)

    def stop(self) -> None:
        self._stopped = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._in_flight is not None:
            self._in_flight.cancel()
