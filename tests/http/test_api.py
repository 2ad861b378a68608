"""The Distribution API over real loopback sockets."""

from __future__ import annotations

import hashlib
import json
import os

from twisted.trial.unittest import TestCase

from regd.http.responses import UrlBuilder
from tests.support.server import RegistryServer, errors_of, header, simple_image

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


class BaseTests(TestCase):
    async def test_version_check(self):
        server = RegistryServer(self)
        response, body = await server.request("GET", "/v2/")
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(body), {})
        self.assertEqual(header(response, "Docker-Distribution-API-Version"), "registry/2.0")
        self.assertTrue(header(response, "X-Request-Id"))

    async def test_root_health(self):
        server = RegistryServer(self)
        response, _ = await server.request("GET", "/")
        self.assertEqual(response.code, 200)

    async def test_unknown_path_json_404_with_version_header(self):
        server = RegistryServer(self)
        response, body = await server.request("GET", "/v2/foo/bar/baz")
        self.assertEqual(response.code, 404)
        self.assertEqual(errors_of(body), ["NOT_FOUND"])
        self.assertEqual(header(response, "Docker-Distribution-API-Version"), "registry/2.0")

    async def test_invalid_names_are_400_never_outside_root(self):
        server = RegistryServer(self)
        for name in ["../etc", "a/../b", "UPPER", "a//b", "_private", "a/_b"]:
            response, body = await server.request("GET", f"/v2/{name}/tags/list")
            self.assertIn(response.code, (400, 404), name)
            if response.code == 400:
                self.assertEqual(errors_of(body), ["NAME_INVALID"], name)
        response, body = await server.request("POST", "/v2/a/../../x/blobs/uploads/")
        self.assertIn(response.code, (400, 404))
        self.assertFalse(os.path.exists(os.path.join(server.root, "..", "x")))

    async def test_method_not_allowed(self):
        server = RegistryServer(self)
        response, body = await server.request("POST", "/v2/demo/manifests/latest")
        self.assertEqual(response.code, 405)
        self.assertEqual(errors_of(body), ["UNSUPPORTED"])


