"""
External processes for end-to-end tests: registries (regd or the reference
`docker-registry`) and a private Docker engine.

Every process is started by us, tracked by its pid, and stopped by that pid:
SIGTERM first, SIGKILL if it does not exit in time. Nothing here looks a
process up by name. Each process writes its output to a log file that the e2e
conftest attaches to the report of a failing test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

#: Log files of processes started in this test session, newest last; the e2e
#: conftest prints the tail of each on a test failure.
LIVE_LOGS: dict[str, Path] = {}


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def find_tool(name: str) -> str | None:
    """Like shutil.which, but also looks in sbin dirs that a user PATH lacks."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        candidate = Path(d, name)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require_tool(name: str) -> str:
    """Return the tool's path; skip the test without it, but fail under CI."""
    path = find_tool(name)
    if path is None:
        message = f"required tool {name!r} is not installed"
        if in_ci():
            pytest.fail(message + " (CI=true: missing tools are failures)", pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 200) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def _stop_pid(popen: subprocess.Popen, term_timeout: float) -> int:
    """SIGTERM, wait, then SIGKILL; returns the exit code."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(term_timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)
    return popen.returncode


class ProcessFailed(RuntimeError):
    """A managed process died or never became ready; the message holds its log."""


class RegistryProcess:
    """A registry serving `root` on 127.0.0.1:`port` until stop()."""

    kind = "abstract"

    def __init__(self, root: str | os.PathLike, port: int | None = None, *,
                 workdir: str | os.PathLike | None = None, start_timeout: float = 30.0):
        self.root = Path(root)
        self.port = port or free_port()
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"e2e-{self.kind}-"))
        self.start_timeout = start_timeout
        self.config_path = self.workdir / f"{self.kind}-{self.port}.yml"
        self.log_path = self.workdir / f"{self.kind}-{self.port}.log"
        self.popen: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        """host:port as clients spell it in image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def config_text(self) -> str:
        # The reference registry's YAML; regd reads the same keys.
        return (
            "version: 0.1\n"
            "storage:\n"
            "  filesystem:\n"
            f"    rootdirectory: {self.root}\n"
            "  delete:\n"
            "    enabled: true\n"
            "http:\n"
            f"  addr: {self.host}\n"
        )

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> "RegistryProcess":
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.environment(), cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        LIVE_LOGS[f"{self.kind} registry on {self.host}"] = self.log_path
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ProcessFailed(
                    f"{self.kind} exited with {self.popen.returncode} before serving:\n{tail(self.log_path)}")
            try:
                with urllib.request.urlopen(self.url + "/v2/", timeout=2) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    return
                last = f"HTTP {e.code}"
            except OSError as e:
                last = repr(e)
            time.sleep(0.1)
        raise ProcessFailed(f"{self.kind} on {self.host} not ready after {self.start_timeout}s ({last}):\n"
                            f"{tail(self.log_path)}")

    def stop(self, term_timeout: float = 15.0) -> int | None:
        if self.popen is None:
            return None
        code = _stop_pid(self.popen, term_timeout)
        self.popen = None
        return code

    def logs(self) -> str:
        return tail(self.log_path, 10_000)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class RegdProcess(RegistryProcess):
    """regd under twistd from the running interpreter's virtualenv."""

    kind = "regd"
    source_root = Path(__file__).resolve().parents[2]

    def command(self) -> list[str]:
        twistd = Path(sys.executable).parent / "twistd"
        if not twistd.exists():
            pytest.fail(f"no twistd beside {sys.executable}", pytrace=False)
        return [str(twistd), "-n", "--pidfile=", "regd", "--config", str(self.config_path)]

    def environment(self) -> dict[str, str]:
        # Make the checkout importable (regd and twisted/plugins/regd_plugin.py)
        # whether or not it is installed into the venv.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.source_root), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env


class ReferenceRegistryProcess(RegistryProcess):
    """CNCF distribution 2.8 as packaged by Debian."""

    kind = "reference"

    def command(self) -> list[str]:
        return [require_tool("docker-registry"), "serve", str(self.config_path)]


REGISTRY_KINDS = {"regd": RegdProcess, "reference": ReferenceRegistryProcess}


