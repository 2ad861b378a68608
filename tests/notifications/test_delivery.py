"""
Delivery in a process of its own, fed from the journal, as the daemon
builds it: a real `python -m regd.notifications.deliverer` child, a real
receiver on 127.0.0.1, a real journal file.
"""

from __future__ import annotations

import fcntl
import os
import signal
import types

from twisted.internet import reactor, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from regd.notifications.build import build_notifications
from regd.notifications.deliverer import lock_path
from regd.notifications.journal import Journal
from regd.storage.threads import inline_runner
from tests.support.receiver import Receiver

# The journal's tables before events named their endpoints: each append wrote one delivery row per endpoint.
OLD_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, created REAL NOT NULL,
                     body TEXT NOT NULL);
CREATE TABLE deliveries (endpoint TEXT NOT NULL, seq INTEGER NOT NULL REFERENCES events(seq),
                         attempts INTEGER NOT NULL DEFAULT 0, dead INTEGER NOT NULL DEFAULT 0,
                         last_error TEXT NOT NULL DEFAULT '', PRIMARY KEY (endpoint, seq));
CREATE INDEX deliveries_pending ON deliveries(endpoint, dead, seq);
CREATE INDEX deliveries_seq ON deliveries(seq);
"""


def write_old_format_journal(path: str, events, dead: tuple[str, ...] = ()) -> None:
    """(event id, body, endpoints) as the old journal held them; those named in C{dead} as dead letters."""
    import sqlite3
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(OLD_SCHEMA)
        for event_id, body, endpoints in events:
            seq = db.execute("INSERT INTO events (id, created, body) VALUES (?, 100.0, ?)", (event_id, body)).lastrowid
            for name in endpoints:
                db.execute("INSERT INTO deliveries (endpoint, seq, dead, attempts) VALUES (?, ?, ?, ?)",
                           (name, seq, int(event_id in dead), int(event_id in dead)))
    finally:
        db.close()


def _event(i: int) -> str:
    return '{"id": "ev%d", "action": "push", "target": {"repository": "r"}}' % i


def _lock_held(journal: str) -> bool:
    """Whether a delivery process holds the journal's lock (tried, and let go at once if free)."""
    try:
        fd = os.open(lock_path(journal), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


class DeliveryProcessTests(TestCase):
    timeout = 60

    def build(self, url, deliver=True, **endpoint):
        self.path = os.path.join(os.path.abspath(self.mktemp()), "journal.sqlite3")
        raw = {"draintimeout": "1s", "endpoints": [{"name": "ci", "url": url, "backoff": "50ms", **endpoint}]}
        service, _, _ = build_notifications(raw, reactor=reactor, default_journal=self.path, source_addr="regd:5000",
                                            deliver=deliver, log_settings={"level": "warn"})
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def wait(self, condition, timeout=20.0):
        for _ in range(int(timeout / 0.02)):
            if condition():
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        self.fail("condition not met in time")

    def other_process_journal(self):
        """A second connection to the same journal file, as another worker process would hold."""
        other = Journal(self.path, inline_runner, fan_out=False)
        other._open()
        self.addCleanup(other._close)
        return other

    async def journal_and_wake(self, service, i):
        await service.journal.append(f"ev{i}", _event(i), ("ci",))
        service._delivery.wake()

    async def test_events_go_out_from_the_delivery_process_in_journal_order(self):
        receiver = Receiver()
        service = self.build(receiver.listen(self))
        await self.wait(lambda: service._delivery.pid is not None)
        self.assertNotEqual(service._delivery.pid, os.getpid())
        for i in range(5):
            await self.journal_and_wake(service, i)
        other = self.other_process_journal()
        for i in range(5, 10):  # journaled by "another worker": found by the child's poll, no wake-up
            other.append(f"ev{i}", _event(i), ("ci",))
        await receiver.wait_for(10)
        self.assertEqual([e["id"] for e in receiver.events()], [f"ev{i}" for i in range(10)])
        endpoint = service.endpoints[0]
        # Figures come back from the delivery process; /debug/notifications asks for fresh ones.
        await self.wait(lambda: endpoint.stats.successes == 10 and endpoint.pending == 0)
        report = await service.status()
        self.assertEqual((report["ci"]["successes"], report["ci"]["delivered_events"]), (10, 10))
        await self.wait(lambda: other.counts("ci").result == (0, 0))  # bookkeeping reached the journal

    async def test_events_journaled_while_stopped_are_delivered_on_start(self):
        receiver = Receiver()
        url = receiver.listen(self)
        self.path = os.path.join(os.path.abspath(self.mktemp()), "journal.sqlite3")
        os.makedirs(os.path.dirname(self.path))
        earlier = Journal(self.path, inline_runner, fan_out=False)  # as regd journals: no delivery rows yet
        earlier._open()
        for i in range(3):
            earlier.append(f"ev{i}", _event(i), ("ci",))
        earlier._close()
        raw = {"endpoints": [{"name": "ci", "url": url}]}
        service, _, _ = build_notifications(raw, reactor=reactor, default_journal=self.path, source_addr="x")
        service.startService()
        self.addCleanup(service.stopService)
        await receiver.wait_for(3)
        self.assertEqual([e["id"] for e in receiver.events()], ["ev0", "ev1", "ev2"])

    async def test_events_queued_in_a_journal_of_the_old_format_are_delivered(self):
        """A journal written before events named their endpoints (delivery rows written with each event)."""
        receiver = Receiver()
        url = receiver.listen(self)
        self.path = os.path.join(os.path.abspath(self.mktemp()), "journal.sqlite3")
        os.makedirs(os.path.dirname(self.path))
        write_old_format_journal(self.path, [(f"ev{i}", _event(i), ("ci",)) for i in range(3)])
        raw = {"endpoints": [{"name": "ci", "url": url}]}
        service, _, _ = build_notifications(raw, reactor=reactor, default_journal=self.path, source_addr="x")
        service.startService()
        self.addCleanup(service.stopService)
        await self.wait(lambda: service._opened)
        await self.journal_and_wake(service, 3)  # a new event, in the new format, behind the old ones
        await receiver.wait_for(4)
        self.assertEqual([e["id"] for e in receiver.events()], ["ev0", "ev1", "ev2", "ev3"])

    async def test_a_stop_drains_events_journaled_since_the_last_wake_up(self):
        receiver = Receiver()
        self.path = os.path.join(os.path.abspath(self.mktemp()), "journal.sqlite3")
        raw = {"draintimeout": "5s", "endpoints": [{"name": "ci", "url": receiver.listen(self)}]}
        service, _, _ = build_notifications(raw, reactor=reactor, default_journal=self.path, source_addr="x",
                                            log_settings={"level": "warn"})
        service.startService()
        await self.wait(lambda: _lock_held(self.path))  # the delivery process is up and reading the journal
        await service.journal.append("ev0", _event(0), ("ci",))  # no wake-up
        await service.stopService()
        self.assertEqual([e["id"] for e in receiver.events()], ["ev0"])

    async def test_deliver_false_only_journals(self):
        receiver = Receiver()
        service = self.build(receiver.listen(self), deliver=False)
        self.assertIsNone(service._delivery)
        await self.wait(lambda: service._opened)
        await service.journal.append("ev0", _event(0), ("ci",))
        await task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(receiver.events(), [])
        self.assertEqual(await service.journal.counts("ci"), (1, 0))

    async def test_dead_letters_replayed_from_the_serving_side(self):
        receiver = Receiver()
        receiver.fail_next = 2
        service = self.build(receiver.listen(self), maxretries=2)
        await self.wait(lambda: service._delivery.pid is not None)
        await self.journal_and_wake(service, 0)
        endpoint = service.endpoints[0]
        await self.wait(lambda: endpoint.stats.dead_letters == 1)
        self.assertEqual(endpoint.stats.failures, 2)
        self.assertEqual(await service.journal.counts("ci"), (0, 1))
        self.assertEqual(await service.replay("ci"), 1)
        await receiver.wait_for(1)
        self.assertEqual([e["id"] for e in receiver.events()], ["ev0"])
        await self.wait(lambda: endpoint.stats.successes == 1 and endpoint.stats.dead_letters == 0)

    async def test_a_killed_delivery_process_is_replaced_and_nothing_is_lost(self):
        receiver = Receiver()
        receiver.stall = True  # the first POST never gets an answer: it is in flight when the kill comes
        service = self.build(receiver.listen(self), timeout="30s")
        delivery = service._delivery
        await self.wait(lambda: delivery.pid is not None)
        first = delivery.pid
        await self.journal_and_wake(service, 0)
        # Held by the receiver, not merely started: a POST still on its way when stall is lifted
        # would be answered and recorded, and the new process's resend of ev0 would then be a
        # (permitted, at-least-once) duplicate.
        await self.wait(lambda: receiver.stalled == 1)
        self.assertEqual(receiver.received, [])
        receiver.stall = False
        os.kill(first, signal.SIGKILL)
        await self.wait(lambda: delivery.pid not in (None, first))
        self.assertEqual(delivery.restarts, 1)
        await self.journal_and_wake(service, 1)
        await receiver.wait_for(2)
        self.assertEqual([e["id"] for e in receiver.events()], ["ev0", "ev1"])

    async def test_one_delivery_process_per_journal(self):
        receiver = Receiver()
        service = self.build(receiver.listen(self))
        await self.journal_and_wake(service, 0)
        await receiver.wait_for(1)
        self.assertTrue(_lock_held(self.path))  # by the running delivery process

    async def test_the_delivery_process_ends_when_regd_is_gone(self):
        """regd SIGKILLed: the pipe from it closes, and the delivery process ends by itself."""
        receiver = Receiver()
        service = self.build(receiver.listen(self))
        delivery = service._delivery
        await self.wait(lambda: _lock_held(self.path))  # the delivery process is up and delivering
        child = delivery._child
        delivery._running = False  # as if regd were gone: nobody restarts it
        child.transport.closeChildFD(0)  # what the kernel does to a SIGKILLed regd's end of the pipe
        await child.ended
        self.assertEqual(child.transport.status, 0)
        self.assertFalse(_lock_held(self.path))  # released: a new delivery process may start


class WakeUpTests(SynchronousTestCase):
    """regd's wake-ups to the delivery process: the first at once, then at most one per WAKE_INTERVAL."""

    def setUp(self):
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport
        from twisted.protocols import amp

        from regd.notifications.process import DeliveryProcess
        self.clock = Clock()
        self.delivery = DeliveryProcess(self.clock, {}, "unused.sqlite3")
        self.pipe = StringTransport()
        protocol = amp.AMP()
        protocol.makeConnection(self.pipe)
        self.delivery._child = types.SimpleNamespace(amp=protocol)  # the AMP end of the pipe to the child

    def sent(self) -> int:
        return self.pipe.value().count(b"Wake")

    def test_commits_within_an_interval_share_one_wake_up(self):
        from regd.notifications.process import WAKE_INTERVAL
        self.delivery.wake()
        self.clock.advance(0)
        self.assertEqual(self.sent(), 1)  # the first one on the next turn
        for _ in range(10):
            self.delivery.wake()
            self.clock.advance(WAKE_INTERVAL / 20)
        self.assertEqual(self.sent(), 1)  # later commits wait for the interval to pass...
        self.clock.advance(WAKE_INTERVAL)
        self.assertEqual(self.sent(), 2)  # ...and then share one wake-up
        self.clock.advance(WAKE_INTERVAL * 10)
        self.assertEqual(self.sent(), 2)  # none without a commit
        self.delivery.wake()
        self.clock.advance(0)
        self.assertEqual(self.sent(), 3)  # after a quiet spell, at once again
