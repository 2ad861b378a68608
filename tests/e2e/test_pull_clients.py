"""podman and containerd pull what the docker engine pushed."""

from __future__ import annotations

import json

import pytest

from tests.support.processes import Podman, require_tool

pytestmark = pytest.mark.e2e


@pytest.fixture
def podman():
    require_tool("podman")
    p = Podman()
    yield p
    p.cleanup()


def test_podman_pull(podman, docker_pushed_image):
    ref = docker_pushed_image["ref"]
    podman("pull", "--tls-verify=false", ref)
    inspected = json.loads(podman("image", "inspect", ref).stdout)[0]
    assert inspected["Digest"] == docker_pushed_image["manifest_digest"]
    assert "sha256:" + inspected["Id"] == docker_pushed_image["image_id"]


def test_containerd_pull(docker_daemon, docker_pushed_image):
    require_tool("ctr")
    ref = docker_pushed_image["ref"]
    docker_daemon.ctr("-n", "test", "images", "pull", "--plain-http", ref)
    try:
        listed = docker_daemon.ctr("-n", "test", "images", "ls").stdout.splitlines()
        rows = [line.split() for line in listed[1:] if line.split() and line.split()[0] == ref]
        assert rows, listed
        assert rows[0][2] == docker_pushed_image["manifest_digest"], listed
        # The content store checked every blob's digest while pulling; make sure it kept them all.
        check = docker_daemon.ctr("-n", "test", "images", "check").stdout
        assert "complete" in next(line for line in check.splitlines() if ref in line), check
    finally:
        docker_daemon.ctr("-n", "test", "images", "rm", ref, check=False)
