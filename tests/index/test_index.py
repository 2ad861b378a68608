"""The repository index: kept current by events, equal to a rebuild, safe with hostile input, durable."""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from regd.index.service import RepositoryIndex
from regd.oci.errors import NameUnknown
from regd.registry.listener import IRegistryListener
from regd.registry.service import Registry
from regd.storage import paths
from regd.storage.memory import InMemoryDriver
from regd.storage.threads import inline_runner
from tests.support.indexing import context, push_image, push_index

DAY = 86400.0


class IndexCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.driver = InMemoryDriver(self.clock)
        self.registry = Registry(self.driver, self.clock, delete_enabled=True)
        self.index = self.make_index()
        self.registry.add_listener(self.index)

    def make_index(self, path=":memory:", registry=None):
        registry = registry or self.registry
        index = RepositoryIndex(registry.driver, registry.manifests, path, inline_runner, self.clock)
        self.successResultOf(index.open())
        self.addCleanup(index.close)
        return index

    def wait(self, coroutine_or_deferred):
        if not isinstance(coroutine_or_deferred, defer.Deferred):
            coroutine_or_deferred = defer.ensureDeferred(coroutine_or_deferred)
        return self.successResultOf(coroutine_or_deferred)

    def names(self, page):
        return [row.name for row in page.items]


class KeptByEventsTests(IndexCase):
    def test_is_a_listener(self):
        verifyObject(IRegistryListener, self.index)

    def test_push_shows_repository_tag_and_details(self):
        self.wait(push_image(self.registry, "library/ubuntu", "22.04", layers=(b"a" * 10, b"b" * 32),
                             label="Ubuntu base", actor="alice"))
        summary = self.wait(self.index.repository("library/ubuntu"))
        self.assertEqual((summary.organization, summary.description, summary.tag_count, summary.pushed_by),
                         ("library", "Ubuntu base", 1, "alice"))
        [tag] = summary.tags.items
        self.assertEqual((tag.tag, tag.media_type, tag.size, tag.platforms, tag.pushed_by),
                         ("22.04", "application/vnd.oci.image.manifest.v1+json", 42, (), "alice"))
        self.assertEqual(tag.pushed_at, self.clock.seconds())
        self.assertEqual(tag.digest, str(self.wait(self.registry.manifests.resolve("library/ubuntu", "22.04"))))

    def test_index_platforms_and_size(self):
        self.wait(push_index(self.registry, "multi", "v1", [("linux", "amd64"), ("linux", "arm64")],
                             annotation="two arches"))
        summary = self.wait(self.index.repository("multi"))
        [tag] = summary.tags.items
        self.assertEqual(tag.platforms, ("linux/amd64", "linux/arm64"))
        self.assertEqual(tag.size, len(b"('linux', 'amd64')-0") + len(b"('linux', 'arm64')-1"))
        self.assertEqual(summary.description, "two arches")

    def test_newest_push_first_and_organizations(self):
        for number, name in enumerate(["a/one", "b/two", "a/three", "flat"]):
            self.clock.advance(10)
            self.wait(push_image(self.registry, name, "v1", layers=(name.encode(),)))
        self.assertEqual(self.names(self.wait(self.index.repositories())), ["flat", "a/three", "b/two", "a/one"])
        organizations = self.wait(self.index.organizations()).items
        self.assertEqual([(o.name, o.repositories) for o in organizations], [("a", 2), ("b", 1)])
        self.assertEqual(self.names(self.wait(self.index.repositories(organization="a"))), ["a/three", "a/one"])
        self.assertEqual(self.wait(self.index.totals()), (4, 2, 4))

    def test_tag_delete_and_manifest_delete(self):
        self.wait(push_image(self.registry, "r", "one", layers=(b"1",)))
        digest = self.wait(push_image(self.registry, "r", "two", layers=(b"2",)))
        self.wait(self.registry.manifests.put("r", "three", self.wait(self.registry.manifests.load(digest)).body,
                                              "application/vnd.oci.image.manifest.v1+json", context()))
        self.assertEqual(self.wait(self.index.repository("r")).tag_count, 3)
        self.wait(self.registry.manifests.untag("r", "one", context()))
        self.assertEqual(self.wait(self.index.repository("r")).tag_count, 2)
        self.wait(self.registry.manifests.delete("r", str(digest), context()))
        summary = self.wait(self.index.repository("r"))
        self.assertEqual((summary.tag_count, summary.tags.items, summary.pushed_at), (0, (), None))

    def test_mount_then_push_to_a_new_repository(self):
        digest = self.wait(push_image(self.registry, "src/app", "v1", layers=(b"shared",)))
        stored = json.loads(self.wait(self.registry.manifests.load(digest)).body)
        for blob in [stored["config"]] + stored["layers"]:
            from regd.oci.digest import Digest
            self.wait(self.registry.blobs.mount("dst/app", "src/app", Digest.parse(blob["digest"]), context()))
        self.assertIsNone(self.wait(self.index.repository("dst/app")), "a mount alone makes no repository")
        self.wait(self.registry.manifests.put("dst/app", "v1", json.dumps(stored).encode(),
                                              "application/vnd.oci.image.manifest.v1+json", context("bob")))
        self.assertEqual(self.names(self.wait(self.index.search("app"))), ["dst/app", "src/app"])
        self.assertEqual(self.wait(self.index.repository("dst/app")).pushed_by, "bob")

    def test_untagged_manifest_makes_a_repository(self):
        self.wait(push_image(self.registry, "bare", None))
        summary = self.wait(self.index.repository("bare"))
        self.assertEqual((summary.tag_count, summary.pushed_at), (0, None))


