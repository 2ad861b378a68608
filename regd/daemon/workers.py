# -*- test-case-name: tests.test_workers -*-
"""
regd.workers: N: N regd processes serving one port, so every core serves.

The `twistd regd` process becomes a supervisor that serves nothing itself.
It opens one listening socket per worker, all bound to http.addr with
SO_REUSEPORT (the kernel spreads new connections evenly over them), and
starts each worker as a full regd (`regd serve CONFIG`) that adopts its
socket as file descriptor 3. The supervisor keeps every socket open, so a
worker that dies leaves its socket in place: connections the kernel queued
for it wait for the worker that replaces it instead of being refused.

Stopping: SIGTERM to the supervisor (systemd stop) is passed to every
worker, each drains its requests as a single regd does, and the supervisor
exits once all have. SIGHUP is passed on too (certificate reload). A worker
that exits when not asked to is restarted (after 1 s, backing off to 30 s
while it keeps failing at once). A worker whose supervisor vanished stops.

Worker 0 also runs what must run once per host: webhook delivery from the
shared journal (every worker journals), the debug address, the in-daemon
garbage collection and upload purging.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger

log = Logger()

WORKER_ENV = "REGD_WORKER"        # the worker's index, set by the supervisor
LISTEN_FD_ENV = "REGD_LISTEN_FD"  # the adopted listening socket's descriptor in the worker
PARENT_ENV = "REGD_SUPERVISOR_PID"
LISTEN_FD = 3
BACKLOG = 1024


def worker_index(environ=None) -> int | None:
    """This process's worker index, or None when it is not a supervised worker."""
    value = (os.environ if environ is None else environ).get(WORKER_ENV)
    return int(value) if value is not None and value.isdigit() else None


