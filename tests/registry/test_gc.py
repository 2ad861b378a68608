"""Garbage collection: mark from manifests, indexes and referrers; grace; dry runs; untagged manifests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regd.oci.digest import Digest
from regd.registry.context import RequestContext
from regd.registry.gc import GarbageCollector, Report
from regd.registry.service import Registry
from regd.storage import paths
from regd.storage.filesystem import FilesystemDriver
from regd.storage.threads import inline_runner

CTX = RequestContext()
OCI = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


class WallClock:
    """File times are wall-clock times, so the collector's clock must be too."""

    def seconds(self) -> float:
        return time.time()


class GCTests(SynchronousTestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.clock = WallClock()
        self.registry = Registry(FilesystemDriver(self.root, inline_runner), self.clock, delete_enabled=True)

    def run_(self, coroutine):
        return self.successResultOf(defer.ensureDeferred(coroutine))

    def blob(self, name: str, data: bytes) -> Digest:
        digest = Digest.of(data)
        self.run_(self.registry.uploads.put_whole(name, digest, self.registry.uploads.spool_from_bytes(data), CTX))
        return digest

    def image(self, name: str, tag: str | None, layer: bytes, **extra) -> tuple[Digest, dict]:
        config = self.blob(name, b'{"os":"linux"}')
        layer_digest = self.blob(name, layer)
        document = {"schemaVersion": 2, "mediaType": OCI,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(config),
                               "size": 14},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": str(layer_digest),
                                "size": len(layer)}], **extra}
        body = json.dumps(document).encode()
        digest = Digest.of(body)
        self.run_(self.registry.manifests.put(name, tag or str(digest), body, OCI, CTX))
        return digest, {"mediaType": OCI, "digest": str(digest), "size": len(body)}

    def age_everything(self, seconds: float = 7200):
        """Make every stored file look as if written C{seconds} ago."""
        past = time.time() - seconds
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                os.utime(os.path.join(directory, name), (past, past))

    def exists(self, digest: Digest) -> bool:
        return os.path.exists(os.path.join(self.root, paths.blob_data(digest)))

    def collect(self, **kwargs):
        return self.run_(GarbageCollector(self.registry, self.clock, **kwargs).run())

    def test_sweeps_orphans_older_than_grace_only(self):
        image, _ = self.image("app", "v1", b"layer-1")
        old_orphan = self.blob("app", b"never referenced")
        self.age_everything()
        fresh_orphan = self.blob("app", b"just uploaded")
        dry = self.collect(grace=3600, dry_run=True)
        self.assertEqual(dry.blobs_deleted, [str(old_orphan)])
        self.assertTrue(self.exists(old_orphan))  # a dry run deletes nothing
        report = self.collect(grace=3600)
        self.assertEqual(report.blobs_deleted, [str(old_orphan)])
        self.assertFalse(self.exists(old_orphan))
        self.assertTrue(self.exists(fresh_orphan))
        self.assertTrue(self.exists(image))
        stored = self.run_(self.registry.manifests.get("app", "v1", CTX))
        for descriptor in json.loads(stored.body)["layers"]:
            self.assertTrue(self.exists(Digest.parse(descriptor["digest"])))

    def test_grace_zero_sweeps_at_once(self):
        orphan = self.blob("app", b"orphan")
        self.assertEqual(self.collect(grace=0).blobs_deleted, [str(orphan)])
        self.assertFalse(os.path.exists(os.path.join(self.root, paths.blob_dir(orphan))))  # no empty directory
        self.assertEqual(os.listdir(os.path.join(self.root, paths.CONDEMNED, "sha256")), [])

    def test_storage_check_is_clean_after_a_collection(self):
        from regd.registry.fsck import StorageCheck
        self.image("app", "v1", b"kept layer")
        orphan = self.blob("app", b"orphan")
        self.blob("uploads-only", b"orphan")  # a repository no manifest was ever pushed to
        gone = self.blob("app", b"collected long ago")  # registry:2's GC leaves links like this behind
        os.unlink(os.path.join(self.root, paths.blob_data(gone)))
        report = self.collect(grace=0)
        self.assertEqual(report.blobs_deleted, [str(orphan)])
        self.assertEqual(report.links_pruned, 3)
        problems = self.run_(StorageCheck(self.registry).run())
        self.assertTrue(problems.clean, problems)
        self.run_(self.registry.manifests.get("app", "v1", CTX))

    def test_directories_emptied_by_crash_leftover_removal_go(self):
        unfinished = Digest.of(b"a manifest whose write was cut short")
        for path in (paths.blob_dir(unfinished), paths.layer_dir("app", unfinished)):
            os.makedirs(os.path.join(self.root, path))  # what is left once the temp file inside is removed
        kept, _ = self.image("app", "v1", b"layer")
        self.collect(grace=0)
        for path in (paths.blob_dir(unfinished), paths.layer_dir("app", unfinished)):
            self.assertFalse(os.path.exists(os.path.join(self.root, path)), path)
        self.assertTrue(self.exists(kept))

    def test_a_reference_refreshes_an_old_blob(self):
        layer = self.blob("app", b"old layer")
        self.age_everything()
        self.image("app", "v2", b"old layer")  # a new manifest uses the old blob: touched
        self.run_(self.registry.manifests.untag("app", "v2", CTX))
        report = self.collect(grace=3600, delete_untagged=True)
        self.assertNotIn(str(layer), report.blobs_deleted)

    def test_delete_untagged_keeps_index_children_and_referrers(self):
        old, _ = self.image("app", "latest", b"old-layer")
        new, _ = self.image("app", "latest", b"new-layer")  # retag: old is untagged now
        child, child_descriptor = self.image("multi", None, b"arm-layer")
        index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [child_descriptor]}).encode()
        self.run_(self.registry.manifests.put("multi", "v1", index, INDEX, CTX))
        signature, _ = self.image("app", None, b"signature",
                                  subject={"mediaType": OCI, "digest": str(new), "size": 1},
                                  artifactType="application/vnd.example.sig")
        self.age_everything()
        # Without --delete-untagged the run says what it keeps (the signature and the child are reached).
        self.assertEqual(self.collect(grace=3600, dry_run=True).untagged_manifests_kept, [("app", str(old))])
        dry = self.collect(grace=3600, delete_untagged=True, dry_run=True)
        self.assertEqual({d for _, d in dry.manifests_deleted}, {str(old)})
        self.assertIn(str(Digest.of(b"old-layer")), dry.blobs_deleted)
        report = self.collect(grace=3600, delete_untagged=True)
        deleted = {d for _, d in report.manifests_deleted}
        self.assertEqual(deleted, {str(old)})
        self.assertFalse(self.exists(old))
        self.assertFalse(self.exists(Digest.of(b"old-layer")))
        for kept in (new, child, signature, Digest.of(b"arm-layer"), Digest.of(b"new-layer")):
            self.assertTrue(self.exists(kept), kept)
        self.run_(self.registry.manifests.get("multi", str(child), CTX))


