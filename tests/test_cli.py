"""
registry:2's command spellings: `garbage-collect CONFIG` (the file as the
last argument) and `serve CONFIG`, which runs the daemon in the foreground.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from tests.support.processes import free_port


def regd(*args):
    """The CLI in a process of its own: each run starts (and stops) a reactor."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    return subprocess.run([sys.executable, "-m", "regd.cli", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def _config(tmp_path, port=5000):
    path = tmp_path / "config.yml"
    path.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'root'}\n"
                    f"http:\n  addr: 127.0.0.1:{port}\n")
    return path


def test_garbage_collect_takes_the_configuration_as_last_argument(tmp_path):
    done = regd("garbage-collect", "--dry-run", str(_config(tmp_path)))
    assert done.returncode == 0 and "0 blobs marked" in done.stdout, done.stderr


def test_configuration_given_twice_differently_is_refused(tmp_path):
    config = _config(tmp_path)
    done = regd("garbage-collect", "--config", str(config), str(tmp_path / "other.yml"))
    assert done.returncode == 2 and "once" in done.stderr
    assert regd("fsck", "--config", str(config), str(config)).returncode == 0


def test_missing_configuration_file_is_one_line(tmp_path):
    done = regd("garbage-collect", str(tmp_path / "absent.yml"))
    assert done.returncode == 1 and "absent.yml" in done.stderr


def test_serve_runs_the_daemon_until_sigterm(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    daemon = subprocess.Popen([sys.executable, "-m", "regd.cli", "serve", str(_config(tmp_path, port))],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=5) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert daemon.poll() is None and time.monotonic() < deadline, daemon.stdout.read().decode()
                time.sleep(0.2)
        assert (tmp_path / "root").is_dir()
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(30)
    log = daemon.stdout.read().decode()
    assert code == 0 and "SIGTERM received" in log, log[-2000:]
