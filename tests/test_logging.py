"""The daemon's log observer and what it lets through."""

from __future__ import annotations

import io

from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from regd.config import LogConfig
from regd.logging import access_log_observed, make_observer


class AccessLogTests(SynchronousTestCase):
    def written_at(self, level: str) -> str:
        """What the observer for C{level} writes of an event like an access line (twisted.web logs them at info)."""
        stream = io.StringIO()
        Logger(observer=make_observer(LogConfig(level=level), stream)).emit(
            LogLevel.info, "{line}", line='127.0.0.1 - - "POST /v2/demo/blobs/uploads/ HTTP/1.1" 201')
        return stream.getvalue()

    def test_access_lines_are_made_exactly_when_the_level_lets_them_through(self):
        for level in ("debug", "info", "warn", "error"):
            observed = access_log_observed(LogConfig(level=level))
            self.assertEqual(observed, "POST /v2/demo" in self.written_at(level), level)
        self.assertEqual([access_log_observed(LogConfig(level=level)) for level in ("debug", "info", "warn", "error")],
                         [True, True, False, False])

    def test_disabled_access_log_is_not_made_at_any_level(self):
        for level in ("debug", "info", "warn", "error"):
            self.assertFalse(access_log_observed(LogConfig(level=level, accesslog_disabled=True)))
