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

import workloads as w  # noqa: E402
from servers import Server, read_cpu_seconds, read_rss_kib  # noqa: E402

MIB = 1 << 20
KINDS = ("regd", "reference")

# (key, label, unit, higher_is_better, target ratio or None)
ROWS = [
    ("push_monolithic", "push monolithic {size}", "MiB/s", True, 3.0),
    ("push_chunked", "push chunked {size} ({chunk} PATCH)", "MiB/s", True, 3.0),
    ("pull", "pull {size} (discard)", "MiB/s", True, 1.0),
    ("pull_verified", "pull {size} + client sha256", "MiB/s", True, None),
    ("manifest_get", "manifest GET x{conns}", "req/s", True, 1.0),
    ("blob_head", "blob HEAD x{conns}", "req/s", True, 1.0),
    ("small_blobs", "{count} x 4 KiB blob push x{workers}", "blobs/s", True, 1.0),
]
BIG = ("push_monolithic", "push_chunked", "pull", "pull_verified")
RSS_LIMIT_MIB = 64.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64 MiB blob, 2 s rate runs")
    p.add_argument("--size-mib", type=int, help="big blob size in MiB (default 1024, or 64 with --quick)")
    p.add_argument("--chunk-mib", type=int, help="PATCH size in MiB (default 64, or 16 with --quick)")
    p.add_argument("--duration", type=float, help="seconds per req/s workload (default 5, or 2 with --quick)")
    p.add_argument("--connections", type=int, default=32, help="keep-alive connections for req/s workloads")
    p.add_argument("--small-count", type=int, default=500)
    p.add_argument("--small-workers", type=int, default=8)
    p.add_argument("--only", choices=KINDS, help="benchmark one server only")
    p.add_argument("--json", metavar="FILE", help="also write results as JSON")
    p.add_argument("--s3", action="store_true",
                   help="both servers on S3 (one moto server started here, a bucket each; redirects off so "
                        "blob bytes pass through the registry)")
    p.add_argument("--search", action="store_true",
                   help="also run bench/search.py: docker search and the web pages over 10,000 repositories")
    p.add_argument("--search-only", action="store_true", help="run only bench/search.py")
    a = p.parse_args(argv)
    a.size_mib = a.size_mib or (64 if a.quick else 1024)
    a.chunk_mib = a.chunk_mib or (16 if a.quick else 64)
    a.duration = a.duration or (2.0 if a.quick else 5.0)
    return a


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Measure:
    """Brackets one workload: wall time is the workload's own; RSS peak and CPU are the server's."""

    def __init__(self, server: Server):
        self.server = server

    def __enter__(self):
        self.server.sampler.reset()
        self.cpu0 = read_cpu_seconds(self.server.pid) or 0.0
        self.client0 = time.process_time()
        return self

    def __exit__(self, *exc):
        self.peak_mib = self.server.sampler.peak_kib() / 1024
        self.cpu = (read_cpu_seconds(self.server.pid) or 0.0) - self.cpu0
        self.client_cpu = time.process_time() - self.client0
        return False


def s3_storage(moto) -> str:
    """The storage section for one server on its own bucket of the shared moto server."""
    return ("storage:\n" + moto.yaml(moto.new_bucket()) + "  delete:\n    enabled: true\n"
            + "  redirect:\n    disable: true\n")