class BlobTests(TestCase):
    async def test_monolithic_upload_then_get_head_range(self):
        server = RegistryServer(self)
        data = os.urandom(300_000)  # above the spool threshold
        digest = await server.push_blob("demo/app", data)
        response, body = await server.request("GET", f"/v2/demo/app/blobs/{digest}")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, data)
        self.assertEqual(header(response, "Docker-Content-Digest"), digest)
        self.assertEqual(response.length, len(data))
        status, headers = await server.raw_head(f"/v2/demo/app/blobs/{digest}")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-length"], str(len(data)))
        self.assertEqual(headers["docker-content-digest"], digest)
        response, body = await server.request("GET", f"/v2/demo/app/blobs/{digest}",
                                              headers={"Range": "bytes=100-199"})
        self.assertEqual(response.code, 206)
        self.assertEqual(body, data[100:200])
        self.assertEqual(header(response, "Content-Range"), f"bytes 100-199/{len(data)}")
        response, body = await server.request("GET", f"/v2/demo/app/blobs/{digest}",
                                              headers={"Range": f"bytes={len(data)}-"})
        self.assertEqual(response.code, 416)
        self.assertEqual(header(response, "Content-Range"), f"bytes */{len(data)}")

    async def test_single_request_upload_with_digest(self):
        server = RegistryServer(self)
        data = b"x" * 5000
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response, _ = await server.request("POST", f"/v2/demo/blobs/uploads/?digest={digest}", data)
        self.assertEqual(response.code, 201)
        self.assertTrue(header(response, "Location").endswith(f"/v2/demo/blobs/{digest}"))
        response, body = await server.request("GET", f"/v2/demo/blobs/{digest}")
        self.assertEqual(body, data)

    async def test_single_request_wrong_digest_is_refused_and_invisible(self):
        server = RegistryServer(self)
        data = os.urandom(200_000)
        wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
        response, body = await server.request("POST", f"/v2/demo/blobs/uploads/?digest={wrong}", data)
        self.assertEqual(response.code, 400)
        self.assertEqual(errors_of(body), ["DIGEST_INVALID"])
        response, _ = await server.request("HEAD", f"/v2/demo/blobs/{wrong}")
        self.assertEqual(response.code, 404)
        spool = os.path.join(server.root, "regd", "spool")
        self.assertEqual(os.listdir(spool) if os.path.isdir(spool) else [], [])

    async def test_chunked_upload_and_out_of_order_chunk(self):
        server = RegistryServer(self)
        data = os.urandom(250_000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response, _ = await server.request("POST", "/v2/demo/blobs/uploads/")
        location = header(response, "Location")
        self.assertEqual(header(response, "Range"), "0-0")
        upload_id = header(response, "Docker-Upload-UUID")
        self.assertIn(upload_id, location)
        chunks = [data[:100_000], data[100_000:200_000], data[200_000:]]
        offset = 0
        for chunk in chunks:
            response, _ = await server.request(
                "PATCH", location, chunk,
                {"Content-Range": f"{offset}-{offset + len(chunk) - 1}", "Content-Type": "application/octet-stream"})
            self.assertEqual(response.code, 202)
            offset += len(chunk)
            self.assertEqual(header(response, "Range"), f"0-{offset - 1}")
            if offset == 100_000:
                # A chunk that does not continue where the data ends: 416.
                bad, body = await server.request("PATCH", location, b"zz", {"Content-Range": "5-6"})
                self.assertEqual(bad.code, 416)
                self.assertEqual(errors_of(body), ["RANGE_INVALID"])
        response, _ = await server.request("GET", location)
        self.assertEqual(response.code, 204)
        self.assertEqual(header(response, "Range"), f"0-{len(data) - 1}")
        response, body = await server.request("PUT", f"{location}?digest={digest}")
        self.assertEqual(response.code, 201, body)
        response, body = await server.request("GET", f"/v2/demo/blobs/{digest}")
        self.assertEqual(body, data)
        response, _ = await server.request("GET", location)
        self.assertEqual(response.code, 404)

    async def test_streamed_patch_then_put_with_final_body(self):
        server = RegistryServer(self)
        data = os.urandom(150_000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response, _ = await server.request("POST", "/v2/demo/blobs/uploads/")
        location = header(response, "Location")
        response, _ = await server.request("PATCH", location, data[:70_000])
        self.assertEqual(response.code, 202)
        response, body = await server.request("PUT", f"{location}?digest={digest}", data[70_000:])
        self.assertEqual(response.code, 201, body)
        _, body = await server.request("GET", f"/v2/demo/blobs/{digest}")
        self.assertEqual(body, data)

    async def test_put_with_wrong_digest(self):
        server = RegistryServer(self)
        response, _ = await server.request("POST", "/v2/demo/blobs/uploads/")
        location = header(response, "Location")
        wrong = "sha256:" + "0" * 64
        response, body = await server.request("PUT", f"{location}?digest={wrong}", b"abc")
        self.assertEqual(response.code, 400)
        self.assertEqual(errors_of(body), ["DIGEST_INVALID"])
        response, _ = await server.request("HEAD", f"/v2/demo/blobs/{wrong}")
        self.assertEqual(response.code, 404)

    async def test_sha512_digest(self):
        server = RegistryServer(self)
        data = b"sha512 content"
        digest = "sha512:" + hashlib.sha512(data).hexdigest()
        response, _ = await server.request("POST", "/v2/demo/blobs/uploads/")
        location = header(response, "Location")
        response, body = await server.request("PUT", f"{location}?digest={digest}", data)
        self.assertEqual(response.code, 201, body)
        _, body = await server.request("GET", f"/v2/demo/blobs/{digest}")
        self.assertEqual(body, data)

    async def test_bad_digest_and_unknown_upload(self):
        server = RegistryServer(self)
        response, body = await server.request("GET", "/v2/demo/blobs/sha256:zz")
        self.assertEqual((response.code, errors_of(body)), (400, ["DIGEST_INVALID"]))
        response, body = await server.request("GET", "/v2/demo/blobs/uploads/not-a-uuid")
        self.assertEqual((response.code, errors_of(body)), (404, ["BLOB_UPLOAD_UNKNOWN"]))
        response, body = await server.request(
            "PATCH", "/v2/demo/blobs/uploads/3b1c8b3e-1111-4a5b-9c1d-000000000000", b"abc")
        self.assertEqual((response.code, errors_of(body)), (404, ["BLOB_UPLOAD_UNKNOWN"]))

    async def test_cancel_upload(self):
        server = RegistryServer(self)
        response, _ = await server.request("POST", "/v2/demo/blobs/uploads/")
        location = header(response, "Location")
        response, _ = await server.request("DELETE", location)
        self.assertEqual(response.code, 204)
        response, _ = await server.request("GET", location)
        self.assertEqual(response.code, 404)

    async def test_cross_repository_mount(self):
        server = RegistryServer(self)
        digest = await server.push_blob("src/repo", b"shared layer")
        response, _ = await server.request("POST", f"/v2/dst/blobs/uploads/?mount={digest}&from=src/repo")
        self.assertEqual(response.code, 201)
        self.assertEqual(header(response, "Docker-Content-Digest"), digest)
        _, body = await server.request("GET", f"/v2/dst/blobs/{digest}")
        self.assertEqual(body, b"shared layer")
        self.assertIn(("mount", "blob", "dst"), server.listener.actions())
        # A source without the blob falls back to a new upload session.
        response, _ = await server.request("POST", f"/v2/dst2/blobs/uploads/?mount={digest}&from=nowhere")
        self.assertEqual(response.code, 202)
        self.assertTrue(header(response, "Docker-Upload-UUID"))

    async def test_blob_not_linked_in_other_repo(self):
        server = RegistryServer(self)
        digest = await server.push_blob("one", b"private")
        response, body = await server.request("GET", f"/v2/two/blobs/{digest}")
        self.assertEqual((response.code, errors_of(body)), (404, ["BLOB_UNKNOWN"]))

    async def test_delete_blob(self):
        server = RegistryServer(self)
        digest = await server.push_blob("demo", b"to delete")
        response, _ = await server.request("DELETE", f"/v2/demo/blobs/{digest}")
        self.assertEqual(response.code, 202)
        response, _ = await server.request("HEAD", f"/v2/demo/blobs/{digest}")
        self.assertEqual(response.code, 404)

    async def test_delete_disabled(self):
        server = RegistryServer(self, delete_enabled=False)
        digest = await server.push_blob("demo", b"keep")
        response, body = await server.request("DELETE", f"/v2/demo/blobs/{digest}")
        self.assertEqual((response.code, errors_of(body)), (405, ["UNSUPPORTED"]))

    async def test_readonly_refuses_writes_allows_reads(self):
        server = RegistryServer(self)
        digest = await server.push_blob("demo", b"ro")
        server.registry.readonly = True
        response, body = await server.request("POST", "/v2/demo/blobs/uploads/")
        self.assertEqual((response.code, errors_of(body)), (405, ["UNSUPPORTED"]))
        response, body = await server.request("GET", f"/v2/demo/blobs/{digest}")
        self.assertEqual((response.code, body), (200, b"ro"))

    async def test_location_honours_forwarded_headers_and_relative(self):
        server = RegistryServer(self)
        response, _ = await server.request("POST", "/v2/demo/blobs/uploads/", headers={
            "X-Forwarded-Proto": "https", "X-Forwarded-Host": "registry.example.test"})
        self.assertTrue(header(response, "Location").startswith("https://registry.example.test/v2/demo/"))
        relative = RegistryServer(self, urls=UrlBuilder(relative=True))
        response, _ = await relative.request("POST", "/v2/demo/blobs/uploads/")
        self.assertTrue(header(response, "Location").startswith("/v2/demo/blobs/uploads/"))


class ManifestTests(TestCase):
    async def test_push_pull_by_tag_and_digest_exact_bytes(self):
        server = RegistryServer(self)
        document = await simple_image(server, "demo/img")
        response, body, raw = await server.push_manifest("demo/img", "v1", document)
        self.assertEqual(response.code, 201, body)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        self.assertEqual(header(response, "Docker-Content-Digest"), digest)
        self.assertTrue(header(response, "Location").endswith(f"/v2/demo/img/manifests/{digest}"))
        for reference in ("v1", digest):
            response, body = await server.request("GET", f"/v2/demo/img/manifests/{reference}",
                                                  headers={"Accept": OCI_MANIFEST})
            self.assertEqual(response.code, 200)
            self.assertEqual(body, raw)
            self.assertEqual(header(response, "Content-Type"), OCI_MANIFEST)
            self.assertEqual(header(response, "Docker-Content-Digest"), digest)
        status, headers = await server.raw_head("/v2/demo/img/manifests/v1")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-length"], str(len(raw)))
        self.assertEqual(headers["docker-content-digest"], digest)
        response, body = await server.request("GET", "/v2/demo/img/tags/list")
        self.assertEqual(json.loads(body), {"name": "demo/img", "tags": ["v1"]})
        actions = server.listener.actions()
        self.assertIn(("push", "manifest", "demo/img"), actions)
        self.assertIn(("pull", "manifest", "demo/img"), actions)

    async def test_missing_blob_refused(self):
        server = RegistryServer(self)
        document = await simple_image(server, "demo")
        document["layers"][0]["digest"] = "sha256:" + "1" * 64
        response, body, _ = await server.push_manifest("demo", "v1", document)
        self.assertEqual((response.code, errors_of(body)), (400, ["MANIFEST_BLOB_UNKNOWN"]))
        response, _ = await server.request("GET", "/v2/demo/manifests/v1")
        self.assertEqual(response.code, 404)

    async def test_invalid_manifests(self):
        server = RegistryServer(self)
        for body, ctype in [(b"{not json", OCI_MANIFEST), (b"[]", OCI_MANIFEST),
                            (b'{"schemaVersion": 2, "mediaType": "%s"}' % OCI_MANIFEST.encode(), OCI_MANIFEST)]:
            response, content = await server.request("PUT", "/v2/demo/manifests/v1", body,
                                                     {"Content-Type": ctype})
            self.assertEqual((response.code, errors_of(content)), (400, ["MANIFEST_INVALID"]), body)
        schema1 = json.dumps({"schemaVersion": 1, "name": "demo", "tag": "v1", "fsLayers": []}).encode()
        response, content = await server.request(
            "PUT", "/v2/demo/manifests/v1", schema1,
            {"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"})
        self.assertEqual(response.code, 400)
        self.assertIn("schema version 1", json.loads(content)["errors"][0]["message"])

    async def test_oversized_manifest(self):
        server = RegistryServer(self)
        body = b"{" + b" " * (4 * 1024 * 1024 + 10) + b"}"
        response, content = await server.request("PUT", "/v2/demo/manifests/v1", body,
                                                 {"Content-Type": OCI_MANIFEST})
        self.assertEqual(response.code, 413)
        self.assertEqual(errors_of(content), ["SIZE_INVALID"])

    async def test_digest_reference_must_match(self):
        server = RegistryServer(self)
        document = await simple_image(server, "demo")
        response, body, _ = await server.push_manifest("demo", "sha256:" + "2" * 64, document)
        self.assertEqual((response.code, errors_of(body)), (400, ["DIGEST_INVALID"]))

    async def test_index_requires_children(self):
        server = RegistryServer(self)
        document = await simple_image(server, "demo")
        _, _, raw = await server.push_manifest("demo", "amd64", document)
        child = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                 "size": len(raw), "platform": {"architecture": "amd64", "os": "linux"}}
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [child, dict(child, digest="sha256:" + "3" * 64)]}
        response, body, _ = await server.push_manifest("demo", "multi", index,
                                                       "application/vnd.oci.image.index.v1+json")
        self.assertEqual((response.code, errors_of(body)), (400, ["MANIFEST_BLOB_UNKNOWN"]))
        index["manifests"] = [child]
        response, body, _ = await server.push_manifest("demo", "multi", index,
                                                       "application/vnd.oci.image.index.v1+json")
        self.assertEqual(response.code, 201, body)

    async def test_docker_schema2_and_accept_negotiation(self):
        server = RegistryServer(self)
        document = await simple_image(server, "demo", media_type=DOCKER_MANIFEST)
        response, body, raw = await server.push_manifest("demo", "v1", document, DOCKER_MANIFEST)
        self.assertEqual(response.code, 201, body)
        response, body = await server.request("GET", "/v2/demo/manifests/v1", headers={
            "Accept": f"{DOCKER_MANIFEST}, application/vnd.docker.distribution.manifest.list.v2+json"})
        self.assertEqual((response.code, body), (200, raw))
        self.assertEqual(header(response, "Content-Type"), DOCKER_MANIFEST)

    async def test_accept_sent_as_several_headers(self):
        """Docker sends one Accept header per media type."""
        server = RegistryServer(self)
        document = await simple_image(server, "demo", media_type=DOCKER_MANIFEST)
        _, _, raw = await server.push_manifest("demo", "v1", document, DOCKER_MANIFEST)
        from twisted.web.http_headers import Headers
        headers = Headers({"Accept": [OCI_MANIFEST, DOCKER_MANIFEST]})
        response = await server.http.request("GET", server.url("/v2/demo/manifests/v1"), headers=headers)
        import treq
        self.assertEqual((response.code, await treq.content(response)), (200, raw))
        headers = Headers({"Accept": [OCI_MANIFEST, "application/vnd.oci.image.index.v1+json"]})
        response = await server.http.request("GET", server.url("/v2/demo/manifests/v1"), headers=headers)
        body = await treq.content(response)
        self.assertEqual((response.code, errors_of(body)), (404, ["MANIFEST_UNKNOWN"]))

    async def test_delete_by_tag_and_digest(self):
        server = RegistryServer(self)
        document = await simple_image(server, "demo")
        _, _, raw = await server.push_manifest("demo", "v1", document)
        await server.push_manifest("demo", "v2", document)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        response, _ = await server.request("DELETE", "/v2/demo/manifests/v1")
        self.assertEqual(response.code, 202)
        response, _ = await server.request("GET", "/v2/demo/manifests/v1")
        self.assertEqual(response.code, 404)
        response, _ = await server.request("GET", "/v2/demo/manifests/v2")
        self.assertEqual(response.code, 200)
        response, _ = await server.request("DELETE", f"/v2/demo/manifests/{digest}")
        self.assertEqual(response.code, 202)
        for reference in ("v2", digest):
            response, body = await server.request("GET", f"/v2/demo/manifests/{reference}")
            self.assertEqual((response.code, errors_of(body)), (404, ["MANIFEST_UNKNOWN"]))
        self.assertIn(("delete", "tag", "demo"), server.listener.actions())
        self.assertIn(("delete", "manifest", "demo"), server.listener.actions())

    async def test_foreign_layers_follow_url_policy(self):
        import re
        from regd.registry.manifests import UrlPolicy
        server = RegistryServer(self, url_policy=UrlPolicy(allow=(re.compile(r"^https://mcr\.example/"),)))
        document = await simple_image(server, "win", media_type=DOCKER_MANIFEST)
        foreign = {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                   "digest": "sha256:" + "4" * 64, "size": 1000,
                   "urls": ["https://mcr.example/layer"]}
        document["layers"].insert(0, foreign)
        response, body, _ = await server.push_manifest("win", "v1", document, DOCKER_MANIFEST)
        self.assertEqual(response.code, 201, body)
        foreign["urls"] = ["https://elsewhere.example/layer"]
        response, body, _ = await server.push_manifest("win", "v2", document, DOCKER_MANIFEST)
        self.assertEqual((response.code, errors_of(body)), (400, ["MANIFEST_INVALID"]))

    async def test_foreign_layers_accepted_without_an_allow_list_and_deny_applies(self):
        import re
        from regd.registry.manifests import UrlPolicy
        foreign = {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                   "digest": "sha256:" + "5" * 64, "size": 1000, "urls": ["https://mcr.example/layer"]}
        server = RegistryServer(self)
        document = await simple_image(server, "win")
        document["layers"].insert(0, dict(foreign))
        response, body, _ = await server.push_manifest("win", "v1", document)
        self.assertEqual(response.code, 201, body)
        for bad_url in ("ftp://mcr.example/layer", "https://mcr.example/layer#frag"):
            document["layers"][0]["urls"] = [bad_url]
            response, body, _ = await server.push_manifest("win", "v2", document)
            self.assertEqual((response.code, errors_of(body)), (400, ["MANIFEST_INVALID"]), bad_url)
        denying = RegistryServer(self, url_policy=UrlPolicy(deny=(re.compile(r"mcr\.example"),)))
        document = await simple_image(denying, "win")
        document["layers"].insert(0, dict(foreign))
        response, body, _ = await denying.push_manifest("win", "v1", document)
        self.assertEqual((response.code, errors_of(body)), (400, ["MANIFEST_INVALID"]))

    async def test_descriptor_sizes_must_match_the_stored_content(self):
        server = RegistryServer(self)
        document = await simple_image(server, "demo")
        for part in ("config", "layer"):
            wrong = json.loads(json.dumps(document))
            target = wrong["config"] if part == "config" else wrong["layers"][0]
            target["size"] += 1
            response, body, _ = await server.push_manifest("demo", "v1", wrong)
            self.assertEqual((response.code, errors_of(body)), (400, ["MANIFEST_INVALID"]), part)
            self.assertEqual(json.loads(body)["errors"][0]["detail"]["digest"], target["digest"])
        response, body = await server.request("GET", "/v2/demo/manifests/v1")
        self.assertEqual((response.code, errors_of(body)), (404, ["MANIFEST_UNKNOWN"]))
        response, body, raw = await server.push_manifest("demo", "v1", document)
        self.assertEqual(response.code, 201, body)
        child = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                 "size": len(raw) - 1, "platform": {"os": "linux", "architecture": "amd64"}}
        index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [child]}
        response, body, _ = await server.push_manifest("demo", "multi", index, index["mediaType"])
        self.assertEqual((response.code, errors_of(body)), (400, ["MANIFEST_INVALID"]))
        child["size"] = len(raw)
        response, body, _ = await server.push_manifest("demo", "multi", index, index["mediaType"])
        self.assertEqual(response.code, 201, body)

    async def test_manifest_without_media_type_needs_a_manifest_content_type(self):
        server = RegistryServer(self)
        document = await simple_image(server, "demo")
        del document["mediaType"]
        for content_type in ("application/json", "application/octet-stream"):
            response, body, _ = await server.push_manifest("demo", "v1", document, content_type)
            self.assertEqual((response.code, errors_of(body)), (400, ["MANIFEST_INVALID"]), content_type)
        response, body, _ = await server.push_manifest("demo", "v1", document, OCI_MANIFEST)
        self.assertEqual(response.code, 201, body)
        response, _ = await server.request("GET", "/v2/demo/manifests/v1")
        self.assertEqual(header(response, "Content-Type"), OCI_MANIFEST)

    async def test_reads_of_an_invalid_reference_are_manifest_unknown(self):
        server = RegistryServer(self, delete_enabled=True)
        for reference in ("-x", ".x", "a" * 200, "sha256:zz", "md5:abc", "bad%20tag"):
            for method in ("GET", "DELETE"):
                response, body = await server.request(method, f"/v2/demo/manifests/{reference}")
                self.assertEqual((response.code, errors_of(body)), (404, ["MANIFEST_UNKNOWN"]),
                                 (method, reference))
            status, _ = await server.raw_head(f"/v2/demo/manifests/{reference}")
            self.assertEqual(status, 404, reference)
        document = await simple_image(server, "demo")
        response, body, _ = await server.push_manifest("demo", "-x", document)
        self.assertEqual((response.code, errors_of(body)), (400, ["TAG_INVALID"]))
        response, body, _ = await server.push_manifest("demo", "sha256:zz", document)
        self.assertEqual((response.code, errors_of(body)), (400, ["DIGEST_INVALID"]))

    async def test_referrers(self):
        server = RegistryServer(self)
        document = await simple_image(server, "demo")
        _, _, raw = await server.push_manifest("demo", "v1", document)
        subject = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                   "size": len(raw)}
        empty = await server.push_blob("demo", b"{}")
        sbom_blob = await server.push_blob("demo", b"sbom")
        artifact = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/spdx+json",
                    "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
                    "layers": [{"mediaType": "application/spdx+json", "digest": sbom_blob, "size": 4}],
                    "subject": subject, "annotations": {"org.example": "yes"}}
        response, body, art_raw = await server.push_manifest("demo", "sha256:" + hashlib.sha256(
            json.dumps(artifact).encode()).hexdigest(), artifact)
        self.assertEqual(response.code, 201, body)
        self.assertEqual(header(response, "OCI-Subject"), subject["digest"])
        response, body = await server.request("GET", f"/v2/demo/referrers/{subject['digest']}")
        self.assertEqual(response.code, 200)
        self.assertEqual(header(response, "Content-Type"), "application/vnd.oci.image.index.v1+json")
        index = json.loads(body)
        self.assertEqual(len(index["manifests"]), 1)
        entry = index["manifests"][0]
        self.assertEqual(entry["artifactType"], "application/spdx+json")
        self.assertEqual(entry["annotations"], {"org.example": "yes"})
        self.assertEqual(entry["size"], len(art_raw))
        response, body = await server.request(
            "GET", f"/v2/demo/referrers/{subject['digest']}?artifactType=application/other")
        self.assertEqual(json.loads(body)["manifests"], [])
        self.assertEqual(header(response, "OCI-Filters-Applied"), "artifactType")
        response, body = await server.request("GET", f"/v2/demo/referrers/sha256:{'5' * 64}")
        self.assertEqual((response.code, json.loads(body)["manifests"]), (200, []))


