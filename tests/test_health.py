"""Health checks with a Clock: thresholds, recovery, the JSON report and 503s."""

import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from regd.daemon.health import Check, HealthResource, HealthService, storage_check_settings


class HealthTests(SynchronousTestCase):
    def test_threshold_report_and_recovery(self):
        clock = Clock()
        broken = [True]

        def probe():
            if broken[0]:
                return defer.fail(OSError("disk gone"))
            return defer.succeed(None)

        health = HealthService(clock, [(Check("storagedriver_filesystem", probe, 3), 10.0)],
                               {"notifications": lambda: {"ci": {"pending": 2}}})
        health.startService()
        self.addCleanup(health.stopService)
        self.assertTrue(health.healthy)  # one failure is below the threshold
        clock.advance(10)
        clock.advance(10)
        self.assertFalse(health.healthy)
        request = DummyRequest([b""])
        body = json.loads(HealthResource(health).render_GET(request))
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(body["storagedriver_filesystem"]["status"], "failing")
        self.assertEqual(body["storagedriver_filesystem"]["error"], "OSError: disk gone")
        self.assertEqual(body["notifications"], {"ci": {"pending": 2}})
        broken[0] = False
        clock.advance(10)
        self.assertTrue(health.healthy)
        request = DummyRequest([b""])
        HealthResource(health).render_GET(request)
        self.assertEqual(request.responseCode, 200)

    def test_a_non_critical_check_is_degraded_not_failing(self):
        clock = Clock()
        health = HealthService(clock, [(Check("redis", lambda: defer.fail(OSError("refused")), 1, critical=False),
                                        10.0)])
        health.startService()
        self.addCleanup(health.stopService)
        request = DummyRequest([b""])
        body = json.loads(HealthResource(health).render_GET(request))
        self.assertEqual(request.responseCode, 200)
        self.assertTrue(health.healthy)
        self.assertEqual(body["redis"]["status"], "degraded")
        self.assertEqual(body["redis"]["error"], "OSError: refused")

    def test_registry2_settings(self):
        self.assertEqual(storage_check_settings({}), (True, 10.0, 3))
        self.assertEqual(storage_check_settings({"storagedriver": {"enabled": False, "interval": "1m",
                                                                   "threshold": 5}}), (False, 60.0, 5))
