"""
Online garbage collection at grace 0 while pushes go on: collections run back
to back inside one daemon (regd.gc.interval) and as separate `regd
garbage-collect` processes, with and without --delete-untagged, while
clients push images and indexes through two instances sharing the root.
A push may be refused (its layers were collected before its manifest
arrived: that is what grace 0 asks for), but every push the registry
acknowledged pulls back whole, from either instance, afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support import e2e_http
from tests.support.processes import RegdProcess, target_kind

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(target_kind() != "regd", reason="regd's online garbage collection")]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
RUN_FOR = 12.0  # seconds of pushing under collection
PAUSE = 0.3  # between two collections by the separate process


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Refused(Exception):
    """The registry said no (4xx): the push was not acknowledged."""


class CollectingRegd(RegdProcess):
    """An instance that also collects every second, at grace 0, untagged manifests included."""

    def config_text(self) -> str:
        return super().config_text() + "regd:\n  gc:\n    interval: 1s\n    grace: 0s\n    deleteuntagged: true\n"


def _put(url: str, data: bytes, headers: dict) -> None:
    answer = e2e_http.request("PUT", url, data=data, headers=headers)
    if 400 <= answer.status < 500:
        raise Refused(answer.describe())
    assert answer.status == 201, answer.describe()


def push_blob(base: str, name: str, data: bytes) -> str:
    digest = sha(data)
    answer = e2e_http.request("POST", f"{base}/v2/{name}/blobs/uploads/")
    assert answer.status == 202, answer.describe()
    location = answer.headers["Location"]
    location = location if location.startswith("http") else base + location
    _put(f"{location}{'&' if '?' in location else '?'}digest={digest}", data,
         {"Content-Type": "application/octet-stream"})
    return digest


def image_manifest(bases, name: str, shared: list[bytes], seed: bytes) -> bytes:
    """Blobs through one instance, the manifest (by the caller) through another."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed.hex()}).encode()
    layers = shared + [seed * 4096]
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": push_blob(bases[0], name, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": push_blob(bases[0], name, data),
                    "size": len(data)} for data in layers],
    }).encode()


def pull_whole(base: str, name: str, tag: str, digest: str) -> None:
    answer = e2e_http.get(f"{base}/v2/{name}/manifests/{tag}", headers={"Accept": e2e_http.MANIFEST_ACCEPT})
    assert answer.status == 200, answer.describe()
    assert sha(answer.body) == digest, f"{name}:{tag} names another manifest"
    document = answer.json()
    for child in document.get("manifests", ()):
        pull_whole(base, name, child["digest"], child["digest"])
    for descriptor in document.get("layers", []) + ([document["config"]] if "config" in document else []):
        blob = e2e_http.get(f"{base}/v2/{name}/blobs/{descriptor['digest']}")
        assert blob.status == 200 and sha(blob.body) == descriptor["digest"], blob.describe()


@pytest.fixture
def instances(tmp_path):
    root = tmp_path / "root"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    started = []
    try:
        started.append(CollectingRegd(root, workdir=tmp_path / "a").start())
        started.append(RegdProcess(root, workdir=tmp_path / "b").start())
        yield started
    finally:
        for process in started:
            process.stop()


def test_every_acknowledged_push_pulls_whole_after_grace_zero_collections(instances):
    collecting, plain = instances
    bases = [collecting.url, plain.url]
    shared = [os.urandom(50_000) for _ in range(3)]
    stop = threading.Event()
    acknowledged: list[tuple[str, str, str]] = []
    refused: list[str] = []
    errors: list[BaseException] = []

    def pusher(worker: int):
        n = 0
        try:
            while not stop.is_set():
                n += 1
                name, tag = f"online/w{worker}", f"t{n}"
                order = bases if n % 2 else bases[::-1]
                try:
                    if n % 3 == 0:  # an index: children by digest first (untagged until the index lands)
                        children = []
                        for arch in ("amd64", "arm64"):
                            body = image_manifest(order, name, shared[:1], os.urandom(8))
                            _put(f"{order[1]}/v2/{name}/manifests/{sha(body)}", body,
                                 {"Content-Type": OCI_MANIFEST})
                            children.append({"mediaType": OCI_MANIFEST, "digest": sha(body), "size": len(body),
                                             "platform": {"architecture": arch, "os": "linux"}})
                        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                           "manifests": children}).encode()
                        _put(f"{order[1]}/v2/{name}/manifests/{tag}", body, {"Content-Type": OCI_INDEX})
                    else:
                        body = image_manifest(order, name, shared[n % 3:], os.urandom(8))
                        _put(f"{order[1]}/v2/{name}/manifests/{tag}", body, {"Content-Type": OCI_MANIFEST})
                except Refused as e:
                    refused.append(str(e))
                    continue
                acknowledged.append((name, tag, sha(body)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=pusher, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    regd_cli = Path(sys.executable).parent / "regd"
    outputs = []
    deadline = time.monotonic() + RUN_FOR
    try:
        runs = 0
        while time.monotonic() < deadline:
            runs += 1
            command = [str(regd_cli), "garbage-collect", "--config", str(plain.config_path), "--grace", "0s"]
            result = subprocess.run(command + (["--delete-untagged"] if runs % 2 else []),
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stdout + result.stderr
            outputs.append(result.stdout)
            time.sleep(PAUSE)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not errors, errors
    print(f"{len(acknowledged)} pushes acknowledged, {len(refused)} refused, {runs} separate collections")
    collected = sum(o.count("deleted blob ") for o in outputs)
    assert runs >= 3 and collected > 0, outputs  # the collections did run, and did delete
    assert "garbage collection:" in collecting.logs()
    assert len(acknowledged) >= 5, (len(acknowledged), refused[:3])
    for name, tag, digest in acknowledged:
        for base in bases:
            pull_whole(base, name, tag, digest)
