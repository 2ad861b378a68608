"""The notifications section: registry:2 keys plus regd's."""

from twisted.trial.unittest import SynchronousTestCase

from regd.notifications.settings import NotificationConfigError, parse_notifications

REFERENCE = {
    "events": {"includereferences": True},
    "endpoints": [{
        "name": "alistener", "disabled": False, "url": "https://my.listener.example/event",
        "headers": {"Authorization": ["Bearer x"]}, "timeout": "1s", "threshold": 10, "backoff": "1s",
        "ignoredmediatypes": ["application/octet-stream"],
        "ignore": {"mediatypes": ["application/x"], "actions": ["pull"]},
    }],
}


class SettingsTests(SynchronousTestCase):
    def test_reference_config(self):
        settings, warnings = parse_notifications(REFERENCE, "/j.sqlite3")
        self.assertEqual(warnings, [])
        self.assertTrue(settings.include_references)
        self.assertEqual(settings.journal, "/j.sqlite3")
        endpoint = settings.endpoints[0]
        self.assertEqual((endpoint.name, endpoint.timeout, endpoint.backoff), ("alistener", 1.0, 1.0))
        self.assertEqual(endpoint.headers, {"Authorization": ("Bearer x",)})
        self.assertEqual(endpoint.ignored_media_types, {"application/octet-stream", "application/x"})
        self.assertEqual(endpoint.ignored_actions, {"pull"})
        self.assertEqual((endpoint.batch, endpoint.format, endpoint.max_retries), (1, "distribution", 0))

    def test_regd_keys(self):
        raw = {"endpoints": [{"name": "a", "url": "http://h/x", "maxretries": 5, "maxage": "1h",
                              "queuelimit": 10, "format": "cloudevents", "batch": 20,
                              "secrets": ["new", "old"], "tls": {"ca": "/ca.pem", "certificate": "/c", "key": "/k"},
                              "bogus": 1},
                             {"name": "off", "url": "http://h/y", "disabled": True}]}
        settings, warnings = parse_notifications(raw, "/j")
        self.assertEqual([e.name for e in settings.endpoints], ["a"])
        endpoint = settings.endpoints[0]
        self.assertEqual((endpoint.max_retries, endpoint.max_age, endpoint.queue_limit), (5, 3600.0, 10))
        self.assertEqual((endpoint.format, endpoint.batch, endpoint.secrets), ("cloudevents", 20, ("new", "old")))
        self.assertEqual((endpoint.ca_file, endpoint.client_certificate), ("/ca.pem", "/c"))
        self.assertEqual(warnings, ["unknown configuration key notifications.endpoints[0].bogus"])

    def test_errors_name_the_key(self):
        cases = [
            ({"endpoints": [{"name": "a", "url": "ftp://x"}]}, "notifications.endpoints[0].url: not an http(s) URL"),
            ({"endpoints": [{"url": "http://x"}]}, "notifications.endpoints[0].name: required, a name without '/'"),
            ({"endpoints": [{"name": "a", "url": "http://x", "timeout": "soon"}]},
             "notifications.endpoints[0].timeout: expected a duration like 10s or 1h30m, got 'soon'"),
            ({"endpoints": [{"name": "a", "url": "http://x", "format": "xml"}]},
             "notifications.endpoints[0].format: expected distribution or cloudevents"),
            ({"endpoints": [{"name": "a", "url": "http://x", "ignore": {"actions": ["jump"]}}]},
             "notifications.endpoints[0].ignore.actions: unknown action 'jump'"),
            ({"endpoints": [{"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"}]},
             "notifications.endpoints: endpoint names must be unique"),
            ({"endpoints": [{"name": "a", "url": "http://x", "batch": 0}]},
             "notifications.endpoints[0].batch: expected a whole number >= 1, got 0"),
        ]
        for raw, message in cases:
            with self.assertRaises(NotificationConfigError) as caught:
                parse_notifications(raw, "/j")
            self.assertEqual(str(caught.exception), message)

    def test_queuelimit_counts_events_or_bytes(self):
        def limit(value):
            settings, _ = parse_notifications({"endpoints": [{"name": "a", "url": "http://h/", "queuelimit": value}]},
                                              "/j")
            return settings.endpoints[0].queue_limit, settings.endpoints[0].queue_limit_bytes
        self.assertEqual(limit(500), (500, 0))
        self.assertEqual(limit("500"), (500, 0))
        self.assertEqual(limit("64MB"), (0, 64_000_000))
        self.assertEqual(limit("1GiB"), (0, 1024 ** 3))
        self.assertEqual(limit("10k"), (0, 10_000))
        for bad in ("lots", 0, "0MB", True):
            with self.assertRaises(NotificationConfigError) as caught:
                limit(bad)
            self.assertTrue(str(caught.exception).startswith("notifications.endpoints[0].queuelimit: "))
            self.assertNotIn("\n", str(caught.exception))

    def test_no_section(self):
        settings, warnings = parse_notifications(None, "/j")
        self.assertEqual((settings.endpoints, warnings), ((), []))


class SampleConfigTests(SynchronousTestCase):
    def test_the_documented_sample_endpoint_parses_without_warnings(self):
        import os

        import yaml
        sample = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "regd.yml")
        with open(sample) as f:
            raw = yaml.safe_load(f)["notifications"]
        raw["endpoints"][0]["disabled"] = False
        settings, warnings = parse_notifications(raw, "/j")
        self.assertEqual(warnings, [])
        endpoint = settings.endpoints[0]
        self.assertEqual((endpoint.timeout, endpoint.max_backoff, endpoint.ca_file),
                         (5.0, 300.0, "/etc/regd/receiver-ca.pem"))
        self.assertEqual(endpoint.ignored_actions, {"pull"})
