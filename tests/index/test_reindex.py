"""`regd reindex CONFIG` rebuilds the index file from storage, in a process of its own."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regd.config import parse_config
from regd.daemon.tap import index_path
from regd.index.service import RepositoryIndex
from regd.registry.service import Registry
from regd.storage.filesystem import FilesystemDriver
from regd.storage.threads import inline_runner
from tests.support.indexing import push_image
from tests.test_cli import regd


class ReindexTests(SynchronousTestCase):
    def test_reindex_builds_the_default_index_file(self):
        import os
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        registry = Registry(FilesystemDriver(root, inline_runner), Clock())
        for name in ("library/alpine", "team/web", "team/db"):
            self.successResultOf(defer.ensureDeferred(
                push_image(registry, name, "v1", layers=(name.encode(),), label=f"{name} image")))
        config = os.path.join(root, "..", "regd.yml")
        with open(config, "w") as f:
            f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n")
        done = regd("reindex", config)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("3 repositories (2 organizations, 3 tags) indexed", done.stdout)

        path = index_path(parse_config(open(config).read(), {}).config)
        self.assertEqual(path, os.path.join(root, "regd", "index", "index.db"))
        index = RepositoryIndex(registry.driver, registry.manifests, path, inline_runner, Clock())
        self.successResultOf(index.open())
        self.addCleanup(index.close)
        found = self.successResultOf(index.search("TEAM/"))
        self.assertEqual([(r.name, r.description) for r in found.items],
                         [("team/db", "team/db image"), ("team/web", "team/web image")])
