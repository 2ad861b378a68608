"""
regd on S3 (a moto server started here): the reference registry (Debian's
docker-registry, its S3 driver) and regd serve one bucket, each pulling what
the other pushed; and skopeo, podman and docker pull from regd through the
307 redirect to presigned S3 URLs.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

from tests.support import e2e_http
from tests.support.images import OciLayout, blob_digests, verify_layout_blobs, write_rootfs_tar
from tests.support.processes import Podman, ReferenceRegistryProcess, RegdProcess, require_tool, run
from tests.support.s3 import MotoServer

pytestmark = pytest.mark.e2e

BIG = 12 * 1024 * 1024  # more than one 10 MiB part (regd) and two 5 MiB parts (the reference)


@pytest.fixture(scope="module")
def moto():
    require_tool("docker-registry")
    with MotoServer() as server:  # S3's real 5 MiB smallest part: the reference registry needs it
        yield server


def on_s3(process, server: MotoServer, bucket: str, redirect: bool = True):
    """Point a registry process at the bucket instead of a directory."""
    text = ("version: 0.1\nstorage:\n" + server.yaml(bucket, rootdirectory="/prod")
            + f"  delete:\n    enabled: true\n  redirect:\n    disable: {str(not redirect).lower()}\n"
            + f"http:\n  addr: {process.host}\n")
    process.config_text = lambda: text
    environment = process.environment

    def without_ca_bundle():
        env = environment()
        env.pop("AWS_CA_BUNDLE", None)  # the reference registry cannot use one over plain HTTP
        return env
    process.environment = without_ca_bundle
    return process


@pytest.fixture
def bucket(moto):
    return moto.new_bucket()


@pytest.fixture
def registries(moto, bucket, tmp_path):
    started = []

    def start(kind, redirect=True):
        cls = {"regd": RegdProcess, "reference": ReferenceRegistryProcess}[kind]
        process = on_s3(cls(tmp_path / f"unused-{kind}-{len(started)}", workdir=tmp_path), moto, bucket, redirect)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


def big_layout(directory, tag, seed):
    layout = OciLayout(directory)
    manifest = layout.add_image([{"big.bin": BIG}, {"etc/small": 3_000}, {"opt/mid": 700_000}], seed=seed)
    layout.tag(manifest, tag)
    return manifest


def test_reference_and_regd_serve_one_bucket_both_ways(registries, moto, bucket, tmp_path):
    skopeo = require_tool("skopeo")
    reference = registries("reference")
    regd = registries("regd", redirect=False)  # regd streams from S3 itself here

    pushed_by_reference = tmp_path / "a"
    big_layout(pushed_by_reference, "v1", "ref")
    run([skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{pushed_by_reference}:v1", f"docker://{reference.host}/shared/from-ref:v1"])
    out = tmp_path / "a-out"
    run([skopeo, "copy", "--preserve-digests", "--src-tls-verify=false",
         f"docker://{regd.host}/shared/from-ref:v1", f"oci:{out}:v1"])
    verify_layout_blobs(out)
    assert blob_digests(out) == blob_digests(pushed_by_reference)

    pushed_by_regd = tmp_path / "b"
    big_layout(pushed_by_regd, "v1", "regd")
    run([skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{pushed_by_regd}:v1", f"docker://{regd.host}/shared/from-regd:v1"])
    back = tmp_path / "b-out"
    run([skopeo, "copy", "--preserve-digests", "--src-tls-verify=false",
         f"docker://{reference.host}/shared/from-regd:v1", f"oci:{back}:v1"])
    verify_layout_blobs(back)
    assert blob_digests(back) == blob_digests(pushed_by_regd)

    for registry in (reference, regd):
        catalog, answer = e2e_http.get_json(f"{registry.url}/v2/_catalog")
        assert catalog["repositories"] == ["shared/from-ref", "shared/from-regd"], answer.describe()
    # Same layout in the bucket: blobs and links under <rootdirectory>/docker/registry/v2, no upload left over.
    keys = moto.keys(bucket)
    assert all(k.startswith("prod/docker/registry/v2/") or k.startswith("prod/regd/") for k in keys), keys
    assert not [k for k in keys if "/_uploads/" in k or k.startswith("prod/regd/spool/")], keys
    assert moto.multipart_uploads(bucket) == []


def _no_redirect_get(url):
    class Refuse(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None
    try:
        with urllib.request.build_opener(Refuse).open(url, timeout=30) as answer:
            return answer.status, dict(answer.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)


def test_clients_pull_through_the_presigned_redirect(registries, moto, tmp_path, docker_daemon):
    skopeo = require_tool("skopeo")
    require_tool("podman")
    regd = registries("regd", redirect=True)
    source = tmp_path / "src"
    manifest = big_layout(source, "v1", "redirect")
    run([skopeo, "copy", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{source}:v1", f"docker://{regd.host}/redir/app:v1"])

    layer = json.loads((source / "blobs" / "sha256" / manifest["digest"].split(":")[1]).read_bytes())["layers"][0]
    status, headers = _no_redirect_get(f"{regd.url}/v2/redir/app/blobs/{layer['digest']}")
    assert status == 307, headers
    assert headers["Location"].startswith(f"{moto.endpoint}/"), headers
    assert "X-Amz-Signature=" in headers["Location"]

    out = tmp_path / "skopeo-out"
    run([skopeo, "copy", "--preserve-digests", "--src-tls-verify=false",
         f"docker://{regd.host}/redir/app:v1", f"oci:{out}:v1"])
    verify_layout_blobs(out)
    assert blob_digests(out) == blob_digests(source)

    podman = Podman()
    try:
        podman("pull", "--tls-verify=false", f"{regd.host}/redir/app:v1")
        inspected = json.loads(podman("image", "inspect", f"{regd.host}/redir/app:v1").stdout)[0]
        assert inspected["Digest"] == manifest["digest"]
    finally:
        podman.cleanup()

    # docker pushes (one PATCH streamed into S3 parts) and pulls back through the redirect.
    rootfs = write_rootfs_tar(tmp_path / "rootfs.tar", {"data/random.bin": BIG, "etc/hello": 100}, seed="docker-s3")
    ref = f"{regd.host}/redir/docker:1"
    docker_daemon.docker("import", str(rootfs), ref)
    docker_daemon.docker("push", ref)
    image_id = docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()
    docker_daemon.docker("rmi", ref)
    docker_daemon.docker("pull", ref)
    assert docker_daemon.docker("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip() == image_id
    docker_daemon.docker("rmi", ref)
