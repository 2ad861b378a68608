"""
The Debian package: builds from a clean copy of the checkout, lintian finds no
error, the unit verifies, and the installed package's ExecStart command line,
run as the service user, pushes and pulls.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import background, e2e_http
from tests.support.processes import free_port, require_tool

pytestmark = pytest.mark.e2e

UNIT = Path("/lib/systemd/system/regd.service")


def run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=kwargs.pop("timeout", 900), **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def package():
    """(the package, lintian's report): built by tests/support/debpackage.py from the session's start."""
    for tool in ("dpkg-buildpackage", "lintian", "systemd-analyze", "dh_virtualenv", "runuser"):
        require_tool(tool)
    if os.geteuid() != 0:
        pytest.skip("installing a package needs root") if os.environ.get("CI") != "true" else pytest.fail("not root")
    built = dict(re.findall(r"^(package|lintian report): (.+)$", background.wait("debian-package", 1800), re.M))
    yield Path(built["package"]), Path(built["lintian report"])
    subprocess.run(["dpkg", "--purge", "regd"], capture_output=True, timeout=300)


def test_lintian_reports_no_errors(package):
    _, report = package
    errors = [line for line in report.read_text().splitlines() if line.startswith("E:")]
    assert errors == [], "\n".join(errors)


def test_installed_service_pushes_and_pulls(package):
    deb, _ = package
    run(["dpkg", "-i", str(deb)], timeout=300)
    run(["systemd-analyze", "verify", str(UNIT)])
    unit = UNIT.read_text()
    assert re.search(r"^User=regd$", unit, re.M) and "ProtectSystem=strict" in unit
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in unit and "NoNewPrivileges=yes" in unit
    assert Path("/etc/regd/regd.yml").exists()
    assert "/etc/regd/regd.yml" in Path("/var/lib/dpkg/info/regd.conffiles").read_text()
    command = re.search(r"^ExecStart=(.+)$", unit, re.M).group(1).split()
    port = free_port()
    env = dict(os.environ, REGISTRY_HTTP_ADDR=f"127.0.0.1:{port}")
    env.pop("PYTHONPATH", None)
    daemon = subprocess.Popen(["runuser", "-u", "regd", "--", *command], cwd="/var/lib/regd", env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if e2e_http.get(base + "/v2/").status == 200:
                    break
            except OSError:
                pass
            assert daemon.poll() is None and time.monotonic() < deadline, daemon.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        data = os.urandom(100_000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        answer = e2e_http.request("POST", f"{base}/v2/pkg/test/blobs/uploads/?digest={digest}", data=data)
        assert answer.status == 201, answer.describe()
        assert e2e_http.get(f"{base}/v2/pkg/test/blobs/{digest}").body == data
        stored = Path("/var/lib/regd/docker/registry/v2/blobs/sha256") / digest[7:9] / digest[7:] / "data"
        assert stored.stat().st_uid == int(run(["id", "-u", "regd"]).stdout)
    finally:
        os.kill(daemon.pid, 15)  # runuser passes it on to twistd
        daemon.wait(60)
    log = daemon.stdout.read().decode()
    assert "SIGTERM received: stopping cleanly" in log and "Server Shut Down." in log, log[-3000:]
    # The README's maintenance commands work as written once the package is installed.
    assert os.path.realpath("/usr/bin/regd") == "/usr/lib/regd/bin/regd"
    assert "--delete-untagged" in run(["/usr/bin/regd", "garbage-collect", "--help"], env=env).stdout
    as_service = ["runuser", "-u", "regd", "--", "/usr/bin/regd"]
    run([*as_service, "fsck", "/etc/regd/regd.yml"], cwd="/var/lib/regd", env=env)
    collected = run([*as_service, "garbage-collect", "--dry-run", "/etc/regd/regd.yml"], cwd="/var/lib/regd", env=env)
    assert "blob" in collected.stdout + collected.stderr
