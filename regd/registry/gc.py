# -*- test-case-name: tests.registry.test_gc -*-
"""
Garbage collection that needs no downtime: mark every blob a manifest or
index (and their children and referrers) needs, then sweep unmarked blobs
not used within the grace period.

Pushes go on meanwhile, in this process or any other sharing the storage,
and whatever the grace (0s included) nothing they acknowledge loses a byte.
Two things protect them (see regd.registry.pending for the protocol):

- a writer announces what it is about to link in a storage-visible note
  before checking it exists, and withdraws the note once its links are
  written;
- the collector never deletes in one step: it first moves an unmarked blob
  aside (condemns it), then reads the notes and the links again, and puts
  back whatever is now named by either. Only then are condemned bytes deleted.

The grace period only decides about content nothing references yet: a layer
uploaded a moment ago whose manifest has not arrived, or (with
C{delete_untagged}) a manifest no tag reaches. At grace 0 such a push fails
with BLOB_UNKNOWN / MANIFEST_BLOB_UNKNOWN and the client retries; it is never
acknowledged half-stored.
"""

from __future__ import annotations

import json

import attrs
from twisted.logger import Logger

from regd.oci import mediatypes
from regd.oci.digest import Digest
from regd.oci.errors import RegistryError
from regd.randomids import random_ids
from regd.registry import links
from regd.storage import paths
from regd.storage.interfaces import PathNotFound

log = Logger()


@attrs.define
class Report:
    marked: set = attrs.field(factory=set)
    blobs_deleted: list = attrs.field(factory=list)
    manifests_deleted: list = attrs.field(factory=list)  # (repository, digest)
    bytes_freed: int = 0
    # Unreferenced, but used within the grace period: a later run (or --grace 0s) takes them.
    blobs_kept_by_grace: list = attrs.field(factory=list)
    bytes_kept_by_grace: int = 0
    manifests_kept_by_grace: list = attrs.field(factory=list)  # (repository, digest)
    # Condemned, then found in use by a push that went on meanwhile, and put back.
    blobs_rescued: list = attrs.field(factory=list)
    manifests_rescued: list = attrs.field(factory=list)
    # Without delete_untagged: manifests no tag reaches, kept (and so is what they reference).
    untagged_manifests_kept: list = attrs.field(factory=list)  # (repository, digest)
    # Repository links (_layers) to blobs no longer stored, removed.
    links_pruned: int = 0