def bench_server(kind: str, args, payload: w.Payload, moto=None) -> dict:
    res: dict = {}
    server = Server(kind, storage=s3_storage(moto) if moto is not None else None)
    try:
        log(f"[{kind}] starting on 127.0.0.1:{server.port}")
        server.start()
        res["idle_rss_mib"] = (read_rss_kib(server.pid) or 0) / 1024
        port = server.port
        mib = payload.size / MIB

        def record(key, value, unit, m, **extra):
            res[key] = {"value": value, "unit": unit, "peak_rss_mib": m.peak_mib, "server_cpu_s": m.cpu,
                        "client_cpu_s": m.client_cpu, **extra}
            log(f"[{kind}] {key}: {value:.1f} {unit}  (server peak RSS {m.peak_mib:.1f} MiB, "
                f"server cpu {m.cpu:.2f} s, client cpu {m.client_cpu:.2f} s)")

        steps = [
            ("push_monolithic", lambda: w.push_monolithic(port, payload)),
            ("push_chunked", lambda: w.push_chunked(port, payload, args.chunk_mib * MIB)),
            ("pull", lambda: w.pull(port, payload, verify=False)),
            ("pull_verified", lambda: w.pull(port, payload, verify=True)),
        ]
        for key, fn in steps:
            if key == "push_chunked":
                # Remove the monolithic push's link so the chunked push lands on a
                # repository that does not hold the blob (the bytes may stay).
                try:
                    w.delete_blob(port, payload.digest)
                except Exception as e:
                    log(f"[{kind}] blob DELETE before the chunked push failed (continuing): {e}")
            try:
                with Measure(server) as m:
                    secs = fn()
                record(key, mib / secs, "MiB/s", m, seconds=secs)
            except Exception as e:
                res[key] = {"error": str(e)}
                log(f"[{kind}] {key} FAILED: {e}")

        try:
            image = w.push_image(port)
        except Exception as e:
            image = None
            res["manifest_get"] = res["blob_head"] = {"error": f"pushing the test image: {e}"}
            log(f"[{kind}] image push FAILED: {e}")
        if image is not None:
            for key, fn in (("manifest_get", lambda: w.manifest_gets(port, args.connections, args.duration)),
                            ("blob_head", lambda: w.blob_heads(port, image.layer_digest, args.connections,
                                                               args.duration))):
                try:
                    with Measure(server) as m:
                        r = fn()
                    record(key, r.per_second, "req/s", m, requests=r.requests, errors=r.errors,
                           p50_ms=r.p50_ms, p99_ms=r.p99_ms, statuses={str(k): v for k, v in r.statuses.items()})
                    if r.errors:
                        log(f"[{kind}] {key}: {r.errors} errors, statuses {r.statuses}")
                except Exception as e:
                    res[key] = {"error": str(e)}
                    log(f"[{kind}] {key} FAILED: {e}")

        try:
            with Measure(server) as m:
                secs, mono = w.small_blobs(port, args.small_count, 4096, args.small_workers)
            record("small_blobs", args.small_count / secs, "blobs/s", m, seconds=secs, monolithic_post=mono)
        except Exception as e:
            res["small_blobs"] = {"error": str(e)}
            log(f"[{kind}] small_blobs FAILED: {e}")
        if server.proc.poll() is not None:
            log(f"[{kind}] server died:\n{server.log_tail()}")
    finally:
        log(f"[{kind}] stopping")
        server.stop()
    return res


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def render(results: dict, args) -> str:
    size = f"{args.size_mib} MiB" if args.size_mib < 1024 else f"{args.size_mib / 1024:g} GiB"
    fmt_ctx = {"size": size, "chunk": f"{args.chunk_mib} MiB", "conns": args.connections,
               "count": args.small_count, "workers": args.small_workers}
    header = ("workload", "unit", "regd", "reference", "regd/ref", "target", "result")
    rows = []

    def val(kind, key, field="value"):
        entry = results.get(kind, {}).get(key)
        if not entry or field not in entry:
            return None
        return entry[field]

    def num(v, digits=1):
        return "-" if v is None else f"{v:,.{digits}f}"

    for key, label, unit, _, target in ROWS:
        a, b = val("regd", key), val("reference", key)
        ratio = a / b if a is not None and b else None
        res = "-" if ratio is None or target is None else verdict(ratio >= target)
        if "regd" in results and results["regd"].get(key, {}).get("error"):
            res = "FAIL"
        if target is None:
            res = "FAIL" if res == "FAIL" else ""
        rows.append((label.format(**fmt_ctx), unit, num(a), num(b), num(ratio, 2),
                     "" if target is None else f">= {target:g}x", res))
    rows.append(("", "", "", "", "", "", ""))
    for key, label, *_ in ROWS:
        a, b = val("regd", key, "peak_rss_mib"), val("reference", key, "peak_rss_mib")
        ratio = a / b if a is not None and b else None
        target, res = "", ""
        if key in BIG:
            target = f"regd <= {RSS_LIMIT_MIB:g}"
            res = "-" if a is None else verdict(a <= RSS_LIMIT_MIB)
        rows.append(("peak RSS: " + label.format(**fmt_ctx), "MiB", num(a), num(b), num(ratio, 2), target, res))
    a, b = results.get("regd", {}).get("idle_rss_mib"), results.get("reference", {}).get("idle_rss_mib")
    rows.append(("RSS after start (idle)", "MiB", num(a), num(b),
                 num(a / b if a is not None and b else None, 2), "", ""))
    rows.append(("", "", "", "", "", "", ""))
    for key, label, *_ in ROWS:
        a, b = val("regd", key, "server_cpu_s"), val("reference", key, "server_cpu_s")
        rows.append(("server CPU s: " + label.format(**fmt_ctx), "s", num(a, 2), num(b, 2),
                     num(a / b if a is not None and b else None, 2), "", ""))

    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    out = []
    line = lambda r: "  ".join(str(c).ljust(widths[i]) if i < 2 else str(c).rjust(widths[i])
                               for i, c in enumerate(r)).rstrip()
    out.append(line(header))
    out.append("  ".join("-" * wd for wd in widths))
    out.extend(line(r) for r in rows)
    out.append("Throughput/req/s ratios: higher is better. RSS/CPU ratios: lower is better.")
    for kind, res in results.items():
        if "error" in res:
            out.append(f"ERROR {kind}: {res['error']}")
        for key, entry in res.items():
            if isinstance(entry, dict) and "error" in entry:
                out.append(f"ERROR {kind} {key}: {entry['error']}")
    return "\n".join(out)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


def search_benchmark(args) -> dict:
    import search
    results = search.run(only=args.only)
    print(search.render(results))
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
        payload = w.make_payload(os.path.join(tmp, "payload.bin"), args.size_mib * MIB)
        log(f"payload: {args.size_mib} MiB {payload.digest} ({time.perf_counter() - t0:.1f} s)")
        for kind in kinds:
            try:
                results[kind] = bench_server(kind, args, payload, moto)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                traceback.print_exc()
                results[kind] = {"error": str(e)}
    except KeyboardInterrupt:
        log("interrupted; servers stopped and temp dirs removed")
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if moto is not None:
            moto.stop()
    if args.s3:
        print("storage: S3 (moto server, one bucket per registry, storage.redirect.disable: true)")
    print(render(results, args))
    search_results = None
    if args.search:
        try:
            search_results = search_benchmark(args)
        except KeyboardInterrupt:
            log("interrupted; servers stopped and temp dirs removed")
            return 130
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "search": search_results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
