"""The SQLite journal: durable appends, delivery bookkeeping, dead letters, group commit."""

import os

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from regd.notifications.journal import Journal
from regd.storage.threads import inline_runner


class DeferredRunner:
    """Runs queued calls only when told to, to see appends pile up behind a commit."""

    def __init__(self):
        self.calls = []
        self.history = []

    def __call__(self, function, *args):
        d = defer.Deferred()
        self.calls.append((function, args, d))
        if function.__name__ == "_transaction":
            self.history.append(len(args[0]))
        return d

    def run_all(self):
        while self.calls:
            function, args, d = self.calls.pop(0)
            d.callback(function(*args))


class JournalTests(SynchronousTestCase):
    def setUp(self):
        self.path = os.path.join(os.path.abspath(self.mktemp()), "journal.sqlite3")
        self.journal = Journal(self.path, inline_runner, wallclock=lambda: 100.0)
        self.successResultOf(self.journal.open())
        self.addCleanup(self.journal._close)

    def test_append_survives_reopen_in_order(self):
        seqs = [self.successResultOf(self.journal.append(f"e{i}", f'{{"n": {i}}}', ("a", "b"))) for i in range(3)]
        self.assertEqual(seqs, sorted(seqs))
        self.journal._close()
        again = Journal(self.path, inline_runner)
        self.successResultOf(again.open())
        self.addCleanup(again._close)
        pending = self.successResultOf(again.pending("a"))
        self.assertEqual([e.event_id for e in pending], ["e0", "e1", "e2"])
        self.assertEqual(pending[0].created, 100.0)

    def test_delivered_removes_only_that_endpoint(self):
        seq = self.successResultOf(self.journal.append("e", "{}", ("a", "b")))
        self.successResultOf(self.journal.delivered("a", [seq]))
        self.assertEqual(self.successResultOf(self.journal.pending("a")), [])
        self.assertEqual(len(self.successResultOf(self.journal.pending("b"))), 1)
        self.successResultOf(self.journal.delivered("b", [seq]))
        self.assertEqual(self.journal._db.execute("SELECT COUNT(*) FROM events").fetchone()[0], 0)

    def test_failures_dead_letters_and_replay(self):
        seq = self.successResultOf(self.journal.append("e", "{}", ("a",)))
        self.successResultOf(self.journal.failed("a", [seq], "HTTP 500", dead=False))
        self.assertEqual(self.successResultOf(self.journal.pending("a"))[0].attempts, 1)
        self.successResultOf(self.journal.failed("a", [seq], "HTTP 500", dead=True))
        self.assertEqual(self.successResultOf(self.journal.pending("a")), [])
        [dead] = self.successResultOf(self.journal.dead_letters("a"))
        self.assertEqual((dead.attempts, dead.last_error), (2, "HTTP 500"))
        self.assertEqual(self.successResultOf(self.journal.counts("a")), (0, 1))
        revived = self.successResultOf(self.journal.replay("a"))
        self.assertEqual([e.seq for e in revived], [seq])
        self.assertEqual(self.successResultOf(self.journal.counts("a")), (1, 0))

    def test_appends_during_a_commit_are_grouped(self):
        runner = DeferredRunner()
        journal = Journal(self.path, runner)
        d_open = journal.open()
        runner.run_all()
        self.successResultOf(d_open)
        self.addCleanup(journal._close)
        first = journal.append("e1", "{}", ("a",))
        second = journal.append("e2", "{}", ("a",))
        third = journal.append("e3", "{}", ("a",))
        self.assertEqual(len(runner.calls), 1)  # e1's commit; e2 and e3 wait
        runner.run_all()
        self.assertEqual(runner.history, [1, 2])  # two transactions: e1, then e2 and e3 together
        seqs = [self.successResultOf(d) for d in (first, second, third)]
        self.assertEqual(seqs, sorted(seqs))

    def test_each_append_answers_only_after_the_commit_that_holds_it(self):
        """Concurrent appends share commits (one fsync for many); no caller hears of its event before it is durable."""
        runner = DeferredRunner()
        journal = Journal(self.path, runner)
        d_open = journal.open()
        runner.run_all()
        self.successResultOf(d_open)
        self.addCleanup(journal._close)
        fired = []
        first = journal.append("e1", "{}", ("a", "b"))
        first.addCallback(fired.append)
        later = [journal.append(f"e{i}", "{}", ("a", "b")) for i in range(2, 6)]
        for d in later:
            d.addCallback(fired.append)
        self.assertEqual(runner.history, [1])  # e1's transaction is running; e2-e5 wait for the next one
        self.assertEqual(fired, [])

        function, args, d = runner.calls.pop(0)
        d.callback(function(*args))  # e1 committed: only e1 is answered, and the next commit starts
        self.assertEqual(len(fired), 1)
        self.assertEqual(runner.history, [1, 4])
        # Nothing of e2-e5 is on disk yet, and none of their callers was answered.
        self.assertEqual(self._events_on_disk(), ["e1"])
        journal.append("e6", "{}", ("a",)).addCallback(fired.append)  # arrives during the second commit

        function, args, d = runner.calls.pop(0)
        d.callback(function(*args))
        self.assertEqual(len(fired), 5)
        self.assertEqual(self._events_on_disk(), ["e1", "e2", "e3", "e4", "e5"])
        runner.run_all()
        self.assertEqual(runner.history, [1, 4, 1])  # six appends, three commits
        self.assertEqual(fired, sorted(fired))
        self.assertEqual(len(set(fired)), 6)

    def _events_on_disk(self) -> list[str]:
        """Event ids committed, as another connection (another process) sees them."""
        import sqlite3
        db = sqlite3.connect(self.path)
        try:
            return [row[0] for row in db.execute("SELECT id FROM events ORDER BY seq")]
        finally:
            db.close()

    def test_replay_by_event_id(self):
        seqs = [self.successResultOf(self.journal.append(f"e{i}", "{}", ("a",))) for i in range(3)]
        self.successResultOf(self.journal.failed("a", seqs, "HTTP 500", dead=True))
        revived = self.successResultOf(self.journal.replay("a", event_ids=["e1"]))
        self.assertEqual([e.event_id for e in revived], ["e1"])
        self.assertEqual(self.successResultOf(self.journal.counts("a")), (1, 2))

    def test_close_waits_for_the_commit_in_progress_then_refuses_writes(self):
        from regd.notifications.journal import JournalClosed
        runner = DeferredRunner()
        journal = Journal(self.path, runner)
        d_open = journal.open()
        runner.run_all()
        self.successResultOf(d_open)
        appended = journal.append("e1", "{}", ("a",))
        marked = journal.delivered("a", [999])
        closed = journal.close()
        self.failureResultOf(journal.append("late", "{}", ("a",)), JournalClosed)
        runner.run_all()
        self.successResultOf(appended)
        self.successResultOf(marked)
        self.successResultOf(closed)
        self.assertIsNone(journal._db)
        again = Journal(self.path, inline_runner)
        self.successResultOf(again.open())
        self.addCleanup(again._close)
        self.assertEqual([e.event_id for e in self.successResultOf(again.pending("a"))], ["e1"])

    def test_delivery_marks_do_not_scan_the_whole_table(self):
        plan = self.journal._db.execute(
            "EXPLAIN QUERY PLAN DELETE FROM events WHERE seq = ? AND NOT EXISTS "
            "(SELECT 1 FROM deliveries WHERE seq = ?)", (1, 1)).fetchall()
        self.assertFalse([row for row in plan if "SCAN" in row[-1]], plan)