class GarbageCollector:
    def __init__(self, registry, clock, *, grace: float = 3600.0, delete_untagged: bool = False,
                 dry_run: bool = False):
        self._registry = registry
        self._driver = registry.driver
        self._pending = registry.pending
        self._clock = clock
        self.grace = grace
        self.delete_untagged = delete_untagged
        self.dry_run = dry_run
        self._children: dict = {}  # (repository, manifest) -> manifests it leads to, for this run
        self._unlinked_in_dry_run: set = set()  # what a real run would have unlinked

    async def run(self) -> Report:
        report = Report()
        self._children = {}
        self._unlinked_in_dry_run = set()
        if not self.dry_run:
            await self._recover_condemned()
            await self._recover_unlinking(report)
            await self._pending.expire()
        if self.delete_untagged:
            for name in await self._registry.listing.repositories():
                await self._unlink_untagged(name, report)
        traversed: set = set()
        untagged = await self._mark(report.marked, traversed)
        if not self.delete_untagged:
            report.untagged_manifests_kept = untagged
        await self._sweep(report, traversed)
        if not self.dry_run:
            await self._prune_layer_links(report)
        return report

    # -- mark ------------------------------------------------------------

    async def _mark(self, marked: set, traversed: set) -> list:
        """
        Add to C{marked} everything the links now in storage need: every
        revision and tag, their children and referrers. C{traversed} holds the
        (repository, manifest) pairs already followed, so marking again after
        a change only reads what is new. Returns the (repository, digest) of
        the revisions no tag reaches (kept, since they may be pulled by digest).
        """
        untagged = []
        for name in await self._registry.listing.repositories():
            revisions = [d for d in await links.linked_digests(self._driver, paths.revisions(name))
                         if (name, d) not in self._unlinked_in_dry_run]
            tagged = await self._tagged(name)
            await self._closure(name, revisions + tagged, marked, traversed)
            reach = self._reach(name, tagged)
            untagged.extend((name, str(d)) for d in revisions if d not in reach)
        return untagged

    def _reach(self, name: str, roots) -> set[Digest]:
        """Manifests reachable from C{roots}, from what marking already read (no storage access)."""
        reached: set[Digest] = set()
        pending = list(roots)
        while pending:
            digest = pending.pop()
            if digest not in reached:
                reached.add(digest)
                pending.extend(self._children.get((name, digest), ()))
        return reached

    async def _tagged(self, name: str) -> list[Digest]:
        found = []
        for tag in await links.list_or_empty(self._driver, paths.tags(name)):
            digest = await links.read_link(self._driver, paths.tag_current_link(name, tag))
            if digest is not None:
                found.append(digest)
        return found

    async def _closure(self, name: str, roots, marked: set, traversed: set) -> set[Digest]:
        """Manifests reachable from C{roots} in C{name}; their blobs go into C{marked}."""
        reached: set[Digest] = set()
        pending = list(roots)
        while pending:
            digest = pending.pop()
            if digest in reached:
                continue
            reached.add(digest)
            marked.add(digest)
            if (name, digest) in traversed:
                # Followed before: its children are marked, but the manifests among them must be reached too.
                pending.extend(self._children.get((name, digest), ()))
                continue
            traversed.add((name, digest))
            parsed = await self._parse(digest)
            children = []
            if parsed is not None:
                for descriptor in parsed.blobs:
                    marked.add(descriptor.digest)
                children.extend(d.digest for d in parsed.manifests)
            # Artifacts (signatures, SBOMs) attached to a kept manifest stay with it.
            children.extend(await links.linked_digests(self._driver, paths.referrers(name, digest)))
            self._children[(name, digest)] = children
            pending.extend(children)
        return reached

    async def _parse(self, digest: Digest):
        try:
            stored = await self._registry.manifests.load(digest)
            return mediatypes.parse_manifest(stored.body, stored.media_type)
        except (RegistryError, ValueError):
            return None

    async def _age(self, path: str) -> float | None:
        try:
            info = await self._driver.stat(path)
        except PathNotFound:
            return None
        return self._clock.seconds() - info.modified

    # -- untagged manifests ----------------------------------------------

    async def _tag_reach(self, name: str, revisions) -> set[Digest]:
        """
        Manifests of C{name} a tag reaches, or a push now in progress names
        (with what they lead to: children, referrers such as signatures).
        """
        # Notes before tags: a push links its tag before it drops its note, so
        # one whose note is gone by now has its tag read below.
        announced = set()
        for repository, digests in await self._pending.read():
            if repository == name:
                announced |= digests
        roots = await self._tagged(name)
        roots.extend(announced & set(revisions))  # layers named by a push are not followed
        return await self._closure(name, roots, set(), set()) | announced

    async def _unlink_untagged(self, name: str, report: Report) -> None:
        """
        Unlink the revisions no tag reaches. Unlinked first, then checked
        again (a tag pushed meanwhile, or a push in progress naming it, puts
        the link back), so a concurrent push never loses its manifest.
        """
        revisions = await links.linked_digests(self._driver, paths.revisions(name))
        if not revisions:
            return
        reach = await self._tag_reach(name, revisions)
        doomed = []
        for digest in revisions:
            if digest in reach:
                continue
            age = await self._age(paths.revision_link(name, digest))
            if age is None:
                continue
            if age < self.grace:
                report.manifests_kept_by_grace.append((name, str(digest)))
                continue
            doomed.append(digest)
        if self.dry_run:
            report.manifests_deleted.extend((name, str(d)) for d in doomed)
            self._unlinked_in_dry_run.update((name, d) for d in doomed)
            return
        if not doomed:
            return
        subjects = {}
        for digest in doomed:
            parsed = await self._parse(digest)
            subjects[digest] = parsed.subject.digest if parsed is not None and parsed.subject is not None else None
        # The intent goes to storage first: if this process dies between the
        # unlink and the check below, the next collection does the check.
        note = paths.unlinking_note(random_ids.hex())
        await self._driver.put_content(note, json.dumps({
            "repository": name,
            "revisions": {str(d): str(s) if s is not None else None for d, s in subjects.items()}}).encode())
        for digest in doomed:
            await links.delete_if_present(self._driver, paths.revision_dir(name, digest))
            if subjects[digest] is not None:
                await links.delete_if_present(self._driver, paths.referrer_dir(name, subjects[digest], digest))
        await self._relink_reached(name, subjects, revisions, report)
        await links.delete_if_present(self._driver, note)

    async def _relink_reached(self, name: str, subjects: dict, revisions, report: Report) -> None:
        """
        Put back the links of the unlinked revisions (C{subjects}: revision ->
        its subject or None) that a tag or a push in progress reaches now.
        """
        doomed = list(subjects)
        reach = await self._tag_reach(name, set(revisions) | set(doomed))
        # Referrers unlinked above left the referrers index: follow their subjects by hand.
        grown = True
        while grown:
            grown = False
            for digest in doomed:
                if digest not in reach and subjects[digest] is not None and subjects[digest] in reach:
                    reach |= await self._closure(name, [digest], set(), set())
                    grown = True
        for digest in doomed:
            if digest in reach and await self._relink(name, digest, subjects[digest]):
                report.manifests_rescued.append((name, str(digest)))
            else:
                report.manifests_deleted.append((name, str(digest)))

    async def _relink(self, name: str, digest: Digest, subject: Digest | None) -> bool:
        """
        Link a revision again as any writer links content: announced first,
        then every blob it names checked (and taken back if a collection
        elsewhere condemned it), so no collection sweeps what it leads to.
        False if some of that content is gone: the revision stays unlinked.
        """
        parsed = await self._parse(digest)
        stored = [d.digest for d in parsed.blobs if not (d.urls and d.non_distributable)] if parsed else []
        named = [digest] + stored
        async with self._pending.holding(name, named):
            for blob in named:
                if await self._registry.blobs.global_size(blob) is None:
                    return False
            await links.write_link(self._driver, paths.revision_link(name, digest), digest)
            if subject is not None:
                await links.write_link(self._driver, paths.referrer_link(name, subject, digest), digest)
        return True

    async def _unlinking_notes(self):
        """(note path, repository, {revision: subject or None}) of every unlinking note in storage."""
        found = []
        for note_id in await links.list_or_empty(self._driver, paths.UNLINKING):
            note = paths.unlinking_note(note_id)
            try:
                document = json.loads(await self._driver.get_content(note))
                subjects = {Digest.parse(d): Digest.parse(s) if s else None
                            for d, s in document["revisions"].items()}
                found.append((note, str(document["repository"]), subjects))
            except PathNotFound:
                continue  # its collection finished meanwhile
            except (ValueError, KeyError, TypeError, AttributeError, RegistryError):
                log.warn("unreadable unlinking note {note} removed", note=note_id)
                await links.delete_if_present(self._driver, note)
        return found

    async def _recover_unlinking(self, report: Report) -> None:
        """
        Finish the check of unlinks a collection wrote its intent for and
        did not finish (it died, or runs elsewhere right now: checking again
        for it is always safe). Only a note older than the pending-reference
        lifetime is removed by someone else than its writer.
        """
        from regd.registry.pending import LIFETIME
        now = self._clock.seconds()
        for note, name, subjects in await self._unlinking_notes():
            checked = Report()
            await self._relink_reached(name, subjects, (), checked)
            report.manifests_rescued.extend(checked.manifests_rescued)
            try:
                if now - (await self._driver.stat(note)).modified > LIFETIME:
                    await links.delete_if_present(self._driver, note)
            except PathNotFound:
                pass

    # -- sweep -----------------------------------------------------------

    async def _sweep(self, report: Report, traversed: set) -> None:
        candidates: dict[Digest, int] = {}
        for digest in await links.stored_blobs(self._driver):
            if digest in report.marked:
                continue
            try:
                info = await self._driver.stat(paths.blob_data(digest))
            except PathNotFound:
                if not self.dry_run:  # a write a crash cut short, once its temp file went
                    await self._remove_if_empty(paths.blob_dir(digest))
                continue
            if self._clock.seconds() - info.modified < self.grace:
                report.blobs_kept_by_grace.append(str(digest))
                report.bytes_kept_by_grace += info.size
                continue
            candidates[digest] = info.size
        if self.dry_run:
            report.blobs_deleted.extend(str(d) for d in candidates)
            report.bytes_freed += sum(candidates.values())
            return
        # Whatever pushes named since the first mark: not even condemned.
        for digest in await self._in_use(report.marked, traversed):
            candidates.pop(digest, None)
        # Forgotten by the blob-descriptor cache before anything moves (a separate collection that
        # cannot reach Redis stops here) and again after the deletes (a lookup may have raced them).
        await self._registry.blobs.forget(candidates)
        condemned = []
        for digest in candidates:
            try:
                await self._driver.move(paths.blob_data(digest), paths.condemned_blob(digest))
            except PathNotFound:
                continue
            condemned.append(digest)
        # Condemned first, checked second: a push that looked before the move
        # has announced itself or linked by now (regd.registry.pending).
        in_use = await self._in_use(report.marked, traversed)
        for digest in condemned:
            if digest in in_use:
                await self._registry.blobs.reclaim(digest)
                report.blobs_rescued.append(str(digest))
                continue
            if not await links.delete_if_present(self._driver, paths.condemned_blob(digest)):
                continue  # taken back by a push that needed it
            await self._remove_if_empty(paths.blob_dir(digest))
            self._registry.manifests.forget(digest)
            report.blobs_deleted.append(str(digest))
            report.bytes_freed += candidates[digest]
        if report.blobs_deleted:
            await self._registry.blobs.forget(Digest.parse(d) for d in report.blobs_deleted)

    async def _in_use(self, marked: set, traversed: set) -> set[Digest]:
        """
        Everything marked now: the first mark, plus what links and pending
        pushes name since, plus what revisions another collection is
        unlinking right now still lead to (it may put them back). Every kind
        of note is read before the links: its writer links before it drops
        the note, so a note gone by the time it is read left its links for
        the mark to see. (Links first, notes second would miss a push that
        linked just after the mark read there and dropped its note just
        before the notes were read.)
        """
        announced = await self._pending.all_digests()
        for _, name, subjects in await self._unlinking_notes():
            await self._closure(name, list(subjects), marked, traversed)
        await self._mark(marked, traversed)
        return marked | announced

    # -- links to what is gone -------------------------------------------

    async def _prune_layer_links(self, report: Report) -> None:
        """
        Remove repository links to blobs no longer stored (collected now or
        by an earlier run, or by registry:2), so a storage check after a
        collection finds nothing dangling. Writers store a blob before they
        link it, so a link is removed first and the blob looked for second:
        if an upload brought it back meanwhile, the link is written again.
        """
        pruned = []
        for name in await self._driver.walk_repositories(paths.REPOSITORIES, "_layers"):
            for alg in await links.list_or_empty(self._driver, paths.layers(name)):
                for hex_ in await links.list_or_empty(self._driver, f"{paths.layers(name)}/{alg}"):
                    try:
                        digest = Digest.parse(f"{alg}:{hex_}")
                    except RegistryError:
                        continue
                    if digest in report.marked or await self._stored(digest):
                        continue
                    if not await links.exists(self._driver, paths.layer_link(name, digest)):
                        # An unfinished write (crash leftover), not a link: gone once it is empty.
                        await self._remove_if_empty(paths.layer_dir(name, digest))
                        continue
                    await links.delete_if_present(self._driver, paths.layer_dir(name, digest))
                    if await self._stored(digest):
                        await links.write_link(self._driver, paths.layer_link(name, digest), digest)
                        continue
                    pruned.append((name, digest))
        for name, digest in pruned:
            await self._registry.blobs.cache.invalidate_repo_link(name, digest)
        report.links_pruned += len(pruned)

    async def _remove_if_empty(self, path: str) -> None:
        remove_empty = getattr(self._driver, "remove_empty_directory", None)
        if remove_empty is not None:  # object stores have no directories to leave behind
            await remove_empty(path)

    async def _stored(self, digest: Digest) -> bool:
        return await links.exists(self._driver, paths.blob_data(digest)) or \
            await links.exists(self._driver, paths.condemned_blob(digest))

    # -- recovery --------------------------------------------------------

    async def _recover_condemned(self) -> None:
        """
        Blobs a collection condemned and did not get to judge (it died, or
        runs elsewhere right now): put them all back. Always safe; this run
        judges them again.
        """
        for alg in await links.list_or_empty(self._driver, paths.CONDEMNED):
            for hex_ in await links.list_or_empty(self._driver, f"{paths.CONDEMNED}/{alg}"):
                try:
                    digest = Digest.parse(f"{alg}:{hex_}")
                except RegistryError:
                    continue
                await self._registry.blobs.reclaim(digest)
