"""Reading image configs and platforms for display: odd shapes never raise, values come out as pushed."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from regd.registry.inspect import ImageConfig, parse_image_config, platform_text

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20)


class ImageConfigTests(SynchronousTestCase):
    def test_fields_as_pushed(self):
        config = parse_image_config(json.dumps({
            "os": "linux", "architecture": "arm64", "variant": "v8", "author": "<b>me</b>",
            "config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": "echo hi", "Env": ["A=1", 5],
                       "ExposedPorts": {"80/tcp": {}, "53/udp": {}}, "Labels": {"b": "2", "a": "<x>"},
                       "User": "app", "WorkingDir": "/srv"},
            "history": [{"created_by": "RUN x", "empty_layer": True}, "junk"]}).encode())
        self.assertEqual(config.entrypoint, ("/bin/sh", "-c"))
        self.assertEqual(config.cmd, ("echo hi",))
        self.assertEqual(config.env, ("A=1",))
        self.assertEqual(config.exposed_ports, ("53/udp", "80/tcp"))
        self.assertEqual(config.labels, (("a", "<x>"), ("b", "2")))
        self.assertEqual(config.author, "<b>me</b>")  # escaping is the template's job
        self.assertEqual([h.created_by for h in config.history], ["RUN x"])
        self.assertTrue(config.history[0].empty_layer)

    def test_not_json_or_not_an_object_is_empty(self):
        for body in (b"", b"\xff", b"[]", b"null", b"{" * 100000):
            self.assertEqual(parse_image_config(body), ImageConfig())

    @given(_json)
    def test_any_json_is_displayable(self, document):
        parse_image_config(json.dumps({"config": document, "history": document, "os": document}).encode())
        parse_image_config(json.dumps(document).encode())
        platform_text(document)

    def test_platform_text(self):
        self.assertEqual(platform_text({"os": "linux", "architecture": "arm", "variant": "v7"}), "linux/arm/v7")
        self.assertEqual(platform_text({"os": "windows", "architecture": "amd64", "os.version": "10.0.1"}),
                         "windows/amd64 (10.0.1)")
        self.assertEqual(platform_text(None), "unknown")
        self.assertEqual(platform_text({"os": 5}), "unknown")
