"""The HTTP API over the S3 driver: streamed pushes, redirects or streamed pulls with Range, 503s when S3 is gone."""

from __future__ import annotations

import hashlib
import io
import json
import os
from types import SimpleNamespace

import attrs
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH

from regd.config import S3Config
from regd.storage.s3 import S3Driver
from tests.support.s3 import cutting_proxy, s3_settings, shared_moto
from tests.support.server import RegistryServer

PART = 64 * 1024


class S3HTTPTests(TestCase):
    def serve(self, redirect: bool, settings=None):
        if settings is None:
            server = shared_moto()
            self.bucket = server.new_bucket()
            settings = s3_settings(server, self.bucket, chunksize=PART, multipartcopychunksize=PART,
                                   multipartcopythresholdsize=PART)
        driver = S3Driver(settings, reactor, min_part=PART)
        self.addCleanup(driver.client.close)
        return RegistryServer(self, driver=driver, redirect=redirect, index=False), driver

    async def push(self, registry, name: str, data: bytes, pieces: int = 3) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response, _ = await registry.request("POST", f"/v2/{name}/blobs/uploads/")
        self.assertEqual(response.code, 202)
        location = response.headers.getRawHeaders("location")[0]
        step = len(data) // pieces + 1
        for start in range(0, len(data), step):
            chunk = data[start:start + step]
            response, body = await registry.request(
                "PATCH", location, chunk,
                headers={"Content-Range": [f"{start}-{start + len(chunk) - 1}"],
                         "Content-Type": ["application/octet-stream"]})
            self.assertEqual(response.code, 202, body)
            location = response.headers.getRawHeaders("location")[0]
        sep = "&" if "?" in location else "?"
        response, body = await registry.request("PUT", f"{location}{sep}digest={digest}")
        self.assertEqual(response.code, 201, body)
        return digest

    async def test_push_then_pull_streamed_with_ranges(self):
        registry, _ = self.serve(redirect=False)
        data = os.urandom(5 * PART + 321)
        digest = await self.push(registry, "s3/app", data)
        response, body = await registry.request("GET", f"/v2/s3/app/blobs/{digest}")
        self.assertEqual((response.code, body), (200, data))
        response, body = await registry.request("GET", f"/v2/s3/app/blobs/{digest}",
                                                headers={"Range": ["bytes=70000-200000"]})
        self.assertEqual((response.code, body), (206, data[70000:200001]))
        self.assertEqual(response.headers.getRawHeaders("content-range"), [f"bytes 70000-200000/{len(data)}"])

    async def test_pull_redirects_to_a_presigned_url(self):
        registry, _ = self.serve(redirect=True)
        data = os.urandom(2 * PART)
        digest = await self.push(registry, "s3/app", data, pieces=1)
        response, body = await registry.request("GET", f"/v2/s3/app/blobs/{digest}")
        # treq followed the redirect: the bytes came from S3, not through regd.
        self.assertEqual((response.code, body), (200, data))
        [redirect] = response.history()
        self.assertEqual(redirect.code, 307)
        location = redirect.headers.getRawHeaders("location")[0]
        self.assertTrue(location.startswith(f"{shared_moto().endpoint}/{self.bucket}/docker/registry/v2/blobs/"))
        self.assertIn("X-Amz-Signature=", location)
        self.assertEqual(redirect.headers.getRawHeaders("docker-content-digest"), [digest])
        # HEAD answers itself, and unknown blobs are never redirected.
        response, _ = await registry.request("HEAD", f"/v2/s3/app/blobs/{digest}")
        self.assertEqual(response.code, 200)
        response, body = await registry.request("GET", f"/v2/s3/app/blobs/sha256:{'0' * 64}")
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "BLOB_UNKNOWN")

    async def test_s3_gone_is_a_503_with_the_specs_json(self):
        from tests.support.processes import free_port
        unused = free_port()
        settings = S3Config(region="us-east-1", regionendpoint=f"http://127.0.0.1:{unused}", bucket="b",
                            accesskey="k", secretkey="s", secure=False, chunksize=PART)
        registry, driver = self.serve(redirect=True, settings=settings)
        driver.client.retries = 2
        driver.client.backoff = 0.01
        for method, path, body in (("GET", "/v2/s3/app/tags/list", None),
                                   ("POST", "/v2/s3/app/blobs/uploads/", None),
                                   ("GET", f"/v2/s3/app/manifests/sha256:{'1' * 64}", None)):
            response, content = await registry.request(method, path, body)
            self.assertEqual(response.code, 503, (method, path, content))
            self.assertEqual(json.loads(content)["errors"][0]["code"], "UNAVAILABLE")
        self.flushLoggedErrors()


