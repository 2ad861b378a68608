"""Every path spec against the reference registry's layout."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from regd.oci.digest import Digest
from regd.storage import paths

D = Digest("sha256", "ab" + "c" * 62)
S = Digest("sha512", "12" + "3" * 126)
V2 = "docker/registry/v2"


class PathTests(SynchronousTestCase):
    def test_table(self):
        table = [
            (paths.blob_data(D), f"{V2}/blobs/sha256/ab/{D.hex}/data"),
            (paths.blob_data(S), f"{V2}/blobs/sha512/12/{S.hex}/data"),
            (paths.blob_dir(D), f"{V2}/blobs/sha256/ab/{D.hex}"),
            (paths.repository("a/b"), f"{V2}/repositories/a/b"),
            (paths.layers("a/b"), f"{V2}/repositories/a/b/_layers"),
            (paths.layer_dir("a/b", D), f"{V2}/repositories/a/b/_layers/sha256/{D.hex}"),
            (paths.layer_link("a/b", D), f"{V2}/repositories/a/b/_layers/sha256/{D.hex}/link"),
            (paths.manifests("r"), f"{V2}/repositories/r/_manifests"),
            (paths.revisions("r"), f"{V2}/repositories/r/_manifests/revisions"),
            (paths.revision_dir("r", D), f"{V2}/repositories/r/_manifests/revisions/sha256/{D.hex}"),
            (paths.revision_link("r", D), f"{V2}/repositories/r/_manifests/revisions/sha256/{D.hex}/link"),
            (paths.tags("r"), f"{V2}/repositories/r/_manifests/tags"),
            (paths.tag_dir("r", "v1"), f"{V2}/repositories/r/_manifests/tags/v1"),
            (paths.tag_current_link("r", "v1"), f"{V2}/repositories/r/_manifests/tags/v1/current/link"),
            (paths.tag_index_link("r", "v1", D),
             f"{V2}/repositories/r/_manifests/tags/v1/index/sha256/{D.hex}/link"),
            (paths.referrers("r", D), f"{V2}/repositories/r/_manifests/referrers/sha256/{D.hex}"),
            (paths.referrer_link("r", D, S),
             f"{V2}/repositories/r/_manifests/referrers/sha256/{D.hex}/sha512/{S.hex}/link"),
            (paths.uploads("r"), f"{V2}/repositories/r/_uploads"),
            (paths.upload_dir("r", "u-1"), f"{V2}/repositories/r/_uploads/u-1"),
            (paths.upload_data("r", "u-1"), f"{V2}/repositories/r/_uploads/u-1/data"),
            (paths.upload_started_at("r", "u-1"), f"{V2}/repositories/r/_uploads/u-1/startedat"),
            (paths.upload_hash_state("r", "u-1"), f"{V2}/repositories/r/_uploads/u-1/regdhashstate"),
            (paths.SPOOL, "regd/spool"),
        ]
        for actual, expected in table:
            self.assertEqual(actual, expected)

    def test_algorithm_separators_become_directories(self):
        odd = Digest("tarsum+v1.sha256", "ab" * 32)
        self.assertEqual(paths.layer_link("r", odd),
                         f"{V2}/repositories/r/_layers/tarsum/v1/sha256/{odd.hex}/link")
