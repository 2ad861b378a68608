"""Per-endpoint delivery with a Clock and a fake sink: order, backoff, isolation, dead letters, limits, batches."""

import json
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from regd.notifications.endpoint import Endpoint, backoff_delay
from regd.notifications.journal import Journal, JournalEntry
from regd.notifications.settings import EndpointSettings
from regd.storage.threads import inline_runner


class FakeSink:
    def __init__(self, fail_times=0, hang=False):
        self.fail_times = fail_times
        self.hang = hang
        self.posts = []  # (ids, content_type, message_id)
        self.attempt_times = []
        self.clock = None

    async def deliver(self, body, content_type, message_id):
        self.attempt_times.append(self.clock.seconds())
        if self.hang:
            await defer.Deferred()
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("HTTP 503")
        document = json.loads(body)
        entries = document["events"] if isinstance(document, dict) else [e["data"] for e in document]
        self.posts.append(([e["id"] for e in entries], content_type, message_id))


class EndpointTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        path = os.path.join(os.path.abspath(self.mktemp()), "j.sqlite3")
        self.journal = Journal(path, inline_runner, wallclock=self.clock.seconds)
        self.successResultOf(self.journal.open())
        self.addCleanup(self.journal._close)

    def endpoint(self, sink, **settings):
        settings.setdefault("name", "ep")
        settings.setdefault("url", "http://x/")
        sink.clock = self.clock
        endpoint = Endpoint(EndpointSettings(**settings), self.journal, sink, self.clock, jitter=lambda: 1.0)
        self.successResultOf(defer.ensureDeferred(endpoint.start()))
        return endpoint

    def push(self, endpoints, n=1, start=0, turn=True):
        """Journal and queue n events as the service does; C{turn}: let the reactor turn once (delivery starts)."""
        for i in range(start, start + n):
            event_id = f"e{i}"
            body = json.dumps({"id": event_id, "action": "push", "target": {"repository": "r"}})
            admitted = [e for e in endpoints if e.admit(len(body))]
            seq = self.successResultOf(self.journal.append(event_id, body, tuple(e.name for e in admitted)))
            for endpoint in admitted:
                endpoint.enqueue(JournalEntry(seq, event_id, self.clock.seconds(), body))
        if turn:
            self.clock.advance(0)

    def test_delivers_in_order(self):
        sink = FakeSink()
        endpoint = self.endpoint(sink)
        self.push([endpoint], 5)
        self.assertEqual([p[0] for p in sink.posts], [["e0"], ["e1"], ["e2"], ["e3"], ["e4"]])
        self.assertEqual(sink.posts[0][2], "e0")
        self.assertEqual(self.successResultOf(self.journal.pending("ep")), [])
        self.assertEqual((endpoint.stats.successes, endpoint.pending), (5, 0))

    def test_retries_with_bounded_exponential_backoff_keeping_order(self):
        sink = FakeSink(fail_times=4)
        endpoint = self.endpoint(sink, backoff=1.0, max_backoff=5.0)
        self.push([endpoint], 2)
        for _ in range(20):
            self.clock.advance(1)
        gaps = [b - a for a, b in zip(sink.attempt_times, sink.attempt_times[1:])]
        self.assertEqual(gaps[:4], [1.0, 2.0, 4.0, 5.0])  # doubling, capped at maxbackoff
        self.assertEqual([p[0] for p in sink.posts], [["e0"], ["e1"]])
        self.assertEqual((endpoint.stats.failures, endpoint.stats.last_error), (4, "HTTP 503"))

    def test_jitter_stays_within_half_to_full_delay(self):
        settings = EndpointSettings(name="x", url="http://x/", backoff=2.0, max_backoff=60.0)
        for attempts in range(1, 10):
            full = min(60.0, 2.0 * 2 ** (attempts - 1))
            self.assertEqual(backoff_delay(settings, attempts, 0.0), full / 2)
            self.assertEqual(backoff_delay(settings, attempts, 1.0), full)

    def test_a_dead_endpoint_does_not_delay_another(self):
        dead, alive = FakeSink(hang=True), FakeSink()
        slow = self.endpoint(dead, name="dead")
        fast = self.endpoint(alive, name="alive")
        self.push([slow, fast], 3)
        self.assertEqual(len(alive.posts), 3)
        self.assertEqual(slow.pending, 3)

    def test_dead_letter_after_max_retries_then_next_event(self):
        sink = FakeSink(fail_times=3)
        endpoint = self.endpoint(sink, max_retries=3, backoff=1.0)
        self.push([endpoint], 2)
        self.clock.advance(1)
        self.clock.advance(2)
        [dead] = self.successResultOf(self.journal.dead_letters("ep"))
        self.assertEqual((dead.event_id, dead.attempts), ("e0", 3))
        self.assertEqual([p[0] for p in sink.posts], [["e1"]])
        self.assertEqual(endpoint.stats.dead_letters, 1)

    def test_dead_letter_after_max_age(self):
        sink = FakeSink(fail_times=100)
        endpoint = self.endpoint(sink, max_age=10.0, backoff=4.0, max_backoff=4.0)
        self.push([endpoint], 1)
        for _ in range(4):
            self.clock.advance(4)
        self.assertEqual(len(self.successResultOf(self.journal.dead_letters("ep"))), 1)
        self.assertEqual(endpoint.pending, 0)

    def test_delivery_starts_only_after_the_current_reactor_turn(self):
        # The request that caused the event is answered in this turn; the POST comes after.
        sink = FakeSink()
        endpoint = self.endpoint(sink)
        self.push([endpoint], 2, turn=False)
        self.assertEqual((sink.posts, endpoint.pending), ([], 2))
        self.clock.advance(0)
        self.assertEqual([p[0] for p in sink.posts], [["e0"], ["e1"]])

    def test_queue_limit_drops_loudly_never_blocks_and_keeps_the_disk_bounded(self):
        sink = FakeSink(hang=True)
        endpoint = self.endpoint(sink, queue_limit=3)
        other = self.endpoint(FakeSink(hang=True), name="other")
        with capturedLogs() as logs:
            self.push([endpoint, other], 5)
        self.assertEqual((endpoint.pending, endpoint.stats.dropped, endpoint.stats.full), (3, 2, True))
        self.assertEqual(other.pending, 5)  # another endpoint's limit is its own
        # Dropped events are not journaled for the full endpoint: its disk use stays bounded.
        self.assertEqual([e.event_id for e in self.successResultOf(self.journal.pending("ep"))], ["e0", "e1", "e2"])
        self.assertEqual(self.successResultOf(self.journal.dead_letters("ep")), [])
        errors = [e for e in logs if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)  # said once when it fills up, not once per event
        self.assertIn("DROPPED", formatEvent(errors[0]))
        sink.hang = False
        endpoint._in_flight.cancel()
        self.clock.advance(1)
        self.push([endpoint], 1, start=5)
        self.assertFalse(endpoint.stats.full)
        self.assertEqual(endpoint.pending, 0)

    def test_queue_limit_in_bytes(self):
        endpoint = self.endpoint(FakeSink(hang=True), queue_limit=0, queue_limit_bytes=200)
        self.push([endpoint], 5)  # each event is ~60 bytes of JSON
        self.assertEqual((endpoint.pending, endpoint.stats.dropped), (3, 2))
        self.assertLessEqual(endpoint.pending_bytes, 200)

    def test_dead_letters_are_bounded_by_the_queue_limit(self):
        sink = FakeSink(fail_times=100)
        endpoint = self.endpoint(sink, max_retries=1, queue_limit=2)
        for i in range(5):
            self.push([endpoint], 1, start=i)
        self.assertEqual([e.event_id for e in self.successResultOf(self.journal.dead_letters("ep"))], ["e3", "e4"])
        self.assertEqual(self.journal._db.execute("SELECT COUNT(*) FROM events").fetchone()[0], 2)
        self.assertEqual(endpoint.stats.dead_letters, 2)
        endpoint.stop()
        self.assertEqual(self.endpoint(FakeSink()).stats.dead_letters, 2)  # counted again after a restart

    def test_stopping_cuts_the_attempt_short_without_counting_a_failure(self):
        sink = FakeSink(hang=True)
        endpoint = self.endpoint(sink, max_retries=1)
        self.push([endpoint], 1)
        endpoint.stop()
        self.assertEqual(endpoint.stats.failures, 0)
        [pending] = self.successResultOf(self.journal.pending("ep"))
        self.assertEqual((pending.event_id, pending.attempts), ("e0", 0))
        self.assertEqual(self.successResultOf(self.journal.dead_letters("ep")), [])

    def test_batching(self):
        sink = FakeSink(hang=True)
        endpoint = self.endpoint(sink, batch=3)
        self.push([endpoint], 7)  # e0 goes alone (the loop was idle); the rest queue behind it
        sink.hang = False
        endpoint._in_flight.cancel()
        self.clock.advance(1)
        self.assertEqual([p[0] for p in sink.posts], [["e0", "e1", "e2"], ["e3", "e4", "e5"], ["e6"]])
        self.assertEqual(sink.posts[0][2], "e0+2")

    def test_pending_events_reload_on_start(self):
        sink = FakeSink(hang=True)
        first = self.endpoint(sink)
        self.push([first], 3)
        first.stop()
        again = FakeSink()
        self.endpoint(again)
        self.assertEqual([p[0] for p in again.posts], [["e0"], ["e1"], ["e2"]])

    def test_ignore_filters(self):
        from regd.registry.context import RequestContext
        from regd.registry.listener import RegistryEvent
        endpoint = Endpoint(EndpointSettings(name="e", url="http://x/", ignored_actions=frozenset({"pull"}),
                                             ignored_media_types=frozenset({"application/octet-stream"})),
                            self.journal, FakeSink(), self.clock)
        ctx = RequestContext()
        self.assertFalse(endpoint.accepts(RegistryEvent("pull", "manifest", "r", ctx, media_type="m")))
        self.assertFalse(endpoint.accepts(RegistryEvent("push", "blob", "r", ctx,
                                                        media_type="application/octet-stream")))
        self.assertTrue(endpoint.accepts(RegistryEvent("push", "manifest", "r", ctx, media_type="m")))

    def test_drain_delivers_then_stops(self):
        sink = FakeSink(fail_times=1)
        endpoint = self.endpoint(sink, backoff=30.0)
        self.push([endpoint], 2)
        d = endpoint.drain(5.0)  # retries at once instead of after 30 s
        self.successResultOf(d)
        self.assertEqual([p[0] for p in sink.posts], [["e0"], ["e1"]])