class SearchTests(IndexCase):
    def setUp(self):
        super().setUp()
        for name, label in [("library/nginx", None), ("nginx", None), ("team/nginx-proxy", None),
                            ("team/my-nginx", None), ("tools/curl", "fetches NGINX pages"), ("nginxtra/x", None)]:
            self.wait(push_image(self.registry, name, "latest", layers=(name.encode(),), label=label))

    def test_best_matches_first_then_description_matches(self):
        found = self.wait(self.index.search("nginx"))
        self.assertEqual(self.names(found), ["nginx", "library/nginx", "nginxtra/x", "team/nginx-proxy",
                                             "team/my-nginx", "tools/curl"])
        self.assertEqual(found.total, 6)
        self.assertEqual(self.names(self.wait(self.index.search("NgInX"))), self.names(found))

    def test_order_is_the_promised_ranking(self):
        from regd.registry.search import search as reference
        names = [row.name for row in self.wait(self.index.repositories()).items]
        for term in ["nginx", "X", "team", "e", "/", "library/nginx", "-", ""]:
            found = [n for n in self.names(self.wait(self.index.search(term))) if term.lower() in n.lower()]
            self.assertEqual(found, list(reference(names, term, 1, 100).names), term)

    def test_paging_and_clamping(self):
        pages = [self.wait(self.index.search("nginx", page, 2)) for page in (1, 2, 3, 4)]
        self.assertEqual(sum((self.names(p) for p in pages), []), self.names(self.wait(self.index.search("nginx"))))
        self.assertEqual((pages[0].num_pages, pages[3].items, pages[3].total), (3, (), 6))
        huge = self.wait(self.index.search("", 10**12, 10**12))
        self.assertEqual((huge.per_page, huge.items, huge.total), (100, (), 6))
        self.assertEqual(self.wait(self.index.search("", -5, -5)).page, 1)

    def test_only_what_the_caller_may_pull(self):
        found = self.wait(self.index.search("nginx", may_pull=lambda n: n.startswith("team/")))
        self.assertEqual((self.names(found), found.total), (["team/nginx-proxy", "team/my-nginx"], 2))
        found = self.wait(self.index.repositories(may_pull={"nginx"}))
        self.assertEqual((self.names(found), found.total), (["nginx"], 1))
        self.assertEqual([(o.name, o.repositories) for o in self.wait(
            self.index.organizations(may_pull=lambda n: n != "team/my-nginx")).items],
            [("library", 1), ("nginxtra", 1), ("team", 1), ("tools", 1)])
        self.assertEqual(self.wait(self.index.totals(may_pull=lambda n: False)), (0, 0, 0))

    def test_hostile_terms_are_plain_text(self):
        for term in ["%", "_", "'", "\"", "'; DROP TABLE repositories; --", "\\", "\x00", "<script>", "*",
                     "nginx' OR '1'='1", "é" * 300, "[", "%nginx%", "n_inx"]:
            found = self.wait(self.index.search(term))
            self.assertEqual((found.items, found.total), ((), 0), term)
        self.assertEqual(self.wait(self.index.totals())[0], 6)

    def test_hostile_descriptions_and_admin_descriptions_are_kept_verbatim(self):
        hostile = "<script>alert('x')</script> 100% _done_ \"q\" é"
        self.wait(push_image(self.registry, "evil/one", "v1", annotation=hostile))
        self.assertEqual(self.wait(self.index.repository("evil/one")).description, hostile)
        self.assertEqual(self.names(self.wait(self.index.search("100% _DONE_"))), ["evil/one"])
        self.assertEqual(self.names(self.wait(self.index.search("É"))), ["evil/one"])

    def test_admin_description_wins_is_stored_and_clears(self):
        self.wait(self.index.set_description("tools/curl", "Set by <admin>"))
        summary = self.wait(self.index.repository("tools/curl"))
        self.assertEqual((summary.description, summary.image_description, summary.admin_description),
                         ("Set by <admin>", "fetches NGINX pages", "Set by <admin>"))
        self.assertEqual(self.wait(self.driver.get_content(paths.index_description("tools/curl"))),
                         b"Set by <admin>")
        self.assertEqual(self.names(self.wait(self.index.search("by <ADMIN"))), ["tools/curl"])
        self.assertNotIn("tools/curl", self.names(self.wait(self.index.search("pages"))))
        self.wait(self.index.set_description("tools/curl", None))
        self.assertEqual(self.wait(self.index.repository("tools/curl")).description, "fetches NGINX pages")
        self.failureResultOf(defer.ensureDeferred(self.index.set_description("no/such", "x")), NameUnknown)


