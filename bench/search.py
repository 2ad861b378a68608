"""
Search and browsing at scale: 10,000 repositories with 100,000 tags, written
straight into a registry:2-layout storage root and into regd's index
database (as `regd reindex` would leave it), then median latencies of

  - docker search            GET /v1/search?q=TERM&n=25
  - the web UI's home page    GET /ui/                (newest pushes + organizations)
  - a web search              GET /ui/search?q=TERM
  - a repository page         GET /ui/r/NAME          (tags, description, activity)

each over one keep-alive connection, one request at a time, terms and names
varied. Target: under 100 ms median each. The reference registry has no
search: its only listing, GET /v2/_catalog?n=100 over the same root, is
measured as the peer figure (it walks storage on every call).

    .venv/bin/python bench/search.py [--repositories N] [--tags-per-repository N] [--requests N]
    .venv/bin/python bench/run.py --search-only      (the same, from the main benchmark)
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from servers import Server, config_yaml  # noqa: E402

WORDS = ["web", "api", "db", "cache", "worker", "proxy", "auth", "search", "queue", "batch"]
MANIFESTS = 100
TARGET_MS = 100.0
V2 = "docker/registry/v2"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def _write(path: str, data: bytes) -> None:
    try:
        f = open(path, "wb")
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        f = open(path, "wb")
    with f:
        f.write(data)


def _link(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, data)
    os.close(fd)


def _blob(root: str, data: bytes) -> str:
    hexdigest = hashlib.sha256(data).hexdigest()
    _write(f"{root}/{V2}/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data", data)
    return hexdigest


def repository_name(i: int) -> str:
    return f"org{i % 200:03d}/{WORDS[i % len(WORDS)]}-{i}"


def populate(root: str, repositories: int, tags_per_repository: int) -> dict:
    """Storage (blobs, revision and tag links) plus the index rows a rebuild would produce."""
    from regd.index import store

    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {}}).encode()
    config_hex = _blob(root, config)
    layers = [os.urandom(64) for _ in range(4)]
    layer_hexes = [_blob(root, layer) for layer in layers]
    manifests = []
    for j in range(MANIFESTS):
        chosen = [(layer_hexes[(j + n) % 4], len(layers[(j + n) % 4])) for n in range(2)]
        document = {
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{config_hex}",
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": f"sha256:{h}",
                        "size": size} for h, size in chosen],
            "annotations": {"org.opencontainers.image.description":
                            f"Image {j}: a {WORDS[j % len(WORDS)]} service <b>built</b> nightly"},
        }
        body = json.dumps(document).encode()
        manifests.append((_blob(root, body), sum(size for _, size in chosen),
                          document["annotations"]["org.opencontainers.image.description"]))

    now = time.time()
    repo_rows, tag_rows = [], []
    for i in range(repositories):
        name = repository_name(i)
        base = f"{root}/{V2}/repositories/{name}"
        os.makedirs(f"{base}/_manifests/revisions/sha256")
        os.mkdir(f"{base}/_manifests/tags")
        tags = []
        for k in range(tags_per_repository):
            tag = "latest" if k == 0 else f"1.{k}"
            # Each repository holds two of the images, its tags alternating between them.
            hexdigest, size, description = manifests[(i * 2 + k % 2) % MANIFESTS]
            link = f"sha256:{hexdigest}".encode()
            if k < 2:
                os.mkdir(f"{base}/_manifests/revisions/sha256/{hexdigest}")
                _link(f"{base}/_manifests/revisions/sha256/{hexdigest}/link", link)
            os.mkdir(f"{base}/_manifests/tags/{tag}")
            os.mkdir(f"{base}/_manifests/tags/{tag}/current")
            _link(f"{base}/_manifests/tags/{tag}/current/link", link)
            pushed = now - (repositories - i) * 60 - k
            tags.append((name, tag, f"sha256:{hexdigest}", "application/vnd.oci.image.manifest.v1+json", size,
                         "[]", pushed, "alice" if k % 2 else None, description))
        tag_rows.extend(tags)
        newest = max(tags, key=lambda t: t[6])
        image_description = next(t[8] for t in tags if t[1] == "latest") if tags else ""
        lowered = name.lower()
        repo_rows.append((name, lowered, lowered.rsplit("/", 1)[-1], name.split("/")[0], image_description, None,
                          image_description.lower(), newest[6], newest[7], len(tags)))

    db = store.connect(os.path.join(root, "regd", "index", "index.db"))
    with store.Transaction(db):
        db.executemany("INSERT INTO repositories (name, name_lc, last_lc, organization, image_description, "
                       "admin_description, description_lc, pushed_at, pushed_by, tag_count) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", repo_rows)
        db.executemany("INSERT INTO tags (repository, tag, digest, media_type, size, platforms, pushed_at, "
                       "pushed_by, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", tag_rows)
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        db.executemany("INSERT INTO activity (repository, day, pulls, pushes) VALUES (?, ?, ?, ?)",
                       [(r[0], day, 7, 1) for r in repo_rows])
        store.set_meta(db, "built", repr(now))
        store.set_meta(db, "refreshed", repr(now))
    db.close()
    return {"repositories": len(repo_rows), "tags": len(tag_rows)}


def measure(port: int, paths: list[str], rounds: int) -> dict:
    """Median and p90 milliseconds of GETs cycling through C{paths}, one at a time on one connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    timings, statuses = [], {}
    try:
        for n in range(rounds + 3):
            path = paths[n % len(paths)]
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            elapsed = (time.perf_counter() - started) * 1000
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if n >= 3:  # the first few warm caches
                timings.append(elapsed)
    finally:
        connection.close()
    timings.sort()
    return {"median_ms": statistics.median(timings), "p90_ms": timings[int(len(timings) * 0.9) - 1],
            "requests": len(timings), "statuses": statuses}