def target_kind() -> str:
    """Which registry the e2e suite tests: REGD_E2E_TARGET=regd (default) or reference."""
    kind = os.environ.get("REGD_E2E_TARGET", "regd")
    if kind not in REGISTRY_KINDS:
        raise ValueError(f"REGD_E2E_TARGET must be one of {sorted(REGISTRY_KINDS)}, not {kind!r}")
    return kind


def other_kind(kind: str) -> str:
    return "reference" if kind == "regd" else "regd"


class DockerDaemon:
    """A private dockerd (and its containerd) living entirely in `workdir`.

    No iptables, no bridge, vfs storage: it leaves the host's network and
    storage alone. Registries on 127.0.0.0/8 count as insecure by default, so
    plain HTTP pushes and pulls work without daemon.json.
    """

    def __init__(self, workdir: str | os.PathLike | None = None, start_timeout: float = 60.0):
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="e2e-dockerd-"))
        self.data_root = self.workdir / "root"
        self.exec_root = self.workdir / "exec"
        self.socket = self.workdir / "docker.sock"
        self.pidfile = self.workdir / "dockerd.pid"
        self.log_path = self.workdir / "dockerd.log"
        self.start_timeout = start_timeout
        self.popen: subprocess.Popen | None = None

    @property
    def containerd_socket(self) -> Path:
        return self.exec_root / "containerd" / "containerd.sock"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = f"unix://{self.socket}"
        env["DOCKER_CONFIG"] = str(self.workdir / "client-config")  # keep ~/.docker untouched
        return env

    def start(self) -> "DockerDaemon":
        dockerd = require_tool("dockerd")
        require_tool("docker")
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                [dockerd, "--iptables=false", "--ip6tables=false", "--bridge=none",
                 "--storage-driver=vfs", "--data-root", str(self.data_root),
                 "--exec-root", str(self.exec_root), "-H", f"unix://{self.socket}",
                 "--pidfile", str(self.pidfile)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            log.close()
        LIVE_LOGS["dockerd"] = self.log_path
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.popen.poll() is not None:
                raise ProcessFailed(f"dockerd exited with {self.popen.returncode}:\n{tail(self.log_path)}")
            probe = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                                   env=self.env, capture_output=True, text=True)
            if probe.returncode == 0 and self.containerd_socket.exists():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ProcessFailed(f"dockerd not ready after {self.start_timeout}s:\n{tail(self.log_path)}")
            time.sleep(0.2)

    def docker(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        return run([require_tool("docker"), *args], env=self.env, check=check, timeout=timeout)

    def ctr(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        return run([require_tool("ctr"), "--address", str(self.containerd_socket), *args],
                   check=check, timeout=timeout)

    def _containerd_pid(self) -> int | None:
        try:
            return int((self.exec_root / "containerd" / "containerd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.popen is None:
            return
        containerd_pid = self._containerd_pid()
        _stop_pid(self.popen, 30)
        self.popen = None
        # dockerd stops the containerd it spawned; if dockerd had to be killed,
        # that child may survive: stop it by the pid it recorded.
        if containerd_pid is not None:
            _kill_pid_if_alive(containerd_pid)
        _unmount_below(self.workdir)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


def _kill_pid_if_alive(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _unmount_below(directory: Path) -> None:
    """Unmount anything a daemon left mounted under our temp dir, deepest first."""
    prefix = str(directory.resolve()) + "/"
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
    except OSError:
        return
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def run(argv: list[str], *, env: dict | None = None, check: bool = True, timeout: float = 180,
        cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run a client command; on failure raise with its full output in the message."""
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise AssertionError(
            f"command failed ({result.returncode}): {' '.join(map(str, argv))}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")
    return result


class Podman:
    """podman with all state (vfs storage, runroot, tmp) private to a short temp dir.

    podman refuses a runroot longer than 50 characters, so the directory is
    made directly under the system temp dir rather than under pytest's tmp_path.
    """

    def __init__(self):
        self.workdir = Path(tempfile.mkdtemp(prefix="e2e-pod-"))

    def command(self) -> list[str]:
        return [require_tool("podman"), "--storage-driver=vfs", "--root", str(self.workdir / "root"),
                "--runroot", str(self.workdir / "run"), "--tmpdir", str(self.workdir / "tmp"),
                "--events-backend=file", "--cgroup-manager=cgroupfs"]

    def __call__(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        return run([*self.command(), *args], check=check, timeout=timeout)

    def cleanup(self) -> None:
        _unmount_below(self.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)
