# -*- test-case-name: tests.notifications.test_delivery -*-
"""
regd's side of the delivery process (L{regd.notifications.deliverer}):
start it with the service, wake it after journal commits (at most once
per WAKE_INTERVAL), start it again if it dies, pass on replays, keep its
figures for /debug and /metrics, and stop it (after its drain) with the
service.

The request path's whole share of webhook work is then the journal append
and, at most once per WAKE_INTERVAL, one small write on a pipe; the
deliveries themselves run on another interpreter, so they take neither
this process's event loop nor its interpreter lock.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import defer, protocol
from twisted.internet.address import _ProcessAddress
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from regd.notifications.endpoint import Endpoint
from regd.notifications.ipc import REQUEUE_CHUNK, Figures, Report, Requeue, Start, Stop, Wake

log = Logger()

RESTART_DELAY = 1.0  # seconds before starting a delivery process that died; doubles while it keeps dying
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 30.0  # a process that ran this long resets the delay
EXIT_WAIT = 5.0  # seconds to wait for the process to exit after its pipe closed, before SIGKILL
# Seconds between two wake-ups. Under a stream of pushes this bounds the pipe writes here, and the
# journal reads there (each picks up every event committed since the last), to 50 a second, for at
# most this much added delivery delay.
WAKE_INTERVAL = 0.02


class RemoteEndpoint(Endpoint):
    """
    The serving side's view of an endpoint run by the delivery process: the
    filters and the queue limit are applied here (before an event is
    journaled); pending counts and counters come from the delivery process a
    few times a second. Between two reports, events admitted here count as
    pending, so the limit holds to within one report interval.
    """

    def __init__(self, settings, journal, clock):
        super().__init__(settings, journal, None, clock)
        self._pending_there = 0
        self._admitted = 0
        self._oldest_age = 0.0
        self._reported_at = clock.seconds()

    @property
    def pending(self) -> int:
        return self._pending_there + self._admitted

    def oldest_pending_age(self) -> float:
        if not self._pending_there:
            return 0.0
        return self._oldest_age + max(0.0, self._clock.seconds() - self._reported_at)

    def admitted(self, size: int) -> None:
        self._admitted += 1
        self.pending_bytes += size

    def update(self, figures: dict) -> None:
        self._pending_there, self._admitted = figures["pending"], 0
        self.pending_bytes = figures["pending_bytes"]
        self._oldest_age, self._reported_at = figures["oldest_pending_age"], self._clock.seconds()
        for key in ("attempts", "successes", "failures", "delivered_events", "dead_letters", "last_error"):
            setattr(self.stats, key, figures[key])


class _PipeTransport:
    """What AMP writes to: the child's stdin."""

    def __init__(self, process):
        self._process = process

    def write(self, data: bytes) -> None:
        self._process.writeToChild(0, data)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self._process.closeChildFD(0)

    def getPeer(self):
        return _ProcessAddress()

    def getHost(self):
        return _ProcessAddress()


class _ParentAMP(amp.AMP):
    def __init__(self, owner):
        super().__init__()
        self._owner = owner

    @Figures.responder
    def figures(self, figures: str):
        self._owner.on_figures(json.loads(figures))
        return {}


class _ChildProtocol(protocol.ProcessProtocol):
    def __init__(self, owner):
        self.owner = owner
        self.amp = _ParentAMP(owner)
        self.ended: defer.Deferred = defer.Deferred()

    def connectionMade(self):
        self.amp.makeConnection(_PipeTransport(self.transport))
        self.owner._connected(self)

    def childDataReceived(self, childFD, data):
        if childFD == 3:
            self.amp.dataReceived(data)

    def childConnectionLost(self, childFD):
        if childFD == 3:
            self.amp.connectionLost(Failure(EOFError("the delivery process closed its pipe")))

    def processEnded(self, reason):
        self.owner._ended(self, reason)
        self.ended.callback(None)