def unknown_length(data: bytes) -> FileBodyProducer:
    """A request body sent with Transfer-Encoding: chunked, as docker sends a layer's PATCH."""
    # A file that cannot seek: FileBodyProducer cannot tell its length, so treq sends it chunked.
    unseekable = SimpleNamespace(read=io.BytesIO(data).read, close=lambda: None)
    producer = FileBodyProducer(unseekable)
    assert producer.length == UNKNOWN_LENGTH
    return producer


class StreamedPushTests(TestCase):
    """Bodies of known length stream part by part into S3; chunked ones are counted into a file per part."""

    def setUp(self):
        self.moto = shared_moto()
        self.bucket = self.moto.new_bucket()

    def serve(self, endpoint=None):
        settings = s3_settings(self.moto, self.bucket, chunksize=PART, multipartcopychunksize=PART,
                               multipartcopythresholdsize=PART)
        if endpoint is not None:
            settings = attrs.evolve(settings, regionendpoint=endpoint)
        driver = S3Driver(settings, reactor, min_part=PART)
        self.addCleanup(driver.client.close)
        self.bodies = []  # the kind of body each upload part was sent as
        real = driver._upload_part

        def recording(path, upload_id, number, data):
            self.bodies.append(type(data).__name__)
            return real(path, upload_id, number, data)
        driver._upload_part = recording
        return RegistryServer(self, driver=driver, redirect=False, index=False)

    async def gone(self):
        """Wait until nothing of a failed push is left in the bucket: no upload in progress, no spool."""
        for _ in range(100):
            uploads = self.moto.multipart_uploads(self.bucket)
            left = [k for k in self.moto.keys(self.bucket) if "/blobs/" in k or "regd/spool" in k]
            if not uploads and not left:
                return
            await task.deferLater(reactor, 0.1, lambda: None)
        self.fail(f"left behind: {uploads} {left}")

    async def test_chunked_patches_and_sized_puts(self):
        registry = self.serve()
        first, last = os.urandom(3 * PART + 11), os.urandom(2 * PART + 5)
        digest = "sha256:" + hashlib.sha256(first + last).hexdigest()
        response, _ = await registry.request("POST", "/v2/s3/app/blobs/uploads/")
        location = response.headers.getRawHeaders("Location")[0]
        response, body = await registry.request("PATCH", location, unknown_length(first),
                                                headers={"Content-Type": ["application/octet-stream"]})
        self.assertEqual(response.code, 202, body)
        self.assertEqual(set(self.bodies), {"FilePart"})
        self.bodies.clear()
        location = response.headers.getRawHeaders("Location")[0]
        response, body = await registry.request("PUT", f"{location}?digest={digest}", last)
        self.assertEqual(response.code, 201, body)
        # (Publishing then copies the upload's bodies into the blob; a part spanning the two is
        # gathered from small downloads, sent as bytes.)
        self.assertEqual([kind for kind in self.bodies if kind != "bytes"], ["StreamedBody"] * 3)
        response, body = await registry.request("GET", f"/v2/s3/app/blobs/{digest}")
        self.assertEqual((response.code, body), (200, first + last))

    async def test_s3_failing_mid_part_is_a_503_and_leaves_nothing(self):
        port, endpoint = cutting_proxy(self.moto, cut_after=PART // 2)
        self.addCleanup(port.stopListening)
        registry = self.serve(endpoint)
        data = os.urandom(3 * PART)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response, body = await registry.request("POST", f"/v2/s3/app/blobs/uploads/?digest={digest}", data)
        self.assertEqual(response.code, 503, body)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "UNAVAILABLE")
        await self.gone()
        response, _ = await registry.request("HEAD", f"/v2/s3/app/blobs/{digest}")
        self.assertEqual(response.code, 404)
        # S3 is back (the proxy cuts once): the same push goes through.
        response, body = await registry.request("POST", f"/v2/s3/app/blobs/uploads/?digest={digest}", data)
        self.assertEqual(response.code, 201, body)

    async def test_a_client_hanging_up_mid_part_leaves_nothing(self):
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
        from twisted.internet.protocol import Protocol
        registry = self.serve()
        data = os.urandom(3 * PART)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", registry.port.getHost().port),
                                       Protocol())
        client.transport.write(
            f"POST /v2/s3/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode() + data[:PART + PART // 2])
        for _ in range(100):  # the second part is on its way to the blob's key
            if self.bodies[1:] and self.moto.multipart_uploads(self.bucket):
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.bodies, ["StreamedBody"] * 2)
        client.transport.abortConnection()
        await self.gone()
        self.assertEqual(self.moto.keys(self.bucket), [])  # not even the marker of the aimed upload


