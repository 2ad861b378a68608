"""NotificationService as the registry's listener, over real sockets, plus its admin resource."""

import json
import os

import treq
from twisted.internet import reactor, task
from twisted.internet import defer
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from regd.notifications.admin import NotificationAdmin
from regd.notifications.httpsink import HTTPSink, make_client
from regd.notifications.journal import Journal
from regd.notifications.service import JournalUnavailable, NotificationService
from regd.notifications.settings import parse_notifications
from regd.storage.threads import inline_runner
from tests.support.receiver import Receiver
from tests.support.server import RegistryServer, simple_image


class ServiceTests(TestCase):
    def build(self, endpoints, include_references=True):
        self.server = RegistryServer(self)
        settings, _ = parse_notifications({"events": {"includereferences": include_references}, "draintimeout": "200ms",
                                           "endpoints": endpoints},
                                          os.path.join(os.path.abspath(self.mktemp()), "journal.sqlite3"))
        self.journal = Journal(settings.journal, inline_runner, wallclock=reactor.seconds)
        pools = []

        def sink_factory(endpoint_settings):
            client, pool = make_client(reactor, endpoint_settings)
            pools.append(pool)
            return HTTPSink(endpoint_settings, client, reactor)

        self.service = NotificationService(settings, self.journal, sink_factory, reactor, source_addr="regd:5000",
                                           instance_id="inst")
        self.service.startService()
        self.addCleanup(self.service.stopService)
        for pool in pools:
            self.addCleanup(pool.closeCachedConnections)
        self.server.registry.add_listener(self.service)
        return self.service

    async def test_push_produces_registry2_events(self):
        receiver = Receiver()
        self.build([{"name": "ci", "url": receiver.listen(self), "ignore": {"actions": ["pull"]}}])
        document = await simple_image(self.server, "team/app")
        _, _, raw = await self.server.push_manifest("team/app", "v1", document)
        await self.server.request("GET", "/v2/team/app/manifests/v1")  # a pull: ignored by this endpoint
        await receiver.wait_for(3)
        events = receiver.events()
        self.assertEqual([(e["action"], e["target"]["mediaType"]) for e in events], [
            ("push", "application/octet-stream"), ("push", "application/octet-stream"),
            ("push", "application/vnd.oci.image.manifest.v1+json")])
        manifest = events[2]
        self.assertEqual(manifest["target"]["tag"], "v1")
        self.assertEqual(manifest["target"]["repository"], "team/app")
        self.assertEqual(manifest["target"]["size"], len(raw))
        self.assertEqual(manifest["target"]["references"],
                         [{"digest": document["config"]["digest"]}, {"digest": document["layers"][0]["digest"]}])
        self.assertEqual(manifest["request"]["method"], "PUT")
        self.assertTrue(manifest["target"]["url"].startswith(self.server.base + "/v2/team/app/manifests/sha256:"))
        self.assertEqual(manifest["source"], {"addr": "regd:5000", "instanceID": "inst"})
        self.assertEqual(len({e["id"] for e in events}), 3)

    async def test_event_is_journaled_before_the_client_gets_its_answer(self):
        receiver = Receiver()
        url = receiver.listen(self)
        await receiver.port.stopListening()  # receiver down
        self.build([{"name": "down", "url": url, "backoff": "10s"}])
        await self.server.push_blob("r", b"payload")
        pending = self.successResultOf(self.journal.pending("down"))
        self.assertEqual(len(pending), 1)
        self.assertEqual(json.loads(pending[0].body)["target"]["repository"], "r")

    async def test_admin_status_dead_letters_replay_and_metrics(self):
        receiver = Receiver()
        receiver.fail_next = 1
        service = self.build([{"name": "ci", "url": receiver.listen(self), "maxretries": 1}])
        admin = NotificationAdmin(service)
        from regd.daemon.tap import debug_resource
        port = reactor.listenTCP(0, Site(debug_resource(admin.metrics, None, admin)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}"
        await self.server.push_blob("r", b"first")
        for _ in range(200):  # the failing attempt happens after the push was answered
            if service.endpoints[0].stats.dead_letters:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        answer = await treq.get(base + "/debug/notifications", persistent=False, allow_redirects=False)
        self.assertEqual(answer.code, 200)  # no redirect to .../
        status = json.loads(await treq.content(answer))
        self.assertEqual(status["endpoints"]["ci"]["dead_letters"], 1)
        self.assertEqual(status["endpoints"]["ci"]["last_error"], "HTTP 503")
        dead = json.loads(await treq.content(await treq.get(base + "/debug/notifications/ci/deadletters",
                                                            persistent=False)))
        self.assertEqual(dead["deadletters"][0]["event"]["target"]["repository"], "r")
        event_id = dead["deadletters"][0]["id"]
        nothing = json.loads(await treq.content(await treq.post(
            base + "/debug/notifications/ci/deadletters/replay?id=no-such-event", persistent=False)))
        self.assertEqual(nothing["replayed"], 0)
        replay = json.loads(await treq.content(await treq.post(
            base + f"/debug/notifications/ci/deadletters/replay?id={event_id}", persistent=False)))
        self.assertEqual(replay["replayed"], 1)
        await receiver.wait_for(1)
        metrics = (await treq.content(await treq.get(base + "/metrics", persistent=False))).decode()
        self.assertIn('regd_notifications_failures_total{endpoint="ci"} 1.0', metrics)
        self.assertIn('regd_notifications_successes_total{endpoint="ci"} 1.0', metrics)
        self.assertIn('regd_notifications_pending{endpoint="ci"} 0.0', metrics)
        missing = await treq.get(base + "/debug/notifications/nope/deadletters", persistent=False)
        self.assertEqual(missing.code, 404)
        await treq.content(missing)


class BrokenJournal:
    def open(self):
        from twisted.internet import defer
        return defer.fail(OSError("read-only file system"))

    def close(self):
        raise AssertionError("never opened, never closed")


class NullSink:
    async def deliver(self, body, content_type, message_id):
        pass


class SecondFailureRacingARefresh:
    """
    A delivery process whose endpoint's second (last) failed attempt lands right after it answered a
    request for figures: counted in its figures, then written to the journal as a dead letter.
    """

    def __init__(self, journal):
        self.journal = journal
        self.on_figures = None
        self.failures = 1
        self.seq = None

    def start(self):
        pass

    def wake(self):
        pass

    async def stop(self, timeout):
        pass

    async def refresh(self):
        self.on_figures({"endpoint": "ci", "attempts": self.failures, "successes": 0, "failures": self.failures,
                         "delivered_events": 0, "dead_letters": self.failures // 2, "last_error": "refused",
                         "pending": 0, "pending_bytes": 0, "oldest_pending_age": 0.0})
        if self.failures == 1:
            self.failures = 2
            await self.journal.failed("ci", [self.seq], "refused", dead=True)


class ServiceUnitTests(SynchronousTestCase):
    def settings(self, url="http://user:pw@hooks.example:8080/in?token=t0p"):
        settings, _ = parse_notifications({"endpoints": [{"name": "ci", "url": url}]}, "/nonexistent/j.sqlite3")
        return settings

    def test_a_journal_that_cannot_open_never_holds_requests(self):
        from regd.registry.context import RequestContext
        from regd.registry.listener import RegistryEvent
        service = NotificationService(self.settings(), BrokenJournal(), lambda s: NullSink(), task.Clock())
        event = RegistryEvent("push", "blob", "r", RequestContext())
        waiting = service.registry_event(event)  # before the journal tried to open
        with capturedLogs() as logs:
            service.startService()
        self.assertIn("NO events will be sent", "".join(e["log_format"] for e in logs))
        self.flushLoggedErrors(OSError)
        self.failureResultOf(waiting, JournalUnavailable)
        self.failureResultOf(service.registry_event(event), JournalUnavailable)
        self.successResultOf(defer.ensureDeferred(service.stopService()))

    def test_status_shows_the_url_without_credentials(self):
        journal = Journal(os.path.join(os.path.abspath(self.mktemp()), "j.sqlite3"), inline_runner)
        service = NotificationService(self.settings(), journal, lambda s: NullSink(), task.Clock())
        service.startService()
        self.addCleanup(lambda: self.successResultOf(defer.ensureDeferred(service.stopService())))
        status = self.successResultOf(defer.ensureDeferred(service.status()))
        self.assertEqual(status["ci"]["url"], "http://hooks.example:8080/in")
        self.assertNotIn("pw", json.dumps(status))

    def test_status_never_shows_a_dead_letter_beside_fewer_failures_than_it_took(self):
        journal = Journal(os.path.join(os.path.abspath(self.mktemp()), "j.sqlite3"), inline_runner)
        settings, _ = parse_notifications({"endpoints": [{"name": "ci", "url": "http://hooks.example/in",
                                                          "maxretries": 2}]}, "/nonexistent/j.sqlite3")
        delivery = SecondFailureRacingARefresh(journal)
        service = NotificationService(settings, journal, lambda s: NullSink(), task.Clock(), delivery=delivery)
        service.startService()
        self.addCleanup(lambda: self.successResultOf(defer.ensureDeferred(service.stopService())))
        seq = self.successResultOf(journal.append("ev1", json.dumps({"id": "ev1"}), ("ci",)))
        self.successResultOf(journal.failed("ci", [seq], "refused", dead=False))  # the first attempt
        delivery.seq = seq
        first = self.successResultOf(defer.ensureDeferred(service.status()))["ci"]
        # maxretries 2: each dead letter shown took two failures, whenever the second one lands.
        self.assertGreaterEqual(first["failures"], 2 * first["dead_letters"])
        second = self.successResultOf(defer.ensureDeferred(service.status()))["ci"]
        self.assertEqual((second["failures"], second["dead_letters"]), (2, 1))
