# -*- test-case-name: tests.notifications.test_journal -*-
"""
The durable event journal: SQLite in WAL mode with full fsync, so an event
is on disk before the request that caused it is answered, and survives
SIGKILL until every endpoint has it or gave up on it (a dead letter).

All SQLite work runs through one injected runner (a single dedicated
thread in the daemon, inline in tests). Writes that arrive while a commit
is running are committed together in the next transaction.

Where a delivery process reads the journal (the daemon), appends write the
event row alone, naming its endpoints (fan_out=False): one INSERT statement
per commit, in autocommit mode, so a commit is one call into SQLite (the
journal thread takes the interpreter lock once, not once per statement)
and writes two pages instead of one per endpoint and index. The delivery
process then writes the delivery rows of every event past the fan-out
cursor in one transaction of its own (L{Journal.fan_out_pending}), before
it reads them. Journals written before events named their endpoints have
the delivery rows already; opening one adds the column and the cursor.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

import attrs
from twisted.internet import defer

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    created REAL NOT NULL,
    body TEXT NOT NULL,
    -- JSON list of endpoint names while the delivery rows are not written yet (see fan_out_pending);
    -- NULL when they were written with the event (and in journals from before this column)
    targets TEXT
);
CREATE TABLE IF NOT EXISTS deliveries (
    endpoint TEXT NOT NULL,
    seq INTEGER NOT NULL REFERENCES events(seq),
    attempts INTEGER NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (endpoint, seq)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(endpoint, dead, seq);
-- "is any endpoint still owed this event?" without scanning every delivery
CREATE INDEX IF NOT EXISTS deliveries_seq ON deliveries(seq);
-- fan_out: every event up to this seq has its delivery rows
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

APPEND_ROWS = 1000  # events per INSERT statement (4 bound values each; SQLite allows 32,766)

# The delivery rows of every event past the cursor that names its endpoints, in one statement.
FAN_OUT = ("INSERT OR IGNORE INTO deliveries (endpoint, seq) SELECT t.value, e.seq FROM events e, "
           "json_each(e.targets) t WHERE e.seq > ? AND e.targets IS NOT NULL")


class JournalClosed(Exception):
    """A write arrived after close(); the journal on disk keeps what it had."""


@attrs.frozen
class JournalEntry:
    seq: int
    event_id: str
    created: float
    body: str  # the event as JSON text (distribution format)
    attempts: int = 0
    last_error: str = ""


class Journal:
    def __init__(self, path: str, run, wallclock=time.time, checkpoint_pages: int = 1000,
                 clock=None, marks_delay: float = 0.0, fan_out: bool = True):
        """
        C{fan_out}: appends write each endpoint's delivery row with the
        event (a journal delivered from this process). False: they write the
        event row only, and the process that delivers writes those rows with
        L{fan_out_pending} before reading (the daemon's serving side).

        C{checkpoint_pages}: the WAL size at which a commit on this connection
        also copies the WAL back into the database (SQLite's default, 1000).
        The serving side raises it when a delivery process shares the
        journal: that process's commits then do this work, off the commits
        that requests wait for.

        C{marks_delay}: seconds a "delivered" mark may wait on C{clock} for
        others to share its commit (any other write commits at once, taking
        the waiting marks along). A mark lost in a crash means sending that
        event again, with the same id.
        """
        self._path = path
        self._clock = clock
        self._marks_delay = marks_delay
        self._marks_timer = None
        self._checkpoint_pages = checkpoint_pages
        self._run = run
        self._wallclock = wallclock
        self._db: sqlite3.Connection | None = None
        self._waiting: list[tuple[str, tuple, defer.Deferred]] = []
        self._committing = False
        self._closed = False
        self._quiet: list[defer.Deferred] = []  # close() waiting for the commit in progress
        self._synchronous = ""
        self._fan_out = fan_out
        self._fanned_out = 0  # the fan-out cursor as last read or written on this connection

    # -- lifecycle (runner thread) -------------------------------------

    def open(self) -> defer.Deferred:
        return self._run(self._open)

    def _open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self._path))
        os.makedirs(directory, exist_ok=True)
        # timeout: how long a writer waits for another process's transaction (regd.workers share the file).
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=30.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        self._synchronous = "FULL"
        db.execute(f"PRAGMA wal_autocheckpoint={int(self._checkpoint_pages)}")
        db.executescript(SCHEMA)
        self._upgrade(db)
        self._db = db

    @staticmethod
    def _upgrade(db: sqlite3.Connection) -> None:
        """
        A journal from before events named their endpoints gets the column
        and the cursor; its queued events keep the delivery rows they have.
        Under the write lock: worker processes open the file at once.
        """
        db.execute("BEGIN IMMEDIATE")
        try:
            if "targets" not in {row[1] for row in db.execute("PRAGMA table_info(events)")}:
                db.execute("ALTER TABLE events ADD COLUMN targets TEXT")
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('fan_out', 0)")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> defer.Deferred:
        """Commit what is queued, then close; later writes fail with JournalClosed."""
        self._closed = True
        if self._marks_timer is not None and not self._committing:
            self._commit_waiting()
        if self._committing:
            d: defer.Deferred = defer.Deferred()
            self._quiet.append(d)
            return d.addCallback(lambda _: self._run(self._close))
        return self._run(self._close)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- writes, group-committed ----------------------------------------

    def _write(self, operation: str, *args) -> defer.Deferred:
        """
        Queue a write; it is committed with every other write queued while
        the previous commit ran, in one transaction (one fsync for many).
        """
        if self._closed:
            return defer.fail(JournalClosed(operation))
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((operation, args, d))
        if self._committing:
            return d
        if operation == "delivered" and self._marks_delay:
            if self._marks_timer is None:
                self._marks_timer = self._clock.callLater(self._marks_delay, self._marks_due)
            return d
        self._commit_waiting()
        return d

    def _marks_due(self) -> None:
        self._marks_timer = None
        if not self._committing and self._waiting:
            self._commit_waiting()

    def _commit_waiting(self) -> None:
        if self._marks_timer is not None:
            self._marks_timer.cancel()
            self._marks_timer = None
        batch, self._waiting = self._waiting, []
        self._committing = True

        def done(result):
            self._committing = False
            if self._waiting:
                self._commit_waiting()
            else:
                quiet, self._quiet = self._quiet, []
                for d in quiet:
                    d.callback(None)
            return result

        def succeeded(results):
            for (_, _, d), result in zip(batch, results):
                d.callback(result)

        def failed(failure):
            for *_, d in batch:
                d.errback(failure)

        committed = self._run(self._transaction, [(op, args) for op, args, _ in batch], self._wallclock())
        committed.addBoth(done)
        committed.addCallbacks(succeeded, failed)

    def _transaction(self, operations, now: float) -> list:
        db = self._db
        results = []
        # New events must be on disk before their request is answered (fsync);
        # delivery bookkeeping need not: losing it only means sending again.
        durable = any(operation == "append" for operation, _ in operations)
        synchronous = "FULL" if durable else "NORMAL"
        if synchronous != self._synchronous:  # each statement costs a GIL round trip; skip the no-ops
            db.execute(f"PRAGMA synchronous={synchronous}")
            self._synchronous = synchronous
        if not self._fan_out and all(operation == "append" for operation, _ in operations):
            return self._append_rows(db, now, [args for _, args in operations])
        # The delivery marks of the batch (one per POST) go in one statement pair, where the first was.
        marks = [(args[0], seq) for operation, args in operations if operation == "delivered" for seq in args[1]]
        db.execute("BEGIN IMMEDIATE")
        try:
            for operation, args in operations:
                if operation == "delivered":
                    if marks:
                        self._delete_deliveries(db, marks)
                        marks = []
                    results.append(None)
                    continue
                results.append(getattr(self, f"_op_{operation}")(db, now, *args))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return results

    def append(self, event_id: str, body: str, endpoints: tuple[str, ...]) -> defer.Deferred:
        """Deferred[int seq], fired once the event is durably on disk."""
        return self._write("append", event_id, body, endpoints)

    def _op_append(self, db, now, event_id, body, endpoints) -> int:
        if not self._fan_out:
            return self._append_rows(db, now, [(event_id, body, endpoints)])[0]
        seq = db.execute("INSERT INTO events (id, created, body) VALUES (?, ?, ?)", (event_id, now, body)).lastrowid
        db.executemany("INSERT INTO deliveries (endpoint, seq) VALUES (?, ?)", [(name, seq) for name in endpoints])
        return seq

    @staticmethod
    def _append_rows(db, now, appends: list[tuple]) -> list[int]:
        """
        Event rows naming their endpoints, APPEND_ROWS to an INSERT
        statement: outside a transaction each statement is one (all its
        events are on disk when it returns). Its rows get consecutive
        sequence numbers, the last of which SQLite reports: the statement
        holds the write lock throughout.
        """
        seqs: list[int] = []
        for start in range(0, len(appends), APPEND_ROWS):
            chunk = appends[start:start + APPEND_ROWS]
            values = [value for event_id, body, endpoints in chunk
                      for value in (event_id, now, body, json.dumps(list(endpoints)))]
            last = db.execute("INSERT INTO events (id, created, body, targets) VALUES "
                              + ", ".join(["(?, ?, ?, ?)"] * len(chunk)), values).lastrowid
            seqs.extend(range(last - len(chunk) + 1, last + 1))
        return seqs

    def fan_out_pending(self) -> int:
        """
        Synchronous, for the process that delivers: write the delivery rows
        of every event appended without them, in one transaction (no fsync:
        lost to a power cut, it is done again from the same event rows), and
        move the cursor past them. Returns how many events it fanned out.
        Sequence numbers are taken under the write lock, so no event commits
        behind the cursor.
        """
        db = self._db
        if db.execute("SELECT 1 FROM events WHERE seq > ? LIMIT 1", (self._fanned_out,)).fetchone() is None:
            return 0  # the common case, without taking the write lock
        if self._synchronous != "NORMAL":
            db.execute("PRAGMA synchronous=NORMAL")
            self._synchronous = "NORMAL"
        db.execute("BEGIN IMMEDIATE")
        try:
            cursor = db.execute("SELECT value FROM meta WHERE key = 'fan_out'").fetchone()[0]
            last, count = db.execute("SELECT MAX(seq), COUNT(targets) FROM events WHERE seq > ?",
                                     (cursor,)).fetchone()
            if last is not None:
                db.execute(FAN_OUT, (cursor,))
                db.execute("UPDATE meta SET value = ? WHERE key = 'fan_out'", (last,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._fanned_out = last or cursor
        return count

    # -- delivery bookkeeping ------------------------------------------

    def pending(self, endpoint: str, limit: int = 1_000_000) -> defer.Deferred:
        """Deferred[list[JournalEntry]] in order, for an endpoint starting up."""
        return self._run(self._select, endpoint, 0, limit)

    def pending_after(self, endpoint: str, seq: int, limit: int = 10_000) -> list[JournalEntry]:
        """
        Synchronous, for the delivery process that owns this connection: the
        pending events past C{seq}, in order.
        """
        rows = self._db.execute(
            "SELECT e.seq, e.id, e.created, e.body, d.attempts, d.last_error FROM deliveries d "
            "JOIN events e ON e.seq = d.seq WHERE d.endpoint = ? AND d.dead = 0 AND d.seq > ? ORDER BY d.seq LIMIT ?",
            (endpoint, seq, limit)).fetchall()
        return [JournalEntry(*row) for row in rows]

    def pending_among(self, endpoint: str, seqs: list[int]) -> list[JournalEntry]:
        """Synchronous, for the delivery side: which of C{seqs} are pending for C{endpoint}, in order."""
        wanted = set(seqs)
        if not wanted:
            return []
        low, high = min(wanted), max(wanted)
        rows = self._db.execute(
            "SELECT e.seq, e.id, e.created, e.body, d.attempts, d.last_error FROM deliveries d "
            "JOIN events e ON e.seq = d.seq WHERE d.endpoint = ? AND d.dead = 0 AND d.seq BETWEEN ? AND ? "
            "ORDER BY d.seq", (endpoint, low, high)).fetchall()
        return [JournalEntry(*row) for row in rows if row[0] in wanted]

    def data_version(self) -> int:
        """Synchronous: changes whenever another connection (thread or process) committed."""
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def dead_letters(self, endpoint: str, limit: int = 1000) -> defer.Deferred:
        return self._run(self._select, endpoint, 1, limit)

    def _select(self, endpoint: str, dead: int, limit: int) -> list[JournalEntry]:
        rows = self._db.execute(
            "SELECT e.seq, e.id, e.created, e.body, d.attempts, d.last_error FROM deliveries d "
            "JOIN events e ON e.seq = d.seq WHERE d.endpoint = ? AND d.dead = ? ORDER BY d.seq LIMIT ?",
            (endpoint, dead, limit)).fetchall()
        return [JournalEntry(*row) for row in rows]

    def delivered(self, endpoint: str, seqs: list[int]) -> defer.Deferred:
        return self._write("delivered", endpoint, list(seqs))

    @staticmethod
    def _delete_deliveries(db, marks: list[tuple[str, int]]) -> None:
        """(endpoint, seq) delivered: the rows go, and each event once no endpoint is owed it."""
        db.executemany("DELETE FROM deliveries WHERE endpoint = ? AND seq = ?", marks)
        db.executemany("DELETE FROM events WHERE seq = ? AND NOT EXISTS "
                       "(SELECT 1 FROM deliveries WHERE seq = ?)", [(s, s) for s in dict.fromkeys(s for _, s in marks)])

    def failed(self, endpoint: str, seqs: list[int], error: str, dead: bool,
               keep_dead: int = 0) -> defer.Deferred:
        """
        Count a failed attempt; with C{dead} the events become dead letters,
        of which only the newest C{keep_dead} are kept (0: all), so a dead
        receiver cannot fill the disk.
        """
        return self._write("failed", endpoint, list(seqs), error, dead, keep_dead)

    @staticmethod
    def _op_failed(db, now, endpoint: str, seqs: list[int], error: str, dead: bool, keep_dead: int) -> int:
        db.executemany(
            "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, dead = ? WHERE endpoint = ? AND seq = ?",
            [(error[:500], int(dead), endpoint, s) for s in seqs])
        if not (dead and keep_dead):
            return 0
        doomed = [row[0] for row in db.execute(
            "SELECT seq FROM deliveries WHERE endpoint = ? AND dead = 1 ORDER BY seq DESC LIMIT -1 OFFSET ?",
            (endpoint, keep_dead)).fetchall()]
        Journal._delete_deliveries(db, [(endpoint, s) for s in doomed])
        pruned = len(doomed)
        return pruned

    def replay(self, endpoint: str, seqs: list[int] | None = None,
               event_ids: list[str] | None = None) -> defer.Deferred:
        """Deferred[list[JournalEntry]]: turn dead letters (all, or those named) back into pending deliveries."""
        return self._write("replay", endpoint, seqs, event_ids)

    def _op_replay(self, db, now, endpoint: str, seqs: list[int] | None,
                   event_ids: list[str] | None) -> list[JournalEntry]:
        every = seqs is None and event_ids is None
        revived = [e for e in self._select(endpoint, 1, 1_000_000)
                   if every or e.seq in (seqs or ()) or e.event_id in (event_ids or ())]
        db.executemany("UPDATE deliveries SET dead = 0, attempts = 0 WHERE endpoint = ? AND seq = ?",
                       [(endpoint, e.seq) for e in revived])
        return revived

    def counts(self, endpoint: str) -> defer.Deferred:
        """Deferred[(pending, dead)]."""
        return self._run(self._counts, endpoint)

    def _counts(self, endpoint: str) -> tuple[int, int]:
        db = self._db
        db.execute("BEGIN")  # one snapshot: an event is counted either before or after its fan-out
        try:
            rows = dict(db.execute(
                "SELECT dead, COUNT(*) FROM deliveries WHERE endpoint = ? GROUP BY dead", (endpoint,)).fetchall())
            waiting = db.execute(
                "SELECT COUNT(*) FROM events e, json_each(e.targets) t WHERE e.seq > "
                "(SELECT value FROM meta WHERE key = 'fan_out') AND e.targets IS NOT NULL AND t.value = ?",
                (endpoint,)).fetchone()[0]
        finally:
            db.execute("COMMIT")
        return rows.get(0, 0) + waiting, rows.get(1, 0)