class DirectToBlobTests(TestCase):
    """A body that ends its upload with the digest named goes straight to the blob's key: no copy."""

    def setUp(self):
        server = shared_moto()
        self.moto = server
        self.bucket = server.new_bucket()
        settings = s3_settings(server, self.bucket, chunksize=PART, multipartcopychunksize=PART,
                               multipartcopythresholdsize=PART)
        self.driver = S3Driver(settings, reactor, min_part=PART)
        self.addCleanup(self.driver.client.close)
        self.registry = RegistryServer(self, driver=self.driver, redirect=False, index=False)
        self.sent = []  # (method, key, headers) of every request to S3, which all still happen
        real = self.driver.client.request

        def recording(method, key="", **kwargs):
            self.sent.append((method, key, kwargs.get("headers") or {}, kwargs.get("query") or {}))
            return real(method, key, **kwargs)
        self.driver.client.request = recording

    def copies(self):
        return [key for _, key, headers, _ in self.sent if "x-amz-copy-source" in headers]

    def parts_sent_to(self, key_part):
        return [key for method, key, headers, query in self.sent
                if "partNumber" in query and key_part in key and "x-amz-copy-source" not in headers]

    async def settled(self):
        from twisted.internet import task
        await task.deferLater(reactor, 0.3, lambda: None)  # spool removals are not awaited

    async def test_monolithic_put_sends_parts_to_the_blob_and_copies_nothing(self):
        data = os.urandom(4 * PART + 77)
        digest = await self.registry.push_blob("s3/app", data)
        response, body = await self.registry.request("GET", f"/v2/s3/app/blobs/{digest}")
        self.assertEqual((response.code, body), (200, data))
        self.assertEqual(self.copies(), [])
        self.assertTrue(self.parts_sent_to(f"blobs/sha256/{digest[7:9]}/{digest[7:]}/data"))
        await self.settled()
        self.assertEqual(self.moto.multipart_uploads(self.bucket), [])
        keys = self.moto.keys(self.bucket)
        self.assertEqual([k for k in keys if "_uploads" in k or "regd/spool" in k], [])

    async def test_monolithic_post_with_digest(self):
        data = os.urandom(3 * PART + 1)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        response, body = await self.registry.request("POST", f"/v2/s3/app/blobs/uploads/?digest={digest}", data)
        self.assertEqual(response.code, 201, body)
        self.assertEqual(await self.driver.get_content(f"docker/registry/v2/blobs/sha256/{digest[7:9]}/{digest[7:]}/data"),
                         data)
        self.assertEqual(self.copies(), [])

    async def test_a_wrong_digest_leaves_nothing_visible(self):
        data = os.urandom(3 * PART)
        wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
        response, _ = await self.registry.request("POST", "/v2/s3/app/blobs/uploads/")
        location = response.headers.getRawHeaders("Location")[0]
        response, body = await self.registry.request("PUT", f"{location}?digest={wrong}", data)
        self.assertEqual(response.code, 400)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "DIGEST_INVALID")
        await self.settled()
        self.assertEqual(self.moto.multipart_uploads(self.bucket), [])
        self.assertEqual([k for k in self.moto.keys(self.bucket) if "/blobs/" in k or "regd/spool" in k], [])
        response, _ = await self.registry.request("HEAD", f"/v2/s3/app/blobs/{wrong}")
        self.assertEqual(response.code, 404)

    async def test_a_last_body_after_chunks_is_appended_as_before(self):
        first, last = os.urandom(2 * PART), os.urandom(2 * PART + 9)
        digest = "sha256:" + hashlib.sha256(first + last).hexdigest()
        response, _ = await self.registry.request("POST", "/v2/s3/app/blobs/uploads/")
        location = response.headers.getRawHeaders("Location")[0]
        response, _ = await self.registry.request("PATCH", location, first,
                                                  headers={"Content-Type": ["application/octet-stream"]})
        self.assertEqual(response.code, 202)
        location = response.headers.getRawHeaders("Location")[0]
        response, body = await self.registry.request("PUT", f"{location}?digest={digest}", last)
        self.assertEqual(response.code, 201, body)
        response, body = await self.registry.request("GET", f"/v2/s3/app/blobs/{digest}")
        self.assertEqual(body, first + last)
        self.assertEqual(self.parts_sent_to("/blobs/"), [])  # the upload was not empty: no aim
        self.assertTrue(self.copies())

    async def test_a_blob_already_held_is_only_linked(self):
        data = os.urandom(3 * PART + 3)
        digest = await self.registry.push_blob("s3/app", data)
        before = [k for k in self.moto.keys(self.bucket) if k.endswith("/data")]
        self.assertEqual(await self.registry.push_blob("s3/other", data), digest)
        response, body = await self.registry.request("GET", f"/v2/s3/other/blobs/{digest}")
        self.assertEqual((response.code, body), (200, data))
        await self.settled()
        self.assertEqual(self.moto.multipart_uploads(self.bucket), [])
        self.assertEqual([k for k in self.moto.keys(self.bucket) if k.endswith("/data")], before)
        self.assertEqual(self.copies(), [])
