# -*- test-case-name: tests.index.test_store -*-
"""
The index's SQLite database: every function here is blocking and runs on
the index's one database thread (inline in tests), never on the reactor.

WAL mode lets readers run while a writer commits and lets several regd
processes on one host share one file (busy_timeout settles their writes).
Nothing here is the truth: repositories and tags are derived from storage
(L{regd.index.scan}), so the whole file can be deleted and rebuilt; only
activity counts and who-pushed are known from events alone.
"""

from __future__ import annotations

import json
import os
import sqlite3

from regd.index.model import (
    ActivityDay, Organization, Page, RepositoryRow, RepositorySummary, TagRow, organization_of,
)
from regd.registry.search import name_score

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS repositories (
    name TEXT PRIMARY KEY,
    name_lc TEXT NOT NULL,
    last_lc TEXT NOT NULL,
    organization TEXT NOT NULL,
    image_description TEXT NOT NULL DEFAULT '',
    admin_description TEXT,
    description_lc TEXT NOT NULL DEFAULT '',
    pushed_at REAL,
    pushed_by TEXT,
    tag_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS repositories_pushed ON repositories(pushed_at DESC, name);
CREATE INDEX IF NOT EXISTS repositories_organization ON repositories(organization, name);
CREATE TABLE IF NOT EXISTS tags (
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    platforms TEXT NOT NULL,
    pushed_at REAL,
    pushed_by TEXT,
    description TEXT NOT NULL,
    PRIMARY KEY (repository, tag)
);
CREATE INDEX IF NOT EXISTS tags_newest ON tags(repository, pushed_at DESC, tag);
CREATE INDEX IF NOT EXISTS tags_digest ON tags(repository, digest);
CREATE TABLE IF NOT EXISTS activity (
    repository TEXT NOT NULL,
    day TEXT NOT NULL,
    pulls INTEGER NOT NULL DEFAULT 0,
    pushes INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (repository, day)
);
-- change markers (regd.index.changes) this database already holds
CREATE TABLE IF NOT EXISTS applied (marker TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- bumped by every change to a repository row, by any process: when in-memory lists must be re-read
CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT OR IGNORE INTO generation (id, value) VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS repositories_inserted AFTER INSERT ON repositories
    BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER IF NOT EXISTS repositories_updated AFTER UPDATE ON repositories
    BEGIN UPDATE generation SET value = value + 1; END;
CREATE TRIGGER IF NOT EXISTS repositories_deleted AFTER DELETE ON repositories
    BEGIN UPDATE generation SET value = value + 1; END;
"""

_ROW = "name, organization, image_description, admin_description, pushed_at, pushed_by, tag_count"


def connect(path: str) -> sqlite3.Connection:
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
    db.execute("PRAGMA journal_mode=WAL")
    # A lost last transaction costs nothing: the next refresh or reindex redoes it.
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SCHEMA)
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
    return db


class Transaction:
    """C{with Transaction(db):} -- BEGIN IMMEDIATE, COMMIT or ROLLBACK."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, tb):
        self.db.execute("ROLLBACK" if kind else "COMMIT")
        return False


# -- writes (inside a Transaction) -------------------------------------------

def remove_repository(db, name: str) -> None:
    """The repository is gone from storage; its activity stays (it may come back)."""
    db.execute("DELETE FROM tags WHERE repository = ?", (name,))
    db.execute("DELETE FROM repositories WHERE name = ?", (name,))


def ensure_repository(db, name: str, admin_description: str | None) -> None:
    lowered = name.lower()
    db.execute(
        "INSERT INTO repositories (name, name_lc, last_lc, organization, admin_description) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT(name) DO UPDATE SET admin_description = excluded.admin_description",
        (name, lowered, lowered.rsplit("/", 1)[-1], organization_of(name), admin_description))


def put_tag(db, name: str, scan, pushed_by: str | None) -> None:
    """
    Store a tag as storage shows it. Who pushed is not in storage: an
    event's actor wins; otherwise the actor already known for this very
    digest is kept, so a rebuild loses nothing it could know.
    """
    db.execute(
        "INSERT INTO tags (repository, tag, digest, media_type, size, platforms, pushed_at, pushed_by, description) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(repository, tag) DO UPDATE SET "
        "pushed_by = CASE WHEN excluded.pushed_by IS NOT NULL THEN excluded.pushed_by "
        "WHEN tags.digest = excluded.digest THEN tags.pushed_by ELSE NULL END, "
        "digest = excluded.digest, media_type = excluded.media_type, size = excluded.size, "
        "platforms = excluded.platforms, pushed_at = excluded.pushed_at, description = excluded.description",
        (name, scan.tag, scan.digest, scan.media_type, scan.size, json.dumps(list(scan.platforms)),
         scan.pushed_at, pushed_by, scan.description))


def remove_tag(db, name: str, tag: str) -> None:
    db.execute("DELETE FROM tags WHERE repository = ? AND tag = ?", (name, tag))


def keep_only_tags(db, name: str, tags) -> None:
    present = {row[0] for row in db.execute("SELECT tag FROM tags WHERE repository = ?", (name,))}
    db.executemany("DELETE FROM tags WHERE repository = ? AND tag = ?",
                   [(name, t) for t in present - set(tags)])


def summarize(db, name: str) -> None:
    """Recompute a repository's row from its tags: count, newest push, description."""
    count = db.execute("SELECT COUNT(*) FROM tags WHERE repository = ?", (name,)).fetchone()[0]
    newest = db.execute("SELECT pushed_at, pushed_by FROM tags WHERE repository = ? "
                        "ORDER BY pushed_at DESC, tag LIMIT 1", (name,)).fetchone() or (None, None)
    described = db.execute("SELECT description FROM tags WHERE repository = ? "
                           "ORDER BY tag = 'latest' DESC, tag LIMIT 1", (name,)).fetchone()
    image_description = described[0] if described else ""
    admin = db.execute("SELECT admin_description FROM repositories WHERE name = ?", (name,)).fetchone()
    effective = admin[0] if admin and admin[0] is not None else image_description
    db.execute("UPDATE repositories SET tag_count = ?, pushed_at = ?, pushed_by = ?, image_description = ?, "
               "description_lc = ? WHERE name = ?",
               (count, newest[0], newest[1], image_description, effective.lower(), name))


def add_activity(db, name: str, day: str, pulls: int, pushes: int) -> None:
    db.execute("INSERT INTO activity (repository, day, pulls, pushes) VALUES (?, ?, ?, ?) "
               "ON CONFLICT(repository, day) DO UPDATE SET pulls = pulls + excluded.pulls, "
               "pushes = pushes + excluded.pushes", (name, day, pulls, pushes))


def tags_on(db, name: str, digest: str) -> list[str]:
    return [row[0] for row in db.execute("SELECT tag FROM tags WHERE repository = ? AND digest = ?",
                                         (name, digest))]


def is_tagged_digest(db, name: str, digest: str) -> bool:
    return db.execute("SELECT 1 FROM tags WHERE repository = ? AND digest = ? LIMIT 1",
                      (name, digest)).fetchone() is not None


def known_repositories(db) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM repositories")}


def mark_applied(db, marker: str, at: float) -> None:
    db.execute("INSERT OR IGNORE INTO applied (marker, at) VALUES (?, ?)", (marker, at))


def applied_among(db, markers) -> set[str]:
    found = set()
    markers = list(markers)
    for start in range(0, len(markers), 500):
        chunk = markers[start:start + 500]
        found.update(row[0] for row in db.execute(
            f"SELECT marker FROM applied WHERE marker IN ({','.join('?' * len(chunk))})", chunk))
    return found


def forget_applied(db, before: float) -> None:
    db.execute("DELETE FROM applied WHERE at < ?", (before,))


def get_meta(db, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_meta(db, key: str, value: str) -> None:
    db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
               (key, value))


# -- reads --------------------------------------------------------------------

def _row(values) -> RepositoryRow:
    name, organization, image_description, admin_description, pushed_at, pushed_by, tag_count = values
    description = admin_description if admin_description is not None else image_description
    return RepositoryRow(name, organization, description, pushed_at, pushed_by, tag_count)


class Snapshot:
    """
    Every repository row in memory, newest push first, for lists and search:
    a Python pass over 10,000 rows beats asking SQLite to call the caller's
    may_pull back for each. Re-read whenever a repository row changed, in
    this process or another one sharing the file (the generation counter
    the triggers keep); so it is never staler than the database.
    """

    def __init__(self, db):
        self.version = self.version_of(db)
        self.rows = [(_row(r[:7]), r[7], r[8], r[9]) for r in db.execute(
            f"SELECT {_ROW}, name_lc, last_lc, description_lc FROM repositories ORDER BY pushed_at DESC, name")]
        self.by_name = sorted(self.rows, key=lambda r: r[0].name)

    @staticmethod
    def version_of(db) -> int:
        return db.execute("SELECT value FROM generation").fetchone()[0]

    @classmethod
    def current(cls, db, cached: "Snapshot | None") -> "Snapshot":
        if cached is not None and cached.version == cls.version_of(db):
            return cached
        return cls(db)


def _check(may_pull):
    if may_pull is None:
        return None
    return may_pull.__contains__ if isinstance(may_pull, (set, frozenset, dict)) else may_pull


def _page(items: list, page: int, per_page: int) -> Page:
    start = (page - 1) * per_page
    return Page(tuple(items[start:start + per_page]), len(items), page, per_page)


def search(snapshot: Snapshot, term: str, page: int, per_page: int, may_pull) -> Page:
    """
    Case-insensitive substring over names and descriptions. Rank: the whole
    name, then its last component, equal to the term; then the name, then
    its last component, starting with it; then the name containing it; then
    a match in the description only. Ties by name.
    """
    needle = term.lower()
    check = _check(may_pull)
    # Rows come in name order, so each score's bucket is already sorted by name.
    buckets: list[list] = [[], [], [], [], [], []]
    for row, name_lc, last_lc, description_lc in snapshot.by_name:
        if needle in name_lc:
            score = name_score(name_lc, last_lc, needle)
        elif needle in description_lc:
            score = 5
        else:
            continue
        if check is None or check(row.name):
            buckets[score].append(row)
    return _page([row for bucket in buckets for row in bucket], page, per_page)


def repositories(snapshot: Snapshot, page: int, per_page: int, may_pull, organization: str | None) -> Page:
    check = _check(may_pull)
    if check is None and organization is None:
        start = (page - 1) * per_page
        return Page(tuple(r[0] for r in snapshot.rows[start:start + per_page]), len(snapshot.rows), page, per_page)
    rows = [row for row, *_ in snapshot.rows
            if (organization is None or row.organization == organization) and (check is None or check(row.name))]
    return _page(rows, page, per_page)


def organizations(snapshot: Snapshot, page: int, per_page: int, may_pull) -> Page:
    check = _check(may_pull)
    counts: dict[str, int] = {}
    for row, *_ in snapshot.rows:
        if row.organization and (check is None or check(row.name)):
            counts[row.organization] = counts.get(row.organization, 0) + 1
    return _page([Organization(name, counts[name]) for name in sorted(counts)], page, per_page)


def totals(snapshot: Snapshot, may_pull) -> tuple[int, int, int]:
    """(repositories, organizations, tags) the caller may pull."""
    check = _check(may_pull)
    visible = [row for row, *_ in snapshot.rows if check is None or check(row.name)]
    return len(visible), len({r.organization for r in visible if r.organization}), sum(r.tag_count for r in visible)


def repository(db, name: str, tag_page: int, tags_per_page: int) -> RepositorySummary | None:
    found = db.execute(f"SELECT {_ROW} FROM repositories WHERE name = ?", (name,)).fetchone()
    if found is None:
        return None
    row = _row(found)
    tags = db.execute(
        "SELECT tag, digest, media_type, size, platforms, pushed_at, pushed_by FROM tags WHERE repository = ? "
        "ORDER BY pushed_at DESC, tag LIMIT ? OFFSET ?",
        (name, tags_per_page, (tag_page - 1) * tags_per_page)).fetchall()
    items = tuple(TagRow(t[0], t[1], t[2], t[3], tuple(json.loads(t[4])), t[5], t[6]) for t in tags)
    return RepositorySummary(
        name=name, organization=row.organization, description=row.description, image_description=found[2],
        admin_description=found[3], pushed_at=row.pushed_at, pushed_by=row.pushed_by, tag_count=row.tag_count,
        tags=Page(items, row.tag_count, tag_page, tags_per_page))


def activity(db, name: str, since_day: str) -> dict[str, ActivityDay]:
    return {r[0]: ActivityDay(r[0], r[1], r[2]) for r in db.execute(
        "SELECT day, pulls, pushes FROM activity WHERE repository = ? AND day >= ? ORDER BY day",
        (name, since_day))}


def dump(db) -> dict:
    """Everything derived from storage and events, for comparing two indexes (tests, reindex --check)."""
    return {
        "repositories": db.execute("SELECT * FROM repositories ORDER BY name").fetchall(),
        "tags": db.execute("SELECT * FROM tags ORDER BY repository, tag").fetchall(),
        "activity": db.execute("SELECT * FROM activity ORDER BY repository, day").fetchall(),
    }
