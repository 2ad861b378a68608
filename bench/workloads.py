"""
The workloads, each a function of (server address, shared inputs) that
returns its figure. Bodies are streamed from the payload file with
sendfile(2) and pulls are read into reused buffers, so the client holds
at most a few MiB whatever the blob size.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

import attrs

from loadgen import content_length, build_request, hammer

REPO = "bench"
MIB = 1 << 20
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_V1 = "application/vnd.docker.container.image.v1+json"
LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@attrs.frozen
class Payload:
    path: str
    size: int
    digest: str


def make_payload(path: str, size: int) -> Payload:
    """Write `size` incompressible bytes: one random MiB, stamped with a counter per block."""
    base = os.urandom(MIB)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        written = 0
        block_no = 0
        while written < size:
            block = block_no.to_bytes(8, "little") + base[8:]
            block = block[:size - written]
            f.write(block)
            h.update(block)
            written += len(block)
            block_no += 1
    return Payload(path, size, "sha256:" + h.hexdigest())


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Client:
    """One persistent http.client connection with the helpers the workloads need."""

    def __init__(self, port: int, timeout: float = 600):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def close(self):
        self.conn.close()

    def request(self, method, url, body=None, headers=None, expect=None):
        self.conn.request(method, url, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        data = resp.read()
        if expect is not None and resp.status not in expect:
            raise RuntimeError(f"{method} {url}: HTTP {resp.status} (wanted {expect}): {data[:300]!r}")
        return resp, data

    def send_file(self, method, url, fd, offset, count, headers, expect):
        """Send a request whose body is `count` bytes of `fd` from `offset`, via sendfile."""
        c = self.conn
        c.putrequest(method, url, skip_accept_encoding=True)
        for k, v in headers.items():
            c.putheader(k, v)
        c.putheader("Content-Length", str(count))
        c.endheaders()
        sock = c.sock
        sock.settimeout(None)
        end = offset + count
        while offset < end:
            sent = os.sendfile(sock.fileno(), fd, offset, min(end - offset, 1 << 30))
            if sent == 0:
                raise RuntimeError("sendfile: payload file ended early")
            offset += sent
        resp = c.getresponse()
        data = resp.read()
        if resp.status not in expect:
            raise RuntimeError(f"{method} {url}: HTTP {resp.status} (wanted {expect}): {data[:300]!r}")
        return resp, data

    def start_upload(self) -> str:
        resp, _ = self.request("POST", f"/v2/{REPO}/blobs/uploads/", headers={"Content-Length": "0"},
                               expect=(202,))
        return location(resp)


def location(resp) -> str:
    loc = resp.getheader("Location")
    if not loc:
        raise RuntimeError("response has no Location")
    parts = urlsplit(loc)
    return parts.path + ("?" + parts.query if parts.query else "")


def with_digest(url: str, digest: str) -> str:
    return url + ("&" if "?" in url else "?") + "digest=" + quote(digest, safe="")


def push_monolithic(port: int, payload: Payload) -> float:
    """POST, then PUT ?digest with the whole body. Returns seconds."""
    client = Client(port)
    try:
        with open(payload.path, "rb") as f:
            t0 = time.perf_counter()
            url = client.start_upload()
            client.send_file("PUT", with_digest(url, payload.digest), f.fileno(), 0, payload.size,
                             {"Content-Type": "application/octet-stream"}, expect=(201,))
            return time.perf_counter() - t0
    finally:
        client.close()


def push_chunked(port: int, payload: Payload, chunk: int) -> float:
    """POST, PATCH in `chunk`-byte pieces with Content-Range, then PUT ?digest. Returns seconds."""
    client = Client(port)
    try:
        with open(payload.path, "rb") as f:
            t0 = time.perf_counter()
            url = client.start_upload()
            offset = 0
            while offset < payload.size:
                n = min(chunk, payload.size - offset)
                resp, _ = client.send_file(
                    "PATCH", url, f.fileno(), offset, n,
                    {"Content-Type": "application/octet-stream",
                     "Content-Range": f"{offset}-{offset + n - 1}"}, expect=(202,))
                url = location(resp)
                offset += n
            client.request("PUT", with_digest(url, payload.digest), headers={"Content-Length": "0"},
                           expect=(201,))
            return time.perf_counter() - t0
    finally:
        client.close()


def delete_blob(port: int, digest: str) -> None:
    client = Client(port)
    try:
        client.request("DELETE", f"/v2/{REPO}/blobs/{digest}", expect=(202, 404))
    finally:
        client.close()


def pull(port: int, payload: Payload, verify: bool) -> float:
    """GET the blob over a raw socket into one reused 1 MiB buffer.

    With verify=False the bytes are discarded (about 0.2 CPU s per GiB on the
    client, so the server sets the pace); with verify=True they are hashed
    inline, which on 2 cores costs the client as much CPU as a sendfile server
    spends, so that figure is reported but not held to a target. A hash on a
    second thread was measured slower: it only adds GIL hand-offs."""
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(f"GET /v2/{REPO}/blobs/{payload.digest} HTTP/1.1\r\n"
                     f"Host: 127.0.0.1:{port}\r\nUser-Agent: regd-bench\r\n\r\n".encode())
        t0 = time.perf_counter()
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("GET blob: connection closed before the headers")
            head += data
        cut = head.index(b"\r\n\r\n") + 4
        head, first = head[:cut], head[cut:]
        status = int(head[9:12])
        if status != 200:
            raise RuntimeError(f"GET blob: HTTP {status}: {head[:300]!r}")
        length = content_length(head)
        if length != payload.size:
            raise RuntimeError(f"GET blob: Content-Length {length}, wanted {payload.size}")
        h = hashlib.sha256(first)
        got = len(first)
        buf = bytearray(MIB)
        view = memoryview(buf)
        while got < length:
            want = min(MIB, length - got)
            filled = 0
            while filled < want:
                n = sock.recv_into(view[filled:want])
                if not n:
                    raise RuntimeError(f"GET blob: connection closed after {got + filled} bytes")
                filled += n
            if verify:
                h.update(view[:filled])
            got += filled
        elapsed = time.perf_counter() - t0
    finally:
        sock.close()
    if verify and "sha256:" + h.hexdigest() != payload.digest:
        raise RuntimeError("pull: sha256 mismatch")
    return elapsed


def push_small_blob(client: Client, data: bytes, digest: str, monolithic: bool):
    headers = {"Content-Type": "application/octet-stream"}
    if monolithic:
        client.request("POST", with_digest(f"/v2/{REPO}/blobs/uploads/", digest), body=data,
                       headers=headers, expect=(201,))
    else:
        url = client.start_upload()
        client.request("PUT", with_digest(url, digest), body=data, headers=headers, expect=(201,))


def probe_monolithic_post(port: int, data: bytes, digest: str) -> bool:
    """POST ?digest= with a body on a throwaway connection: 201 means supported.
    A 202 means the server ignored the body, so the connection is discarded
    and the blob is pushed the two-request way."""
    client = Client(port)
    try:
        resp, _ = client.request("POST", with_digest(f"/v2/{REPO}/blobs/uploads/", digest), body=data,
                                 headers={"Content-Type": "application/octet-stream"}, expect=(201, 202))
    finally:
        client.close()
    if resp.status == 201:
        return True
    client = Client(port)
    try:
        push_small_blob(client, data, digest, monolithic=False)
    finally:
        client.close()
    return False


def make_small_blobs(count: int, size: int) -> list[tuple[bytes, str]]:
    """`count` distinct blobs of `size` bytes, with their digests."""
    seed = os.urandom(size)
    blobs = []
    for i in range(count):
        data = i.to_bytes(8, "little") + seed[8:]
        blobs.append((data, sha256_digest(data)))
    return blobs


def on_persistent_connections(port: int, workers: int, items, task) -> None:
    """Run task(client, item) for every item on `workers` threads, each with one keep-alive connection."""
    local = threading.local()
    clients = []
    lock = threading.Lock()

    def one(item):
        c = getattr(local, "client", None)
        if c is None:
            c = local.client = Client(port)
            with lock:
                clients.append(c)
        task(c, item)

    try:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(one, items):
                pass
    finally:
        for c in clients:
            c.close()


def small_blobs(port: int, blobs: list[tuple[bytes, str]], workers: int) -> tuple[float, bool]:
    """Push the blobs with `workers` threads. Returns (seconds, monolithic?)."""
    t0 = time.perf_counter()
    monolithic = probe_monolithic_post(port, *blobs[0])
    on_persistent_connections(port, workers, blobs[1:],
                              lambda c, item: push_small_blob(c, item[0], item[1], monolithic))
    return time.perf_counter() - t0, monolithic


def pull_small_blob(client: Client, data: bytes, digest: str) -> None:
    """GET one blob; its bytes must be the ones pushed (a redirect, if any, is not followed)."""
    _, body = client.request("GET", f"/v2/{REPO}/blobs/{digest}", expect=(200,))
    if body != data:
        raise RuntimeError(f"GET {digest}: {len(body)} bytes that are not the blob pushed")


def small_pulls(port: int, blobs: list[tuple[bytes, str]], workers: int) -> float:
    """GET every blob (pushed by small_blobs) with `workers` threads. Returns seconds."""
    t0 = time.perf_counter()
    on_persistent_connections(port, workers, blobs, lambda c, item: pull_small_blob(c, *item))
    return time.perf_counter() - t0


@attrs.frozen
class Image:
    manifest_digest: str
    layer_digest: str


def push_image(port: int) -> Image:
    """A config blob, one small layer and a schema2 manifest tagged `latest`."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    layer = os.urandom(2048)
    client = Client(port)
    try:
        for data in (config, layer):
            push_small_blob(client, data, sha256_digest(data), monolithic=False)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": CONFIG_V1, "size": len(config), "digest": sha256_digest(config)},
            "layers": [{"mediaType": LAYER_GZIP, "size": len(layer), "digest": sha256_digest(layer)}],
        }).encode()
        client.request("PUT", f"/v2/{REPO}/manifests/latest", body=manifest,
                       headers={"Content-Type": MANIFEST_V2}, expect=(201,))
    finally:
        client.close()
    return Image(sha256_digest(manifest), sha256_digest(layer))


def manifest_gets(port: int, connections: int, duration: float):
    req = build_request("GET", f"/v2/{REPO}/manifests/latest", "127.0.0.1", port, {"Accept": MANIFEST_V2})
    return hammer("127.0.0.1", port, req, head=False, connections=connections, duration=duration)


def blob_heads(port: int, digest: str, connections: int, duration: float):
    req = build_request("HEAD", f"/v2/{REPO}/blobs/{digest}", "127.0.0.1", port)
    return hammer("127.0.0.1", port, req, head=True, connections=connections, duration=duration)
