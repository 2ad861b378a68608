"""
Run the same workloads against regd and the reference registry
(Debian's docker-registry) in one go and print figures, ratios and targets.

    .venv/bin/python bench/run.py [--quick] [--size-mib N] [--only regd|reference] [--json FILE]
    .venv/bin/python bench/run.py --search-only     (or --search: also, after the throughput table)

See bench/README.md for what each workload measures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import extra as x  # noqa: E402
import workloads as w  # noqa: E402
import pulls  # noqa: E402
from servers import Measure, Server, read_cpu_seconds, read_rss_kib  # noqa: E402

MIB = 1 << 20
KINDS = ("regd", "reference")

# (key, label, unit, target, kind); kind "ratio": regd/reference >= target; "disk": regd / the disk's own
# rate >= target; "abs": regd's figure >= target; "max": regd's figure <= target; "self": regd's own ratio.
ROWS = [
    ("pull", "pull {size} blob, plain HTTP", "MiB/s", 1.2, "ratio"),
    ("tls_pull", "pull {size} blob, TLS", "MiB/s", 1.0, "ratio"),
    ("push_monolithic", "push {size} monolithic, plain HTTP", "MiB/s", 1.5, "ratio"),
    ("push_monolithic", "  same, vs the disk's own rate", "x disk", 0.8, "disk"),
    ("push_chunked", "push {size} in {chunk} PATCHes, plain HTTP", "MiB/s", 1.5, "ratio"),
    ("push_chunked", "  same, vs the disk's own rate", "x disk", 0.8, "disk"),
    ("tls_push", "push {size} monolithic, TLS", "MiB/s", 1.0, "ratio"),
    ("webhook_ratio", "pushes with 5 webhook endpoints (4 live, 1 dead) / none", "ratio", 0.95, "self"),
    ("webhook_journal_only", "  same, delivery process stopped: the journal alone", "ratio", None, "self"),
    ("webhook_drain", "webhook backlog drain, batch 1", "events/s", 3000, "abs"),
    ("small_blobs", "{count} small blob pushes, {workers} clients", "blobs/s", 3.0, "ratio"),
    ("small_pulls", "{count} small blob pulls, {workers} clients", "blobs/s", 1.0, "ratio"),
    ("skopeo_push", "skopeo push, 5 layers, {image} MiB", "MiB/s", 1.25, "ratio"),
    ("skopeo_pull", "skopeo pull, 5 layers, {image} MiB", "MiB/s", 1.0, "ratio"),
    ("rss_big", "peak RSS during {size} transfers", "MiB", 64, "max"),
    ("rss_push", "  of which the {size} pushes", "MiB", 64, "max"),
    ("rss_concurrent", "peak RSS during {parallel} concurrent {part} MiB pushes", "MiB", 64, "max"),
    ("pull_verified", "pull {size} + client sha256 (no target)", "MiB/s", None, "ratio"),
    ("manifest_get", "manifest GET x{conns} (no target)", "req/s", None, "ratio"),
    ("blob_head", "blob HEAD x{conns} (no target)", "req/s", None, "ratio"),
    ("concurrent", "{parallel} concurrent {part} MiB pushes (no target)", "MiB/s", None, "ratio"),
    ("skopeo_pull_memory", "skopeo pull into tmpfs (no target)", "MiB/s", None, "ratio"),
]
BIG = ("push_monolithic", "push_chunked", "pull", "pull_verified", "tls_push", "tls_pull")
PUSHES = ("push_monolithic", "push_chunked", "tls_push")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64 MiB blob, 2 s rate runs, small extras")
    p.add_argument("--size-mib", type=int, help="big blob size in MiB (default 1024, or 64 with --quick)")
    p.add_argument("--chunk-mib", type=int, help="PATCH size in MiB (default 64, or 16 with --quick)")
    p.add_argument("--duration", type=float, help="seconds per req/s workload (default 5, or 2 with --quick)")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections for req/s workloads")
    p.add_argument("--small-count", type=int, default=500)
    p.add_argument("--small-workers", type=int, default=8)
    p.add_argument("--image-mib", type=int, help="skopeo image size, 5 layers (default 300, or 40 with --quick)")
    p.add_argument("--parallel", type=int, default=50, help="concurrent pushes for the RSS row")
    p.add_argument("--part-mib", type=int, help="size of each concurrent push (default 50, or 8 with --quick)")
    p.add_argument("--webhook-pushes", type=int, help="pushes per webhook run (default 1000, or 200 with --quick)")
    p.add_argument("--webhook-rounds", type=int, default=3,
                   help="alternating rounds per webhook configuration, each after a settled disk")
    p.add_argument("--skip", action="append", default=[], choices=["tls", "skopeo", "webhooks", "profile",
                                                                    "concurrent", "pull", "requests", "small"],
                   help="leave a group out (pull: the pull rows, plain and TLS; tls: the TLS push and pull; "
                        "requests: manifest GET and blob HEAD)")
    p.add_argument("--only", choices=KINDS, help="benchmark one server only")
    p.add_argument("--tls-only", action="store_true",
                   help="only the TLS rows (push and pull over TLS, both servers): no plain-HTTP server, "
                        "disk, skopeo, concurrent, webhook or profile runs")
    p.add_argument("--pull-only", action="store_true",
                   help="only the pull rows, plain and TLS, both servers (with the TLS push, ~2 min)")
    p.add_argument("--pull-rounds", type=int,
                   help="alternating rounds per pull row, median reported (default 6, or 2 with --quick; even, so each server goes first in half)")
    p.add_argument("--skopeo-rounds", type=int,
                   help="alternating rounds of the skopeo rows, a fresh image each, median reported (default 6, "
                        "or 2 with --quick)")
    p.add_argument("--skopeo-only", action="store_true",
                   help="only the skopeo rows (both servers up, alternating rounds)")
    p.add_argument("--json", metavar="FILE", help="also write results as JSON")
    p.add_argument("--s3", action="store_true",
                   help="both servers on S3 (one moto server started here, a bucket each; redirects off so "
                        "blob bytes pass through the registry)")
    p.add_argument("--search", action="store_true",
                   help="also run bench/search.py: docker search and the web pages over 10,000 repositories")
    p.add_argument("--search-only", action="store_true", help="run only bench/search.py")
    p.add_argument("--workers", action="store_true",
                   help="also measure regd.workers: 2 against 1 (bench/workers.py), after the throughput table")
    p.add_argument("--workers-only", action="store_true", help="run only bench/workers.py")
    p.add_argument("--webhooks-only", action="store_true", help="run only the two webhook rows (regd only)")
    p.add_argument("--small-only", action="store_true",
                   help="only the small blob rows, pushes then pulls (both servers, or --only): no big payload, "
                        "disk, TLS, skopeo, concurrent, webhook or push profile runs")
    p.add_argument("--small-profile", metavar="FILE",
                   help="with the small row: py-spy's raw collapsed stacks of regd while it takes those pushes")
    a = p.parse_args(argv)
    if a.tls_only:
        a.skip = sorted(set(a.skip) - {"tls"} | {"skopeo", "webhooks", "profile", "concurrent"})
    if a.pull_only:  # the TLS pull too, unless --skip tls
        a.skip = sorted(set(a.skip) | {"skopeo", "webhooks", "profile", "concurrent"})
    if a.skopeo_only:
        a.skip = sorted(set(a.skip) - {"skopeo"} | {"tls", "webhooks", "profile", "concurrent", "pull", "requests",
                                                    "small"})
    if a.small_only:
        a.skip = sorted(set(a.skip) - {"small"} | {"tls", "skopeo", "webhooks", "profile", "concurrent", "pull",
                                                   "requests"})
    # Even counts: each server goes first in half the rounds (the first copy of a round is the slower one).
    a.pull_rounds = a.pull_rounds or (2 if a.quick else 6)
    a.skopeo_rounds = a.skopeo_rounds or (2 if a.quick else 6)
    a.size_mib = a.size_mib or (64 if a.quick else 1024)
    a.chunk_mib = a.chunk_mib or (16 if a.quick else 64)
    a.duration = a.duration or (2.0 if a.quick else 5.0)
    a.image_mib = a.image_mib or (40 if a.quick else 300)
    a.part_mib = a.part_mib or (8 if a.quick else 50)
    a.webhook_pushes = a.webhook_pushes or (200 if a.quick else 1000)
    return a


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Shared:
    """Inputs made once per run and used for both servers."""

    def __init__(self, args, tmp: str):
        self.payload = None
        if not (args.small_only or args.skopeo_only):
            self.payload = w.make_payload(os.path.join(tmp, "payload.bin"), args.size_mib * MIB)
        self.tmp = tmp
        self.cert = self.key = None
        if "tls" not in args.skip:
            self.cert, self.key = x.make_certificate(tmp)
        self.skopeo = "skopeo" not in args.skip and shutil.which("skopeo") is not None
        self.parts = []
        if "concurrent" not in args.skip:
            self.parts = x.slices(self.payload, args.parallel, args.part_mib * MIB)


def s3_storage(moto) -> str:
    """The storage section for one server on its own bucket of the shared moto server."""
    return ("storage:\n" + moto.yaml(moto.new_bucket()) + "  delete:\n    enabled: true\n"
            + "  redirect:\n    disable: true\n")


def bench_server(kind: str, args, shared: Shared, moto=None) -> dict:
    res: dict = {}
    payload = shared.payload
    mib = payload.size / MIB if payload is not None else 0.0

    def run(server, key, fn, unit="MiB/s", amount=mib, **extra):
        try:
            with Measure(server) as m:
                secs = fn()
            value = amount / secs
            res[key] = {"value": value, "unit": unit, "peak_rss_mib": m.peak_mib, "server_cpu_s": m.cpu,
                        "client_cpu_s": m.client_cpu, "seconds": secs, **extra}
            log(f"[{kind}] {key}: {value:.1f} {unit}  (server peak RSS {m.peak_mib:.1f} MiB, "
                f"server cpu {m.cpu:.2f} s, client cpu {m.client_cpu:.2f} s)")
        except Exception as e:
            res[key] = {"error": str(e)}
            log(f"[{kind}] {key} FAILED: {e}")

    server = Server(kind, storage=s3_storage(moto) if moto is not None else None)
    try:
        log(f"[{kind}] starting on 127.0.0.1:{server.port}")
        server.start()
        res["idle_rss_mib"] = (read_rss_kib(server.pid) or 0) / 1024
        port = server.port
        if payload is not None:
            run(server, "push_monolithic", lambda: w.push_monolithic(port, payload))
            try:
                # The chunked push lands on a repository that no longer links the blob (the bytes may stay).
                w.delete_blob(port, payload.digest)
            except Exception as e:
                log(f"[{kind}] blob DELETE before the chunked push failed (continuing): {e}")
            run(server, "push_chunked", lambda: w.push_chunked(port, payload, args.chunk_mib * MIB))
        try:
            if "requests" not in args.skip:
                image = w.push_image(port)
                run(server, "manifest_get", lambda: _rate(w.manifest_gets(port, args.connections, args.duration)),
                    unit="req/s", amount=1)
                run(server, "blob_head", lambda: _rate(w.blob_heads(port, image.layer_digest, args.connections,
                                                                    args.duration)), unit="req/s", amount=1)
        except Exception as e:
            res["manifest_get"] = res["blob_head"] = {"error": f"pushing the test image: {e}"}
        small = {}
        blobs = w.make_small_blobs(args.small_count, 4096)

        def small_blobs():
            profiler = x.Profiler(server.pid, args.small_profile) if args.small_profile and kind == "regd" else None
            try:
                secs, small["monolithic_post"] = w.small_blobs(port, blobs, args.small_workers)
            finally:
                if profiler is not None:
                    profiler.stop()
            return secs
        if "small" not in args.skip:
            run(server, "small_blobs", small_blobs, unit="blobs/s", amount=args.small_count)
            if "small_blobs" in res and "error" not in res["small_blobs"]:
                run(server, "small_pulls", lambda: w.small_pulls(port, blobs, args.small_workers),
                    unit="blobs/s", amount=args.small_count)
        if shared.parts:
            run(server, "concurrent", lambda: x.concurrent_pushes(port, payload, shared.parts, args.part_mib * MIB),
                amount=args.parallel * args.part_mib)
        if server.proc.poll() is not None:
            log(f"[{kind}] server died:\n{server.log_tail()}")
    finally:
        log(f"[{kind}] stopping")
        server.stop()

    return res


def bench_pair(kinds: list[str], args, shared: Shared, results: dict, tls: bool, moto=None) -> None:
    """
    The pull rows (and, with TLS, the TLS push; without, the skopeo rows): both servers up at once, the
    blob pushed to each, then alternating pull rounds (bench/pulls.py). Figures go into results[kind].
    """
    payload = shared.payload
    mib = payload.size / MIB if payload is not None else 0.0
    mode = "TLS" if tls else "plain HTTP"
    servers = {}
    try:
        for kind in kinds:
            servers[kind] = Server(kind, x.tls_yaml(shared.cert, shared.key) if tls else "", tls=tls,
                                   storage=s3_storage(moto) if moto is not None else None)
            log(f"[{kind}] starting ({mode}, for the pulls) on 127.0.0.1:{servers[kind].port}")
            servers[kind].start()
        for kind, server in list(servers.items()):
            res = results.setdefault(kind, {})
            try:
                if tls:  # the TLS push row: one sample per server, on a settled disk
                    pulls.settle()
                    with Measure(server) as m:
                        secs = x.tls_push(server.port, payload)
                    res["tls_push"] = {"value": mib / secs, "unit": "MiB/s", "peak_rss_mib": m.peak_mib,
                                       "server_cpu_s": m.cpu, "client_cpu_s": m.client_cpu, "seconds": secs}
                    log(f"[{kind}] tls_push: {mib / secs:.1f} MiB/s  (server peak RSS {m.peak_mib:.1f} MiB, "
                        f"server cpu {m.cpu:.2f} s, client cpu {m.client_cpu:.2f} s)")
                elif "pull" not in args.skip:
                    w.push_monolithic(server.port, payload)
            except Exception as e:
                res["tls_pull" if tls else "pull"] = {"error": f"pushing the blob: {e}"}
                if tls:
                    res["tls_push"] = {"error": str(e)}
                log(f"[{kind}] push before the pulls FAILED: {e}")
                servers.pop(kind).stop()
        if not servers:
            return
        if "pull" in args.skip:
            rows = []
        elif tls:
            rows = [("tls_pull", "TLS pull", lambda port: x.tls_pull(port, payload))]
        else:
            rows = [("pull", "pull", lambda port: w.pull(port, payload, verify=False)),
                    ("pull_verified", "pull + sha256", lambda port: w.pull(port, payload, verify=True))]
        for key, label, fn in rows:
            try:
                for kind, entry in pulls.rounds(servers, payload.digest, args.pull_rounds, fn, mib, label,
                                                log).items():
                    results[kind][key] = entry
            except Exception as e:
                for kind in servers:
                    results[kind][key] = {"error": str(e)}
                log(f"{label} FAILED: {e}")
        if shared.skopeo and not tls:
            try:
                for kind, entries in x.skopeo_rounds(servers, args.skopeo_rounds, shared.tmp, args.image_mib,
                                                     log).items():
                    results[kind].update(entries)
            except Exception as e:
                for kind in servers:
                    for key in ("skopeo_push", "skopeo_pull", "skopeo_pull_memory"):
                        results[kind][key] = {"error": str(e)}
                log(f"skopeo FAILED: {e}")
    finally:
        for server in servers.values():
            server.stop()


def peak_rows(res: dict) -> None:
    """The RSS rows from the peaks of the workloads they cover."""
    peaks = [res[k]["peak_rss_mib"] for k in BIG if "peak_rss_mib" in res.get(k, {})]
    if peaks:
        res["rss_big"] = {"value": max(peaks), "unit": "MiB"}
    peaks = [res[k]["peak_rss_mib"] for k in PUSHES if "peak_rss_mib" in res.get(k, {})]
    if peaks:  # what a body on its way into storage costs, apart from the pulls
        res["rss_push"] = {"value": max(peaks), "unit": "MiB"}
    if "peak_rss_mib" in res.get("concurrent", {}):
        res["rss_concurrent"] = {"value": res["concurrent"]["peak_rss_mib"], "unit": "MiB"}


def _rate(result):
    """Adapt a loadgen result to run(): 'seconds' such that 1/seconds is the rate."""
    return 1.0 / result.per_second if result.per_second else float("inf")


def bench_webhooks(args) -> dict:
    """
    regd only: push rate with 5 endpoints (4 live, 1 dead) against none, and backlog drain rate. A third
    configuration has the same endpoints with the delivery process stopped (SIGSTOP) while the pushes are
    timed: what journaling each event before its answer costs by itself, with no delivery at all.
    """
    import notifications as n
    res: dict = {}
    live = n.ReceiverProcess(4)
    dead = f"http://127.0.0.1:{n.free_port()}/hook"
    five = n.endpoints_yaml([live.url(i) for i in range(4)] + [dead])
    configurations = {"none": "", "5 endpoints": five, "journal only": five}
    rates: dict = {label: [] for label in configurations}
    try:
        for round_number in range(args.webhook_rounds):
            for label, extra in configurations.items():
                server = Server("regd", extra)
                stopped: list[int] = []
                try:
                    server.start()
                    n.push_blobs(server.port, 100, args.small_workers, f"warm-{label}-{round_number}")
                    if label == "journal only":
                        stopped = _children(server.pid)
                        for child in stopped:
                            os.kill(child, signal.SIGSTOP)
                    # The previous round's files still being written back would take the fsyncs of this one
                    # (on ext4 an fsync commits the journal, and the data of every file before it).
                    pulls.settle()
                    cpu = _process_tree_cpu(server.pid, receivers=live.pid)
                    client = time.process_time()
                    seconds, _ = n.push_blobs(server.port, args.webhook_pushes, args.small_workers,
                                              f"{label}-{round_number}")
                    client = time.process_time() - client
                    cpu = {name: used - cpu.get(name, 0.0)
                           for name, used in _process_tree_cpu(server.pid, receivers=live.pid).items()}
                    rates[label].append(args.webhook_pushes / seconds)
                    log(f"[regd] webhooks {label}, round {round_number}: {rates[label][-1]:.0f} pushes/s (CPU s: "
                        + ", ".join(f"{name} {used:.2f}" for name, used in cpu.items()) + f", client {client:.2f})")
                finally:
                    for child in stopped:  # delivers the backlog while it stops
                        os.kill(child, signal.SIGCONT)
                    server.stop()
    finally:
        live.stop()
    import statistics
    none, five_rate, journal = (statistics.median(rates[label])
                                for label in ("none", "5 endpoints", "journal only"))
    res["webhook_ratio"] = {"value": five_rate / none, "unit": "ratio", "none": none, "five": five_rate}
    res["webhook_journal_only"] = {"value": journal / none, "unit": "ratio", "none": none, "journal_only": journal}

    port = n.free_port()
    pushes = args.webhook_pushes * 2
    server = Server("regd", n.endpoints_yaml([f"http://127.0.0.1:{port}/hook"]))
    try:
        server.start()
        _, started = n.push_blobs(server.port, pushes, args.small_workers, "backlog")
        time.sleep(1.0)
        receiver = n.ReceiverProcess(1, [port])
        begin = time.monotonic()
        deadline = begin + 120
        while len(arrived := receiver.digests()) < len(started) and time.monotonic() < deadline:
            time.sleep(0.05)
        # The rate once deliveries flow again: from the first arrival to the last. Before the first one,
        # the endpoint waits out its retry backoff (here 100-200 ms), which is reported beside it.
        first, last = (min(arrived.values()), max(arrived.values())) if arrived else (begin, float("inf"))
        rate = (len(arrived) - 1) / (last - first) if len(arrived) > 1 else 0.0
        res["webhook_drain"] = {"value": rate, "unit": "events/s", "events": len(arrived),
                                "first_arrival_s": first - begin,
                                "rate_from_receiver_up": len(arrived) / (last - begin)}
        log(f"[regd] webhook backlog drain: {len(arrived)} events at {rate:.0f} events/s (first to last arrival); "
            f"the first {first - begin:.2f} s after the receiver was up, {len(arrived) / (last - begin):.0f} "
            "events/s counted from then")
        receiver.stop()
    finally:
        server.stop()
    return res


def _children(pid: int) -> list[int]:
    """The processes regd started (the webhook delivery process)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _process_tree_cpu(pid: int, receivers: int) -> dict[str, float]:
    """CPU seconds of regd, of each process it started (the webhook delivery process) and of the receivers."""
    used = {"regd": read_cpu_seconds(pid) or 0.0, "receivers": read_cpu_seconds(receivers) or 0.0}
    for child in _children(pid):
        used[f"child {child}"] = read_cpu_seconds(child) or 0.0
    return used


