"""Several instances on one storage: change markers carry each one's pushes to the others' indexes."""

from __future__ import annotations

from twisted.internet import defer

from regd.index.upkeep import IndexService
from regd.registry import links
from regd.registry.service import Registry
from regd.storage import paths
from tests.index.test_index import IndexCase
from tests.support.indexing import context, push_image


class InstancesTests(IndexCase):
    """C{self.registry}/C{self.index} is instance A; B has its own registry object and database."""

    def instance_b(self, path=":memory:"):
        registry = Registry(self.driver, self.clock, delete_enabled=True)
        index = self.make_index(path, registry)
        registry.add_listener(index)
        return registry, index

    def test_push_on_one_instance_shows_on_the_other_after_one_interval(self):
        other, index_b = self.instance_b()
        upkeep = IndexService(index_b, self.clock, 2.0)
        upkeep.startService()
        self.addCleanup(upkeep.stopService)
        self.wait(push_image(self.registry, "team/app", "v1", actor="alice", label="The app"))
        self.assertIsNone(self.wait(index_b.repository("team/app")))
        self.clock.advance(2)
        summary = self.wait(index_b.repository("team/app"))
        self.assertEqual((summary.description, summary.pushed_by), ("The app", "alice"))
        self.assertEqual(self.wait(index_b.dump())["repositories"], self.wait(self.index.dump())["repositories"])
        # Deletes travel too, and a marker is applied once.
        self.wait(self.registry.manifests.untag("team/app", "v1", context()))
        self.clock.advance(2)
        self.assertEqual(self.wait(index_b.repository("team/app")).tag_count, 0)
        self.assertEqual(self.wait(defer.ensureDeferred(index_b.refresh())), 0)

    def test_activity_is_counted_once_per_database(self):
        other, index_b = self.instance_b()
        self.wait(push_image(self.registry, "app", "v1"))
        self.wait(other.manifests.get("app", "v1", context()))
        self.wait(self.registry.manifests.get("app", "v1", context()))
        for index in (self.index, index_b, self.index, index_b):
            self.wait(defer.ensureDeferred(index.refresh()))
        for index in (self.index, index_b):
            [today] = self.wait(index.activity("app", days=1))
            self.assertEqual((today.pulls, today.pushes), (2, 1))

    def test_one_database_file_shared_by_two_processes_counts_once(self):
        path = self.mktemp() + "/index.db"
        self.registry.listeners.remove(self.index)
        first = self.make_index(path)
        self.registry.add_listener(first)
        other, second = self.instance_b(path)
        self.wait(push_image(self.registry, "app", "v1"))
        self.wait(push_image(other, "app", "v2", layers=(b"2",)))
        self.wait(other.manifests.get("app", "v1", context()))
        for index in (first, second, first, second):
            self.wait(defer.ensureDeferred(index.refresh()))
        [today] = self.wait(second.activity("app", days=1))
        self.assertEqual((today.pulls, today.pushes), (1, 2))

    def test_lists_see_another_process_writing_the_same_file_at_once(self):
        path = self.mktemp() + "/index.db"
        self.registry.listeners.remove(self.index)
        first = self.make_index(path)
        other, second = self.instance_b(path)
        self.assertEqual(self.wait(first.search("app")).total, 0)  # first's rows are now in memory
        self.wait(push_image(other, "app", "v1"))  # indexed by the second process's events only
        self.assertEqual([r.name for r in self.wait(first.search("app")).items], ["app"])
        self.assertEqual(self.wait(first.totals()), (1, 0, 1))

    def test_a_refresh_with_nothing_new_keeps_the_lists_in_memory(self):
        from regd.index import store
        self.wait(push_image(self.registry, "app", "v1"))
        self.wait(self.index.search("app"))
        before = self.index._snapshot
        self.clock.advance(5)
        self.wait(defer.ensureDeferred(self.index.refresh()))
        self.wait(self.index.search("app"))
        self.assertIs(self.index._snapshot, before)
        self.wait(push_image(self.registry, "app", "v2", layers=(b"2",)))
        self.wait(self.index.search("app"))
        self.assertIsNot(self.index._snapshot, before)
        self.assertEqual(self.index._snapshot.version, store.Snapshot.version_of(self.index._db))

    def test_old_markers_are_pruned(self):
        self.wait(push_image(self.registry, "app", "v1"))
        self.assertTrue(self.wait(self.driver.list(paths.INDEX_CHANGES)))
        self.clock.advance(self.index._retention + 120)
        self.wait(defer.ensureDeferred(self.index.refresh()))
        self.assertEqual(self.wait(defer.ensureDeferred(links.list_or_empty(self.driver, paths.INDEX_CHANGES))), [])

    def test_stale_database_is_rebuilt_at_start(self):
        self.wait(push_image(self.registry, "early", "v1"))
        path = self.mktemp() + "/b.db"
        other, index_b = self.instance_b(path)
        upkeep = IndexService(index_b, self.clock, 2.0)
        upkeep.startService()
        self.assertIsNotNone(self.wait(index_b.repository("early")), "a new database is built from storage")
        self.wait(upkeep.stopService())
        self.clock.advance(self.index._retention + 120)  # away longer than markers are kept
        self.wait(push_image(self.registry, "meanwhile", "v1"))
        self.clock.advance(self.index._retention + 120)
        self.wait(defer.ensureDeferred(self.index.refresh()))  # A prunes the marker B never saw
        upkeep = IndexService(index_b, self.clock, 2.0)
        upkeep.startService()
        self.addCleanup(upkeep.stopService)
        self.assertIsNotNone(self.wait(index_b.repository("meanwhile")))

    def test_stop_saves_pull_counts(self):
        path = self.mktemp() + "/b.db"
        other, index_b = self.instance_b(path)
        upkeep = IndexService(index_b, self.clock, 2.0)
        upkeep.startService()
        self.wait(push_image(other, "app", "v1"))
        self.wait(other.manifests.get("app", "v1", context()))
        self.wait(upkeep.stopService())
        other2, reopened = self.instance_b(path)
        [today] = self.wait(reopened.activity("app", days=1))
        self.assertEqual(today.pulls, 1)

    def test_a_rebuild_elsewhere_makes_every_other_database_rebuild(self):
        other, index_b = self.instance_b()
        self.wait(push_image(self.registry, "behind/back", "v1", layers=(b"bb",)))
        self.wait(defer.ensureDeferred(index_b.refresh()))
        self.assertEqual(self.wait(index_b.repository("behind/back")).tag_count, 1)
        self.wait(self.driver.delete(paths.tag_dir("behind/back", "v1")))  # storage changed with no event
        self.wait(defer.ensureDeferred(self.index.rebuild()))
        self.wait(defer.ensureDeferred(self.index.announce_rebuild()))
        self.assertEqual(self.wait(defer.ensureDeferred(self.index.refresh())), 0, "its own announcement")
        self.assertEqual(self.wait(index_b.repository("behind/back")).tag_count, 1)
        self.wait(defer.ensureDeferred(index_b.refresh()))
        self.assertEqual(self.wait(index_b.repository("behind/back")).tag_count, 0)
