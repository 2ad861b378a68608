# -*- test-case-name: tests.test_tap -*-
"""
The daemon's own services: the root that installs regd's log observer,
stops children newest first and treats SIGTERM as a clean stop; storage
threads; draining requests at shutdown; reloading TLS certificates.
"""

from __future__ import annotations

import sys

from twisted.application import internet, service
from twisted.python.threadpool import ThreadPool
from twisted.logger import Logger

log = Logger()


class RegdService(service.MultiService):
    """
    The root service. When twistd attaches it to its Application it installs
    regd's log observer there, so the `log` section decides level and format.
    """

    def __init__(self, log_observer=None, reactor=None):
        super().__init__()
        self.log_observer = log_observer
        self.reactor = reactor
        self._stopping = False

    def startService(self):
        super().startService()
        if self.reactor is not None:
            self.reactor.callWhenRunning(self._handle_sigterm)

    def _handle_sigterm(self):
        """
        A SIGTERM stop is a clean stop: exit 0 once services stopped (twistd
        would otherwise re-raise the signal at exit). Installed after the
        reactor's own handlers, which it replaces for SIGTERM only.
        """
        import signal

        def stop(signum, frame):
            self.reactor.callFromThread(stop_once)

        def stop_once():
            # A worker gets SIGTERM from systemd and again from its supervisor: stop once.
            if self._stopping:
                return
            self._stopping = True
            log.info("SIGTERM received: stopping cleanly")
            try:
                self.reactor.stop()
            except Exception:
                pass  # already stopping

        signal.signal(signal.SIGTERM, stop)

    def stopService(self):
        """Stop children one at a time, newest first, so each can rely on the older ones."""
        from twisted.internet import defer
        service.Service.stopService(self)

        async def stop_all():
            for child in reversed(list(self)):
                try:
                    await defer.maybeDeferred(child.stopService)
                except Exception:
                    log.failure("stopping {child} failed", child=child)

        return defer.ensureDeferred(stop_all())

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        set_component = getattr(parent, "setComponent", None)
        if self.log_observer is not None and set_component is not None:
            from twisted.logger import ILogObserver
            set_component(ILogObserver, self.log_observer)


class CertificateReloader(service.Service):
    """Reloads the TLS certificate on SIGHUP, and when its files change (checked every few seconds)."""

    interval = 5.0

    def __init__(self, context, reactor):
        self.context = context
        self.reactor = reactor
        self._timer = None
        self._previous = None

    def startService(self):
        import signal
        from twisted.internet.task import LoopingCall
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._on_hangup)
        self._timer = LoopingCall(self.context.reload_if_changed)
        self._timer.clock = self.reactor
        self._timer.start(self.interval, now=False)

    def _on_hangup(self, signum, frame):
        self.reactor.callFromThread(self.context.reload)

    def stopService(self):
        import signal
        super().stopService()
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)


class DrainService(service.Service):
    """
    On stop (after the listener closed), lets requests in progress finish,
    for at most `timeout` seconds; uploads complete rather than break.
    """

    flush_grace = 0.5

    def __init__(self, site, timeout: float, clock):
        self.site, self.timeout, self.clock = site, timeout, clock

    def stopService(self):
        from twisted.internet import task
        super().stopService()
        if self.site.in_flight:
            log.info("waiting up to {timeout}s for {count} requests in progress", timeout=self.timeout,
                     count=self.site.in_flight)
        idle = self.site.when_idle()
        timeout = self.clock.callLater(self.timeout, lambda: idle.called or idle.callback(None))

        def flushed(_):
            if timeout.active():
                timeout.cancel()
            # The last responses may still sit in transport buffers: give them a moment to go out.
            return task.deferLater(self.clock, self.flush_grace, lambda: None)

        return idle.addCallback(flushed)


class ThreadPoolService(service.Service):
    """Runs a ThreadPool for as long as the daemon runs."""

    def __init__(self, pool: ThreadPool):
        self.pool = pool

    def startService(self):
        super().startService()
        self.pool.start()

    def stopService(self):
        super().stopService()
        self.pool.stop()


class ClosingService(service.Service):
    """Calls C{close} (which may return a Deferred) when the daemon stops: connection pools and the like."""

    def __init__(self, close):
        self._close = close

    def stopService(self):
        super().stopService()
        return self._close()


class ListenerService(internet.StreamServerEndpointService):
    """
    A listener that ends the process when it cannot listen: twistd would only
    log the failure and run on, listening nowhere, so systemd never restarts it.
    """

    def __init__(self, endpoint, factory, what: str, address: str):
        super().__init__(endpoint, factory)
        self.what, self.address = what, address

    def privilegedStartService(self):
        self._raiseSynchronously = True
        try:
            super().privilegedStartService()
        except Exception as e:
            reason = getattr(e, "socketError", None) or e
            reason = getattr(reason, "strerror", None) or str(reason)
            sys.__stderr__.write(f"regd: cannot listen on {self.what} {self.address}: {reason}\n")
            sys.__stderr__.flush()
            raise SystemExit(1) from None
