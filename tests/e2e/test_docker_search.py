"""The real Docker engine's `docker search` against regd."""

from __future__ import annotations

import pytest

from tests.e2e.test_tls_auth import tls_setup  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e


def test_docker_search_lists_pushed_repository(docker_daemon, docker_pushed_image, registry, target):
    """`docker search HOST:PORT/TERM` pings /v1/_ping, calls /v1/search and prints the matches."""
    if target != "regd":
        pytest.skip("search is regd's own addition; the reference registry has none")
    out = docker_daemon.docker("search", f"{registry.host}/IMG").stdout
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "DESCRIPTION"], out
    assert [line.split()[0] for line in lines[1:]] == ["demo/img"], out
    out = docker_daemon.docker("search", "--limit", "1", f"{registry.host}/no-such-thing").stdout
    assert len(out.splitlines()) == 1, out


def test_docker_search_over_tls_after_login(docker_daemon, tls_setup):
    """Over TLS the engine sends the login's basic credentials with its search; anonymous is refused."""
    from tests.e2e.test_tls_auth import TLSRegd, trust
    from tests.support.images import write_rootfs_tar
    pki, htpasswd, tmp, started, dirs = tls_setup
    registry = TLSRegd(tmp / "root", tmp, pki, htpasswd)
    started.append(registry)
    registry.start()
    trust(registry, dirs)
    ref = f"{registry.host}/team/searchable:1"
    docker_daemon.docker("import", "--change", 'LABEL org.opencontainers.image.description="Searchable demo"',
                         str(write_rootfs_tar(tmp / "rootfs.tar", {"a": 5_000}, seed="search")), ref)
    docker_daemon.docker("login", "-u", "alice", "-p", "wonderland", registry.host)
    try:
        docker_daemon.docker("push", ref)
        out = docker_daemon.docker("search", f"{registry.host}/SEARCHABLE").stdout
        assert [line.split()[0] for line in out.splitlines()[1:]] == ["team/searchable"], out
        assert "Searchable demo" in out, out
    finally:
        docker_daemon.docker("logout", registry.host)
    anonymous = docker_daemon.docker("search", f"{registry.host}/searchable", check=False)
    assert anonymous.returncode != 0 or "team/searchable" not in anonymous.stdout, anonymous.stdout
    docker_daemon.docker("rmi", ref)
