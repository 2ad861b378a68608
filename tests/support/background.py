"""
Slow builds that end-to-end tests need (the Debian package and its lintian report, the container
image's tarball) start as soon as the session knows it will run those tests, and run while the other
tests do; the tests that use them are ordered last (tests/conftest.py) and wait for their build.

The session's main process starts each build once, even when pytest-xdist spreads the tests over
worker processes: a build writes its output and then its exit code into files of a directory every
process knows (xdist passes it to the workers), and a test waits for the exit file. The main process
stops every build (its whole process group) and removes the directory when the session ends.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]

# What each build runs (from the checkout), and which test modules wait for it.
BUILDS = {
    "debian-package": [sys.executable, str(SOURCE / "tests/support/debpackage.py"), str(SOURCE)],
    "image-tarball": ["python3", "image/build.py", "--output", "build/image"],  # what `make image` runs first
}
NEEDED_BY = {"test_image.py": "image-tarball", "test_debian_package.py": "debian-package"}

_directory: Path | None = None
_started: dict[str, subprocess.Popen] = {}


def needed_by(path) -> str | None:
    """The build a test module's tests wait for, if any."""
    return NEEDED_BY.get(Path(str(path)).name)


def configure(directory: str | None) -> str:
    """Where this process finds the builds: made here (the main process) or handed down (a worker)."""
    global _directory
    _directory = Path(directory or tempfile.mkdtemp(prefix="regd-builds-"))
    return str(_directory)


def start_for(nodeids) -> None:
    """Start the builds the given tests need, each once (main process only)."""
    for name in {needed_by(nodeid.split("::")[0]) for nodeid in nodeids} - {None} - set(_started):
        log, done = (shlex.quote(str(path)) for path in _files(name))
        # The exit file appears whole (written aside, then renamed) once the build ended.
        script = f"{shlex.join(BUILDS[name])} >{log} 2>&1; echo $? >{done}.part && mv {done}.part {done}"
        env = dict(os.environ, TMPDIR=str(_directory))
        _started[name] = subprocess.Popen(["sh", "-c", script], cwd=SOURCE, env=env, stdin=subprocess.DEVNULL,
                                          start_new_session=True)


def wait(name: str, timeout: float) -> str:
    """The build's output once it succeeded; a failed or unfinished build fails the test with its output's end."""
    log, done = _files(name)
    deadline = time.monotonic() + timeout
    while not done.exists():
        assert time.monotonic() < deadline, f"{name}: not done after {timeout} s\n{_tail(log)}"
        time.sleep(0.5)
    code = int(done.read_text())
    assert code == 0, f"{name}: {BUILDS[name]} exited with {code}\n{_tail(log)}"
    return log.read_text(errors="replace")


def _files(name: str) -> tuple[Path, Path]:
    """The build's output and, once it ended, its exit code."""
    return _directory / f"{name}.log", _directory / f"{name}.exit"


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-3000:]
    except OSError:
        return f"<no output: the build was not started (no test of {sorted(NEEDED_BY)} was collected?)>"


def finish() -> None:
    """Stop what still runs and remove the directory (main process only)."""
    for process in _started.values():
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()
    _started.clear()
    shutil.rmtree(_directory, ignore_errors=True)
