# -*- test-case-name: tests.index.test_index -*-
"""
RepositoryIndex: the one API docker search and the web pages query.

Queries run on the index's database thread and answer from SQLite alone
(no storage reads), which is what keeps them fast with tens of thousands of
repositories. Writes come from three places, all of which re-read the
changed repository from storage (L{regd.index.scan}) rather than trusting
the event's fields:

  - this process's registry events (it is an IRegistryListener);
  - change markers other instances left in storage (L{regd.index.changes}),
    picked up by L{RepositoryIndex.refresh} every few seconds;
  - a full L{RepositoryIndex.rebuild} (C{regd reindex}, or at start when the
    database is new or was away longer than the markers are kept).

Access control is the caller's: every list and search takes C{may_pull},
a predicate (or a set) of repository names the caller may pull, exactly
what C{Grant.may_pull} is; None means everything. L{repository} and
L{activity} take a name the caller has already checked.
"""

from __future__ import annotations

import time
from collections import Counter

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from regd.index import store
from regd.index.changes import ChangeLog, marker_time
from regd.index.model import DEFAULT_PER_PAGE, MAX_PER_PAGE, ActivityDay, Page
from regd.index.scan import MAX_DESCRIPTION, RepositoryScan, Scanner
from regd.oci.errors import NameUnknown
from regd.oci.reference import is_valid_name
from regd.registry.listener import BLOB, DELETE, MANIFEST, PULL, PUSH, TAG, IRegistryListener
from regd.storage import paths

MAX_PAGE_NUMBER = 1_000_000
DEFAULT_RETENTION = 900.0  # seconds change markers stay in storage


