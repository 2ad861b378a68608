"""skopeo copies an image index and an OCI 1.1 artifact in and out, digest for digest."""

from __future__ import annotations

import json

import pytest

from tests.support import e2e_http
from tests.support.images import (
    OCI_INDEX, TEST_ARTIFACT_TYPE, blob_digests, build_index_with_artifact, read_blob_json, verify_layout_blobs)
from tests.support.processes import run

pytestmark = pytest.mark.e2e

REPO = "demo/multiarch"


@pytest.fixture(scope="module")
def pushed_index(registry, skopeo, tmp_path_factory):
    """The index (tag 1) and its artifact (tag sig) copied into REPO."""
    src = tmp_path_factory.mktemp("skopeo-src")
    info = build_index_with_artifact(src, index_tag="multiarch", artifact_tag="sig")
    run([skopeo, "copy", "--all", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{src}:multiarch", f"docker://{registry.host}/{REPO}:1"])
    run([skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{src}:sig", f"docker://{registry.host}/{REPO}:sig"])
    info["src"] = src
    return info


def test_inspect_shows_index_and_platform_image(registry, skopeo, pushed_index):
    raw = run([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/{REPO}:1"]).stdout
    index = json.loads(raw)
    assert index["mediaType"] == OCI_INDEX
    assert [m["digest"] for m in index["manifests"]] == [pushed_index["amd64"]["digest"],
                                                         pushed_index["arm64"]["digest"]]
    inspected = json.loads(run([skopeo, "inspect", "--tls-verify=false", "--override-arch", "arm64",
                                "--override-os", "linux", f"docker://{registry.host}/{REPO}:1"]).stdout)
    # skopeo reports the digest of what the tag names (the index) and the chosen platform's contents.
    assert inspected["Digest"] == pushed_index["index"]["digest"]
    assert inspected["Architecture"] == "arm64"
    arm64 = read_blob_json(pushed_index["src"], pushed_index["arm64"]["digest"])
    assert inspected["Layers"] == [layer["digest"] for layer in arm64["layers"]]
    assert set(inspected["RepoTags"]) >= {"1", "sig"}


def test_copy_out_gives_identical_blobs(registry, skopeo, pushed_index, scratch):
    out = scratch / "out"
    run([skopeo, "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
         f"docker://{registry.host}/{REPO}:1", f"oci:{out}:multiarch"])
    run([skopeo, "copy", "--preserve-digests", "--src-tls-verify=false",
         f"docker://{registry.host}/{REPO}:sig", f"oci:{out}:sig"])
    verify_layout_blobs(out)
    assert blob_digests(out) == blob_digests(pushed_index["src"])
    refs = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
            for m in json.loads((out / "index.json").read_text())["manifests"]}
    assert refs == {"multiarch": pushed_index["index"]["digest"], "sig": pushed_index["artifact"]["digest"]}
    artifact = read_blob_json(out, pushed_index["artifact"]["digest"])
    assert artifact["artifactType"] == TEST_ARTIFACT_TYPE
    assert artifact["subject"]["digest"] == pushed_index["amd64"]["digest"]


def test_manifests_served_by_digest(registry, pushed_index):
    """Every manifest is fetchable by digest with the digest and media type it was pushed with."""
    for key in ("index", "amd64", "arm64", "artifact"):
        d = pushed_index[key]
        answer = e2e_http.get(f"{registry.url}/v2/{REPO}/manifests/{d['digest']}",
                              headers={"Accept": e2e_http.MANIFEST_ACCEPT})
        assert answer.status == 200, answer.describe()
        assert answer.headers.get("Docker-Content-Digest") == d["digest"], answer.describe()
        assert answer.headers.get("Content-Type") == d["mediaType"], answer.describe()
        assert len(answer.body) == d["size"], answer.describe()


def test_referrers_lists_artifact(registry, target, pushed_index):
    if target == "reference":
        pytest.skip("distribution 2.8 has no referrers API")
    subject = pushed_index["amd64"]["digest"]
    body, answer = e2e_http.get_json(f"{registry.url}/v2/{REPO}/referrers/{subject}")
    assert answer.headers.get("Content-Type", "").startswith(OCI_INDEX), answer.describe()
    assert body.get("mediaType") == OCI_INDEX, answer.describe()
    found = [m for m in body.get("manifests", []) if m["digest"] == pushed_index["artifact"]["digest"]]
    assert len(found) == 1, answer.describe()
    assert found[0]["artifactType"] == TEST_ARTIFACT_TYPE, answer.describe()
    assert found[0]["size"] == pushed_index["artifact"]["size"], answer.describe()
    assert found[0]["mediaType"] == pushed_index["artifact"]["mediaType"], answer.describe()

    filtered, answer = e2e_http.get_json(
        f"{registry.url}/v2/{REPO}/referrers/{subject}?artifactType={TEST_ARTIFACT_TYPE}")
    assert [m["digest"] for m in filtered["manifests"]] == [pushed_index["artifact"]["digest"]], answer.describe()

    other, answer = e2e_http.get_json(f"{registry.url}/v2/{REPO}/referrers/{pushed_index['arm64']['digest']}")
    assert other.get("manifests") == [], answer.describe()
