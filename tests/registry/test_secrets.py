"""The session secret instances share through storage."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from regd.registry.secrets import shared_secret
from regd.storage import paths
from regd.storage.memory import InMemoryDriver


class SharedSecretTests(SynchronousTestCase):
    def test_created_once_then_shared(self):
        driver = InMemoryDriver()
        first = self.successResultOf(defer.ensureDeferred(shared_secret(driver)))
        self.assertGreaterEqual(len(first), 32)
        # Another instance on the same storage reads the same secret.
        self.assertEqual(self.successResultOf(defer.ensureDeferred(shared_secret(driver))), first)
        self.assertEqual(self.successResultOf(driver.get_content(paths.SESSION_SECRET)), first)

    def test_a_truncated_secret_is_replaced(self):
        driver = InMemoryDriver()
        self.successResultOf(driver.put_content(paths.SESSION_SECRET, b"short"))
        self.assertGreaterEqual(len(self.successResultOf(defer.ensureDeferred(shared_secret(driver)))), 32)
