"""
Several regd instances on one storage behind haproxy: every request is
balanced on its own, so the chunks and the final PUT of one upload are
handled by different instances (proved from each instance's access log).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.support.balancer import Haproxy, upload_requests
from tests.support.processes import RegdProcess, require_tool, target_kind

pytestmark = pytest.mark.skipif(target_kind() != "regd", reason="regd's multi-instance behaviour")


@pytest.fixture
def cluster(tmp_path):
    require_tool("haproxy")
    root = tmp_path / "shared-root"
    instances = []
    balancer = None
    try:
        for i in range(3):
            instances.append(RegdProcess(root, workdir=tempfile.mkdtemp(prefix=f"e2e-regd{i}-")).start())
        balancer = Haproxy([p.host for p in instances], tmp_path).start()
        yield balancer, instances
    finally:
        if balancer is not None:
            balancer.stop()
        for p in instances:
            p.stop()


def _request(url: str, method: str, body: bytes = b"", headers: dict | None = None):
    req = urllib.request.Request(url, data=body if method in ("PATCH", "PUT", "POST") else None,
                                 method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.headers, r.read()


def test_one_upload_handled_by_three_instances(cluster):
    balancer, instances = cluster
    data = os.urandom(300_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, _ = _request(balancer.url + "/v2/spread/one/blobs/uploads/", "POST")
    assert status == 202
    location = headers["Location"]
    upload_id = headers["Docker-Upload-UUID"]
    url = location if location.startswith("http") else balancer.url + location
    for start, end in ((0, 99_999), (100_000, 199_999)):
        status, headers, _ = _request(url, "PATCH", data[start:end + 1], {
            "Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end}"})
        assert status == 202, status
        location = headers["Location"]
        url = location if location.startswith("http") else balancer.url + location
    sep = "&" if "?" in url else "?"
    status, headers, _ = _request(f"{url}{sep}digest={digest}", "PUT", data[200_000:],
                                  {"Content-Type": "application/octet-stream"})
    assert status == 201
    status, _, body = _request(f"{balancer.url}/v2/spread/one/blobs/{digest}", "GET")
    assert body == data

    # Which instance took which request of this upload.
    handled_by = {}
    for i, p in enumerate(instances):
        for method, uid in upload_requests(p.logs()):
            if uid == upload_id:
                handled_by.setdefault(method, set()).add(i)
    patches, puts = handled_by.get("PATCH", set()), handled_by.get("PUT", set())
    assert len(patches) == 2, handled_by
    assert puts and not (puts & patches), handled_by


def test_docker_push_and_pull_through_the_balancer(cluster, docker_daemon, tmp_path):
    balancer, instances = cluster
    context = tmp_path / "ctx"
    context.mkdir()
    lines = ["FROM scratch"]
    for i in range(4):
        (context / f"layer{i}.bin").write_bytes(os.urandom(200_000 + i * 50_000))
        lines.append(f"COPY layer{i}.bin /data/layer{i}.bin")
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    ref = f"{balancer.host}/spread/multi:1"
    docker_daemon.docker("build", "-q", "-t", ref, str(context), timeout=300)
    image_id = docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    docker_daemon.docker("push", ref, timeout=300)
    docker_daemon.docker("rmi", ref)
    docker_daemon.docker("pull", ref, timeout=300)
    assert docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == image_id

    # docker's PATCH and PUT of at least one layer went to different instances.
    seen: dict[str, dict[str, set[int]]] = {}
    for i, p in enumerate(instances):
        for method, uid in upload_requests(p.logs()):
            seen.setdefault(uid, {}).setdefault(method, set()).add(i)
    split = [uid for uid, m in seen.items() if m.get("PATCH") and m.get("PUT") and not (m["PATCH"] & m["PUT"])]
    assert split, seen
    docker_daemon.docker("rmi", ref, check=False)


def _build(docker_daemon, directory: Path, ref: str, layers: int, seed: str) -> str:
    directory.mkdir(parents=True)
    lines = ["FROM scratch"]
    for i in range(layers):
        (directory / f"l{i}.bin").write_bytes(hashlib.sha256(f"{seed}{i}".encode()).digest() * 8_000)
        lines.append(f"COPY l{i}.bin /data/{seed}/l{i}.bin")
    (directory / "Dockerfile").write_text("\n".join(lines) + "\n")
    docker_daemon.docker("build", "-q", "-t", ref, str(directory), timeout=300)
    return docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


def test_instance_killed_during_pushes_and_gc_while_pushing(cluster, docker_daemon, tmp_path):
    """
    One instance is SIGKILLed while pushes run through the balancer and garbage
    collection runs on another; every push docker acknowledged pulls back whole.
    """
    import subprocess
    import sys
    import threading
    import time

    balancer, instances = cluster
    refs = {}
    for n in range(4):
        ref = f"{balancer.host}/spread/killed{n}:1"
        refs[ref] = _build(docker_daemon, tmp_path / f"img{n}", ref, 3, f"k{n}")
    acknowledged = []

    def push_all():
        for ref in refs:
            if docker_daemon.docker("push", ref, check=False, timeout=300).returncode == 0:
                acknowledged.append(ref)

    pusher = threading.Thread(target=push_all)
    pusher.start()
    deadline = time.monotonic() + 300
    while not acknowledged and pusher.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pusher.is_alive(), "all pushes finished before the kill"
    instances[1].popen.kill()  # SIGKILL mid-push: no drain, nothing flushed
    gc = subprocess.run([sys.executable, "-m", "regd.cli", "garbage-collect", "--config",
                         str(instances[0].config_path)], capture_output=True, text=True, timeout=120,
                        env=instances[0].environment())
    pusher.join(600)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert len(acknowledged) >= 2, acknowledged
    for ref in acknowledged:
        docker_daemon.docker("rmi", ref)
        docker_daemon.docker("pull", ref, timeout=300)
        assert docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == refs[ref]
        docker_daemon.docker("rmi", ref, check=False)



def test_racing_pushes_to_one_tag_leave_a_consistent_repository(cluster, docker_daemon, tmp_path):
    """
    Two manifests PUT to the same tag at once, again and again, through
    different instances: the tag always names one of them, whole, and pulls.
    """
    from concurrent.futures import ThreadPoolExecutor

    balancer, _ = cluster
    repo = f"{balancer.host}/spread/race"
    ids, manifests = {}, {}
    for n in ("a", "b"):
        ids[n] = _build(docker_daemon, tmp_path / n, f"{repo}:{n}", 2, f"race-{n}")
        docker_daemon.docker("push", f"{repo}:{n}", timeout=300)
        _, headers, body = _request(f"{balancer.url}/v2/spread/race/manifests/{n}", "GET", headers={
            "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        manifests[n] = (headers["Content-Type"], body, headers["Docker-Content-Digest"])

    def put(n):
        media_type, body, _ = manifests[n]
        return _request(f"{balancer.url}/v2/spread/race/manifests/latest", "PUT", body,
                        {"Content-Type": media_type})[0]

    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            assert list(pool.map(put, ["a", "b"] * 4)) == [201] * 8
            _, headers, body = _request(f"{balancer.url}/v2/spread/race/manifests/latest", "GET", headers={
                "Accept": manifests["a"][0]})
            winner = next(n for n, m in manifests.items() if m[2] == headers["Docker-Content-Digest"])
            assert body == manifests[winner][1]
    docker_daemon.docker("rmi", f"{repo}:a", f"{repo}:b")
    docker_daemon.docker("pull", f"{repo}:latest", timeout=300)
    assert docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", f"{repo}:latest").stdout.strip() \
        == ids[winner]
    docker_daemon.docker("rmi", f"{repo}:latest", check=False)


def test_upload_resumes_on_another_instance_after_sigkill(cluster):
    """Chunks sent to one instance, which is then SIGKILLed; another finishes the upload."""
    _, instances = cluster
    first, other = instances[2], instances[0]
    data = os.urandom(500_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _, headers, _ = _request(first.url + "/v2/resume/one/blobs/uploads/", "POST")
    path = headers["Location"].split(first.host, 1)[-1]
    _request(first.url + path, "PATCH", data[:250_000], {"Content-Range": "0-249999"})
    first.popen.kill()
    first.popen.wait()
    status, headers, _ = _request(other.url + path, "GET")
    assert (status, headers["Range"]) == (204, "0-249999")
    _request(other.url + path, "PATCH", data[250_000:], {"Content-Range": "250000-499999"})
    sep = "&" if "?" in path else "?"
    assert _request(f"{other.url}{path}{sep}digest={digest}", "PUT")[0] == 201
    assert _request(f"{other.url}/v2/resume/one/blobs/{digest}", "GET")[2] == data
