"""Search ranking and paging over repository names."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from regd.registry.search import rank, search

NAMES = ["library/nginx", "nginx", "team/nginx-proxy", "team/my-nginx", "tools/curl", "NgInXtra/x"]


class SearchTests(SynchronousTestCase):
    def test_best_matches_first(self):
        found = search(NAMES, "nginx", 1, 10)
        self.assertEqual(found.names, ("nginx", "library/nginx", "NgInXtra/x",
                                       "team/nginx-proxy", "team/my-nginx"))
        self.assertEqual(found.total, 5)

    def test_case_insensitive_substring(self):
        self.assertEqual(search(NAMES, "CuR", 1, 10).names, ("tools/curl",))
        self.assertIsNone(rank("tools/curl", "wget"))

    def test_paging(self):
        first = search(NAMES, "nginx", 1, 2)
        second = search(NAMES, "nginx", 2, 2)
        third = search(NAMES, "nginx", 3, 2)
        self.assertEqual(first.names + second.names + third.names, search(NAMES, "nginx", 1, 10).names)
        self.assertEqual((first.num_pages, len(third.names)), (3, 1))
        self.assertEqual(search(NAMES, "nginx", 9, 2).names, ())

    def test_only_visible_names(self):
        found = search(NAMES, "nginx", 1, 10, visible=lambda n: n.startswith("team/"))
        self.assertEqual(found.names, ("team/nginx-proxy", "team/my-nginx"))
        self.assertEqual(found.total, 2)

    def test_empty_term_lists_everything(self):
        self.assertEqual(search(NAMES, "", 1, 10).total, len(NAMES))
