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

from regd.notifications.events import ENVELOPE_MEDIA_TYPE, envelope
from regd.notifications.journal import JournalClosed, JournalEntry

log = Logger()

DEFAULT_DEAD_LETTER_LIMIT = 100_000  # when queuelimit counts bytes, dead letters are still bounded
DROP_LOG_EVERY = 1000  # while full, one error line per this many dropped events


def _bookkeeping_failed(failure):
    if not failure.check(JournalClosed):  # at shutdown: the event is simply sent again next start
        log.failure("notifications: journal update failed", failure)


@attrs.define
class EndpointStats:
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    delivered_events: int = 0
    dead_letters: int = 0
    dropped: int = 0
    last_error: str = ""
    full: bool = False  # the queue limit was reached and events are being dropped


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
        self.pending_bytes = 0
        self._kick_call = None
        self._loading = True
        self._busy = False
        self._retry = None
        self._stopped = False
        self._idle: list[defer.Deferred] = []
        self._in_flight: defer.Deferred | None = None
        self.last_seq = 0  # the highest journal sequence number queued here (see delivery.JournalFeed)

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
        _, self.stats.dead_letters = await self._journal.counts(self.name)
        loaded = await self._journal.pending(self.name)
        known = {e.seq for e in loaded}
        self.pending_bytes = sum(len(e.body) for e in loaded) + sum(
            len(e.body) for e in self._held if e.seq not in known)
        self._queue.extend(loaded)
        self._queue.extend(e for e in self._held if e.seq not in known)
        self.last_seq = max([self.last_seq] + [e.seq for e in self._queue])
        self._held = []
        self._loading = False
        if loaded:
            log.info("notifications: {count} pending events for endpoint {endpoint}", count=len(loaded),
                     endpoint=self.name)
        self._kick()

    def admit(self, size: int) -> bool:
        """
        Whether a new event of C{size} bytes fits under `queuelimit`. At the
        limit the event is dropped for this endpoint (never journaled, so the
        disk stays bounded and the push is not held up): counted, and logged
        as an error when it starts, every DROP_LOG_EVERY drops, and when it ends.
        """
        limit, limit_bytes = self.settings.queue_limit, self.settings.queue_limit_bytes
        fits = not ((limit and self.pending + 1 > limit) or (limit_bytes and self.pending_bytes + size > limit_bytes))
        if fits:
            if self.stats.full:
                self.stats.full = False
                log.warn("notifications: endpoint {endpoint} is below its queue limit again after {dropped} "
                         "dropped events", endpoint=self.name, dropped=self.stats.dropped)
            return True
        self.stats.dropped += 1
        if not self.stats.full or self.stats.dropped % DROP_LOG_EVERY == 0:
            log.error("notifications: queue of endpoint {endpoint} is full ({pending} events, {pending_bytes} "
                      "bytes; queuelimit {limit}); new events for it are DROPPED ({dropped} so far)",
                      endpoint=self.name, pending=self.pending, pending_bytes=self.pending_bytes,
                      limit=limit or f"{limit_bytes} bytes", dropped=self.stats.dropped)
        self.stats.full = True
        return False

    def enqueue(self, entry: JournalEntry) -> None:
        """Queue a journaled event; delivery starts on the next reactor turn, after the request's answer."""
        self.pending_bytes += len(entry.body)
        self.last_seq = max(self.last_seq, entry.seq)
        if self._loading:
            self._held.append(entry)
            return
        self._queue.append(entry)
        if self._kick_call is None and not self._busy and self._retry is None and not self._stopped:
            self._kick_call = self._clock.callLater(0, self._deferred_kick)

    def _deferred_kick(self) -> None:
        self._kick_call = None
        self._kick()

    def requeue(self, entries: list[JournalEntry]) -> None:
        """Replayed dead letters go to the back of the queue (unless the journal feed queued them already)."""
        queued = {e.seq for e in self._queue} | {e.seq for e in self._held}
        for entry in entries:
            if entry.seq not in queued:
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
        if self.settings.format == "distribution":
            # The journal holds each event as registry:2 JSON already: splice, don't re-encode.
            body, content_type = b'{"events": [' + ", ".join(e.body for e in batch).encode() + b"]}", ENVELOPE_MEDIA_TYPE
        else:
            body, content_type = envelope([json.loads(e.body) for e in batch], self.settings.format,
                                          batched=self.settings.batch > 1)
        message_id = batch[0].event_id if len(batch) == 1 else f"{batch[0].event_id}+{len(batch) - 1}"
        self.stats.attempts += 1
        try:
            await self._sink.deliver(body, content_type, message_id)
        except defer.CancelledError:
            raise
        except Exception as e:
            if self._stopped:  # cut short by stop(): not the receiver's fault, try again next start
                raise defer.CancelledError() from None
            await self._failed(batch, str(e) or type(e).__name__)
            return
        self.stats.successes += 1
        self.stats.delivered_events += len(batch)
        self._pop(len(batch))
        # Not awaited: the next POST need not wait for this bookkeeping, which is
        # group-committed; if it is lost in a crash the event is sent again, same id.
        self._journal.delivered(self.name, [e.seq for e in batch]).addErrback(_bookkeeping_failed)

    def _pop(self, count: int) -> None:
        for _ in range(count):
            self.pending_bytes -= len(self._queue.popleft().body)

    async def _failed(self, batch: list[JournalEntry], error: str) -> None:
        self.stats.failures += 1
        self.stats.last_error = error
        attempts = batch[0].attempts + 1
        now = self._clock.seconds()
        limit = self.settings.max_retries
        expired = (limit and attempts >= limit) or now - batch[0].created >= self.settings.max_age
        # Names and ids only: header values and secrets never reach the log.
        log.warn("notifications: delivery to {endpoint} failed (attempt {attempts}, event {event_id}, "
                 "{count} in batch): {error}", endpoint=self.name, attempts=attempts,
                 event_id=batch[0].event_id, count=len(batch), error=error)
        for i, entry in enumerate(batch):
            self._queue[i] = attrs.evolve(entry, attempts=attempts, last_error=error)
        try:
            pruned = await self._journal.failed(self.name, [e.seq for e in batch], error, dead=bool(expired),
                                                keep_dead=self.settings.queue_limit or DEFAULT_DEAD_LETTER_LIMIT)
        except JournalClosed:
            return
        self.stats.dead_letters -= pruned or 0
        if expired:
            self._pop(len(batch))
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

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stop(self) -> None:
        self._stopped = True
        if self._kick_call is not None:
            self._kick_call.cancel()
            self._kick_call = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._in_flight is not None:
            self._in_flight.cancel()
