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

def _filtered(db, may_pull) -> str:
    """SQL condition limiting rows to what the caller may pull (a predicate run in this thread)."""
    if may_pull is None:
        return "1"
    check = may_pull.__contains__ if isinstance(may_pull, (set, frozenset, dict)) else may_pull
    db.create_function("may_pull", 1, lambda name: 1 if check(name) else 0)
    return "may_pull(name)"


def _row(values) -> RepositoryRow:
    name, organization, image_description, admin_description, pushed_at, pushed_by, tag_count = values
    description = admin_description if admin_description is not None else image_description
    return RepositoryRow(name, organization, description, pushed_at, pushed_by, tag_count)


def _paged(db, select: str, where: str, order: str, args: tuple, page: int, per_page: int, make) -> Page:
    rows = db.execute(f"SELECT {select}, COUNT(*) OVER () FROM repositories WHERE {where} "
                      f"ORDER BY {order} LIMIT ? OFFSET ?", args + (per_page, (page - 1) * per_page)).fetchall()
    if rows:
        total = rows[0][-1]
    else:
        total = db.execute(f"SELECT COUNT(*) FROM repositories WHERE {where}", args).fetchone()[0]
    return Page(tuple(make(r[:-1]) for r in rows), total, page, per_page)


def search(db, term: str, page: int, per_page: int, may_pull) -> Page:
    """
    Case-insensitive substring over names and descriptions. Rank: the whole
    name, then its last component, equal to the term; then the name, then
    its last component, starting with it; then the name containing it; then
    a match in the description only. Ties by name.
    """
    needle = term.lower()
    where = f"(instr(name_lc, :t) > 0 OR instr(description_lc, :t) > 0) AND {_filtered(db, may_pull)}"
    order = ("CASE WHEN name_lc = :t THEN 0 WHEN last_lc = :t THEN 1 "
             "WHEN substr(name_lc, 1, :n) = :t THEN 2 WHEN substr(last_lc, 1, :n) = :t THEN 3 "
             "WHEN instr(name_lc, :t) > 0 THEN 4 ELSE 5 END, name")
    params = {"t": needle, "n": len(needle), "limit": per_page, "offset": (page - 1) * per_page}
    rows = db.execute(f"SELECT {_ROW}, COUNT(*) OVER () FROM repositories WHERE {where} ORDER BY {order} "
                      f"LIMIT :limit OFFSET :offset", params).fetchall()
    if rows:
        total = rows[0][-1]
    else:
        total = db.execute(f"SELECT COUNT(*) FROM repositories WHERE {where}", params).fetchone()[0]
    return Page(tuple(_row(r[:-1]) for r in rows), total, page, per_page)


def repositories(db, page: int, per_page: int, may_pull, organization: str | None) -> Page:
    where = _filtered(db, may_pull)
    args: tuple = ()
    if organization is not None:
        where += " AND organization = ?"
        args = (organization,)
    return _paged(db, _ROW, where, "pushed_at DESC, name", args, page, per_page, _row)


def organizations(db, page: int, per_page: int, may_pull) -> Page:
    where = f"organization != '' AND {_filtered(db, may_pull)}"
    rows = db.execute(f"SELECT organization, COUNT(*), COUNT(*) OVER () FROM repositories WHERE {where} "
                      f"GROUP BY organization ORDER BY organization LIMIT ? OFFSET ?",
                      (per_page, (page - 1) * per_page)).fetchall()
    if rows:
        total = rows[0][-1]
    else:
        total = db.execute(f"SELECT COUNT(DISTINCT organization) FROM repositories WHERE {where}").fetchone()[0]
    return Page(tuple(Organization(r[0], r[1]) for r in rows), total, page, per_page)


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


def totals(db, may_pull) -> tuple[int, int, int]:
    """(repositories, organizations, tags) the caller may pull."""
    where = _filtered(db, may_pull)
    return db.execute(f"SELECT COUNT(*), COUNT(DISTINCT NULLIF(organization, '')), COALESCE(SUM(tag_count), 0) "
                      f"FROM repositories WHERE {where}").fetchone()


def dump(db) -> dict:
    """Everything derived from storage and events, for comparing two indexes (tests, reindex --check)."""
    return {
        "repositories": db.execute("SELECT * FROM repositories ORDER BY name").fetchall(),
        "tags": db.execute("SELECT * FROM tags ORDER BY repository, tag").fetchall(),
        "activity": db.execute("SELECT * FROM activity ORDER BY repository, day").fetchall(),
    }
