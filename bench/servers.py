"""
Start, watch and stop the two registries under test.

Each server gets its own temp data root and a free loopback port, is started
in its own session (so a terminal Ctrl-C reaches only the benchmark, which
then stops the server itself), and is sampled for RSS and CPU time by a
background thread.
"""

from __future__ import annotations

import atexit
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_BINARY = "/usr/bin/docker-registry"
SAMPLE_INTERVAL = 0.05


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def twistd_path() -> Path:
    # sys.prefix is the venv when run as .venv/bin/python.
    return Path(sys.prefix) / "bin" / "twistd"


def read_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def read_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may contain spaces; fields resume after the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


class RssSampler(threading.Thread):
    """Polls VmRSS every 50 ms; `window()` returns the peak since the last call."""

    def __init__(self, pid: int):
        super().__init__(name=f"rss-{pid}", daemon=True)
        self.pid = pid
        self._lock = threading.Lock()
        self._peak = 0
        self._stop = threading.Event()

    def run(self):
        while not self._stop.is_set():
            rss = read_rss_kib(self.pid)
            if rss is None:
                return
            with self._lock:
                if rss > self._peak:
                    self._peak = rss
            self._stop.wait(SAMPLE_INTERVAL)

    def reset(self):
        current = read_rss_kib(self.pid) or 0
        with self._lock:
            self._peak = current

    def peak_kib(self) -> int:
        current = read_rss_kib(self.pid) or 0
        with self._lock:
            self._peak = max(self._peak, current)
            return self._peak

    def stop(self):
        self._stop.set()


def config_yaml(port: int, root: str, reference: bool, storage: str | None = None) -> str:
    lines = [
        "version: 0.1",
        "log:",
        "  level: error",
    ]
    if reference:
        lines += ["  accesslog:", "    disabled: true"]
    if storage is not None:
        lines += storage.rstrip("\n").split("\n")  # e.g. storage.s3 (bench/run.py --s3)
    else:
        lines += [
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {root}",
            "  delete:",
            "    enabled: true",
        ]
    lines += [
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    return "\n".join(lines) + "\n"


class Server:
    """One registry process with its own temp directory."""

    def __init__(self, kind: str, extra_config: str = "", storage: str | None = None, tls: bool = False):
        if kind not in ("regd", "reference"):
            raise ValueError(kind)
        self.kind = kind
        self.tls = tls  # extra_config holds http.tls; readiness is checked over TLS
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{kind}-")
        self.root = os.path.join(self.tmp, "data")
        os.mkdir(self.root)
        self.port = free_port()
        self.config = os.path.join(self.tmp, "config.yml")
        with open(self.config, "w") as f:
            f.write(config_yaml(self.port, self.root, kind == "reference", storage) + extra_config)
        self.log_path = os.path.join(self.tmp, "server.log")
        self.proc: subprocess.Popen | None = None
        self.sampler: RssSampler | None = None

    def command(self) -> list[str]:
        if self.kind == "reference":
            return [REFERENCE_BINARY, "serve", self.config]
        return [str(twistd_path()), "-n", "--pidfile=", "regd", "--config", self.config]

    def start(self, timeout: float = 60.0):
        env = dict(os.environ)
        env.pop("AWS_CA_BUNDLE", None)  # the reference registry's S3 client cannot use one over plain HTTP
        if self.kind == "regd":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                self.command(), cwd=str(REPO_ROOT) if self.kind == "regd" else self.tmp,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, start_new_session=True)
        finally:
            log.close()
        self._wait_ready(timeout)
        self.sampler = RssSampler(self.proc.pid)
        self.sampler.start()

    def _wait_ready(self, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.tls:
                import ssl
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=2, context=context)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/v2/")
                conn.getresponse().read()
                return
            except OSError:
                time.sleep(0.1)
            finally:
                conn.close()
        raise RuntimeError(f"{self.kind} did not answer GET /v2/ within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self):
        if self.sampler is not None:
            self.sampler.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        set_aside(self.tmp)


# Trees of stopped servers, removed when the benchmark ends (remove_set_aside, or at exit).
_SET_ASIDE: list[str] = []
EMPTIED_ABOVE = 1024 * 1024


def set_aside(tree: str) -> None:
    """
    Empty the large files of a stopped server's tree now and remove the tree
    when the run ends. On ext4 without a journal (this machine's root) the
    kernel skips inodes freed in the last one to six minutes when it
    allocates new ones, looking each up on the way, so removing thousands of
    files between rows made every file creation of the next rows slower:
    the small and webhook pushes spent two to three times the kernel time
    and lost a third of their rate from one round to the next. Truncating
    frees the space and no inode.
    """
    for directory, _subdirs, files in os.walk(tree):
        for name in files:
            path = os.path.join(directory, name)
            try:
                if os.lstat(path).st_size > EMPTIED_ABOVE:
                    os.truncate(path, 0)
            except OSError:
                pass
    _SET_ASIDE.append(tree)


def remove_set_aside() -> None:
    while _SET_ASIDE:
        shutil.rmtree(_SET_ASIDE.pop(), ignore_errors=True)


atexit.register(remove_set_aside)


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
