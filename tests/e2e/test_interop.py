"""
regd and the reference registry share one on-disk tree: what one writes the
other serves, with the same digests. The two never run on the same root at the
same time.

Under REGD_E2E_TARGET=reference both roles are played by the reference
registry, which checks the test itself rather than regd.
"""

from __future__ import annotations

import json

import pytest

from tests.support import e2e_http
from tests.support.images import blob_digests, build_index_with_artifact, build_multilayer_layout, verify_layout_blobs
from tests.support.processes import require_tool, run

pytestmark = pytest.mark.e2e


def _role(kind: str, target: str) -> str:
    return kind if target == "regd" else "reference"


@pytest.mark.parametrize("writer,reader", [("reference", "regd"), ("regd", "reference")],
                         ids=["reference-writes-regd-serves", "regd-writes-reference-serves"])
def test_shared_root(writer, reader, target, start_registry, skopeo, scratch):
    require_tool("docker-registry")
    writer, reader = _role(writer, target), _role(reader, target)
    root = scratch / "root"
    src = scratch / "src"
    info = build_index_with_artifact(src, index_tag="multiarch", artifact_tag="sig", seed=f"interop-{writer}")
    multi = build_multilayer_layout(scratch / "src2", "multi", seed=f"interop2-{writer}")

    first = start_registry(writer, root)
    run([skopeo, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{src}:multiarch", f"docker://{first.host}/shared/app:1"])
    run([skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{src}:sig", f"docker://{first.host}/shared/app:sig"])
    tags_before, _ = e2e_http.get_json(f"{first.url}/v2/shared/app/tags/list")
    first.stop()

    second = start_registry(reader, root)
    out = scratch / "out"
    run([skopeo, "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
         f"docker://{second.host}/shared/app:1", f"oci:{out}:multiarch"])
    run([skopeo, "copy", "--preserve-digests", "--src-tls-verify=false",
         f"docker://{second.host}/shared/app:sig", f"oci:{out}:sig"])
    verify_layout_blobs(out)
    assert blob_digests(out) == blob_digests(src)
    assert e2e_http.manifest_digest(second.url, "shared/app", "1") == info["index"]["digest"]
    assert e2e_http.manifest_digest(second.url, "shared/app", "sig") == info["artifact"]["digest"]
    tags_after, answer = e2e_http.get_json(f"{second.url}/v2/shared/app/tags/list")
    assert sorted(tags_after["tags"]) == sorted(tags_before["tags"]) == ["1", "sig"], answer.describe()
    catalog, answer = e2e_http.get_json(f"{second.url}/v2/_catalog")
    assert catalog["repositories"] == ["shared/app"], answer.describe()

    # The reader now writes into the same tree (a new repository and a tag
    # that shares blobs), and the first registry must serve that in turn.
    run([skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{scratch / 'src2'}:multi", f"docker://{second.host}/shared/layers:1"])
    run([skopeo, "copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
         f"docker://{second.host}/shared/app:sig", f"docker://{second.host}/shared/app:sig2"])
    second.stop()

    third = start_registry(writer, root)
    back = scratch / "back"
    run([skopeo, "copy", "--preserve-digests", "--src-tls-verify=false",
         f"docker://{third.host}/shared/layers:1", f"oci:{back}:multi"])
    verify_layout_blobs(back)
    assert blob_digests(back) == blob_digests(scratch / "src2")
    assert e2e_http.manifest_digest(third.url, "shared/app", "sig2") == info["artifact"]["digest"]
    catalog, answer = e2e_http.get_json(f"{third.url}/v2/_catalog")
    assert catalog["repositories"] == ["shared/app", "shared/layers"], answer.describe()
    raw = json.loads(run([skopeo, "inspect", "--raw", "--tls-verify=false",
                          f"docker://{third.host}/shared/layers:1"]).stdout)
    assert raw["config"]["digest"] == multi["config_digest"]
    third.stop()
