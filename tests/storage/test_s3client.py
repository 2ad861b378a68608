"""S3 requests: signing, retries with backoff on throttling and timeouts, errors that name the problem."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from regd.config import S3Config
from regd.storage.interfaces import PathNotFound, StorageUnavailable
from regd.storage.s3client import S3Client, endpoint_of, static_credentials

SLOW_DOWN = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
             b"<Message>Please reduce your request rate.</Message></Error>")


class FakeResponse:
    def __init__(self, code, body=b"", headers=None):
        self.code = code
        self._body = body
        self.headers = Headers(headers or {})

    def content(self):
        return defer.succeed(self._body)


class FakeHTTP:
    """Answers from a script: a FakeResponse, or None for 'never answers'."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        self.cancelled = 0

    def request(self, method, url, headers=None, data=None, unbuffered=False):
        self.requests.append((method, url, headers, data))
        answer = self.script.pop(0)
        if answer is None:
            def cancel(d):
                self.cancelled += 1
            return defer.Deferred(cancel)
        return defer.succeed(answer)


def settings(**overrides):
    values = dict(region="eu-west-1", bucket="reg", accesskey="AK", secretkey="SK", regionendpoint="",
                  secure=True)
    values.update(overrides)
    return S3Config(**values)


class ClientTests(SynchronousTestCase):
    def client(self, script, **overrides):
        self.clock = Clock()
        self.http = FakeHTTP(script)
        s = settings(**overrides)
        return S3Client(s, static_credentials(s), self.clock, http=self.http)

    def test_throttling_is_retried_with_backoff(self):
        client = self.client([FakeResponse(503, SLOW_DOWN), FakeResponse(503, SLOW_DOWN), FakeResponse(200, b"ok")])
        d = defer.ensureDeferred(client.request("GET", "some/key"))
        self.assertNoResult(d)
        self.assertEqual(len(self.http.requests), 1)
        self.clock.advance(client.backoff)  # the first wait is at most one backoff
        self.assertEqual(len(self.http.requests), 2)
        self.assertNoResult(d)
        self.clock.advance(client.backoff * 2)
        self.assertEqual(self.successResultOf(d).body, b"ok")
        self.assertEqual(len(self.http.requests), 3)

    def test_throttling_that_persists_is_storage_unavailable(self):
        client = self.client([FakeResponse(503, SLOW_DOWN)] * S3Client.retries)
        d = defer.ensureDeferred(client.request("PUT", "k", body=b"x"))
        for _ in range(S3Client.retries):
            self.clock.advance(client.max_backoff)
        failure = self.failureResultOf(d, StorageUnavailable)
        self.assertIn("SlowDown", str(failure.value))
        self.assertEqual(len(self.http.requests), S3Client.retries)

    def test_a_request_that_never_answers_times_out_and_is_retried(self):
        client = self.client([None, FakeResponse(200, b"late but fine")])
        d = defer.ensureDeferred(client.request("GET", "k", timeout=5))
        self.clock.advance(5)
        self.assertEqual(self.http.cancelled, 1)
        self.clock.advance(client.backoff)
        self.assertEqual(self.successResultOf(d).body, b"late but fine")

    def test_errors_that_retrying_cannot_fix(self):
        client = self.client([FakeResponse(404, b"<Error><Code>NoSuchKey</Code></Error>"),
                              FakeResponse(403, b"<Error><Code>InvalidAccessKeyId</Code></Error>"),
                              FakeResponse(404, b"<Error><Code>NoSuchBucket</Code></Error>")])
        self.failureResultOf(defer.ensureDeferred(client.request("GET", "a")), PathNotFound)
        denied = self.failureResultOf(defer.ensureDeferred(client.request("GET", "a")), StorageUnavailable)
        self.assertIn("InvalidAccessKeyId", str(denied.value))
        missing = self.failureResultOf(defer.ensureDeferred(client.request("GET", "a")), StorageUnavailable)
        self.assertIn("NoSuchBucket", str(missing.value))
        self.assertEqual(len(self.http.requests), 3)

    def test_a_callers_cancel_is_not_retried(self):
        client = self.client([None])
        d = defer.ensureDeferred(client.request("GET", "k"))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_requests_are_signed_with_sigv4_or_sigv2(self):
        client = self.client([FakeResponse(200)])
        self.successResultOf(defer.ensureDeferred(client.request("GET", "a/b")))
        method, url, headers, _ = self.http.requests[0]
        self.assertEqual(url, "https://reg.s3.eu-west-1.amazonaws.com/a/b")
        auth = headers.getRawHeaders("Authorization")[0]
        self.assertTrue(auth.startswith("AWS4-HMAC-SHA256 Credential=AK/"), auth)
        self.assertIn("/eu-west-1/s3/aws4_request", auth)
        self.assertNotIn("SK", auth)
        v2 = self.client([FakeResponse(200)], v4auth=False)
        self.successResultOf(defer.ensureDeferred(v2.request("GET", "a/b")))
        self.assertTrue(self.http.requests[0][2].getRawHeaders("Authorization")[0].startswith("AWS AK:"))

    def test_presigned_urls(self):
        client = self.client([])
        url = client.presign("docker/registry/v2/blobs/x/data")
        self.assertTrue(url.startswith("https://reg.s3.eu-west-1.amazonaws.com/docker/registry/v2/blobs/x/data?"))
        self.assertIn("X-Amz-Expires=1200", url)
        self.assertIn("X-Amz-Credential=AK%2F", url)

    def test_endpoints(self):
        self.assertEqual(endpoint_of(settings()), ("https", "s3.eu-west-1.amazonaws.com", False))
        self.assertEqual(endpoint_of(settings(usedualstack=True)), ("https", "s3.dualstack.eu-west-1.amazonaws.com", False))
        self.assertEqual(endpoint_of(settings(regionendpoint="minio:9000", secure=False)), ("http", "minio:9000", True))
        self.assertEqual(endpoint_of(settings(regionendpoint="https://objects.example", forcepathstyle=False)),
                         ("https", "objects.example", False))

    def test_credentials_from_the_standard_chain(self):
        import os
        from unittest import mock
        with mock.patch.dict(os.environ, {"AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "ENVSECRET",
                                          "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                                          "AWS_EC2_METADATA_DISABLED": "true"}):
            credentials = static_credentials(settings(accesskey="", secretkey=""))()
        self.assertEqual((credentials.access_key, credentials.secret_key), ("ENVKEY", "ENVSECRET"))


class ChunksTests(SynchronousTestCase):
    def test_reads_and_seeks_across_pieces(self):
        from regd.storage.s3client import Chunks
        pieces = [b"abc", b"", b"defgh", b"i"]
        body = Chunks(pieces)
        self.assertEqual(len(body), 9)
        reader = body.reader()
        self.assertEqual(reader.read(2), b"ab")
        self.assertEqual(reader.read(4), b"cdef")
        self.assertEqual(reader.read(), b"ghi")
        self.assertEqual(reader.read(5), b"")
        self.assertEqual(reader.seek(0, 2), 9)
        self.assertEqual(reader.seek(4), 4)
        self.assertEqual(reader.read(3), b"efg")
        self.assertEqual(reader.seek(3), 3)
        self.assertEqual(reader.read(), b"defghi")

    def test_parts_are_signed_without_hashing_their_bytes(self):
        from regd.storage.s3client import Chunks
        s = settings(regionendpoint="http://127.0.0.1:1", secure=False)
        client = S3Client(s, static_credentials(s), Clock(), http=FakeHTTP([]))
        import hashlib
        headers = client.sign("PUT", client.url("k"), {"X-Amz-Date": "20260101T000000Z"}, Chunks([b"ab", b"cd"]))
        self.assertEqual(headers["X-Amz-Content-SHA256"], "UNSIGNED-PAYLOAD")
        self.assertIn("Signature=", headers["Authorization"])
        # Small bodies (links, manifests, upload indexes) are still signed with their hash.
        headers = client.sign("PUT", client.url("k"), {"X-Amz-Date": "20260101T000000Z"}, b"abcd")
        self.assertEqual(headers["X-Amz-Content-SHA256"], hashlib.sha256(b"abcd").hexdigest())
