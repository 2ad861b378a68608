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


def copy_layout_in(skopeo, layout, ref: str) -> None:
    run([skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false", f"oci:{layout}:multi", f"docker://{ref}"])


def pull_and_check(docker_daemon, ref: str, info: dict) -> None:
    """docker pull, then the image has the layout's config digest as its id and its layers."""
    docker_daemon.docker("pull", ref)
    image_id = docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    assert image_id == info["config_digest"]
    layers = docker_daemon.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", ref).stdout
    assert json.loads(layers) == info["diff_ids"]


def test_docker_pulls_multilayer_oci_image(docker_daemon, registry, skopeo, scratch):
    """skopeo pushes a hand-built 3-layer OCI image; docker pulls it and sees the same config and layers."""
    info = build_multilayer_layout(scratch / "layout", "multi")
    ref = f"{registry.host}/demo/layers:1"
    copy_layout_in(skopeo, scratch / "layout", ref)
    pull_and_check(docker_daemon, ref, info)
    docker_daemon.docker("rmi", ref)


def test_docker_pushes_multilayer_image_with_cross_repo_mounts(docker_daemon, registry, skopeo, scratch):
    """docker push of a 3-layer image to a second repository (docker mounts the layers), rmi, pull."""
    info = build_multilayer_layout(scratch / "layout", "multi", seed="docker-push")
    source = f"{registry.host}/demo/source:1"
    copy_layout_in(skopeo, scratch / "layout", source)
    docker_daemon.docker("pull", source)
    target = f"{registry.host}/demo/copy/of/layers:2"
    docker_daemon.docker("tag", source, target)
    pushed = docker_daemon.docker("push", target).stdout
    assert "Mounted from demo/source" in pushed, pushed
    docker_daemon.docker("rmi", source, target)
    pull_and_check(docker_daemon, target, info)
    docker_daemon.docker("rmi", target)