def workloads(repositories: int) -> dict[str, list[str]]:
    terms = ["web", "org042/", "cache-77", "no-such-thing", "e", "nightly", "ApI", "proxy-1"]
    names = [repository_name((i * 7919) % repositories) for i in range(16)]
    return {
        "docker_search": [f"/v1/search?q={t}&n=25" for t in terms],
        "ui_home": ["/ui/", "/ui/?page=2", "/ui/?page=150&orgpage=3"],
        "ui_search": [f"/ui/search?q={t}" for t in terms],
        "ui_repository": [f"/ui/r/{n}" for n in names],
    }


LABELS = {
    "docker_search": "docker search (GET /v1/search, n=25)",
    "ui_home": "home page (GET /ui/)",
    "ui_search": "web search (GET /ui/search?q=)",
    "ui_repository": "repository page (GET /ui/r/NAME)",
    "catalog": "GET /v2/_catalog?n=100 (peer figure)",
}


def scratch_parent() -> str | None:
    """
    tmpfs when there is one: 300,000 directory entries are written in seconds
    there instead of minutes on a busy disk. What is timed reads only the
    index, which sits in the page cache either way.
    """
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def run(repositories: int = 10_000, tags_per_repository: int = 10, rounds: int = 200, only=None,
        parent: str | None = None) -> dict:
    shared = tempfile.mkdtemp(prefix="bench-search-", dir=parent or scratch_parent())
    results: dict = {}
    try:
        started = time.perf_counter()
        counts = populate(shared, repositories, tags_per_repository)
        results["populated"] = {**counts, "seconds": time.perf_counter() - started}
        log(f"populated {counts['repositories']} repositories, {counts['tags']} tags "
            f"in {results['populated']['seconds']:.1f} s")
        for kind in [only] if only else ["regd", "reference"]:
            server = Server(kind)
            server.root = shared
            with open(server.config, "w") as f:
                f.write(config_yaml(server.port, shared, kind == "reference"))
            try:
                server.start()
                figures = {}
                chosen = workloads(repositories) if kind == "regd" else {}
                chosen["catalog"] = ["/v2/_catalog?n=100"]
                for key, paths in chosen.items():
                    figures[key] = measure(server.port, paths, rounds if key != "catalog" else max(20, rounds // 10))
                    log(f"[{kind}] {key}: median {figures[key]['median_ms']:.1f} ms, "
                        f"p90 {figures[key]['p90_ms']:.1f} ms, statuses {figures[key]['statuses']}")
                results[kind] = figures
            finally:
                server.stop()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    return results


def render(results: dict) -> str:
    populated = results.get("populated", {})
    rows = [("workload", "regd median ms", "regd p90 ms", "reference median ms", "target", "result")]
    for key, label in LABELS.items():
        ours = results.get("regd", {}).get(key)
        theirs = results.get("reference", {}).get(key)
        ok = ours is not None and ours["median_ms"] < TARGET_MS and set(ours["statuses"]) == {200}
        rows.append((label, f"{ours['median_ms']:.1f}" if ours else "-", f"{ours['p90_ms']:.1f}" if ours else "-",
                     f"{theirs['median_ms']:.1f}" if theirs else "-",
                     f"< {TARGET_MS:g}" if key != "catalog" else "",
                     ("PASS" if ok else "MISS") if key != "catalog" and ours else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"search and browsing: {populated.get('repositories', '?')} repositories, "
             f"{populated.get('tags', '?')} tags"]
    lines += ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repositories", type=int, default=10_000)
    p.add_argument("--tags-per-repository", type=int, default=10)
    p.add_argument("--requests", type=int, default=200, help="timed requests per workload")
    p.add_argument("--only", choices=("regd", "reference"))
    p.add_argument("--root-parent", help="where to create the storage root (default /dev/shm, else $TMPDIR)")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    results = run(a.repositories, a.tags_per_repository, a.requests, a.only, a.root_parent)
    print(render(results))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