class DelayedMarksTests(SynchronousTestCase):
    """The delivery process's journal: delivery marks wait to share a commit; nothing else waits."""

    def setUp(self):
        from twisted.internet.task import Clock
        self.clock = Clock()
        self.path = os.path.join(os.path.abspath(self.mktemp()), "journal.sqlite3")
        self.journal = Journal(self.path, inline_runner, clock=self.clock, marks_delay=0.1, checkpoint_pages=50)
        self.successResultOf(self.journal.open())
        self.addCleanup(self.journal._close)
        self.seqs = [self.successResultOf(self.journal.append(f"e{i}", "{}", ("a",))) for i in range(4)]

    def test_marks_wait_then_commit_together(self):
        first = self.journal.delivered("a", self.seqs[:1])
        second = self.journal.delivered("a", self.seqs[1:2])
        self.assertNoResult(first)
        self.assertEqual(self.successResultOf(self.journal.counts("a")), (4, 0))
        self.clock.advance(0.1)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(self.successResultOf(self.journal.counts("a")), (2, 0))

    def test_marks_of_several_endpoints_in_one_commit_remove_the_events_they_complete(self):
        seq = self.successResultOf(self.journal.append("both", "{}", ("a", "b")))
        marks = [self.journal.delivered("a", self.seqs[:2] + [seq]), self.journal.delivered("b", [seq]),
                 self.journal.delivered("a", self.seqs[2:3])]
        self.clock.advance(0.1)
        for mark in marks:
            self.assertIsNone(self.successResultOf(mark))
        self.assertEqual([e.seq for e in self.successResultOf(self.journal.pending("a"))], self.seqs[3:])
        self.assertEqual(self.successResultOf(self.journal.pending("b")), [])
        remaining = [row[0] for row in self.journal._db.execute("SELECT seq FROM events ORDER BY seq")]
        self.assertEqual(remaining, self.seqs[3:])

    def test_other_writes_commit_at_once_and_take_waiting_marks_along(self):
        mark = self.journal.delivered("a", self.seqs[:1])
        self.successResultOf(self.journal.failed("a", self.seqs[1:2], "refused", dead=True))
        self.successResultOf(mark)
        self.assertEqual(self.successResultOf(self.journal.counts("a")), (2, 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close_commits_waiting_marks(self):
        mark = self.journal.delivered("a", self.seqs)
        self.successResultOf(self.journal.close())
        self.successResultOf(mark)
        again = Journal(self.path, inline_runner)
        self.successResultOf(again.open())
        self.addCleanup(again._close)
        self.assertEqual(self.successResultOf(again.counts("a")), (0, 0))

    def test_checkpoint_threshold_is_set_on_the_connection(self):
        self.assertEqual(self.journal._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0], 50)


class ServingSideJournalTests(SynchronousTestCase):
    """
    The daemon's serving side (fan_out=False): appends write event rows
    only, in one statement per commit; the delivery process writes the
    delivery rows (fan_out_pending) before it reads them.
    """

    def setUp(self):
        self.path = os.path.join(os.path.abspath(self.mktemp()), "journal.sqlite3")
        self.runner = DeferredRunner()
        self.journal = Journal(self.path, self.runner, wallclock=lambda: 100.0, fan_out=False)
        d = self.journal.open()
        self.runner.run_all()
        self.successResultOf(d)
        self.addCleanup(self.journal._close)
        self.delivering = Journal(self.path, inline_runner)  # the delivery process's connection
        self.delivering._open()
        self.addCleanup(self.delivering._close)

    def statements(self) -> list[str]:
        seen: list[str] = []
        self.journal._db.set_trace_callback(seen.append)
        self.addCleanup(self.journal._db.set_trace_callback, None)
        return seen

    def test_a_commit_of_appends_is_one_statement_and_its_sequence_numbers_are_the_rows(self):
        first = self.journal.append("e0", "{}", ("a",))
        later = [self.journal.append(f"e{i}", f'{{"n": {i}}}', ("a", "b")) for i in range(1, 4)]
        seen = self.statements()
        self.runner.run_all()
        self.assertEqual(self.runner.history, [1, 3])
        self.assertEqual([s.split(" ", 1)[0] for s in seen], ["INSERT", "INSERT"])  # no BEGIN, no COMMIT
        seqs = [self.successResultOf(d) for d in [first] + later]
        rows = dict(self.journal._db.execute("SELECT seq, id FROM events"))
        self.assertEqual([rows[seq] for seq in seqs], ["e0", "e1", "e2", "e3"])
        self.assertEqual(self.journal._db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0], 0)

    def test_appends_are_delivered_once_fanned_out_in_order(self):
        for i in range(3):
            self.journal.append(f"e{i}", "{}", ("a", "b") if i != 1 else ("b",))
        self.runner.run_all()
        # Owed before the delivery rows exist, as /debug/notifications reports it.
        self.assertEqual(self.successResultOf(self.delivering.counts("b")), (3, 0))
        self.assertEqual(self.delivering.pending_after("b", 0), [])
        self.assertEqual(self.delivering.fan_out_pending(), 3)
        self.assertEqual([e.event_id for e in self.delivering.pending_after("a", 0)], ["e0", "e2"])
        self.assertEqual([e.event_id for e in self.delivering.pending_after("b", 0)], ["e0", "e1", "e2"])
        self.assertEqual(self.successResultOf(self.delivering.counts("b")), (3, 0))
        self.assertEqual(self.delivering.fan_out_pending(), 0)  # done once, never again
        self.journal.append("e3", "{}", ("a",))
        self.runner.run_all()
        self.assertEqual(self.delivering.fan_out_pending(), 1)
        self.assertEqual([e.event_id for e in self.delivering.pending_after("a", 0)], ["e0", "e2", "e3"])

    def test_nothing_to_fan_out_takes_no_write_lock(self):
        self.delivering.fan_out_pending()
        seen: list[str] = []
        self.delivering._db.set_trace_callback(seen.append)
        self.addCleanup(self.delivering._db.set_trace_callback, None)
        self.assertEqual(self.delivering.fan_out_pending(), 0)
        self.assertFalse([s for s in seen if s.startswith("BEGIN")], seen)

    def test_an_event_leaves_the_journal_once_every_endpoint_has_it(self):
        self.journal.append("e0", "{}", ("a", "b"))
        self.runner.run_all()
        self.delivering.fan_out_pending()
        [entry] = self.delivering.pending_after("a", 0)
        self.successResultOf(self.delivering.delivered("a", [entry.seq]))
        self.successResultOf(self.delivering.delivered("b", [entry.seq]))
        self.assertEqual(self.delivering._db.execute("SELECT COUNT(*) FROM events").fetchone()[0], 0)
        self.assertEqual(self.delivering.fan_out_pending(), 0)

    def test_a_journal_of_the_old_format_keeps_its_queued_events_and_dead_letters(self):
        from tests.notifications.test_delivery import write_old_format_journal
        path = os.path.join(os.path.abspath(self.mktemp()), "old.sqlite3")
        os.makedirs(os.path.dirname(path))
        write_old_format_journal(path, [("o0", "{}", ("a", "b")), ("o1", "{}", ("a",))], dead=("o1",))
        serving = Journal(path, inline_runner, fan_out=False)
        self.successResultOf(serving.open())
        self.addCleanup(serving._close)
        delivering = Journal(path, inline_runner)
        self.successResultOf(delivering.open())
        self.addCleanup(delivering._close)
        self.successResultOf(serving.append("n0", "{}", ("a",)))
        self.assertEqual(delivering.fan_out_pending(), 1)
        self.assertEqual([e.event_id for e in self.successResultOf(delivering.pending("a"))], ["o0", "n0"])
        self.assertEqual([e.event_id for e in self.successResultOf(delivering.pending("b"))], ["o0"])
        self.assertEqual([e.event_id for e in self.successResultOf(delivering.dead_letters("a"))], ["o1"])
        self.assertEqual([e.event_id for e in self.successResultOf(delivering.replay("a"))], ["o1"])
        self.assertEqual([e.event_id for e in self.successResultOf(delivering.pending("a"))], ["o0", "o1", "n0"])