def day_of(seconds: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def _bounded(page: int, per_page: int, default: int = DEFAULT_PER_PAGE) -> tuple[int, int]:
    per_page = default if not per_page else min(max(int(per_page), 1), MAX_PER_PAGE)
    return min(max(int(page or 1), 1), MAX_PAGE_NUMBER), per_page


@implementer(IRegistryListener)
class RepositoryIndex:
    """
    @param driver: the storage driver (IStorageDriver).
    @param manifests: the registry's ManifestService (its C{load} caches bodies).
    @param path: the SQLite file (":memory:" for a throwaway index).
    @param run: runs a blocking callable on the index's single database
        thread and returns a Deferred (inline in tests).
    @param clock: IReactorTime; its C{seconds()} dates pushes, pulls and markers.
    """

    log = Logger()

    def __init__(self, driver, manifests, path: str, run, clock, *, retention: float = DEFAULT_RETENTION):
        self._driver = driver
        self._scanner = Scanner(driver, manifests)
        self._changes = ChangeLog(driver, clock)
        self._path = path
        self._run = run
        self._clock = clock
        self._retention = retention
        self._db = None
        self._snapshot: store.Snapshot | None = None  # used on the database thread only
        self._locks: dict[str, defer.DeferredLock] = {}
        self._pulls: list[tuple[str, str, str | None]] = []  # (repository, day, digest or None for a tag pull)

    # -- lifecycle ------------------------------------------------------------

    def open(self) -> defer.Deferred:
        """Deferred[bool]: open the database; True when it must be rebuilt (new, or stale beyond the markers)."""
        def opened():
            self._db = store.connect(self._path)
            built, refreshed = store.get_meta(self._db, "built"), store.get_meta(self._db, "refreshed")
            return built is None or refreshed is None or float(refreshed) < self._clock.seconds() - self._retention
        return self._run(opened)

    def close(self) -> defer.Deferred:
        def closed():
            if self._db is not None:
                self._db.close()
                self._db = None
                self._snapshot = None
        return self._run(closed)

    def _query(self, function, *args) -> defer.Deferred:
        return self._run(lambda: function(self._db, *args))

    def _listing(self, function, *args) -> defer.Deferred:
        """Run C{function} over the current in-memory snapshot of the repository rows."""
        def listed():
            self._snapshot = store.Snapshot.current(self._db, self._snapshot)
            return function(self._snapshot, *args)
        return self._run(listed)

    # -- queries --------------------------------------------------------------

    def search(self, term: str, page: int = 1, per_page: int = DEFAULT_PER_PAGE, may_pull=None) -> defer.Deferred:
        """
        Deferred[Page[RepositoryRow]]: repositories whose name or description
        contains C{term}, case-insensitively, best matches first (exact name,
        exact last component, name prefix, last-component prefix, name
        substring, description only; then by name). "" matches everything.
        """
        page, per_page = _bounded(page, per_page)
        return self._listing(store.search, str(term), page, per_page, may_pull)

    def repositories(self, page: int = 1, per_page: int = DEFAULT_PER_PAGE, may_pull=None,
                     organization: str | None = None) -> defer.Deferred:
        """Deferred[Page[RepositoryRow]], newest push first (untagged ones last), optionally of one organization."""
        page, per_page = _bounded(page, per_page)
        return self._listing(store.repositories, page, per_page, may_pull, organization)

    def organizations(self, page: int = 1, per_page: int = DEFAULT_PER_PAGE, may_pull=None) -> defer.Deferred:
        """Deferred[Page[Organization]] by name, each with the count of its repositories the caller may pull."""
        page, per_page = _bounded(page, per_page)
        return self._listing(store.organizations, page, per_page, may_pull)

    def repository(self, name: str, tag_page: int = 1, tags_per_page: int = MAX_PER_PAGE) -> defer.Deferred:
        """Deferred[RepositorySummary | None] with one page of its tags, newest push first."""
        tag_page, tags_per_page = _bounded(tag_page, tags_per_page, MAX_PER_PAGE)
        return self._query(store.repository, name, tag_page, tags_per_page)

    def activity(self, name: str, days: int = 30) -> defer.Deferred:
        """Deferred[tuple[ActivityDay, ...]]: pulls and pushes for each of the last C{days} UTC days, oldest first."""
        days = min(max(int(days), 1), 366)
        now = self._clock.seconds()
        wanted = [day_of(now - 86400 * back) for back in range(days - 1, -1, -1)]

        def fill(found):
            return tuple(found.get(day, ActivityDay(day, 0, 0)) for day in wanted)
        return self._query(store.activity, name, wanted[0]).addCallback(fill)

    def totals(self, may_pull=None) -> defer.Deferred:
        """Deferred[(repositories, organizations, tags)] the caller may pull."""
        return self._listing(store.totals, may_pull)

    def dump(self) -> defer.Deferred:
        """Deferred[dict]: the whole derived content, for comparing indexes."""
        return self._query(store.dump)

    # -- admin description ----------------------------------------------------

    async def set_description(self, name: str, text: str | None) -> None:
        """
        Set (or, with None or "", clear) the description an admin gives
        C{name}; it wins over the image's. Kept in storage (so every instance
        and a rebuild see it). Raises NameUnknown for no such repository.
        """
        if not is_valid_name(name) or await self.repository(name) is None:
            raise NameUnknown(detail={"name": name})
        path = paths.index_description(name)
        if text:
            await self._driver.put_content(path, str(text)[:MAX_DESCRIPTION].encode("utf-8"))
        else:
            try:
                await self._driver.delete(path)
            except Exception:
                pass
        await self._update(name, tags=())

    # -- events ---------------------------------------------------------------

    def registry_event(self, event):
        """Keep the index current; the request that pushed waits until its change is indexed."""
        if event.kind == BLOB:
            return None
        now = self._clock.seconds()
        if event.action == PULL:
            if event.kind == MANIFEST:
                self._pulls.append((event.repository, day_of(now), None if event.tag else str(event.digest)))
            return None
        if event.action == PUSH and event.kind == MANIFEST:
            tags = (event.tag,) if event.tag else ()
            pushes = [(event.repository, day_of(now), 0, 1)] if event.tag else []
            return defer.ensureDeferred(self._update(event.repository, tags, event.context.actor, pushes))
        if event.action == DELETE and event.kind == TAG:
            return defer.ensureDeferred(self._update(event.repository, (event.tag,)))
        if event.action == DELETE and event.kind == MANIFEST:
            return defer.ensureDeferred(self._update(event.repository, (), digest=str(event.digest)))
        return None

    # -- applying changes -----------------------------------------------------

    def _lock(self, name: str) -> defer.DeferredLock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = defer.DeferredLock()
        return lock

    async def _update(self, name: str, tags, actor: str | None = None, activity=(), digest: str | None = None,
                      marker: tuple[str, str] | None = None) -> None:
        """
        Re-scan C{tags} of C{name} (None: all of them; plus the tags the
        index has on C{digest}) and store the result. Our own changes get a
        new marker in storage for the other instances; C{marker} is given
        when applying another instance's.
        """
        own = marker is None
        if own:
            marker = self._changes.new_marker()
        lock = self._lock(name)
        await lock.acquire()
        try:
            if digest is not None and tags is not None:
                tags = tuple(tags) + tuple(await self._query(store.tags_on, name, digest))
            scan = await self._scanner.repository(name, None if tags is None else list(tags))
            pushed = set(tags or ()) if actor else set()
            await self._run(self._apply, scan, actor, pushed, list(activity), marker[1])
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(name, None)
        if own:
            await self._changes.write(*marker, {
                "repository": name, "tags": None if tags is None else list(tags), "actor": actor,
                "digest": digest, "activity": [list(a) for a in activity]})

    def _apply(self, scan: RepositoryScan, actor, pushed: set, activity: list, marker: str) -> None:
        """One transaction: the scanned repository, plus activity unless this marker was applied already."""
        db = self._db
        with store.Transaction(db):
            self._store_scan(db, scan, actor, pushed)
            if marker not in store.applied_among(db, [marker]):
                for name, day, pulls, pushes in activity:
                    store.add_activity(db, name, day, pulls, pushes)
                store.mark_applied(db, marker, self._clock.seconds())

    @staticmethod
    def _store_scan(db, scan: RepositoryScan, actor, pushed: set) -> None:
        if not scan.exists:
            store.remove_repository(db, scan.name)
            return
        store.ensure_repository(db, scan.name, scan.admin_description)
        if scan.complete:
            store.keep_only_tags(db, scan.name, scan.tags)
        for tag, found in scan.tags.items():
            if found is None:
                store.remove_tag(db, scan.name, tag)
            else:
                store.put_tag(db, scan.name, found, actor if tag in pushed else None)
        store.summarize(db, scan.name)

    # -- refresh and rebuild --------------------------------------------------

    async def flush_pulls(self) -> None:
        """Count the pulls seen since the last flush (one marker for all of them)."""
        if not self._pulls:
            return
        pulls, self._pulls = self._pulls, []
        bucket, marker = self._changes.new_marker()

        def count():
            db = self._db
            with store.Transaction(db):
                counted = Counter()
                for name, day, digest in pulls:
                    # A pull by digest counts only for a tagged image, not an index's children.
                    if digest is None or store.is_tagged_digest(db, name, digest):
                        counted[(name, day)] += 1
                for (name, day), n in counted.items():
                    store.add_activity(db, name, day, n, 0)
                store.mark_applied(db, marker, self._clock.seconds())
                return [[name, day, n, 0] for (name, day), n in sorted(counted.items())]
        counted = await self._run(count)
        if counted:
            await self._changes.write(bucket, marker, {"repository": None, "activity": counted})

    async def refresh(self) -> int:
        """
        Apply the markers other instances left in storage, count our pulls,
        and prune old markers. Returns how many markers were applied.
        """
        await self.flush_pulls()
        listed = await self._changes.listing()
        done = await self._query(store.applied_among, [m for _, m in listed])
        applied = 0
        for bucket, marker in listed:
            if marker in done:
                continue
            payload = await self._changes.read(bucket, marker)
            if payload is None:
                continue
            await self._apply_marker(marker, payload)
            applied += 1
        now = self._clock.seconds()
        await self._changes.prune(now - self._retention)

        def refreshed(db):
            with store.Transaction(db):
                store.forget_applied(db, now - 2 * self._retention)
                store.set_meta(db, "refreshed", repr(now))
        await self._query(refreshed)
        return applied

    async def announce_rebuild(self) -> None:
        """Tell every instance with a database of its own to rebuild too (after C{regd reindex})."""
        bucket, marker = self._changes.new_marker()
        await self._query(lambda db: store.mark_applied(db, marker, self._clock.seconds()))
        await self._changes.write(bucket, marker, {"repository": None, "rebuild": True, "activity": []})

    async def _apply_marker(self, marker: str, payload: dict) -> None:
        if payload.get("rebuild") is True:
            await self._query(lambda db: store.mark_applied(db, marker, self._clock.seconds()))
            self.log.info("index: rebuilding from storage, as another process asked")
            defer.ensureDeferred(self.rebuild()).addErrback(lambda f: self.log.failure("index: rebuild failed", f))
            return
        activity = [tuple(a) for a in payload.get("activity") or ()
                    if isinstance(a, list) and len(a) == 4 and isinstance(a[0], str)]
        name = payload.get("repository")
        if isinstance(name, str) and is_valid_name(name):
            tags = payload.get("tags")
            tags = None if tags is None else tuple(t for t in tags if isinstance(t, str))
            actor = payload.get("actor") if isinstance(payload.get("actor"), str) else None
            digest = payload.get("digest") if isinstance(payload.get("digest"), str) else None
            await self._update(name, tags, actor, activity, digest=digest, marker=("", marker))
            return

        def counted(db):
            with store.Transaction(db):
                if marker not in store.applied_among(db, [marker]):
                    for a in activity:
                        store.add_activity(db, *a)
                    store.mark_applied(db, marker, marker_time(marker) or self._clock.seconds())
        await self._query(counted)

    async def rebuild(self) -> int:
        """
        Re-read every repository from storage; drop the ones storage no longer
        has. Activity and known pushers are kept. Returns the repository count.
        """
        started = self._clock.seconds()

        def unbuilt(db):  # dying half-way means rebuilding again at the next start
            db.execute("DELETE FROM meta WHERE key = 'built'")
        await self._query(unbuilt)
        names = await self._scanner.repository_names()
        known = await self._query(store.known_repositories)
        for name in names:
            lock = self._lock(name)
            await lock.acquire()
            try:
                scan = await self._scanner.repository(name)
                await self._run(self._store_in_transaction, scan)
            finally:
                lock.release()
                if not lock.locked and not lock.waiting:
                    self._locks.pop(name, None)
        for name in sorted(known - set(names)):
            await self._run(self._store_in_transaction, RepositoryScan(name, exists=False, complete=True))

        def built(db):
            with store.Transaction(db):
                store.set_meta(db, "built", repr(started))
                if float(store.get_meta(db, "refreshed") or 0) < started:
                    store.set_meta(db, "refreshed", repr(started))
        await self._query(built)
        return len(names)

    def _store_in_transaction(self, scan: RepositoryScan) -> None:
        with store.Transaction(self._db):
            self._store_scan(self._db, scan, None, set())


__all__ = ["RepositoryIndex", "Page", "day_of"]
