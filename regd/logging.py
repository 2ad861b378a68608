# -*- test-case-name: tests.test_logging -*-
"""
The daemon's log observer, from the `log` section: a level filter, text or
JSON lines on stdout (what systemd and containers collect), and fixed fields
added to every event.
"""

from __future__ import annotations

import sys

from twisted.logger import (
    FilteringLogObserver, LogLevel, LogLevelFilterPredicate, jsonFileLogObserver, textFileLogObserver,
)

_LEVELS = {"error": LogLevel.error, "warn": LogLevel.warn, "info": LogLevel.info, "debug": LogLevel.debug}


def make_observer(log_config, stream=None):
    stream = stream if stream is not None else sys.stdout
    if log_config.formatter in ("json", "logstash"):
        sink = jsonFileLogObserver(stream)
    else:
        sink = textFileLogObserver(stream)
    fields = dict(log_config.fields or {})

    def with_fields(event):
        for key, value in fields.items():
            event.setdefault(key, value)
        sink(event)

    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[log_config.level])
    return FilteringLogObserver(with_fields, [predicate])


def access_log_observed(log_config) -> bool:
    """
    Whether access log lines (events at info level) reach the log: not when
    they are disabled or the level is above info, and then no request
    formats a line only for the level filter to drop it.
    """
    return not log_config.accesslog_disabled and log_config.level in ("debug", "info")
