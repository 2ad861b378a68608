"""The real Docker engine's `docker search` against regd."""

from __future__ import annotations

import pytest

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
