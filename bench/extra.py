"""
Workloads added for issue 11: TLS push/pull, the disk's own rate, skopeo
with a 5-layer image, 50 concurrent pushes (peak RSS), and a CPU profile of
regd's pushes with py-spy.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import zlib

import pulls
from workloads import MIB, REPO, Payload, location, with_digest

# -- TLS ---------------------------------------------------------------------


def make_certificate(directory: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (both servers get the same one)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    return cert, key


def tls_yaml(cert: str, key: str) -> str:
    return f"  tls:\n    certificate: {cert}\n    key: {key}\n"


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def tls_push(port: int, payload: Payload) -> float:
    """POST, then PUT ?digest with the whole body over TLS (1 MiB writes). Returns seconds."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=600, context=_tls_context())
    try:
        t0 = time.perf_counter()
        conn.request("POST", f"/v2/{REPO}/blobs/uploads/", headers={"Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        if resp.status != 202:
            raise RuntimeError(f"POST: HTTP {resp.status}")
        url = with_digest(location(resp), payload.digest)
        conn.putrequest("PUT", url, skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(payload.size))
        conn.endheaders()
        with open(payload.path, "rb", buffering=0) as f:
            buf = bytearray(MIB)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                conn.sock.sendall(memoryview(buf)[:n])
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 201:
            raise RuntimeError(f"PUT: HTTP {resp.status}: {body[:200]!r}")
        return time.perf_counter() - t0
    finally:
        conn.close()


def tls_pull(port: int, payload: Payload) -> float:
    """GET the blob over TLS into a reused 1 MiB buffer. Returns seconds."""
    raw = socket.create_connection(("127.0.0.1", port))
    sock = _tls_context().wrap_socket(raw)
    try:
        t0 = time.perf_counter()
        sock.sendall(f"GET /v2/{REPO}/blobs/{payload.digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("closed before the headers")
            head += data
        cut = head.index(b"\r\n\r\n") + 4
        got = len(head) - cut
        if int(head[9:12]) != 200:
            raise RuntimeError(f"GET: {head[:200]!r}")
        view = memoryview(bytearray(MIB))
        while got < payload.size:
            n = sock.recv_into(view, min(MIB, payload.size - got))
            if not n:
                raise RuntimeError(f"closed after {got} bytes")
            got += n
        return time.perf_counter() - t0
    finally:
        sock.close()


# -- the disk ----------------------------------------------------------------


def disk_rate(payload: Payload, directory: str) -> float:
    """Seconds to write the payload's bytes to a new file in C{directory} and fsync it."""
    target = os.path.join(directory, "disk-rate.bin")
    with open(payload.path, "rb", buffering=0) as source:
        buf = bytearray(8 * MIB)
        t0 = time.perf_counter()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while True:
                n = source.readinto(buf)
                if not n:
                    break
                os.write(fd, memoryview(buf)[:n])
            os.fsync(fd)
        finally:
            os.close(fd)
        seconds = time.perf_counter() - t0
    os.unlink(target)
    return seconds


# -- skopeo ------------------------------------------------------------------


def make_oci_layout(directory: str, layers: int, layer_size: int) -> str:
    """
    An OCI image layout with C{layers} gzip layers of fresh random bytes (C{layer_size} each, stored
    deflate blocks) and a config naming their uncompressed digests; returns 'oci:DIR:bench'.

    The layers are compressed, as in any image a user pushes: skopeo copies them as they are. With
    plain tar layers it would gzip each one on the way to a registry, and its own compression, not the
    server, would set the push rate.
    """
    blobs = os.path.join(directory, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    descriptors, diff_ids = [], []
    for _ in range(layers):
        compressed, uncompressed = hashlib.sha256(), hashlib.sha256()
        gzip = zlib.compressobj(0, zlib.DEFLATED, 31)  # level 0: stored blocks; 31: gzip framing
        size = 0
        tmp = os.path.join(blobs, "tmp")
        with open(tmp, "wb") as f:
            for last in range(layer_size // MIB, 0, -1):
                block = os.urandom(MIB)
                uncompressed.update(block)
                piece = gzip.compress(block) + (gzip.flush() if last == 1 else b"")
                f.write(piece)
                compressed.update(piece)
                size += len(piece)
        os.rename(tmp, os.path.join(blobs, compressed.hexdigest()))
        descriptors.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": f"sha256:{compressed.hexdigest()}", "size": size})
        diff_ids.append(f"sha256:{uncompressed.hexdigest()}")
    config = put(json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode())
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                               "layers": descriptors}).encode())
    with open(os.path.join(directory, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                       **manifest, "annotations": {
                                                           "org.opencontainers.image.ref.name": "bench"}}]}, f)
    return f"oci:{directory}:bench"


def skopeo(*args: str) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"skopeo {' '.join(args)}: {done.stderr.strip()[-300:]}")
    return time.perf_counter() - t0


def skopeo_push(port: int, layout: str, repository: str) -> float:
    return skopeo("copy", "--quiet", "--dest-tls-verify=false", layout,
                  f"docker://127.0.0.1:{port}/{repository}:bench")


