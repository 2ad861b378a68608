# -*- test-case-name: tests.index.test_upkeep -*-
"""
The index inside the daemon: opens the database on its own one-thread
pool, rebuilds it from storage when it is new or stale (in the background:
the daemon serves meanwhile, search showing what is indexed so far), then
refreshes it from other instances' change markers every interval.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger


class IndexService(service.Service):
    log = Logger()

    def __init__(self, index, clock, interval: float, pool=None):
        self.index = index
        self.clock = clock
        self.interval = interval
        self.pool = pool  # started and stopped here: the database is closed before its thread goes
        self._loop: task.LoopingCall | None = None
        self._rebuilding: defer.Deferred | None = None
        self.ready: defer.Deferred = defer.Deferred()  # fires once opened (tests, reindex)

    def startService(self):
        super().startService()
        if self.pool is not None:
            self.pool.start()
        d = self.index.open()
        d.addCallback(self._opened)
        d.addErrback(lambda f: self.log.failure("index: cannot open its database", f))

    def _opened(self, due: bool):
        if due:
            self.log.info("index: rebuilding from storage")
            self._rebuilding = defer.ensureDeferred(self.index.rebuild())
            self._rebuilding.addCallbacks(
                lambda count: self.log.info("index: {count} repositories indexed", count=count),
                lambda f: self.log.failure("index: rebuild failed", f))
        self._loop = task.LoopingCall(self._refresh)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=not due)
        self.ready.callback(None)

    def _refresh(self):
        d = defer.ensureDeferred(self.index.refresh())
        d.addErrback(lambda f: self.log.failure("index: refresh failed", f))
        return d

    async def _stop(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        try:
            await self.index.flush_pulls()
        except Exception:
            self.log.failure("index: pull counts not saved")
        await self.index.close()

    def stopService(self):
        super().stopService()
        d = defer.ensureDeferred(self._stop())
        if self.pool is not None:
            d.addBoth(lambda result: self.pool.stop())
        return d
