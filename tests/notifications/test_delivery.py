"""Delivery in a thread of its own, fed from the journal (as the daemon builds it)."""

from __future__ import annotations

import os
import threading

from twisted.internet import reactor, task
from twisted.trial.unittest import TestCase

from regd.notifications.build import build_notifications
from regd.notifications.journal import Journal
from regd.storage.threads import inline_runner
from tests.support.receiver import Receiver


def _event(i: int) -> str:
    return '{"id": "ev%d", "action": "push", "target": {"repository": "r"}}' % i


class DeliveryThreadTests(TestCase):
    def build(self, url, deliver=True, **endpoint):
        self.path = os.path.join(os.path.abspath(self.mktemp()), "journal.sqlite3")
        raw = {"draintimeout": "1s", "endpoints": [{"name": "ci", "url": url, "backoff": "50ms", **endpoint}]}
        service, _, _ = build_notifications(raw, reactor=reactor, default_journal=self.path, source_addr="regd:5000",
                                            deliver=deliver)
        self.threads = []
        if deliver:
            sink = service.endpoints[0]._sink
            deliver_on = sink.deliver

            def recording(*args):
                self.threads.append(threading.current_thread().name)
                return deliver_on(*args)

            sink.deliver = recording
        service.startService()
        self.addCleanup(service.stopService)
        return service

    async def wait(self, condition, timeout=10.0):
        for _ in range(int(timeout / 0.02)):
            if condition():
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        self.fail("condition not met in time")

    def other_process_journal(self):
        """A second connection to the same journal file, as another worker process would hold."""
        other = Journal(self.path, inline_runner)
        other._open()
        self.addCleanup(other._close)
        return other

    async def test_events_go_out_from_the_delivery_thread_in_journal_order(self):
        receiver = Receiver()
        service = self.build(receiver.listen(self))
        await self.wait(lambda: service._feed is not None)
        for i in range(5):
            await service.journal.append(f"ev{i}", _event(i), ("ci",))
            service._delivery.reactor.callFromThread(service._wake_feed)
        other = self.other_process_journal()
        for i in range(5, 10):  # journaled by "another worker": found by the feed's poll, no wake-up
            other.append(f"ev{i}", _event(i), ("ci",))
        await receiver.wait_for(10)
        self.assertEqual([e["id"] for e in receiver.events()], [f"ev{i}" for i in range(10)])
        self.assertEqual(set(self.threads), {"regd-webhooks"})
        self.assertIsNot(service.endpoints[0]._clock, reactor)
        await self.wait(lambda: service.endpoints[0].stats.successes == 10)

    async def test_events_journaled_while_stopped_are_delivered_on_start(self):
        receiver = Receiver()
        url = receiver.listen(self)
        self.path = os.path.join(os.path.abspath(self.mktemp()), "journal.sqlite3")
        os.makedirs(os.path.dirname(self.path))
        earlier = Journal(self.path, inline_runner)
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
        await self.wait(lambda: service._feed is not None)
        await service.journal.append("ev0", _event(0), ("ci",))
        service._delivery.reactor.callFromThread(service._wake_feed)
        endpoint = service.endpoints[0]
        await self.wait(lambda: endpoint.stats.dead_letters == 1)
        self.assertEqual(endpoint.stats.failures, 2)
        self.assertEqual(await service.replay("ci"), 1)
        await receiver.wait_for(1)
        self.assertEqual([e["id"] for e in receiver.events()], ["ev0"])
        await self.wait(lambda: endpoint.stats.successes == 1 and endpoint.stats.dead_letters == 0)