class ListingTests(TestCase):
    async def test_catalog_and_tag_pagination(self):
        server = RegistryServer(self)
        for name in ["b/two", "a/one", "c"]:
            document = await simple_image(server, name)
            for tag in ["t3", "t1", "t2"]:
                await server.push_manifest(name, tag, document)
        response, body = await server.request("GET", "/v2/_catalog")
        self.assertEqual(json.loads(body), {"repositories": ["a/one", "b/two", "c"]})
        response, body = await server.request("GET", "/v2/_catalog?n=2")
        self.assertEqual(json.loads(body), {"repositories": ["a/one", "b/two"]})
        self.assertEqual(header(response, "Link"), '</v2/_catalog?n=2&last=b%2Ftwo>; rel="next"')
        response, body = await server.request("GET", "/v2/_catalog?n=2&last=b/two")
        self.assertEqual(json.loads(body), {"repositories": ["c"]})
        self.assertIsNone(header(response, "Link"))
        response, body = await server.request("GET", "/v2/c/tags/list?n=1&last=t1")
        self.assertEqual(json.loads(body)["tags"], ["t2"])
        self.assertIn("last=t2", header(response, "Link"))
        response, body = await server.request("GET", "/v2/nope/tags/list")
        self.assertEqual((response.code, errors_of(body)), (404, ["NAME_UNKNOWN"]))
        response, body = await server.request("GET", "/v2/_catalog?n=abc")
        self.assertEqual((response.code, errors_of(body)), (400, ["PAGINATION_NUMBER_INVALID"]))
