"""
The scale-out deployment the reference registry's guide describes, for real:
three regd instances on one S3 bucket (a moto server) with one Redis as the
blob-descriptor cache and one http.secret, behind haproxy. The multi-instance
scenarios of test_scaleout.py run again on it (one upload's PATCH and PUT on
different instances; docker multi-layer push and pull; an instance SIGKILLed
during pushes while garbage collection runs, every acknowledged push pulling
whole), plus the Redis cache shared and purged across instances.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import pytest

from tests.e2e.test_scaleout import (_request, test_docker_push_and_pull_through_the_balancer,  # noqa: F401
                                     test_instance_killed_during_pushes_and_gc_while_pushing)
from tests.support.balancer import Haproxy, upload_requests
from tests.support.processes import RegdProcess, require_tool, target_kind
from tests.support.redis import RedisServer
from tests.support.s3 import shared_moto

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(target_kind() != "regd", reason="regd's multi-instance behaviour")]


def on_s3_with_redis(process: RegdProcess, bucket: str, redis: RedisServer) -> RegdProcess:
    moto = shared_moto()
    text = ("version: 0.1\nstorage:\n" + moto.yaml(bucket, rootdirectory="/prod")
            + "  delete:\n    enabled: true\n  cache:\n    blobdescriptor: redis\n"
            + f"redis:\n  addr: {redis.addr}\n  db: 1\n  dialtimeout: 200ms\n  readtimeout: 500ms\n"
            + f"  writetimeout: 500ms\n  pool:\n    maxidle: 2\n"
            + f"http:\n  addr: {process.host}\n  secret: one-secret-for-every-instance\n")
    process.config_text = lambda: text
    return process


@pytest.fixture(scope="module")
def s3_cluster(tmp_path_factory):
    """One cluster for the module (starting it is the slow part); each test uses its own repositories."""
    require_tool("haproxy")
    tmp_path = tmp_path_factory.mktemp("s3-cluster")
    moto = shared_moto()
    bucket = moto.new_bucket()
    redis = RedisServer(tmp_path / "redis").start()
    instances = []
    balancer = None
    try:
        for i in range(3):
            process = RegdProcess(tmp_path / f"unused-{i}", workdir=tempfile.mkdtemp(prefix=f"e2e-s3-regd{i}-"))
            instances.append(on_s3_with_redis(process, bucket, redis).start())
        balancer = Haproxy([p.host for p in instances], tmp_path).start()
        balancer.redis = redis
        yield balancer, instances
    finally:
        if balancer is not None:
            balancer.stop()
        for p in instances:
            p.stop()
        redis.stop()


@pytest.fixture
def cluster(s3_cluster):
    """Every instance up (one a previous test SIGKILLed is started again, on the same address)."""
    balancer, instances = s3_cluster
    for p in instances:
        if p.popen is None or p.popen.poll() is not None:
            p.popen = None
            p.start()
    return balancer, instances


def test_uploads_spread_over_instances(cluster):
    """
    Uploads through the balancer, each POST, PATCH, PATCH, PUT balanced on its
    own: every one is stored whole and verified, and the chunks and the final
    PUT of an upload are taken by different instances (from their access logs;
    haproxy's rotation may be shifted by its health checks, so up to five tries).
    """
    balancer, instances = cluster
    split = []
    for attempt in range(5):
        data = os.urandom(300_000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, headers, _ = _request(balancer.url + f"/v2/spread/s3-{attempt}/blobs/uploads/", "POST")
        assert status == 202
        upload_id = headers["Docker-Upload-UUID"]
        url = headers["Location"] if headers["Location"].startswith("http") else balancer.url + headers["Location"]
        for start, end in ((0, 99_999), (100_000, 199_999)):
            status, headers, _ = _request(url, "PATCH", data[start:end + 1], {
                "Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end}"})
            assert status == 202, status
            url = headers["Location"] if headers["Location"].startswith("http") else balancer.url + headers["Location"]
        sep = "&" if "?" in url else "?"
        assert _request(f"{url}{sep}digest={digest}", "PUT", data[200_000:],
                        {"Content-Type": "application/octet-stream"})[0] == 201
        assert _request(f"{balancer.url}/v2/spread/s3-{attempt}/blobs/{digest}", "GET")[2] == data
        handled_by: dict[str, set[int]] = {}
        for i, p in enumerate(instances):
            for method, uid in upload_requests(p.logs()):
                if uid == upload_id:
                    handled_by.setdefault(method, set()).add(i)
        patches, puts = handled_by.get("PATCH", set()), handled_by.get("PUT", set())
        if len(patches) == 2 and puts and not (puts & patches):
            split.append(upload_id)
            break
    assert split, "no upload had its PATCHes and its PUT on different instances"


def _db1_keys(redis: RedisServer) -> set[str]:
    lines = redis._exchange("SELECT 1\r\nKEYS *")
    return {line for i, line in enumerate(lines) if i > 1 and lines[i - 1].startswith("$")}


def test_the_redis_cache_is_shared_and_purged_across_instances(cluster):
    balancer, instances = cluster
    data = os.urandom(50_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    first = instances[0]
    status, headers, _ = _request(f"{first.url}/v2/shared/cache/blobs/uploads/", "POST")
    location = headers["Location"]
    url = location if location.startswith("http") else first.url + location
    sep = "&" if "?" in url else "?"
    assert _request(f"{url}{sep}digest={digest}", "PUT", data, {"Content-Type": "application/octet-stream"})[0] == 201
    for p in instances:
        status, headers, _ = _request(f"{p.url}/v2/shared/cache/blobs/{digest}", "HEAD")
        assert (status, headers["Content-Length"]) == (200, str(len(data)))
    keys = _db1_keys(balancer.redis)
    assert {f"blobs::{digest}", "repository::shared/cache::blobs",
            f"repository::shared/cache::blobs::{digest}"} <= keys, keys

    # A delete on one instance is seen by every other at once: the shared entry is gone.
    assert _request(f"{instances[1].url}/v2/shared/cache/blobs/{digest}", "DELETE")[0] == 202
    assert f"repository::shared/cache::blobs::{digest}" not in _db1_keys(balancer.redis)
    for p in instances:
        with pytest.raises(Exception) as caught:
            _request(f"{p.url}/v2/shared/cache/blobs/{digest}", "HEAD")
        assert getattr(caught.value, "code", None) == 404