def profile_regd(args, shared: Shared) -> list[str]:
    """py-spy's view of regd's CPU while it takes a monolithic and a chunked push."""
    server = Server("regd")
    out = os.path.join(shared.tmp, "profile.txt")
    try:
        server.start()
        profiler = x.Profiler(server.pid, out)
        try:
            w.push_monolithic(server.port, shared.payload)
            w.delete_blob(server.port, shared.payload.digest)
            w.push_chunked(server.port, shared.payload, args.chunk_mib * MIB)
        finally:
            profiler.stop()
    finally:
        server.stop()
    return x.summarize_profile(out)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def render(results: dict, args) -> str:
    size = f"{args.size_mib} MiB" if args.size_mib < 1024 else f"{args.size_mib / 1024:g} GiB"
    fmt_ctx = {"size": size, "chunk": f"{args.chunk_mib} MiB", "conns": args.connections,
               "count": args.small_count, "workers": args.small_workers, "image": args.image_mib,
               "parallel": args.parallel, "part": args.part_mib}
    header = ("workload", "unit", "regd", "reference", "ratio", "target", "result")
    rows = []
    disk = results.get("disk", {}).get("value")

    def val(kind, key, field="value"):
        entry = results.get(kind, {}).get(key)
        if not entry or field not in entry:
            return None
        return entry[field]

    def num(v, digits=1):
        return "-" if v is None else f"{v:,.{digits}f}"

    for key, label, unit, target, how in ROWS:
        a, b = val("regd", key), val("reference", key)
        ratio, shown_b = None, num(b)
        if how == "ratio":
            ratio = a / b if a is not None and b else None
            target_text = "" if target is None else f">= {target:g}x"
            ok = None if ratio is None or target is None else ratio >= target
        elif how == "disk":
            ratio = a / disk if a is not None and disk else None
            shown_b = f"disk {num(disk)}"
            target_text, ok = f">= {target:g}x disk", None if ratio is None else ratio >= target
            a = a
        elif how == "self":
            ratio, shown_b = a, "-"
            target_text = "" if target is None else f">= {target:g}"
            ok = None if a is None or target is None else a >= target
        elif how == "abs":
            target_text, ok = f">= {target:g}", None if a is None else a >= target
        else:  # max
            ratio = a / b if a is not None and b else None
            target_text, ok = f"regd <= {target:g}", None if a is None else a <= target
        res = "" if ok is None else verdict(ok)
        if results.get("regd", {}).get(key, {}).get("error"):
            res = "FAIL"
        rows.append((label.format(**fmt_ctx), unit, num(a, 2 if how == "self" else 1), shown_b, num(ratio, 2),
                     target_text, res))
    rows.append(("", "", "", "", "", "", ""))
    a, b = results.get("regd", {}).get("idle_rss_mib"), results.get("reference", {}).get("idle_rss_mib")
    rows.append(("RSS after start (idle)", "MiB", num(a), num(b), num(a / b if a and b else None, 2), "", ""))
    for key, label, *_ in ROWS:
        a, b = val("regd", key, "server_cpu_s"), val("reference", key, "server_cpu_s")
        if a is None and b is None or label.startswith("  "):
            continue
        rows.append(("server CPU s: " + label.format(**fmt_ctx), "s", num(a, 2), num(b, 2),
                     num(a / b if a is not None and b else None, 2), "", ""))

    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    out = []
    line = lambda r: "  ".join(str(c).ljust(widths[i]) if i < 2 else str(c).rjust(widths[i])
                               for i, c in enumerate(r)).rstrip()
    out.append(line(header))
    out.append("  ".join("-" * wd for wd in widths))
    out.extend(line(r) for r in rows)
    out.append("ratio: regd / reference (throughput: higher is better; RSS, CPU: lower is better); "
               "'x disk': regd / a 1 GiB write+fsync to the same filesystem, timed in this run.")
    for kind, res in results.items():
        if not isinstance(res, dict):
            continue
        if "error" in res:
            out.append(f"ERROR {kind}: {res['error']}")
        for key, entry in res.items():
            if isinstance(entry, dict) and "error" in entry:
                out.append(f"ERROR {kind} {key}: {entry['error']}")
    if args.small_profile and os.path.exists(args.small_profile):
        out.append("")
        out.append(f"regd CPU profile (py-spy) during the small blob pushes ({args.small_profile}):")
        out.extend(x.summarize_profile(args.small_profile, top=25))
    if results.get("profile"):
        out.append("")
        out.append("regd CPU profile (py-spy) during the monolithic and chunked pushes:")
        out.extend(results["profile"])
    return "\n".join(out)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def search_benchmark(args) -> dict:
    import search
    results = search.run(only=args.only)
    print(search.render(results))
    return results