class RebuildTests(IndexCase):
    def populate(self):
        self.wait(push_image(self.registry, "a/one", "v1", layers=(b"1",), actor="alice", label="first"))
        self.clock.advance(5)
        self.wait(push_image(self.registry, "a/one", "latest", layers=(b"2",), annotation="latest one"))
        self.wait(push_index(self.registry, "b/multi", "v2", [("linux", "amd64"), ("linux", "arm", )], actor="bob"))
        self.wait(push_image(self.registry, "gone/tag", "x", layers=(b"3",)))
        self.wait(self.registry.manifests.untag("gone/tag", "x", context()))
        digest = self.wait(push_image(self.registry, "c", "old", layers=(b"4",)))
        self.wait(push_image(self.registry, "c", "keep", layers=(b"5",)))
        self.wait(self.registry.manifests.delete("c", str(digest), context()))
        self.wait(push_image(self.registry, "bare", None))
        self.wait(self.index.set_description("b/multi", "admin text"))
        self.clock.advance(1)
        self.wait(self.registry.manifests.get("a/one", "v1", context()))
        self.wait(self.index.flush_pulls())

    def derived(self, dump, keep_actor=True):
        """Repositories and tags; who pushed is event-only knowledge unless kept."""
        if keep_actor:
            return dump["repositories"], dump["tags"]
        return ([r[:8] + r[9:] for r in dump["repositories"]], [t[:7] + t[8:] for t in dump["tags"]])

    def test_rebuild_from_scratch_equals_index_kept_by_events(self):
        self.populate()
        kept = self.wait(self.index.dump())
        fresh = self.make_index()
        self.assertEqual(self.wait(defer.ensureDeferred(fresh.rebuild())), 5)
        rebuilt = self.wait(fresh.dump())
        self.assertEqual(self.derived(rebuilt, keep_actor=False), self.derived(kept, keep_actor=False))
        self.assertEqual(len(kept["repositories"]), 5)
        self.assertIn("alice", [t[7] for t in kept["tags"]])

    def test_rebuild_over_the_kept_index_changes_nothing(self):
        self.populate()
        kept = self.wait(self.index.dump())
        self.wait(defer.ensureDeferred(self.index.rebuild()))
        self.assertEqual(self.wait(self.index.dump()), kept)

    def test_rebuild_drops_what_storage_lost(self):
        self.populate()
        self.wait(self.driver.delete(paths.repository("c")))
        self.wait(defer.ensureDeferred(self.index.rebuild()))
        self.assertIsNone(self.wait(self.index.repository("c")))


class DurabilityTests(IndexCase):
    def test_activity_survives_restart(self):
        path = self.mktemp() + "/index.db"
        index = self.make_index(path)
        self.registry.listeners.remove(self.index)
        self.registry.add_listener(index)
        self.wait(push_image(self.registry, "app", "v1", layers=(b"1",)))
        self.wait(self.registry.manifests.get("app", "v1", context()))
        self.clock.advance(DAY)
        self.wait(push_image(self.registry, "app", "v2", layers=(b"2",)))
        for _ in range(3):
            self.wait(self.registry.manifests.get("app", "v2", context()))
        digest = self.wait(self.registry.manifests.resolve("app", "v2"))
        self.wait(self.registry.manifests.get("app", str(digest), context()))
        self.wait(defer.ensureDeferred(index.refresh()))
        before = self.wait(index.activity("app", days=3))
        self.wait(index.close())

        reopened = self.make_index(path)
        after = self.wait(reopened.activity("app", days=3))
        self.assertEqual(after, before)
        self.assertEqual([(d.pulls, d.pushes) for d in after], [(0, 0), (1, 1), (4, 1)])
        self.assertEqual(self.wait(reopened.repository("app")).tag_count, 2)

    def test_open_says_when_a_rebuild_is_due(self):
        path = self.mktemp() + "/index.db"
        index = RepositoryIndex(self.driver, self.registry.manifests, path, inline_runner, self.clock)
        self.assertTrue(self.successResultOf(index.open()))
        self.wait(defer.ensureDeferred(index.rebuild()))
        self.wait(index.close())
        self.assertFalse(self.successResultOf(index.open()))
        self.wait(index.close())
        self.clock.advance(DAY)
        self.assertTrue(self.successResultOf(index.open()))
        self.wait(index.close())
