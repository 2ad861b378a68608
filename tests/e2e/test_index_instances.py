"""
Two regd processes on one filesystem root, each with an index database of
its own (as instances on two hosts would have): a push through either one
shows in the other's docker search within seconds, through the change
markers they leave in storage. A third process, started later on the same
root, builds its index from storage at start.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time

import pytest

from tests.support.e2e_http import get_json, request
from tests.support.processes import RegdProcess

pytestmark = pytest.mark.e2e


class IndexedRegd(RegdProcess):
    def config_text(self) -> str:
        return super().config_text() + (
            "index:\n"
            f"  path: {self.workdir / 'index.db'}\n"
            "  refreshinterval: 300ms\n")


def push(base: str, name: str, tag: str, description: str) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Labels": {"org.opencontainers.image.description": description}}}).encode()
    layer = hashlib.sha256(description.encode()).digest() * 64
    descriptors = []
    for data, media_type in ((config, "application/vnd.oci.image.config.v1+json"),
                             (layer, "application/vnd.oci.image.layer.v1.tar+gzip")):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        started = request("POST", f"{base}/v2/{name}/blobs/uploads/")
        assert started.status == 202, started.describe()
        location = started.headers["Location"]
        location = location if location.startswith("http") else base + location
        done = request("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}", data=data,
                       headers={"Content-Type": "application/octet-stream"})
        assert done.status == 201, done.describe()
        descriptors.append({"mediaType": media_type, "digest": digest, "size": len(data)})
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": descriptors[0], "layers": descriptors[1:]}
    answer = request("PUT", f"{base}/v2/{name}/manifests/{tag}", data=json.dumps(manifest).encode(),
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert answer.status == 201, answer.describe()


def found(base: str, term: str) -> dict[str, str]:
    document, _ = get_json(f"{base}/v1/search?q={term}&n=100")
    return {r["name"]: r["description"] for r in document["results"]}


def seconds_until(condition, limit: float = 15.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, "not seen within the limit"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_push_on_one_instance_shows_on_the_other_within_seconds(tmp_path):
    root = tmp_path / "root"
    instances = []
    try:
        for n in range(2):
            instances.append(IndexedRegd(root, workdir=tempfile.mkdtemp(prefix=f"e2e-index{n}-")).start())
        first, second = instances
        push(first.url, "team/shared-app", "v1", "first <description>")
        assert found(first.url, "shared-app") == {"team/shared-app": "first <description>"}, "at once where pushed"
        waited = seconds_until(lambda: found(second.url, "shared-app") == {"team/shared-app": "first <description>"})
        assert waited < 5.0
        push(second.url, "team/shared-app", "latest", "second")
        waited = seconds_until(lambda: found(first.url, "SHARED") == {"team/shared-app": "second"})
        assert waited < 5.0
        assert request("DELETE", f"{second.url}/v2/team/shared-app/manifests/latest").status == 202
        seconds_until(lambda: found(first.url, "shared") == {"team/shared-app": "first <description>"})

        late = IndexedRegd(root, workdir=tempfile.mkdtemp(prefix="e2e-index-late-")).start()
        instances.append(late)
        assert found(late.url, "shared") == {"team/shared-app": "first <description>"} or \
            seconds_until(lambda: found(late.url, "shared") == {"team/shared-app": "first <description>"}) < 5.0
    finally:
        for instance in instances:
            instance.stop()
