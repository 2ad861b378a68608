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


class Connection:
    """A consumer standing for the connection an HTTP client writes a request body to."""

    def __init__(self):
        self.data = []

    def write(self, data):
        self.data.append(data)


class StreamingHTTP:
    """Takes each request's body producer and lets the test decide when it starts and how it ends."""

    def __init__(self):
        self.requests = []

    def request(self, method, url, headers=None, data=None, unbuffered=False):
        d = defer.Deferred()
        self.requests.append((data, d))
        return d

    def start(self, index=-1):
        producer, _ = self.requests[index]
        connection = Connection()
        producer.startProducing(connection)
        return connection


class PartBodyTests(SynchronousTestCase):
    def client(self, http):
        self.clock = Clock()
        s = settings(regionendpoint="http://127.0.0.1:1", secure=False)
        return S3Client(s, static_credentials(s), self.clock, http=http)

    def test_parts_are_signed_without_hashing_their_bytes(self):
        import hashlib
        import io
        from regd.storage.s3client import FilePart, StreamedBody
        client = self.client(FakeHTTP([]))
        for part in (FilePart(io.BytesIO(b"abcd"), 4), StreamedBody(4)):
            headers = client.sign("PUT", client.url("k"), {"X-Amz-Date": "20260101T000000Z"}, part)
            self.assertEqual(headers["X-Amz-Content-SHA256"], "UNSIGNED-PAYLOAD")
            self.assertIn("Signature=", headers["Authorization"])
        # Small bodies (links, manifests, upload indexes) are still signed with their hash.
        headers = client.sign("PUT", client.url("k"), {"X-Amz-Date": "20260101T000000Z"}, b"abcd")
        self.assertEqual(headers["X-Amz-Content-SHA256"], hashlib.sha256(b"abcd").hexdigest())

    def test_a_file_part_is_sent_again_from_its_start_and_stays_open(self):
        import io
        from regd.storage.s3client import FilePart
        file = io.BytesIO(b"part bytes")
        file.seek(0, 2)
        part = FilePart(file, 10)
        http = FakeHTTP([FakeResponse(503, SLOW_DOWN), FakeResponse(200)])
        client = self.client(http)
        d = defer.ensureDeferred(client.request("PUT", "k", body=part))
        self.clock.advance(client.max_backoff)
        self.successResultOf(d)
        producers = [data for _, _, _, data in http.requests]
        self.assertEqual([p.length for p in producers], [10, 10])
        reader = part.reader()
        reader.close()  # what FileBodyProducer does when it is done: the file stays the part's owner's
        self.assertEqual((file.closed, reader.read()), (False, b"part bytes"))

    def test_a_streamed_part_goes_out_as_it_arrives(self):
        from regd.storage.s3client import StreamedBody
        http = StreamingHTTP()
        client = self.client(http)
        changes = []
        body = StreamedBody(6, lambda: changes.append(body.blocking))
        d = defer.ensureDeferred(client.request("PUT", "k", body=body))
        body.write(b"ab")  # no connection yet: held, and the writer is told to hold back
        self.assertTrue(body.blocking)
        connection = http.start()
        self.assertEqual((connection.data, body.blocking, changes[-1]), ([b"ab"], False, False))
        body.pauseProducing()  # the connection to S3 pushes back: so does the writer
        self.assertEqual(changes[-1], True)
        body.resumeProducing()
        body.write(b"cd")
        # The deadline for the answer starts only once the body is sent: the client sets its pace.
        self.clock.advance(client.timeout * 2)
        self.assertNoResult(d)
        body.write(b"ef")
        self.assertEqual(b"".join(connection.data), b"abcdef")
        self.assertRaises(ValueError, body.write, b"g")
        http.requests[-1][1].callback(FakeResponse(200, headers={"ETag": ['"e"']}))
        self.assertEqual(self.successResultOf(d).code, 200)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_streamed_part_that_fails_after_its_bytes_left_is_not_retried(self):
        from twisted.web.client import ResponseFailed
        from regd.storage.s3client import StreamedBody
        for ending in (FakeResponse(503, SLOW_DOWN), ResponseFailed([])):
            http = StreamingHTTP()
            client = self.client(http)
            body = StreamedBody(4)
            d = defer.ensureDeferred(client.request("PUT", "k", body=body))
            http.start()
            body.write(b"abcd")
            if isinstance(ending, Exception):
                body.stopProducing()
                http.requests[-1][1].errback(ending)
            else:
                http.requests[-1][1].callback(ending)
            failure = self.failureResultOf(d, StorageUnavailable)
            self.assertIn("streamed part", str(failure.value))
            self.assertEqual(len(http.requests), 1)

    def test_a_streamed_part_whose_connection_failed_before_any_byte_is_retried(self):
        from twisted.internet.error import ConnectionRefusedError
        from regd.storage.s3client import StreamedBody
        http = StreamingHTTP()
        client = self.client(http)
        body = StreamedBody(4)
        d = defer.ensureDeferred(client.request("PUT", "k", body=body))
        body.write(b"ab")
        http.requests[0][1].errback(ConnectionRefusedError())
        body.write(b"cd")  # still held: nothing was lost
        self.clock.advance(client.max_backoff)
        self.assertEqual(len(http.requests), 2)
        self.assertEqual(b"".join(http.start().data), b"abcd")
        http.requests[1][1].callback(FakeResponse(200))
        self.successResultOf(d)

    def test_a_streamed_part_given_up_by_its_writer_fails_its_request(self):
        from regd.storage.s3client import StreamedBody
        body = StreamedBody(4)
        connection = Connection()
        finished = body.startProducing(connection)
        body.write(b"ab")
        body.fail(ValueError("the client went away"))
        self.failureResultOf(finished, ValueError)
        body.write(b"cd")
        self.assertEqual((connection.data, body.blocking), ([b"ab"], False))
        # A request that only now gets its connection fails at once.
        self.failureResultOf(body.startProducing(Connection()), ValueError)