class HookedDriver(FilesystemDriver):
    """
    A filesystem driver that runs a test's action once, just before (or
    after) the first call matching a predicate: how a push or a collection in
    another process interleaves with this one, made deterministic.
    """

    def __init__(self, root):
        super().__init__(root, inline_runner)
        self.hooks = []

    def on(self, method: str, predicate, action, after: bool = False):
        self.hooks.append((method, predicate, action, after))

    def _fire(self, method, args, after):
        for hook in list(self.hooks):
            if hook[0] == method and hook[3] == after and hook[1](*args):
                self.hooks.remove(hook)
                hook[2]()

    def _hooked(name):
        def call(self, *args):
            self._fire(name, args, False)
            result = getattr(FilesystemDriver, name)(self, *args)
            self._fire(name, args, True)
            return result
        return call

    delete = _hooked("delete")
    stat = _hooked("stat")
    move = _hooked("move")
    put_content = _hooked("put_content")
    list = _hooked("list")
    del _hooked


def is_blob(path, *_):
    return path.startswith(paths.BLOBS + "/")


class ConcurrentPushTests(SynchronousTestCase):
    """A collection at grace 0 interleaved with pushes at its most dangerous moments."""

    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        self.clock = WallClock()
        self.driver = HookedDriver(self.root)
        self.registry = Registry(self.driver, self.clock, delete_enabled=True)
        # What a second process (another instance, or `regd garbage-collect`) sees.
        self.other = Registry(FilesystemDriver(self.root, inline_runner), self.clock, delete_enabled=True)

    run_ = GCTests.run_
    blob = GCTests.blob
    image = GCTests.image
    exists = GCTests.exists
    collect = GCTests.collect

    def manifest_for(self, name, layer: bytes) -> bytes:
        config = self.blob(name, b'{"os":"linux"}')
        layer_digest = self.blob(name, layer)
        return json.dumps({"schemaVersion": 2, "mediaType": OCI,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": str(config), "size": 14},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": str(layer_digest), "size": len(layer)}]}).encode()

    def assert_whole(self, name, reference, body):
        """The pushed manifest and every blob it names can be fetched, by tag and by digest."""
        for registry in (self.registry, self.other):
            stored = self.run_(registry.manifests.get(name, reference, CTX))
            self.assertEqual(stored.body, body)
            self.run_(registry.manifests.get(name, str(Digest.of(body)), CTX))
            document = json.loads(body)
            for descriptor in [document["config"]] + document["layers"]:
                blob = self.run_(registry.blobs.open(name, Digest.parse(descriptor["digest"]), CTX))
                blob.close()

    def other_collects(self, **kwargs):
        kwargs.setdefault("grace", 0)
        return lambda: self.run_(GarbageCollector(self.other, self.clock, **kwargs).run())

    def test_collection_between_reference_check_and_links(self):
        body = self.manifest_for("app", b"layer")
        self.driver.on("put_content", lambda path, _: path == paths.revision_link("app", Digest.of(body)),
                       self.other_collects())
        self.run_(self.registry.manifests.put("app", "v1", body, OCI, CTX))
        self.assert_whole("app", "v1", body)
        self.assertEqual(os.listdir(os.path.join(self.root, paths.PENDING)), [])  # every note withdrawn

    def test_push_acknowledged_after_mark_before_sweep(self):
        body = self.manifest_for("app", b"layer")

        def push():
            self.run_(self.registry.manifests.put("app", "v1", body, OCI, CTX))
        # The collection has marked (nothing references the blobs yet) and is about to remove the first.
        self.other = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)
        self.other.driver.on("delete", is_blob, push)
        self.other.driver.on("move", is_blob, push)
        self.other_collects()()
        self.assert_whole("app", "v1", body)

    def test_push_finds_a_blob_the_collection_puts_back_between_its_two_looks(self):
        """
        The push finds the store without its layer (condemned), and the
        collection puts it back (the push's note names it) before the push
        looks for the condemned copy: the push looks in the store again and
        finds it, instead of answering MANIFEST_BLOB_UNKNOWN.
        """
        body = self.manifest_for("app", b"layer")
        layer = Digest.of(b"layer")
        self.run_(self.other.driver.move(paths.blob_data(layer), paths.condemned_blob(layer)))

        def collection_puts_it_back():
            self.run_(self.other.driver.move(paths.condemned_blob(layer), paths.blob_data(layer)))
        self.driver.on("stat", lambda path: path == paths.condemned_blob(layer), collection_puts_it_back)
        self.run_(self.registry.manifests.put("app", "v1", body, OCI, CTX))
        self.assertEqual(self.driver.hooks, [])  # the window was hit
        self.assert_whole("app", "v1", body)

    def test_push_acknowledged_while_the_sweep_has_condemned_its_blobs(self):
        body = self.manifest_for("app", b"layer")
        self.other = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)

        def push():
            self.run_(self.registry.manifests.put("app", "v1", body, OCI, CTX))
        # Old collectors delete at once; this one condemns first: push after the first blob went either way.
        self.other.driver.on("delete", is_blob, push, after=True)
        self.other.driver.on("move", lambda source, destination: is_blob(source), push, after=True)
        self.other_collects()()
        self.assert_whole("app", "v1", body)

    def test_blob_upload_acknowledged_during_the_sweep_keeps_its_blob(self):
        data = b"uploaded again while collected"
        digest = self.blob("app", data)
        self.other = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)

        def upload():
            self.blob("app", data)
        self.other.driver.on("delete", is_blob, upload, after=True)
        self.other.driver.on("move", lambda source, destination: is_blob(source), upload, after=True)
        self.other_collects()()
        self.assertTrue(self.exists(digest))
        self.run_(self.registry.blobs.open("app", digest, CTX)).close()

    def test_mount_acknowledged_during_the_sweep_keeps_its_blob(self):
        digest = self.blob("source", b"mounted while collected")
        self.other = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)
        mounted = []

        def mount():
            mounted.append(self.run_(self.registry.blobs.mount("target", "source", digest, CTX)))
        self.other.driver.on("delete", is_blob, mount, after=True)
        self.other.driver.on("move", lambda source, destination: is_blob(source), mount, after=True)
        self.other_collects()()
        if mounted[0] is not None:  # refused mounts are fine: the client uploads instead
            self.run_(self.registry.blobs.open("target", digest, CTX)).close()

    def test_collection_between_upload_existence_check_and_link(self):
        data = b"already stored, unreferenced"
        digest = self.blob("app", data)  # the bytes exist: the next upload only links them
        self.driver.on("put_content", lambda path, _: path == paths.layer_link("other", digest),
                       self.other_collects())
        self.blob("other", data)
        self.run_(self.registry.blobs.open("other", digest, CTX)).close()

    def test_collection_between_chunked_upload_check_and_link(self):
        data = b"already stored, unreferenced"
        digest = self.blob("app", data)
        uploads = self.registry.uploads
        upload_id = self.run_(uploads.start("other"))
        self.driver.on("put_content", lambda path, _: path == paths.layer_link("other", digest),
                       self.other_collects())
        self.run_(uploads.commit("other", upload_id, digest, uploads.spool_from_bytes(data), CTX))
        self.run_(self.registry.blobs.open("other", digest, CTX)).close()

    def test_collection_between_mount_check_and_link(self):
        digest = self.blob("source", b"mounted")
        self.driver.on("put_content", lambda path, _: path == paths.layer_link("target", digest),
                       self.other_collects())
        self.assertIsNotNone(self.run_(self.registry.blobs.mount("target", "source", digest, CTX)))
        self.run_(self.registry.blobs.open("target", digest, CTX)).close()

    def test_blob_uploaded_again_while_its_old_link_is_pruned(self):
        data = b"collected, then uploaded again"
        digest = self.blob("app", data)
        os.unlink(os.path.join(self.root, paths.blob_data(digest)))  # collected; its link was left behind
        self.other = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)
        self.other.driver.on("delete", lambda path: path == paths.layer_dir("app", digest),
                             lambda: self.blob("app", data), after=True)
        self.other_collects()()
        self.run_(self.registry.blobs.open("app", digest, CTX)).close()

    def test_tag_pushed_while_its_untagged_manifest_is_unlinked(self):
        body = self.manifest_for("app", b"layer")
        digest = Digest.of(body)
        self.run_(self.registry.manifests.put("app", str(digest), body, OCI, CTX))  # untagged
        self.other = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)

        def tag():
            self.run_(self.registry.manifests.put("app", "v1", body, OCI, CTX))
        self.other.driver.on("delete", lambda path: path == paths.revision_dir("app", digest), tag)
        self.other_collects(delete_untagged=True)()
        self.assert_whole("app", "v1", body)

    def test_signature_kept_when_its_subject_is_tagged_during_the_collection(self):
        body = self.manifest_for("app", b"layer")
        digest = Digest.of(body)
        self.run_(self.registry.manifests.put("app", str(digest), body, OCI, CTX))  # untagged
        signature, _ = self.image("app", None, b"signature",
                                  subject={"mediaType": OCI, "digest": str(digest), "size": len(body)},
                                  artifactType="application/vnd.example.sig")
        self.other = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)
        tagging = []

        def tag_in_progress():  # the tag's PUT has announced itself and not yet linked
            tagging.append(self.registry.pending.holding("app", [digest]))
            self.run_(tagging[0].__aenter__())
        self.other.driver.on("stat", lambda path: path == paths.revision_link("app", digest), tag_in_progress)
        self.other_collects(delete_untagged=True)()
        self.run_(tagging[0].__aexit__(None, None, None))
        self.run_(self.registry.manifests.put("app", "v1", body, OCI, CTX))
        self.assert_whole("app", "v1", body)
        self.run_(self.registry.manifests.get("app", str(signature), CTX))

    def test_tag_pushed_just_after_its_untagged_manifest_was_unlinked(self):
        body = self.manifest_for("app", b"layer")
        digest = Digest.of(body)
        self.run_(self.registry.manifests.put("app", str(digest), body, OCI, CTX))
        self.other = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)

        def tag():
            self.run_(self.registry.manifests.put("app", "v1", body, OCI, CTX))
        self.other.driver.on("delete", lambda path: path == paths.revision_dir("app", digest), tag, after=True)
        self.other_collects(delete_untagged=True)()
        self.assert_whole("app", "v1", body)

    def test_collection_killed_between_unlink_and_recheck_is_finished_by_the_next(self):
        body = self.manifest_for("app", b"layer")
        digest = Digest.of(body)
        self.run_(self.registry.manifests.put("app", str(digest), body, OCI, CTX))  # untagged
        self.other = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)

        class Killed(Exception):
            pass

        def tag_then_die():
            self.run_(self.registry.manifests.put("app", "v1", body, OCI, CTX))
            raise Killed()
        self.other.driver.on("delete", lambda path: path == paths.revision_dir("app", digest), tag_then_die,
                             after=True)
        dying = defer.ensureDeferred(GarbageCollector(self.other, self.clock, grace=0, delete_untagged=True).run())
        self.failureResultOf(dying, Killed)
        self.assertTrue(os.listdir(os.path.join(self.root, paths.UNLINKING)))  # its intent survived it
        report = self.collect(grace=0, delete_untagged=True)
        self.assertIn(("app", str(digest)), report.manifests_rescued)
        self.assert_whole("app", "v1", body)
        self.assertEqual(report.manifests_deleted, [])

    def test_a_second_collection_spares_what_the_first_is_unlinking(self):
        child = self.manifest_for("app", b"child layer")
        child_digest = Digest.of(child)
        self.run_(self.registry.manifests.put("app", str(child_digest), child, OCI, CTX))  # untagged for now
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI, "digest": str(child_digest), "size": len(child),
             "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
        unlinking = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)
        third = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)
        announced = []

        def index_push_starts():  # its PUT announces the child, while the second collection condemns
            announced.append(self.registry.pending.holding("app", [child_digest]))
            self.run_(announced[0].__aenter__())

        def another_collection_runs():
            third.driver.on("move", lambda source, _: is_blob(source), index_push_starts)
            self.run_(GarbageCollector(third, self.clock, grace=0).run())
            if not announced:  # it condemned nothing (it saw the first one's note): the push starts now
                index_push_starts()
        unlinking.driver.on("delete", lambda path: path == paths.revision_dir("app", child_digest),
                            another_collection_runs, after=True)
        self.run_(GarbageCollector(unlinking, self.clock, grace=0, delete_untagged=True).run())
        self.run_(announced[0].__aexit__(None, None, None))
        self.run_(self.registry.manifests.put("app", "v1", index, OCI_INDEX, CTX))
        self.run_(self.registry.manifests.get("app", "v1", CTX))
        self.assert_whole("app", str(child_digest), child)

    def test_a_revision_put_back_by_a_late_check_keeps_its_blobs(self):
        """
        A collection finishing another's unlink check (its note read a moment
        ago) links the revision again only as a writer would: announced, its
        blobs checked; a collection sweeping meanwhile leaves them alone.
        """
        child = self.manifest_for("app", b"child layer")
        child_digest = Digest.of(child)
        self.run_(self.registry.manifests.put("app", str(child_digest), child, OCI, CTX))
        # Another collection is unlinking the child (its note written, the link gone) ...
        note = os.path.join(self.root, paths.unlinking_note("other"))
        os.makedirs(os.path.dirname(note), exist_ok=True)
        with open(note, "w") as f:
            json.dump({"repository": "app", "revisions": {str(child_digest): None}}, f)
        self.run_(self.driver.delete(paths.revision_dir("app", child_digest)))
        # ... while an index naming the child is being pushed.
        announced = self.registry.pending.holding("app", [child_digest])
        self.run_(announced.__aenter__())
        finishing = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)

        def note_dropped_and_a_sweep_runs():
            os.remove(note)
            self.run_(GarbageCollector(self.other, self.clock, grace=0).run())
        finishing.driver.on("put_content", lambda path, _: path == paths.revision_link("app", child_digest),
                            note_dropped_and_a_sweep_runs)
        self.run_(GarbageCollector(finishing, self.clock, grace=0)._recover_unlinking(Report()))
        self.run_(announced.__aexit__(None, None, None))
        self.assert_whole("app", str(child_digest), child)

    def paused_before_linking(self, name, digest):
        """
        Make this side's writes of C{name}'s revision link for C{digest} wait
        until the returned Deferred fires: a push that has announced itself
        and checked its content, not yet linked.
        """
        gate = defer.Deferred()
        put_content = self.driver.put_content

        def gated(path, data):
            if path == paths.revision_link(name, digest) and not gate.called:
                return gate.addCallback(lambda _: put_content(path, data))
            return put_content(path, data)
        self.driver.put_content = gated
        return gate

    def test_push_linked_while_the_sweep_rereads_links_then_notes(self):
        """
        A push checked its blobs just before the collection condemned them,
        then linked and dropped its note while the collection looked again.
        The collection reads the notes before the links, so it sees the note
        or the links: the acknowledged push keeps its blobs.
        """
        body = self.manifest_for("app", b"layer")
        gate = self.paused_before_linking("app", Digest.of(body))
        self.other = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)
        pushes = []

        def push_checks_its_blobs():
            pushes.append(defer.ensureDeferred(self.registry.manifests.put("app", "v1", body, OCI, CTX)))
            self.assertNoResult(pushes[0])
            # The push links and drops its note as the collection reads the notes again.
            self.other.driver.on("list", lambda path: path == paths.PENDING, lambda: gate.callback(None))
        self.other.driver.on("move", lambda source, _: is_blob(source), push_checks_its_blobs)
        self.other_collects()()
        self.successResultOf(pushes[0])
        self.assert_whole("app", "v1", body)

    def test_index_tagged_while_its_child_is_unlinked_and_rechecked(self):
        """
        An index push checked its (untagged) child just before the collection
        unlinked it, then tagged the index and dropped its note while the
        collection looked again: the child's link is put back.
        """
        child = self.manifest_for("app", b"child layer")
        child_digest = Digest.of(child)
        self.run_(self.registry.manifests.put("app", str(child_digest), child, OCI, CTX))  # untagged
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI, "digest": str(child_digest), "size": len(child),
             "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
        gate = self.paused_before_linking("app", Digest.of(index))
        self.other = Registry(HookedDriver(self.root), self.clock, delete_enabled=True)
        pushes = []

        def index_push_checks_its_child():
            pushes.append(defer.ensureDeferred(self.registry.manifests.put("app", "v1", index, OCI_INDEX, CTX)))
            self.assertNoResult(pushes[0])
            self.other.driver.on("list", lambda path: path == paths.PENDING, lambda: gate.callback(None))
        self.other.driver.on("delete", lambda path: path == paths.revision_dir("app", child_digest),
                             index_push_checks_its_child)
        self.other_collects(delete_untagged=True)()
        self.successResultOf(pushes[0])
        self.run_(self.registry.manifests.get("app", "v1", CTX))
        self.assert_whole("app", str(child_digest), child)

    def test_notes_of_a_killed_push_protect_for_their_lifetime_only(self):
        from regd.registry import pending
        orphan = self.blob("app", b"named by a push that was killed")
        note = os.path.join(self.root, paths.pending_note("killed"))
        os.makedirs(os.path.dirname(note), exist_ok=True)
        with open(note, "w") as f:
            json.dump({"repository": "app", "created": time.time() - 60, "digests": [str(orphan)]}, f)
        report = self.collect(grace=0)
        self.assertEqual(report.blobs_deleted, [])
        self.assertTrue(self.exists(orphan))
        with open(note, "w") as f:
            json.dump({"repository": "app", "created": time.time() - pending.LIFETIME - 1,
                       "digests": [str(orphan)]}, f)
        self.assertEqual(self.collect(grace=0).blobs_deleted, [str(orphan)])
        self.assertFalse(os.path.exists(note))  # expired notes are removed

    def test_collection_that_died_after_condemning_loses_nothing(self):
        image, _ = self.image("app", "v1", b"layer")
        self.registry.manifests.forget(image)
        for digest in (image, Digest.of(b"layer")):
            self.run_(self.driver.move(paths.blob_data(digest), paths.condemned_blob(digest)))
        # Readers take back what they need ...
        self.run_(self.registry.blobs.open("app", Digest.of(b"layer"), CTX)).close()
        self.run_(self.registry.manifests.get("app", "v1", CTX))
        # ... and the next collection puts back the rest before judging it.
        orphan = self.blob("app", b"orphan")
        self.run_(self.driver.move(paths.blob_data(orphan), paths.condemned_blob(orphan)))
        report = self.collect(grace=3600)
        self.assertTrue(self.exists(orphan))
        self.assertEqual(report.blobs_kept_by_grace, [str(orphan)])


