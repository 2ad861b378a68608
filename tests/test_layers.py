"""The import direction between layers: oci <- storage <- registry <- {http, notifications} <- daemon.tap."""

from __future__ import annotations

import ast
import pathlib

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "regd"

# What each part of regd may import from regd.
ALLOWED = {
    "oci": {"oci"},
    "storage": {"oci", "storage", "randomids"},
    "cache": {"oci", "storage", "cache"},
    "registry": {"oci", "storage", "cache", "registry", "randomids"},
    "http": {"oci", "registry", "http", "index", "randomids"},
    "notifications": {"oci", "registry", "notifications", "units", "logging", "randomids"},  # logging: the delivery process
    "index": {"oci", "storage", "registry", "index", "randomids"},
    "web": {"oci", "registry", "http", "index", "web"},
    "config": {"oci", "units"},
    "logging": set(),
    "services": set(),
    "authsetup": {"http", "oci", "units"},
    "units": set(),
    "randomids": set(),  # ids and names from one pooled random source, for every layer
    "metrics": set(),
    "tls": set(),
    "letsencrypt": {"units", "tls"},
    "health": {"units"},
}
# Modules that compose everything: the daemon, the command line, the container entrypoint.
COMPOSERS = {"tap", "cli", "container"}
# Third-party imports a part must not use (regd.oci is pure values).
FORBIDDEN_EXTERNAL = {"oci": {"twisted", "klein", "treq", "werkzeug", "zope"}}


def part_of(module_path: pathlib.Path) -> str:
    """The layer a module belongs to; regd/daemon/ holds several parts (tap, tls, health...), one per module."""
    parts = [p.removesuffix(".py") for p in module_path.relative_to(PACKAGE).parts]
    if parts[0] == "daemon" and len(parts) > 1:
        return "daemon" if parts[1] == "__init__" else parts[1]
    return parts[0]


def violations(part: str, source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top, _, rest = name.partition(".")
            if top == "regd":
                target = rest.split(".")[0]
                if target == "daemon":
                    target = (rest.split(".") + ["daemon"])[1]
                if target and part not in COMPOSERS and target not in ALLOWED.get(part, set()):
                    found.append(f"{part} imports regd.{rest}")
            elif top in FORBIDDEN_EXTERNAL.get(part, set()):
                found.append(f"{part} imports {name}")
    return found


class LayerTests(SynchronousTestCase):
    def test_checker_catches_a_wrong_arrow(self):
        self.assertEqual(violations("storage", "from regd.http.api import RegistryAPI\n"),
                         ["storage imports regd.http.api"])
        self.assertEqual(violations("oci", "import twisted.internet\n"), ["oci imports twisted.internet"])
        self.assertEqual(violations("http", "from regd.registry import service\n"), [])
        self.assertEqual(violations("http", "from regd.storage.interfaces import IBodySpool\n"),
                         ["http imports regd.storage.interfaces"])

    def test_every_module_respects_the_layers(self):
        problems = []
        modules = sorted(PACKAGE.rglob("*.py"))
        self.assertGreater(len(modules), 20)
        for module in modules:
            problems.extend(f"{module.relative_to(PACKAGE)}: {v}"
                            for v in violations(part_of(module), module.read_text()))
        self.assertEqual(problems, [])
