# -*- test-case-name: tests.notifications.test_delivery -*-
"""
Feeding the endpoints from the journal, in the delivery process
(L{regd.notifications.deliverer}).

The request path only appends each event to the durable journal (and the
request waits for that). The delivery side is fed from the journal, not
from memory: a wake-up from the serving process after its commits, and a
poll that notices commits by other processes (several workers share one
journal; one delivery process runs per journal) both read the rows past
the last sequence number each endpoint has seen, after writing the
delivery rows of the events appended since the last read (the serving
side appends event rows only; see L{regd.notifications.journal}). Sequence numbers are
assigned under SQLite's write lock, so commit order is sequence order and
the "after the last one seen" read never skips a row.
"""

from __future__ import annotations

from twisted.logger import Logger

log = Logger()

POLL_INTERVAL = 0.1  # seconds between checks for events journaled by other processes
PAGE = 10_000


class JournalFeed:
    """
    Runs in the delivery process: hands each endpoint the journal rows past
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
        # Events appended since the last poll get their delivery rows first (one transaction for all).
        self._journal.fan_out_pending()
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