class CLITests(SynchronousTestCase):
    def test_dry_run_lists_and_deletes_nothing(self):
        root = os.path.abspath(self.mktemp())
        registry = Registry(FilesystemDriver(root, inline_runner), Clock())
        data = b"orphan bytes"
        digest = Digest.of(data)
        self.successResultOf(defer.ensureDeferred(registry.uploads.put_whole(
            "r", digest, registry.uploads.spool_from_bytes(data), CTX)))
        os.makedirs(os.path.join(root, paths.manifests("r")))
        config = os.path.join(root, "..", "config.yml")
        with open(config, "w") as f:
            f.write(f"storage:\n  filesystem:\n    rootdirectory: {root}\n")
        command = [os.path.join(os.path.dirname(sys.executable), "regd"), "garbage-collect", "--config", config,
                   "--grace", "0s"]
        graced = subprocess.run(command[:-2] + ["--grace", "1h"], capture_output=True, text=True, timeout=60)
        self.assertIn("1 unreferenced blobs (12 bytes) kept: used within the grace period (1h); to reclaim "
                      "them now, run again with --grace 0s", graced.stdout)
        self.assertTrue(os.path.exists(os.path.join(root, paths.blob_data(digest))))
        dry = subprocess.run(command + ["--dry-run"], capture_output=True, text=True, timeout=60)
        self.assertEqual(dry.returncode, 0, dry.stderr)
        self.assertIn(f"would delete blob {digest}", dry.stdout)
        self.assertTrue(os.path.exists(os.path.join(root, paths.blob_data(digest))))
        real = subprocess.run(command, capture_output=True, text=True, timeout=60)
        self.assertIn(f"deleted blob {digest}", real.stdout)
        self.assertFalse(os.path.exists(os.path.join(root, paths.blob_data(digest))))
