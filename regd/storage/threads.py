# -*- test-case-name: tests.storage.test_filesystem -*-
"""
"Run this blocking call somewhere" callables for drivers: a thread pool in
the daemon, inline in tests (which keeps storage tests synchronous).
"""

from __future__ import annotations

from twisted.internet import defer, threads


def inline_runner(function, *args, **kwargs):
    try:
        return defer.succeed(function(*args, **kwargs))
    except BaseException:
        return defer.fail()


def thread_pool_runner(reactor, pool):
    def run(function, *args, **kwargs):
        return threads.deferToThreadPool(reactor, pool, function, *args, **kwargs)

    return run
