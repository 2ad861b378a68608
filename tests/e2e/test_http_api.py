"""Catalog, tag listing and deletes over plain HTTP after real pushes."""

from __future__ import annotations

import re
import urllib.parse

import pytest

from tests.support import e2e_http
from tests.support.images import build_multilayer_layout
from tests.support.processes import run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pushed(registry, skopeo, tmp_path_factory):
    src = tmp_path_factory.mktemp("http-src")
    info = build_multilayer_layout(src, "multi", seed="http")
    for ref in ("cat/a:1", "cat/a:2", "cat/a:latest", "cat/b:v1.0", "cat/deep/er/c:x"):
        run([skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
             f"oci:{src}:multi", f"docker://{registry.host}/{ref}"])
    return info


def _next_link(answer) -> str | None:
    link = answer.headers.get("Link")
    if not link:
        return None
    m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', link)
    assert m, answer.describe()
    return m.group(1)


def test_catalog_lists_pushed_repositories(registry, pushed):
    body, answer = e2e_http.get_json(f"{registry.url}/v2/_catalog?n=1000")
    repos = body["repositories"]
    assert {"cat/a", "cat/b", "cat/deep/er/c"} <= set(repos), answer.describe()
    assert repos == sorted(repos), answer.describe()


def test_catalog_pagination_walks_every_repository(registry, pushed):
    everything, _ = e2e_http.get_json(f"{registry.url}/v2/_catalog?n=1000")
    seen, url = [], f"{registry.url}/v2/_catalog?n=2"
    for _ in range(100):
        body, answer = e2e_http.get_json(url)
        assert len(body["repositories"]) <= 2, answer.describe()
        seen += body["repositories"]
        nxt = _next_link(answer)
        if nxt is None:
            break
        url = urllib.parse.urljoin(registry.url, nxt)
    assert seen == everything["repositories"]


def test_tags_list(registry, target, pushed):
    body, answer = e2e_http.get_json(f"{registry.url}/v2/cat/a/tags/list")
    assert body["name"] == "cat/a", answer.describe()
    assert sorted(body["tags"]) == ["1", "2", "latest"], answer.describe()
    if target == "regd":
        # distribution 2.8 lists in directory order; regd promises lexical order (OCI spec, needed for `last`).
        assert body["tags"] == ["1", "2", "latest"], answer.describe()
    body, answer = e2e_http.get_json(f"{registry.url}/v2/cat/deep/er/c/tags/list")
    assert body == {"name": "cat/deep/er/c", "tags": ["x"]}, answer.describe()


def test_unknown_repository_tags_list_is_name_unknown(registry, pushed):
    answer = e2e_http.get(f"{registry.url}/v2/cat/nope/tags/list")
    assert answer.status == 404, answer.describe()
    assert answer.json()["errors"][0]["code"] == "NAME_UNKNOWN", answer.describe()


def test_delete_manifest_by_digest(registry, pushed, skopeo, tmp_path_factory):
    digest = e2e_http.manifest_digest(registry.url, "cat/b", "v1.0")
    assert digest == pushed["manifest"]["digest"]
    answer = e2e_http.request("DELETE", f"{registry.url}/v2/cat/b/manifests/{digest}")
    assert answer.status == 202, answer.describe()
    gone = e2e_http.get(f"{registry.url}/v2/cat/b/manifests/{digest}",
                        headers={"Accept": e2e_http.MANIFEST_ACCEPT})
    assert gone.status == 404, gone.describe()
    assert gone.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN", gone.describe()
    # Other repositories holding the same manifest are untouched.
    assert e2e_http.manifest_digest(registry.url, "cat/a", "1") == digest