def workers_benchmark(args) -> dict:
    import workers
    results = workers.run(duration=args.duration or 5.0, connections=args.connections)
    print(workers.render(results))
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.workers_only:
        try:
            results = workers_benchmark(args)
        except KeyboardInterrupt:
            log("interrupted; servers stopped and temp dirs removed")
            return 130
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "workers": results}, f, indent=2)
        return 0
    if args.webhooks_only:
        try:
            results = {"regd": bench_webhooks(args)}
        except KeyboardInterrupt:
            log("interrupted; servers stopped and temp dirs removed")
            return 130
        print(time.strftime("measured %Y-%m-%d %H:%M UTC", time.gmtime()))
        for key, label, unit, target, _ in ROWS:
            if key in results["regd"]:
                entry = results["regd"][key]
                wanted = "no target" if target is None else f"target >= {target:g}"
                print(f"{label.strip()}: {entry['value']:,.2f} {unit} ({wanted})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "results": results}, f, indent=2)
        return 0
    if args.search_only:
        try:
            results = search_benchmark(args)
        except KeyboardInterrupt:
            log("interrupted; servers stopped and temp dirs removed")
            return 130
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "search": results}, f, indent=2)
        return 0
    kinds = [args.only] if args.only else list(KINDS)
    tmp = tempfile.mkdtemp(prefix="bench-payload-")
    results: dict = {}
    moto = None
    try:
        if args.s3:
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            from tests.support.s3 import MotoServer
            moto = MotoServer().start()
            log(f"S3: moto server on {moto.endpoint}")
        t0 = time.perf_counter()
        shared = Shared(args, tmp)
        if shared.payload is not None:
            log(f"inputs: {args.size_mib} MiB payload {shared.payload.digest} ({time.perf_counter() - t0:.1f} s)")
        if not (args.tls_only or args.pull_only or args.skopeo_only) and shared.payload is not None:
            seconds = x.disk_rate(shared.payload, tempfile.gettempdir())
            results["disk"] = {"value": args.size_mib / seconds, "unit": "MiB/s"}
            log(f"disk: {args.size_mib} MiB written and fsynced in {seconds:.2f} s "
                f"({args.size_mib / seconds:.0f} MiB/s)")
        for kind in kinds:
            if args.tls_only or args.pull_only or args.skopeo_only:
                break
            try:
                results[kind] = bench_server(kind, args, shared, moto)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                traceback.print_exc()
                results[kind] = {"error": str(e)}
        for tls in (False, True):
            if (tls and not shared.cert) or (not tls and (("pull" in args.skip and not shared.skopeo)
                                                           or args.tls_only)):
                continue
            try:
                bench_pair(kinds, args, shared, results, tls, moto)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                traceback.print_exc()
                for kind in kinds:
                    results.setdefault(kind, {})["tls_pull" if tls else "pull"] = {"error": str(e)}
        for kind in kinds:
            peak_rows(results.setdefault(kind, {}))
        if "regd" in kinds and "webhooks" not in args.skip:
            try:
                results.setdefault("regd", {}).update(bench_webhooks(args))
            except Exception as e:
                traceback.print_exc()
                results["regd"]["webhook_ratio"] = {"error": str(e)}
        if "regd" in kinds and "profile" not in args.skip:
            try:
                results["profile"] = profile_regd(args, shared)
            except Exception as e:
                results["profile"] = [f"(profile failed: {e})"]
    except KeyboardInterrupt:
        log("interrupted; servers stopped and temp dirs removed")
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if moto is not None:
            moto.stop()
    if args.s3:
        print("storage: S3 (moto server, one bucket per registry, storage.redirect.disable: true)")
    print(time.strftime("measured %Y-%m-%d %H:%M UTC", time.gmtime()))
    print(render(results, args))
    search_results = None
    if args.search:
        try:
            search_results = search_benchmark(args)
        except KeyboardInterrupt:
            log("interrupted; servers stopped and temp dirs removed")
            return 130
    workers_results = None
    if args.workers:
        try:
            workers_results = workers_benchmark(args)
        except KeyboardInterrupt:
            log("interrupted; servers stopped and temp dirs removed")
            return 130
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "search": search_results,
                       "workers": workers_results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
