"""
regd as a process: uploads survive a restart, SIGKILL at any moment leaves
nothing half-written visible, and concurrent writers end consistent.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.support import e2e_http
from tests.support.processes import RegdProcess

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(base: str, name: str, data: bytes) -> str:
    digest = sha(data)
    answer = e2e_http.request("POST", f"{base}/v2/{name}/blobs/uploads/?digest={digest}", data=data,
                              headers={"Content-Type": "application/octet-stream"})
    assert answer.status == 201, answer.describe()
    return digest


def push_image(base: str, name: str, tag: str, seed: bytes, layer_size: int) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed.hex()}).encode()
    layer = (seed * (layer_size // len(seed) + 1))[:layer_size]
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": push_blob(base, name, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": push_blob(base, name, layer), "size": len(layer)}],
    }).encode()
    answer = e2e_http.request("PUT", f"{base}/v2/{name}/manifests/{tag}", data=manifest,
                              headers={"Content-Type": OCI_MANIFEST})
    assert answer.status == 201, answer.describe()
    return sha(manifest)


@pytest.fixture
def regd(tmp_path):
    process = RegdProcess(tmp_path / "root", workdir=tmp_path)
    yield process
    process.stop()


def kill_and_restart(process: RegdProcess) -> None:
    process.popen.kill()
    process.popen.wait(10)
    process.popen = None
    process.start()


def test_upload_resumes_after_sigkill(regd):
    regd.start()
    data = os.urandom(3 * 1024 * 1024 + 17)
    half = len(data) // 2
    answer = e2e_http.request("POST", f"{regd.url}/v2/resume/me/blobs/uploads/")
    assert answer.status == 202, answer.describe()
    location = answer.headers["Location"]
    answer = e2e_http.request("PATCH", location, data=data[:half],
                              headers={"Content-Range": f"0-{half - 1}", "Content-Type": "application/octet-stream"})
    assert answer.status == 202, answer.describe()
    kill_and_restart(regd)
    status = e2e_http.get(location)
    assert status.status == 204, status.describe()
    assert status.headers["Range"] == f"0-{half - 1}"
    answer = e2e_http.request("PATCH", location, data=data[half:],
                              headers={"Content-Range": f"{half}-{len(data) - 1}"})
    assert answer.status == 202, answer.describe()
    answer = e2e_http.request("PUT", f"{location}?digest={sha(data)}")
    assert answer.status == 201, answer.describe()
    assert e2e_http.get(f"{regd.url}/v2/resume/me/blobs/{sha(data)}").body == data


def check_tree(root: Path, base: str) -> int:
    """Every visible object is whole: blobs match their names, links resolve, tags pull."""
    v2 = root / "docker" / "registry" / "v2"
    blobs = 0
    for data in (v2 / "blobs").glob("sha256/*/*/data"):
        assert hashlib.sha256(data.read_bytes()).hexdigest() == data.parent.name, data
        blobs += 1
    for link in (v2 / "repositories").rglob("link"):
        text = link.read_text()
        assert text.startswith("sha256:") and len(text) == 71, (link, text)
        target = v2 / "blobs" / "sha256" / text[7:9] / text[7:] / "data"
        assert target.exists(), f"{link} points at a missing blob"
    for current in (v2 / "repositories").glob("**/_manifests/tags/*/current/link"):
        repo = current.parents[4].relative_to(v2 / "repositories").as_posix()
        tag = current.parents[1].name
        answer = e2e_http.get(f"{base}/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
        assert answer.status == 200, answer.describe()
        for layer in answer.json()["layers"] + [answer.json()["config"]]:
            blob = e2e_http.get(f"{base}/v2/{repo}/blobs/{layer['digest']}")
            assert blob.status == 200 and sha(blob.body) == layer["digest"], blob.describe()
    return blobs


@pytest.mark.parametrize("delay", [0.4, 1.1, 2.3])
def test_sigkill_at_any_moment_leaves_nothing_partial(regd, delay):
    regd.start()
    base = regd.url
    stop = threading.Event()
    acknowledged: list[tuple[str, str, str]] = []

    def writer(worker: int):
        n = 0
        while not stop.is_set():
            n += 1
            name, tag = f"crash/w{worker}", f"t{n}"
            try:
                digest = push_image(base, name, tag, os.urandom(16), 1_500_000 + worker * 1000)
            except (AssertionError, OSError):
                return  # the daemon died under us
            acknowledged.append((name, tag, digest))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(delay)
    regd.popen.kill()
    stop.set()
    for thread in threads:
        thread.join(30)
    regd.popen.wait(10)
    regd.popen = None
    regd.start()
    assert check_tree(regd.root, base) > 0
    # Everything a client was told succeeded is there.
    for name, tag, digest in acknowledged:
        assert e2e_http.manifest_digest(base, name, tag) == digest


def test_concurrent_pushes_of_one_blob_and_one_tag(regd):
    regd.start()
    base = regd.url
    blob = os.urandom(2 * 1024 * 1024)
    results: list[str] = []

    def pusher(i: int):
        results.append(push_image(base, "same/repo", "latest", b"shared-seed", 2_000_000))
        push_blob(base, f"other/r{i}", blob)

    threads = [threading.Thread(target=pusher, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 8 and len(set(results)) == 1
    assert e2e_http.manifest_digest(base, "same/repo", "latest") == results[0]
    for i in range(8):
        assert e2e_http.get(f"{base}/v2/other/r{i}/blobs/{sha(blob)}").body == blob
    check_tree(regd.root, base)


def test_a_stalled_upload_does_not_block_other_repositories(regd):
    import socket
    regd.start()
    answer = e2e_http.request("POST", f"{regd.url}/v2/slow/blobs/uploads/")
    path = answer.headers["Location"].split(regd.host, 1)[1]
    with socket.create_connection(("127.0.0.1", regd.port)) as stalled:
        stalled.sendall(f"PATCH {path} HTTP/1.1\r\nHost: {regd.host}\r\nContent-Length: 100000000\r\n\r\n".encode()
                        + b"x" * 1_000_000)
        started = time.monotonic()
        push_image(regd.url, "fast", "v1", b"fast", 500_000)
        assert time.monotonic() - started < 10


def test_sigterm_lets_an_upload_in_progress_finish(regd):
    import signal
    import socket
    regd.start()
    data = os.urandom(2 * 1024 * 1024)
    answer = e2e_http.request("POST", f"{regd.url}/v2/drain/blobs/uploads/")
    path = answer.headers["Location"].split(regd.host, 1)[1]
    with socket.create_connection(("127.0.0.1", regd.port), timeout=30) as upload:
        upload.sendall(f"PUT {path}?digest={sha(data)} HTTP/1.1\r\nHost: {regd.host}\r\n"
                       f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data[:1_000_000])
        time.sleep(0.3)
        regd.popen.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # the listener is closed: no new connections
            socket.create_connection(("127.0.0.1", regd.port), timeout=2).close()
        upload.sendall(data[1_000_000:])
        reply = upload.recv(4096)
    assert reply.startswith(b"HTTP/1.1 201"), reply
    assert regd.popen.wait(30) == 0
    regd.popen = None
    stored = regd.root / "docker/registry/v2/blobs/sha256" / sha(data)[7:9] / sha(data)[7:] / "data"
    assert stored.read_bytes() == data


def test_garbage_collection_in_a_loop_while_clients_push(regd):
    """Collections run back to back (CLI, against the live root) while images are pushed: all stay pullable."""
    import subprocess
    import sys
    regd.start()
    base = regd.url
    orphans = [push_blob(base, "gc/orphans", os.urandom(1000)) for _ in range(5)]
    past = time.time() - 7200
    for digest in orphans:  # unreferenced and old: the collector must remove these
        data = regd.root / "docker/registry/v2/blobs/sha256" / digest[7:9] / digest[7:] / "data"
        os.utime(data, (past, past))
    stop = threading.Event()
    pushed: list[tuple[str, str, str]] = []
    errors: list[BaseException] = []

    def pusher():
        n = 0
        try:
            while not stop.is_set():
                n += 1
                pushed.append((f"gc/app{n % 3}", f"v{n}", push_image(base, f"gc/app{n % 3}", f"v{n}",
                                                                      os.urandom(8), 50_000)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=pusher)
    thread.start()
    regd_cli = Path(sys.executable).parent / "regd"
    outputs = []
    try:
        for _ in range(4):
            result = subprocess.run([str(regd_cli), "garbage-collect", "--config", str(regd.config_path),
                                     "--grace", "30s", "--delete-untagged"],
                                    capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr
            outputs.append(result.stdout)
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors
    assert len(pushed) > 5
    swept = "".join(outputs)
    assert all(f"deleted blob {d}" in swept for d in orphans), swept
    for name, tag, digest in pushed:
        answer = e2e_http.get(f"{base}/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
        assert answer.status == 200, answer.describe()
        assert sha(answer.body) == digest
        document = answer.json()
        for descriptor in document["layers"] + [document["config"]]:
            blob = e2e_http.get(f"{base}/v2/{name}/blobs/{descriptor['digest']}")
            assert blob.status == 200 and sha(blob.body) == descriptor["digest"], blob.describe()


def test_crash_leftovers_heal_on_restart(regd):
    """
    SIGKILL while pushes run and a large body is half-received: after the
    restart the body's spool is gone, fsck finds nothing to repair, and
    every listed tag can be fetched.
    """
    import socket
    import subprocess
    import sys
    regd.start()
    base = regd.url
    spools = regd.root / "regd" / "spool"
    stop = threading.Event()
    acknowledged: list[tuple[str, str]] = []

    def writer(worker: int):
        n = 0
        while not stop.is_set():
            n += 1
            try:
                push_image(base, f"heal/w{worker}", f"t{n}", os.urandom(16), 300_000)
            except (AssertionError, OSError):
                return
            acknowledged.append((f"heal/w{worker}", f"t{n}"))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    answer = e2e_http.request("POST", f"{base}/v2/heal/big/blobs/uploads/")
    path = answer.headers["Location"].split(regd.host, 1)[1]
    with socket.create_connection(("127.0.0.1", regd.port), timeout=30) as upload:
        upload.sendall(f"PATCH {path} HTTP/1.1\r\nHost: {regd.host}\r\nContent-Length: 50000000\r\n"
                       f"Content-Type: application/octet-stream\r\n\r\n".encode() + os.urandom(4_000_000))
        deadline = time.monotonic() + 10
        while not (spools.is_dir() and any(spools.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(spools.iterdir()), "the body was not spooled"
        time.sleep(0.3)
        regd.popen.kill()
    stop.set()
    for thread in threads:
        thread.join(30)
    regd.popen.wait(10)
    regd.popen = None
    regd.start()
    deadline = time.monotonic() + 10
    while any(spools.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(spools.iterdir()), list(spools.iterdir())
    fsck = subprocess.run([str(Path(sys.executable).parent / "regd"), "fsck", "--config", str(regd.config_path)],
                          capture_output=True, text=True, timeout=120)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "0 corrupt blobs, 0 bad links, 0 dangling links" in fsck.stdout, fsck.stdout
    listed = set()
    for worker in range(3):
        answer = e2e_http.get(f"{base}/v2/heal/w{worker}/tags/list")
        if answer.status == 404:
            continue
        for tag in answer.json()["tags"] or ():
            assert e2e_http.get(f"{base}/v2/heal/w{worker}/manifests/{tag}",
                                headers={"Accept": OCI_MANIFEST}).status == 200, tag
            listed.add((f"heal/w{worker}", tag))
    assert len(acknowledged) >= 3 and set(acknowledged) <= listed, (acknowledged, listed)