class DeliveryProcess:
    """
    One delivery process for this regd process, kept running between start()
    and stop(). C{on_figures(dict)} receives each endpoint's reported figures.
    """

    def __init__(self, reactor, notifications: dict, journal: str, log_settings: dict | None = None,
                 executable: str = sys.executable):
        self.reactor = reactor
        self._start_arguments = {
            "notifications": json.dumps(notifications, default=str), "journal": journal,
            "log": json.dumps(log_settings or {}, default=str)}
        self._executable = executable
        self.on_figures = lambda figures: None
        self._child: _ChildProtocol | None = None
        self._running = False
        self._restart = None
        self._delay = RESTART_DELAY
        self._spawned_at = 0.0
        self._wake_call = None
        self._woken_at = float("-inf")
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.transport.pid if child is not None and child.transport is not None else None

    def start(self) -> None:
        self._running = True
        self._spawn()

    def _spawn(self) -> None:
        self._restart = None
        import regd
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(regd.__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        child = _ChildProtocol(self)
        self._spawned_at = self.reactor.seconds()
        # fd 1 and 2 are ours (one log stream); 0 and 3 carry AMP.
        self.reactor.spawnProcess(child, self._executable,
                                  [self._executable, "-m", "regd.notifications.deliverer"],
                                  env=env, childFDs={0: "w", 1: 1, 2: 2, 3: "r"})

    def _connected(self, child: _ChildProtocol) -> None:
        self._child = child
        child.amp.callRemote(Start, **self._start_arguments).addErrback(
            lambda f: log.warn("notifications: starting the delivery process failed: {error}",
                               error=f.getErrorMessage()))  # it ended: _ended() says so and starts another

    def _ended(self, child: _ChildProtocol, reason) -> None:
        if self._child is child:
            self._child = None
        if not self._running:
            return
        lived = self.reactor.seconds() - self._spawned_at
        if lived >= STABLE_AFTER:
            self._delay = RESTART_DELAY
        delay, self._delay = self._delay, min(self._delay * 2, RESTART_DELAY_MAX)
        log.error("notifications: the delivery process ended ({reason}); starting another in {delay:.0f} s "
                  "(pending events wait in the journal)", reason=reason.getErrorMessage(), delay=delay)
        self.restarts += 1
        self._restart = self.reactor.callLater(delay, self._spawn)

    # -- while it runs ---------------------------------------------------------

    def wake(self) -> None:
        """
        Tell the delivery process that the journal has new events: on the
        next reactor turn, or WAKE_INTERVAL after the last wake-up if that is
        later. Commits meanwhile share the wake-up (its read finds them all).
        """
        if self._wake_call is None and self._child is not None:
            delay = max(0.0, self._woken_at + WAKE_INTERVAL - self.reactor.seconds())
            self._wake_call = self.reactor.callLater(delay, self._send_wake)

    def _send_wake(self) -> None:
        self._wake_call = None
        if self._child is not None:
            self._woken_at = self.reactor.seconds()
            self._child.amp.callRemote(Wake)

    async def requeue(self, endpoint: str, seqs: list[int]) -> int:
        """Replayed dead letters, to the delivery process (which reads them back from the journal)."""
        if self._child is None:
            return 0  # a delivery process starting later loads every pending event anyway
        queued = 0
        for i in range(0, len(seqs), REQUEUE_CHUNK):
            answer = await self._child.amp.callRemote(Requeue, endpoint=endpoint, seqs=seqs[i:i + REQUEUE_CHUNK])
            queued += answer["queued"]
        return queued

    async def refresh(self) -> None:
        """Ask for every endpoint's figures now (they also arrive unasked, a few times a second)."""
        if self._child is None:
            return
        try:
            answer = await self._child.amp.callRemote(Report)
        except Exception:
            return  # it ended meanwhile: the last figures stand
        for figures in answer["figures"]:
            self.on_figures(json.loads(figures))

    # -- stopping ------------------------------------------------------------

    async def stop(self, timeout: float) -> None:
        """Let the delivery process drain (at most C{timeout} seconds), then make sure it has ended."""
        self._running = False
        for call in (self._restart, self._wake_call):
            if call is not None and call.active():
                call.cancel()
        self._restart = self._wake_call = None
        child = self._child
        if child is None:
            return
        stopped = child.amp.callRemote(Stop)
        timer = self.reactor.callLater(timeout, stopped.cancel)
        try:
            await stopped
        except defer.CancelledError:
            log.warn("notifications: the delivery process did not stop in time")
        except Exception:
            pass  # it ended meanwhile: child.ended fires
        finally:
            if timer.active():
                timer.cancel()
        if not child.ended.called:
            child.transport.closeChildFD(0)
        kill = self.reactor.callLater(EXIT_WAIT, self._kill, child)
        await child.ended
        if kill.active():
            kill.cancel()

    @staticmethod
    def _kill(child: _ChildProtocol) -> None:
        try:
            child.transport.signalProcess("KILL")
        except Exception:
            pass
