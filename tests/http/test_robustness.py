"""Bad input never produces a 5xx, a traceback, or a file outside the storage root."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.support.server import RegistryServer

METHODS = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"]
SEGMENTS = ["v2", "a", "b", "blobs", "uploads", "manifests", "tags", "list", "referrers", "_catalog", "..",
            ".", "%2e%2e", "%2F", "sha256:" + "a" * 64, "sha256:zz", "latest", "UPPER", "_x", "", "x" * 300,
            "3b1c8b3e-1111-4a5b-9c1d-000000000000", "%00", "?digest=sha256:1", "?n=-1", "?n=x&last=%ff"]


class RobustnessTests(TestCase):
    def setUp(self):
        self.server = RegistryServer(self)

    async def check(self, method: str, path: str, body: bytes | None = None, headers=None):
        response, content = await self.server.request(method, path, body, headers)
        self.assertLess(response.code, 500, (method, path, content[:300]))
        if content and response.code >= 400:
            document = json.loads(content)
            self.assertTrue(document["errors"][0]["code"])
            self.assertNotIn(b"Traceback", content)
            self.assertNotIn(self.server.root.encode(), content)
        return response

    async def test_generated_requests(self):
        requests = []

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(st.sampled_from(METHODS), st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=6),
               st.one_of(st.none(), st.binary(max_size=200)))
        def collect(method, segments, body):
            requests.append((method, "/" + "/".join(segments), body))

        collect()
        for method, path, body in requests:
            await self.check(method, path, body)
        parent = os.path.dirname(os.path.abspath(self.server.root))
        self.assertEqual(sorted(os.listdir(parent)), [os.path.basename(self.server.root)]
                         if os.path.exists(self.server.root) else [])

    async def test_hostile_headers_and_bodies(self):
        await self.check("POST", "/v2/x/blobs/uploads/")
        response = await self.check("POST", "/v2/x/blobs/uploads/")
        location = response.headers.getRawHeaders("Location")[0]
        for content_range in ["abc", "5-1", "-1-2", "0-999999999999999999999", "bytes=0-", "0-0/abc"]:
            await self.check("PATCH", location, b"zz", {"Content-Range": content_range})
        for range_header in ["bytes=5-1", "bytes=-0", "bytes=abc", "items=0-1", "bytes=0-1,3-4"]:
            digest = await self.server.push_blob("x", b"0123456789")
            await self.check("GET", f"/v2/x/blobs/{digest}", headers={"Range": range_header})
        for body in [b"null", b"{}", b'{"schemaVersion": 2}', b'{"schemaVersion": 2, "layers": 5, "config": []}',
                     b'{"schemaVersion": 2, "manifests": [{"digest": 1}]}', b"\xff\xfe", b'"x"' * 10]:
            for content_type in ["application/vnd.oci.image.manifest.v1+json", "text/plain", "", "a;b=c"]:
                await self.check("PUT", "/v2/x/manifests/t", body, {"Content-Type": content_type})
        await self.check("PUT", f"{location}?digest=sha256:{'0' * 64}", b"x", {"Content-Range": "0-0"})
        await self.check("PUT", f"{location}?digest=md5:abc")
        await self.check("GET", "/v2/x/referrers/sha256:abc")
        await self.check("GET", "/v2/_catalog?n=99999999")
        await defer.succeed(None)


class StorageFailureTests(TestCase):
    async def test_storage_errors_are_503_and_counted(self):
        from prometheus_client import CollectorRegistry

        from regd.http.metrics import HTTPMetrics
        server = RegistryServer(self)
        metrics = CollectorRegistry()
        server.site.metrics = HTTPMetrics(metrics, server.site, server.registry.uploads)

        def broken(path):
            return defer.fail(OSError(5, "Input/output error"))

        server.driver.get_content = broken
        response = await self.check_status(server, "/v2/app/manifests/latest")
        self.assertEqual(response, 503)
        self.assertEqual(metrics.get_sample_value("regd_storage_errors_total", {"route": "manifest"}), 1.0)
        self.assertEqual(metrics.get_sample_value(
            "regd_http_requests_total", {"route": "manifest", "method": "GET", "status": "503"}), 1.0)
        self.assertEqual(self.flushLoggedErrors(OSError), [])  # one log line, no traceback (tests.http.test_storage_full)

    async def check_status(self, server, path):
        response, body = await server.request("GET", path)
        self.assertEqual(json.loads(body)["errors"][0]["code"], "UNAVAILABLE")
        self.assertNotIn(b"Input/output", body)
        return response.code


class SpecCornerTests(TestCase):
    """Requests found by attacking a running regd: each answered 5xx before."""

    def setUp(self):
        self.server = RegistryServer(self)

    async def raw(self, method: str, path: str, headers: dict[str, str] | None = None):
        return await self.raw_body(method, path, None, headers)

    async def raw_body(self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None = None):
        """One request over http.client, which sends methods and Host exactly as given."""
        import http.client

        from twisted.internet import threads

        def send():
            connection = http.client.HTTPConnection("127.0.0.1", self.server.port.getHost().port, timeout=10)
            try:
                connection.putrequest(method, path, skip_host=bool(headers and "Host" in headers))
                for key, value in (headers or {}).items():
                    connection.putheader(key, value)
                if body is not None:
                    connection.putheader("Content-Length", str(len(body)))
                connection.endheaders(body)
                response = connection.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            finally:
                connection.close()

        return await threads.deferToThread(send)

    async def test_undefined_methods_on_upload_urls_are_405(self):
        response, _ = await self.server.request("POST", "/v2/x/blobs/uploads/")
        location = response.headers.getRawHeaders("Location")[0].replace(self.server.base, "")
        for method in ["HEAD", "patch", "get", "put", "delete", "OPTIONS", "POST"]:
            status, headers, body = await self.raw(method, location)
            self.assertEqual(status, 405, (method, body))
            if method != "HEAD":
                self.assertEqual(json.loads(body)["errors"][0]["code"], "UNSUPPORTED")
        status, _, _ = await self.raw("GET", location)
        self.assertEqual(status, 204)

    async def test_dot_dot_host_is_400_on_every_route(self):
        for host in ["..", "a/..", "a/../b", "."]:
            for method, path in [("GET", "/"), ("GET", "/v2/"), ("GET", "/v2/_catalog"),
                                 ("POST", "/v2/x/blobs/uploads/"), ("GET", "/v2/x/manifests/latest")]:
                status, _, body = await self.raw(method, path, {"Host": host})
                self.assertEqual(status, 400, (host, method, path, body))
                self.assertNotIn(host.encode() + b"/", body)
                self.assertEqual(json.loads(body)["errors"][0]["code"], "UNSUPPORTED")

    async def test_deeply_nested_manifest_is_manifest_invalid(self):
        for nested in [b'{"a":' * 5000 + b"1" + b"}" * 5000, b"[" * 5000 + b"]" * 5000]:
            status, _, body = await self.raw_body("PUT", "/v2/x/manifests/t", nested,
                                                  {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
            self.assertEqual((status, json.loads(body)["errors"][0]["code"]), (400, "MANIFEST_INVALID"))

    async def test_undecodable_escapes_are_400_json_with_one_log_line(self):
        from twisted.logger import capturedLogs
        with capturedLogs() as events:
            for path in ["/v2/a%ff/tags/list", "/v2/a/manifests/%ff", "/%c3%28", "/v2/x/blobs/%80"]:
                status, _, body = await self.raw("GET", path)
                self.assertEqual((status, json.loads(body)["errors"][0]["code"]), (400, "UNSUPPORTED"), path)
        self.assertFalse([e for e in events if e.get("log_failure")])

    async def test_double_slashes_redirect_without_echoing_the_host(self):
        for path, target in [("/v2//_catalog", "/v2/_catalog"), ("/v2//x/tags/list", "/v2/x/tags/list")]:
            status, headers, body = await self.raw("GET", path, {"Host": "evil.example"})
            self.assertIn(status, (301, 308, 400, 404), path)
            self.assertNotIn(b"evil.example", body)
            if status in (301, 308):
                self.assertEqual(headers["Location"], target)
        status, headers, _ = await self.raw("GET", "/v2//_catalog")
        self.assertEqual((status, headers["Location"]), (308, "/v2/_catalog"))

    async def test_forwarded_headers_that_are_no_scheme_or_host_are_ignored(self):
        """Found by tests/fuzz: they went into Location and failed to encode (500)."""
        for headers in [{"X-Forwarded-Proto": "\u00c4\u0080"}, {"X-Forwarded-Host": "a b/../\u00ff"},
                        {"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "evil\u00e9.example"}]:
            status, answer, body = await self.raw("POST", "/v2/x/blobs/uploads/", headers)
            self.assertEqual(status, 202, (headers, body))
            self.assertTrue(answer["Location"].startswith(f"http://127.0.0.1:{self.server.port.getHost().port}/v2/x/"),
                            answer["Location"])
        status, answer, _ = await self.raw("POST", "/v2/x/blobs/uploads/",
                                           {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "registry.example:443"})
        self.assertTrue(answer["Location"].startswith("https://registry.example:443/v2/x/"), answer["Location"])

    async def test_headers_that_are_not_utf8_are_no_5xx(self):
        from tests.support.server import simple_image
        response, _, _ = await self.server.push_manifest("x", "latest", await simple_image(self.server, "x"))
        self.assertEqual(response.code, 201)
        digest = await self.server.push_blob("x", b"0123456789")
        for method, path, name in [("GET", "/v2/x/manifests/latest", "Accept"), ("GET", f"/v2/x/blobs/{digest}", "Range"),
                                   ("GET", "/v2/", "User-Agent"), ("PATCH", "/v2/x/blobs/uploads/nope", "Content-Range")]:
            status, _, body = await self.raw(method, path, {name: "\u00ff\u00fe"})
            self.assertLess(status, 500, (method, path, name, body))
