"""
Fixtures for end-to-end tests with real clients (docker, containerd's ctr,
podman, skopeo) against a registry run as a separate process.

REGD_E2E_TARGET=regd (default) tests regd under twistd; REGD_E2E_TARGET=reference
runs the same tests against Debian's `docker-registry` (CNCF distribution 2.8),
which validates the tests themselves.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support import processes
from tests.support.images import write_rootfs_tar
from tests.support.processes import DockerDaemon, REGISTRY_KINDS, require_tool, target_kind

_LOG_LINES = 200


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end tests that run real registry clients and daemons")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


def _log_offsets() -> dict[str, int]:
    offsets = {}
    for label, path in processes.LIVE_LOGS.items():
        try:
            offsets[label] = path.stat().st_size
        except OSError:
            offsets[label] = 0
    return offsets


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item._e2e_log_offsets = _log_offsets()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach what each process logged while this test ran."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    offsets = getattr(item, "_e2e_log_offsets", {})
    for label, path in list(processes.LIVE_LOGS.items()):
        try:
            with open(path, "rb") as f:
                f.seek(offsets.get(label, 0))
                text = f.read().decode(errors="replace")
        except OSError as e:
            text = f"<cannot read {path}: {e}>"
        lines = text.splitlines()
        if not lines:
            continue
        if len(lines) > _LOG_LINES:
            lines = [f"... {len(lines) - _LOG_LINES} earlier lines in {path}"] + lines[-_LOG_LINES:]
        report.sections.append((f"log of {label} ({path})", "\n".join(lines)))


@pytest.fixture(scope="session")
def target() -> str:
    return target_kind()


@pytest.fixture(scope="session")
def e2e_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def start_registry(e2e_tmp):
    """Factory: start_registry(kind, root) -> a running RegistryProcess, stopped at session end."""
    started = []

    def start(kind: str, root: Path | None = None):
        if kind == "reference":
            require_tool("docker-registry")
        root = root or Path(tempfile.mkdtemp(prefix=f"{kind}-root-", dir=e2e_tmp))
        proc = REGISTRY_KINDS[kind](root, workdir=e2e_tmp)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def registry(target, start_registry):
    """The registry under test, shared by the whole session (tests use distinct repositories)."""
    return start_registry(target)


@pytest.fixture(scope="session")
def docker_daemon():
    require_tool("dockerd")
    require_tool("docker")
    daemon = DockerDaemon(tempfile.mkdtemp(prefix="e2e-dockerd-"))
    daemon.start()
    yield daemon
    daemon.cleanup()


@pytest.fixture(scope="session")
def skopeo() -> str:
    return require_tool("skopeo")


@pytest.fixture(scope="session")
def docker_pushed_image(docker_daemon, registry, e2e_tmp):
    """A three-file image `docker import`ed and pushed to demo/img:1 (shared by the pull tests)."""
    ref = f"{registry.host}/demo/img:1"
    tar = write_rootfs_tar(e2e_tmp / "rootfs.tar",
                           {"etc/motd": 1_000, "usr/share/data.bin": 700_000, "opt/app/blob": 300_000},
                           seed="docker-import")
    docker_daemon.docker("import", str(tar), ref)
    image_id = _docker_inspect(docker_daemon, ref, "{{.Id}}")
    docker_daemon.docker("push", ref)
    repo_digest = _docker_inspect(docker_daemon, ref, "{{json .RepoDigests}}")
    digest = next(d for d in json.loads(repo_digest) if d.startswith(registry.host))
    return {"ref": ref, "image_id": image_id, "manifest_digest": digest.split("@", 1)[1]}


def _docker_inspect(daemon, ref, fmt) -> str:
    return daemon.docker("image", "inspect", "--format", fmt, ref).stdout.strip()


@pytest.fixture
def scratch(tmp_path) -> Path:
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)
