"""
The pull rows, measured so that both servers meet the same conditions.

One 1 GiB pull from the page cache over loopback lasts about half a second,
and a single sample per server swung by 1.5x between runs of the same code:
the disk's writeback of the gigabytes pushed just before ran during some
pulls and not others, and whichever server went second met a different
machine. So the pull rows are taken apart from the other workloads:

- both servers run at once (each idles while the other is measured) and
  hold the same blob, pushed to each before any pull is timed;
- before every timed pull, os.sync() and a wait until the kernel's Dirty and
  Writeback pages are below SETTLED_KIB, so no writeback runs during a pull;
- then the blob's own file in that server's root is read once by the bench
  (posix_fadvise WILLNEED, then read to the end), so both servers send from
  a warm page cache (on S3 there is no file: moto's memory is the cache);
- rounds alternate which server goes first (A B, B A, A B, ...), and each
  row reports the median with the lowest and highest sample and all of them.
"""

from __future__ import annotations

import os
import statistics
import time

from servers import Measure, Server

MIB = 1 << 20
SETTLED_KIB = 32 * 1024  # Dirty + Writeback below this counts as settled
SETTLE_TIMEOUT = 120.0


def dirty_kib() -> int:
    """Dirty + Writeback from /proc/meminfo, in KiB."""
    total = 0
    with open("/proc/meminfo", "rb") as f:
        for line in f:
            if line.startswith((b"Dirty:", b"Writeback:")):
                total += int(line.split()[1])
    return total


def settle() -> float:
    """sync(2), then wait for writeback to drain; returns the seconds it took."""
    t0 = time.monotonic()
    os.sync()
    while dirty_kib() > SETTLED_KIB and time.monotonic() - t0 < SETTLE_TIMEOUT:
        time.sleep(0.05)
    return time.monotonic() - t0


def blob_file(server: Server, digest: str) -> str | None:
    """The blob's data file in the server's filesystem root (both use the same layout), if it has one."""
    algorithm, hex_ = digest.split(":", 1)
    path = os.path.join(server.root, "docker/registry/v2/blobs", algorithm, hex_[:2], hex_, "data")
    return path if os.path.isfile(path) else None


def warm(path: str | None) -> None:
    """Read the whole file once so its pages are cached."""
    if path is None:
        return
    buf = bytearray(8 * MIB)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        while os.readv(fd, [buf]):
            pass
    finally:
        os.close(fd)


def rounds(servers: dict[str, Server], digest: str, count: int, pull, amount_mib: float, label: str,
           log) -> dict[str, dict]:
    """
    C{count} alternating rounds of C{pull(port)} (seconds) on each server; one result entry per server:
    the median MiB/s as "value", with "min", "max", "spread" ((max - min) / median) and "samples".
    """
    kinds = list(servers)
    samples: dict[str, list[tuple[float, Measure]]] = {kind: [] for kind in kinds}
    files = {kind: blob_file(server, digest) for kind, server in servers.items()}
    for number in range(count):
        order = kinds if number % 2 == 0 else kinds[::-1]
        for kind in order:
            samples[kind].append(sample(servers[kind], kind, f"{label} round {number + 1}/{count}", amount_mib,
                                        pull, log, before=lambda: warm(files[kind])))
    return {kind: summary(taken, label, kind, log) for kind, taken in samples.items()}


def sample(server: Server, kind: str, label: str, amount_mib: float, copy, log, before=None) -> tuple[float, Measure]:
    """
    One timed C{copy(port)} (seconds) of C{amount_mib} on a settled disk (C{before}() between the
    settling and the timing): (MiB/s, Measure), and a progress line.
    """
    waited = settle()
    if before is not None:
        before()
    with Measure(server) as m:
        seconds = copy(server.port)
    log(f"[{kind}] {label}: {amount_mib / seconds:.1f} MiB/s (server cpu {m.cpu:.2f} s, client cpu "
        f"{m.client_cpu:.2f} s; settled in {waited:.1f} s)")
    return amount_mib / seconds, m


def summary(taken: list[tuple[float, Measure]], label: str, kind: str, log) -> dict:
    """One row's entry from its rounds' (MiB/s, Measure) samples: the median as "value", and the spread."""
    values = [value for value, _ in taken]
    median = statistics.median(values)
    entry = {
        "value": median, "unit": "MiB/s", "rounds": len(values),
        "min": min(values), "max": max(values), "spread": (max(values) - min(values)) / median,
        "samples": values,
        "server_cpu_s": statistics.median(m.cpu for _, m in taken),
        "client_cpu_s": statistics.median(m.client_cpu for _, m in taken),
        "peak_rss_mib": max(m.peak_mib for _, m in taken),
    }
    log(f"[{kind}] {label}: median {median:.1f} MiB/s over {len(values)} rounds (min {min(values):.1f}, "
        f"max {max(values):.1f}, spread {entry['spread'] * 100:.0f} %)")
    return entry