def reuseport_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """C{count} listening sockets on one address, SO_REUSEPORT; port 0: the first one's port for all."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and not host.strip("[]"):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind((host.strip("[]") or ("::" if family == socket.AF_INET6 else ""), port))
            port = s.getsockname()[1]
            s.listen(BACKLOG)
            s.setblocking(False)
    except OSError:
        for s in sockets:
            s.close()
        raise
    return sockets


class _WorkerProtocol(protocol.ProcessProtocol):
    def __init__(self, supervisor, index: int):
        self.supervisor, self.index = supervisor, index
        self.ended: defer.Deferred = defer.Deferred()

    def processEnded(self, reason):
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.ended.callback(None)
        self.supervisor._ended(self.index, code, sig)


class WorkerSupervisor(service.Service):
    """Starts, restarts and stops the worker processes; holds their listening sockets."""

    restart_delay = 1.0
    max_restart_delay = 30.0
    quick_exit = 5.0  # a worker that dies sooner than this after its start is failing, not crashing once

    def __init__(self, reactor, count: int, host: str, port: int, argv: list[str], drain_timeout: float,
                 environ=None, what: str = "http.addr"):
        self.reactor = reactor
        self.count = count
        self.host, self.port = host, port
        self.argv = argv
        self.drain_timeout = drain_timeout
        self.environ = dict(os.environ if environ is None else environ)
        self.what = what
        self.sockets: list[socket.socket] = []
        self.processes: dict[int, object] = {}
        self.protocols: dict[int, _WorkerProtocol] = {}
        self.started_at: dict[int, float] = {}
        self.delays: dict[int, float] = {}
        self.restarts = 0
        self._stopping = False
        self._pending_restarts: dict[int, object] = {}
        self._previous_hup = None

    def privilegedStartService(self):
        # Bound before twistd drops privileges, so a port below 1024 works as with one process.
        try:
            self.sockets = reuseport_sockets(self.host, self.port, self.count)
        except OSError as e:
            sys.__stderr__.write(f"regd: cannot listen on {self.what} {self.host}:{self.port}: {e.strerror or e}\n")
            sys.__stderr__.flush()
            raise SystemExit(1) from None
        self.port = self.sockets[0].getsockname()[1]
        super().privilegedStartService()

    def startService(self):
        super().startService()
        log.info("regd.workers: {count} worker processes on port {port}", count=self.count, port=self.port)
        for index in range(self.count):
            self._spawn(index)
        self._previous_hup = signal.signal(signal.SIGHUP, self._on_hangup)

    def _on_hangup(self, signum, frame):
        self.reactor.callFromThread(self.signal_all, signal.SIGHUP)

    def signal_all(self, signum) -> None:
        for process in self.processes.values():
            try:
                process.signalProcess(signum)
            except Exception:
                pass  # already gone

    def _spawn(self, index: int) -> None:
        self._pending_restarts.pop(index, None)
        if self.sockets[index] is None:
            self.sockets[index] = reuseport_sockets(self.host, self.port, 1)[0]
        env = dict(self.environ)
        env[WORKER_ENV] = str(index)
        env[LISTEN_FD_ENV] = str(LISTEN_FD)
        env[PARENT_ENV] = str(os.getpid())
        proto = _WorkerProtocol(self, index)
        child_fds = {0: "w", 1: 1, 2: 2, LISTEN_FD: self.sockets[index].fileno()}
        process = self.reactor.spawnProcess(proto, self.argv[0], self.argv, env=env, childFDs=child_fds)
        self.processes[index] = process
        self.protocols[index] = proto
        self.started_at[index] = time.monotonic()
        log.info("regd.workers: worker {index} started (pid {pid})", index=index, pid=process.pid)

    def _ended(self, index: int, code, sig) -> None:
        self.processes.pop(index, None)
        if self._stopping:
            return
        lived = time.monotonic() - self.started_at.get(index, 0.0)
        delay = self.delays.get(index, self.restart_delay)
        delay = min(delay * 2, self.max_restart_delay) if lived < self.quick_exit else self.restart_delay
        self.delays[index] = delay
        if lived < self.quick_exit and self.sockets[index] is not None:
            # Failing again and again: connections must not wait in its socket for a worker that may
            # not come; closed, the kernel sends new ones to the other workers until it is back.
            self.sockets[index].close()
            self.sockets[index] = None
        how = f"signal {sig}" if sig else f"exit code {code}"
        log.error("regd.workers: worker {index} ended ({how}); restarting it in {delay}s",
                  index=index, how=how, delay=delay)
        self.restarts += 1
        self._pending_restarts[index] = self.reactor.callLater(delay, self._spawn, index)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values() if p.pid]

    def stopService(self):
        super().stopService()
        self._stopping = True
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
        for call in self._pending_restarts.values():
            if call.active():
                call.cancel()
        self._pending_restarts.clear()
        waiting = [self.protocols[i].ended for i in list(self.processes)]
        self.signal_all(signal.SIGTERM)
        # Each worker drains for up to http.draintimeout; past that and a margin, it is killed.
        killer = self.reactor.callLater(self.drain_timeout + 15.0, self.signal_all, signal.SIGKILL)

        def done(_):
            if killer.active():
                killer.cancel()
            for s in self.sockets:
                if s is not None:
                    s.close()
            log.info("regd.workers: every worker stopped")

        return defer.DeferredList(waiting).addCallback(done)


class AdoptedListenerService(service.Service):
    """A worker's listener: the socket its supervisor opened, adopted as a Twisted port."""

    def __init__(self, reactor, fd: int, family, factory):
        self.reactor, self.fd, self.family, self.factory = reactor, fd, family, factory
        self.port = None

    def privilegedStartService(self):
        super().privilegedStartService()
        self.port = self.reactor.adoptStreamPort(self.fd, self.family, self.factory)
        os.close(self.fd)  # the port holds its own duplicate

    def stopService(self):
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()


class OrphanWatch(service.Service):
    """A worker stops when its supervisor is gone (SIGKILLed): nobody else would stop it."""

    interval = 1.0

    def __init__(self, reactor, parent_pid: int):
        self.reactor, self.parent_pid = reactor, parent_pid
        self._loop = None

    def startService(self):
        from twisted.internet.task import LoopingCall
        super().startService()
        self._loop = LoopingCall(self._check)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)

    def _check(self):
        if os.getppid() != self.parent_pid:
            log.warn("regd.workers: the supervisor (pid {pid}) is gone; stopping", pid=self.parent_pid)
            self._loop.stop()
            self._loop = None
            self.reactor.stop()

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
