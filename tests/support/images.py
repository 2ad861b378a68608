"""
Test images built without a network.

- write_rootfs_tar: a tar of random files, for `docker import` (one layer).
- OciLayout: an OCI image layout directory written by hand (oci-layout,
  index.json, blobs/sha256/...), for shapes `docker import` cannot make:
  several gzip'd layers, image indexes, artifacts with artifactType and subject.
  skopeo copies such a layout into a registry with `oci:DIR:TAG`.

Content is random but seeded, and tar/gzip headers carry fixed times, so the
same call builds byte-identical blobs (stable digests across runs).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
FIXED_TIME = "2024-01-01T00:00:00Z"
TEST_ARTIFACT_TYPE = "application/vnd.regd.test.signature.v1"


def random_bytes(size: int, seed: int | str) -> bytes:
    return random.Random(seed).randbytes(size)


def rootfs_tar_bytes(files: dict[str, int], seed: int | str = 0) -> bytes:
    """A tar holding each name -> size as a file of random bytes (plus parent dirs)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for name in sorted(files):
            parts = name.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
            data = random_bytes(files[name], f"{seed}:{name}")
            info = tarfile.TarInfo(name.strip("/"))
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_rootfs_tar(path: str | Path, files: dict[str, int], seed: int | str = 0) -> Path:
    path = Path(path)
    path.write_bytes(rootfs_tar_bytes(files, seed))
    return path


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class OciLayout:
    """Writes an OCI image layout; every add_* returns the new content's descriptor."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.blob_dir = self.directory / "blobs" / "sha256"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        (self.directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.refs: list[dict] = []

    def add_blob(self, data: bytes, media_type: str, **extra) -> dict:
        digest = sha256_digest(data)
        (self.blob_dir / digest.split(":", 1)[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def add_layer(self, files: dict[str, int], seed: int | str) -> tuple[dict, str]:
        """A gzip'd tar layer; returns (descriptor, diff_id)."""
        tar = rootfs_tar_bytes(files, seed)
        compressed = gzip.compress(tar, compresslevel=1, mtime=0)
        return self.add_blob(compressed, OCI_LAYER_GZIP), sha256_digest(tar)

    def add_image(self, layers: list[dict[str, int]], *, seed: int | str = 0,
                  os_name: str = "linux", architecture: str = "amd64") -> dict:
        """An image manifest with one gzip'd layer per files-dict, plus its config."""
        descriptors, diff_ids = [], []
        for i, files in enumerate(layers):
            d, diff_id = self.add_layer(files, f"{seed}:{architecture}:{i}")
            descriptors.append(d)
            diff_ids.append(diff_id)
        config = {
            "created": FIXED_TIME,
            "architecture": architecture,
            "os": os_name,
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": FIXED_TIME, "created_by": f"regd e2e layer {i}"}
                        for i in range(len(diff_ids))],
        }
        config_desc = self.add_blob(canonical_json(config), OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": config_desc, "layers": descriptors}
        return self.add_blob(canonical_json(manifest), OCI_MANIFEST,
                             platform={"architecture": architecture, "os": os_name})

    def add_index(self, manifests: list[dict]) -> dict:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self.add_blob(canonical_json(index), OCI_INDEX)

    def add_artifact(self, subject: dict, *, payload: bytes = b"signed by the regd e2e suite\n",
                     artifact_type: str = TEST_ARTIFACT_TYPE) -> dict:
        """An OCI 1.1 artifact: image manifest with artifactType, empty config and a subject."""
        empty = self.add_blob(b"{}", OCI_EMPTY)
        layer = self.add_blob(payload, artifact_type)
        subject = {k: subject[k] for k in ("mediaType", "digest", "size")}
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
                    "config": empty, "layers": [layer], "subject": subject,
                    "annotations": {"org.opencontainers.image.created": FIXED_TIME}}
        return self.add_blob(canonical_json(manifest), OCI_MANIFEST, artifactType=artifact_type)

    def tag(self, descriptor: dict, name: str) -> None:
        """Name a top-level descriptor in index.json (skopeo's oci:DIR:NAME)."""
        entry = {k: v for k, v in descriptor.items() if k != "platform"}
        entry["annotations"] = {REF_NAME: name}
        self.refs.append(entry)
        self.write_index()

    def write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs}
        (self.directory / "index.json").write_text(json.dumps(index, indent=1))


def blob_digests(layout_dir: str | Path) -> set[str]:
    """Digests of every blob in a layout (as files under blobs/sha256)."""
    return {"sha256:" + p.name for p in (Path(layout_dir) / "blobs" / "sha256").iterdir()}


def verify_layout_blobs(layout_dir: str | Path) -> None:
    """Each blob's bytes hash to its file name; raises AssertionError if not."""
    for p in (Path(layout_dir) / "blobs" / "sha256").iterdir():
        actual = hashlib.sha256(p.read_bytes()).hexdigest()
        assert actual == p.name, f"blob {p} hashes to {actual}"


def build_multilayer_layout(directory: str | Path, tag: str = "multi", *, seed: int | str = "multi") -> dict:
    """A single-platform image with three layers of a few hundred KiB."""
    layout = OciLayout(directory)
    manifest = layout.add_image(
        [{"a/one.bin": 300_000}, {"b/two.bin": 200_000, "b/three.bin": 50_000}, {"c/four.bin": 400_000}],
        seed=seed)
    layout.tag(manifest, tag)
    config = json.loads((layout.blob_dir / _hex(_manifest(layout, manifest)["config"]["digest"])).read_bytes())
    return {"layout": layout, "manifest": manifest, "config_digest": _manifest(layout, manifest)["config"]["digest"],
            "diff_ids": config["rootfs"]["diff_ids"]}


def build_index_with_artifact(directory: str | Path, *, index_tag: str = "multiarch",
                              artifact_tag: str = "sig", seed: int | str = "index") -> dict:
    """An image index over amd64+arm64 manifests, plus an artifact whose subject is the amd64 manifest."""
    layout = OciLayout(directory)
    amd64 = layout.add_image([{"bin/app": 120_000}, {"etc/conf": 2_000}], seed=seed, architecture="amd64")
    arm64 = layout.add_image([{"bin/app": 110_000}, {"etc/conf": 2_000}], seed=seed, architecture="arm64")
    index = layout.add_index([amd64, arm64])
    artifact = layout.add_artifact(amd64)
    layout.tag(index, index_tag)
    layout.tag(artifact, artifact_tag)
    return {"layout": layout, "index": index, "amd64": amd64, "arm64": arm64, "artifact": artifact}


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def _manifest(layout: OciLayout, descriptor: dict) -> dict:
    return json.loads((layout.blob_dir / _hex(descriptor["digest"])).read_bytes())


def read_blob_json(layout_dir: str | Path, digest: str) -> dict:
    return json.loads((Path(layout_dir) / "blobs" / "sha256" / _hex(digest)).read_bytes())