def skopeo_pull(port: int, into: str, repository: str) -> float:
    """A copy from the registry into a fresh OCI directory under C{into}; seconds."""
    out = tempfile.mkdtemp(dir=into)
    try:
        return skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://127.0.0.1:{port}/{repository}:bench",
                      f"oci:{out}:bench")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def memory_scratch() -> str | None:
    """
    A directory on a memory filesystem for skopeo's pulls to write into, or None. There skopeo's
    fsync of each layer costs nothing, so that row shows what the servers send, as the pull rows do
    by discarding the bytes; into a directory on disk each copy waits for the image to reach the
    disk, which sets the rate whichever server sends.
    """
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return tempfile.mkdtemp(prefix="bench-skopeo-", dir=shm)
    return None


def skopeo_rounds(servers: dict, count: int, scratch: str, image_mib: int, log) -> dict[str, dict]:
    """
    The skopeo rows, with both servers up: C{count} rounds, each with a fresh 5-layer image (so no
    layer is on a server before its push) pushed to every server, then pulled from every server into
    a directory on disk beside the servers' roots (the target row) and into a memory filesystem
    (L{memory_scratch}, no target), the order of the servers alternating from round to round and
    every copy starting on a settled disk (bench/pulls.py). Returns {kind: {row key: entry}}.
    """
    kinds = list(servers)
    memory = memory_scratch()
    copies = [("skopeo_push", lambda port: skopeo_push(port, layout, repository)),
              ("skopeo_pull", lambda port: skopeo_pull(port, scratch, repository))]
    if memory is not None:
        copies.append(("skopeo_pull_memory", lambda port: skopeo_pull(port, memory, repository)))
    samples = {kind: {key: [] for key, _ in copies} for kind in kinds}
    try:
        for number in range(count):
            layout_dir = tempfile.mkdtemp(dir=scratch)
            try:
                layout = make_oci_layout(os.path.join(layout_dir, "layout"), 5, image_mib * MIB // 5)
                repository = f"skopeo/round{number}"
                order = kinds if number % 2 == 0 else kinds[::-1]
                for key, copy in copies:
                    for kind in order:
                        samples[kind][key].append(pulls.sample(servers[kind], kind,
                                                               f"{key} round {number + 1}/{count}",
                                                               image_mib, copy, log))
            finally:
                shutil.rmtree(layout_dir, ignore_errors=True)
    finally:
        if memory is not None:
            shutil.rmtree(memory, ignore_errors=True)
    return {kind: {key: pulls.summary(taken, key, kind, log) for key, taken in rows.items()}
            for kind, rows in samples.items()}


# -- 50 concurrent pushes ------------------------------------------------------


def slices(payload: Payload, count: int, size: int) -> list[tuple[int, str]]:
    """C{count} distinct (offset, digest) slices of the payload, each C{size} bytes."""
    step = (payload.size - size) // max(count - 1, 1)
    out = []
    with open(payload.path, "rb") as f:
        for i in range(count):
            f.seek(i * step)
            out.append((i * step, "sha256:" + hashlib.sha256(f.read(size)).hexdigest()))
    return out


def concurrent_pushes(port: int, payload: Payload, parts: list[tuple[int, str]], size: int) -> float:
    """One monolithic push per slice, all at once (one thread each). Returns seconds."""
    from workloads import Client
    errors = []

    def push(offset: int, digest: str):
        client = Client(port)
        try:
            with open(payload.path, "rb") as f:
                url = client.start_upload()
                client.send_file("PUT", with_digest(url, digest), f.fileno(), offset, size,
                                 {"Content-Type": "application/octet-stream"}, expect=(201,))
        except Exception as e:
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=push, args=part) for part in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} pushes failed: {errors[0]}")
    return time.perf_counter() - t0


# -- CPU profile ---------------------------------------------------------------


def py_spy() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(here, "..", ".venv", "bin", "py-spy"), shutil.which("py-spy")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


class Profiler:
    """py-spy record (collapsed stacks) of a process while a workload runs."""

    def __init__(self, pid: int, out: str):
        self.binary = py_spy()
        self.out = out
        self.proc = None
        if self.binary:
            self.proc = subprocess.Popen([self.binary, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                                          "--threads", "--output", out, "--nonblocking"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)

    def stop(self):
        if self.proc is not None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def summarize_profile(path: str, top: int = 12) -> list[str]:
    """Self time per function and time per thread from py-spy's collapsed stacks."""
    if not os.path.exists(path):
        return ["(no profile: install py-spy into .venv to get one)"]
    leaf: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = stack.split(";")
            total += n
            threads[frames[0]] += n
            leaf[_short(frames[-1])] += n
    if not total:
        return ["(empty profile)"]
    lines = ["samples by thread:"]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in threads.most_common(6)]
    lines.append("self time by function (on-CPU samples, all threads):")
    lines += [f"  {n / total:6.1%}  {name}" for name, n in leaf.most_common(top)]
    return lines


def _short(frame: str) -> str:
    """'Name (dir/file.py)': lines of one function are counted together."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    return f"{name} ({'/'.join(parts[-2:])})"
