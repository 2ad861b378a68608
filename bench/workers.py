"""
Small-request throughput of regd with `regd.workers: 2` against `workers: 1`,
same filesystem storage, same machine, same run (target: >= 1.6x on 2 cores).

Each configuration gets a fresh regd and one pushed image; both run at once
and are measured in alternation (short runs, several rounds, medians) with
blob HEADs and manifest GETs from bench/loadgen.py (one epoll thread, N
keep-alive connections; the kernel spreads them over the workers' sockets).

    .venv/bin/python bench/run.py --workers-only [--duration 5] [--connections 32]
"""

from __future__ import annotations

import http.client
import os
import statistics
import time

import workloads as w
from servers import Server

TARGET = 1.6


def _config(server: Server, workers: int) -> None:
    with open(server.config, "w") as f:
        f.write("version: 0.1\n"
                "log:\n  level: error\n  accesslog:\n    disabled: true\n"
                f"storage:\n  filesystem:\n    rootdirectory: {server.root}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: 127.0.0.1:{server.port}\n"
                f"regd:\n  workers: {workers}\n")


def _wait_for_workers(port: int, workers: int, timeout: float = 60.0) -> None:
    """Every worker must answer before measuring (they start a moment apart)."""
    if workers == 1:
        return
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only workers {sorted(seen)} of {workers} answered")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/v2/")
            answer = conn.getresponse()
            answer.read()
            seen.add(answer.getheader("X-Regd-Worker", ""))
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()


def run(duration: float = 5.0, connections: int = 32, rounds: int = 6) -> dict:
    """
    Both servers run at once and are measured in alternation, short runs over
    several rounds, medians kept: whatever else loads the machine meanwhile
    weighs on both alike.
    """
    servers = {}
    try:
        for workers in (1, 2):
            server = Server("regd")
            _config(server, workers)
            server.start()
            _wait_for_workers(server.port, workers)
            servers[workers] = (server, w.push_image(server.port))
        samples = {(n, key): [] for n in servers for key in ("blob_head", "manifest_get")}
        errors = 0
        slice_ = max(0.5, duration / rounds)
        for workers, (server, image) in servers.items():  # warm up every worker
            w.blob_heads(server.port, image.layer_digest, connections, 0.5)
        for _ in range(rounds):
            for workers, (server, image) in servers.items():
                heads = w.blob_heads(server.port, image.layer_digest, connections, slice_)
                gets = w.manifest_gets(server.port, connections, slice_)
                samples[(workers, "blob_head")].append(heads.per_second)
                samples[(workers, "manifest_get")].append(gets.per_second)
                errors += heads.errors + gets.errors
    finally:
        for server, _ in servers.values():
            server.stop()
    results = {"cores": os.cpu_count(), "rounds": rounds, "errors": errors}
    for workers in servers:
        results[f"workers_{workers}"] = {key: statistics.median(samples[(workers, key)])
                                         for key in ("blob_head", "manifest_get")}
    for key in ("blob_head", "manifest_get"):
        one, two = results["workers_1"][key], results["workers_2"][key]
        results[f"{key}_ratio"] = two / one if one else 0.0
    return results


def render(results: dict) -> str:
    lines = [f"regd.workers on {results['cores']} cores, filesystem storage, medians of {results['rounds']} "
             f"alternating rounds (target: workers 2 >= {TARGET}x workers 1)",
             f"  {'workload':<22}{'workers 1':>14}{'workers 2':>14}{'ratio':>9}"]
    for key, label in (("blob_head", "blob HEAD"), ("manifest_get", "manifest GET")):
        one, two = results["workers_1"][key], results["workers_2"][key]
        ratio = results[f"{key}_ratio"]
        verdict = "ok" if ratio >= TARGET else "BELOW TARGET"
        lines.append(f"  {label:<22}{one:>10.0f} r/s{two:>10.0f} r/s{ratio:>8.2f}x  {verdict}")
    return "\n".join(lines)
