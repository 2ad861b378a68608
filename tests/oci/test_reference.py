"""Repository name and tag grammar."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regd.oci.errors import NameInvalid, TagInvalid
from regd.oci.reference import is_valid_name, is_valid_tag, validate_name, validate_tag
from tests.support.strategies import repository_names, tags


class NameTests(SynchronousTestCase):
    def test_valid(self):
        for name in ["a", "library/ubuntu", "a/b/c/d", "my-app", "my--app", "a.b", "a_b", "a__b", "x9/y8"]:
            self.assertTrue(is_valid_name(name), name)

    def test_invalid(self):
        for name in ["", "A", "a/", "/a", "a//b", "-a", "a-", "a___b", "a/.b", ".", "..", "../x", "a/../b",
                     "_a", "a/_b", "%2e%2e", "a b", "a\\b", "a" * 256, "a:b", "a/b\x00"]:
            self.assertFalse(is_valid_name(name), name)
            self.assertRaises(NameInvalid, validate_name, name)

    def test_length_limit(self):
        self.assertTrue(is_valid_name("a" * 255))
        self.assertFalse(is_valid_name("a" * 256))

    @given(repository_names())
    def test_generated_names_pass(self, name):
        if len(name) <= 255:
            self.assertEqual(validate_name(name), name)

    @given(st.text(max_size=40))
    def test_no_name_with_traversal_passes(self, text):
        if ".." in text or "//" in text or text.startswith("/") or "_" == text[:1]:
            self.assertFalse(is_valid_name(text))


class TagTests(SynchronousTestCase):
    def test_rules(self):
        for tag in ["latest", "v1.0", "_x", "A-b_c.d", "a" * 128]:
            self.assertTrue(is_valid_tag(tag), tag)
        for tag in ["", ".x", "-x", "a" * 129, "a/b", "a:b", "sha256:abc"]:
            self.assertFalse(is_valid_tag(tag), tag)
            self.assertRaises(TagInvalid, validate_tag, tag)

    @given(tags)
    def test_generated_tags_pass(self, tag):
        self.assertEqual(validate_tag(tag), tag)
