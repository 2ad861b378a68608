"""docker engine pushes and pulls through the registry under test."""

from __future__ import annotations

import json

import pytest

from tests.support.images import build_multilayer_layout
from tests.support.processes import run

pytestmark = pytest.mark.e2e


def test_push_rmi_pull_keeps_image_id(docker_daemon, docker_pushed_image):
    """An imported 3-file image survives push, rmi and pull with the same image id."""
    ref = docker_pushed_image["ref"]
    docker_daemon.docker("rmi", ref)
    gone = docker_daemon.docker("image", "inspect", ref, check=False)
    assert gone.returncode != 0, "rmi left the image behind, so the pull would prove nothing"
    docker_daemon.docker("pull", ref)
    pulled = docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    assert pulled == docker_pushed_image["image_id"]


def test_docker_pulls_multilayer_oci_image(docker_daemon, registry, skopeo, scratch):
    """skopeo pushes a hand-built 3-layer OCI image; docker pulls it and sees the same config and layers."""
    info = build_multilayer_layout(scratch / "layout", "multi")
    ref = f"{registry.host}/demo/layers:1"
    run([skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{scratch / 'layout'}:multi", f"docker://{ref}"])
    docker_daemon.docker("pull", ref)
    image_id = docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    assert image_id == info["config_digest"]
    layers = docker_daemon.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref).stdout
    assert json.loads(layers) == info["diff_ids"]
    docker_daemon.docker("rmi", ref)
