"""regd.workers: the supervisor's sockets, restarts and stop, on a fake process spawner and a Clock."""

from __future__ import annotations

import signal
import socket

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from regd.daemon import workers
from regd.daemon.workers import WorkerSupervisor, reuseport_sockets, worker_index


class FakeProcess:
    def __init__(self, pid, proto):
        self.pid, self.proto = pid, proto
        self.signals = []

    def signalProcess(self, signum):
        self.signals.append(signum)


class FakeReactor(Clock):
    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, proto, executable, args, env, childFDs):
        process = FakeProcess(1000 + len(self.spawned), proto)
        self.spawned.append((process, args, env, childFDs))
        return process

    def callFromThread(self, f, *args):
        f(*args)


def end(process, code=None, sig=None):
    reason = ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code, signal=sig)
    process.proto.processEnded(Failure(reason))


class SupervisorTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = FakeReactor()
        self.supervisor = WorkerSupervisor(self.reactor, 2, "127.0.0.1", 0, ["python", "-m", "regd.cli", "serve"],
                                           drain_timeout=5.0, environ={"KEEP": "1"})
        self.monotonic = [100.0]
        self.patch(workers.time, "monotonic", lambda: self.monotonic[0])
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        self.supervisor.privilegedStartService()
        self.supervisor.startService()
        self.addCleanup(lambda: [s.close() for s in self.supervisor.sockets if s is not None])

    def test_workers_get_their_socket_index_and_environment(self):
        self.assertEqual(len(self.reactor.spawned), 2)
        ports = {s.getsockname()[1] for s in self.supervisor.sockets}
        self.assertEqual(ports, {self.supervisor.port})
        for index, (process, args, env, fds) in enumerate(self.reactor.spawned):
            self.assertEqual(args, ["python", "-m", "regd.cli", "serve"])
            self.assertEqual(env["REGD_WORKER"], str(index))
            self.assertEqual(env["REGD_LISTEN_FD"], "3")
            self.assertEqual(env["KEEP"], "1")
            self.assertEqual(fds[3], self.supervisor.sockets[index].fileno())
            self.assertEqual(fds[1], 1)

    def test_a_crashed_worker_is_restarted_and_a_failing_one_backs_off(self):
        crashed = self.reactor.spawned[1][0]
        self.monotonic[0] += 60  # it ran a while: an ordinary crash
        end(crashed, sig=signal.SIGKILL)
        kept = self.supervisor.sockets[1]
        self.assertIsNotNone(kept)  # its queued connections wait for the replacement
        self.reactor.advance(0.9)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(self.reactor.spawned[2][2]["REGD_WORKER"], "1")
        self.assertIs(self.supervisor.sockets[1], kept)
        # Failing at once, again and again: later and later, its socket closed meanwhile.
        end(self.reactor.spawned[2][0], code=1)
        self.assertIsNone(self.supervisor.sockets[1])
        self.reactor.advance(2.0)
        self.assertEqual(len(self.reactor.spawned), 4)
        self.assertIsNotNone(self.supervisor.sockets[1])
        self.assertEqual(self.supervisor.sockets[1].getsockname()[1], self.supervisor.port)
        end(self.reactor.spawned[3][0], code=1)
        self.reactor.advance(3.9)
        self.assertEqual(len(self.reactor.spawned), 4)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.spawned), 5)
        self.assertEqual(self.supervisor.restarts, 3)

    def test_stop_terms_every_worker_and_waits_for_all(self):
        a, b = (p for p, *_ in self.reactor.spawned)
        stopped = self.supervisor.stopService()
        self.assertEqual((a.signals, b.signals), ([signal.SIGTERM], [signal.SIGTERM]))
        end(a, code=0)
        self.assertNoResult(stopped)
        end(b, code=0)
        self.successResultOf(stopped)
        self.assertEqual(len(self.reactor.spawned), 2)  # nothing restarted while stopping
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_a_worker_that_does_not_drain_is_killed(self):
        a, b = (p for p, *_ in self.reactor.spawned)
        stopped = self.supervisor.stopService()
        end(a, code=0)
        self.reactor.advance(5.0 + 15.0)
        self.assertEqual(b.signals, [signal.SIGTERM, signal.SIGKILL])
        end(b, sig=signal.SIGKILL)
        self.successResultOf(stopped)


class SocketTests(SynchronousTestCase):
    def test_reuseport_sockets_share_one_port_and_accept(self):
        sockets = reuseport_sockets("127.0.0.1", 0, 3)
        self.addCleanup(lambda: [s.close() for s in sockets])
        port = sockets[0].getsockname()[1]
        self.assertEqual({s.getsockname()[1] for s in sockets}, {port})
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.close()

    def test_worker_index(self):
        self.assertIsNone(worker_index({}))
        self.assertEqual(worker_index({"REGD_WORKER": "1"}), 1)
        self.assertIsNone(worker_index({"REGD_WORKER": "x"}))
