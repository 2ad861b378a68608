"""htpasswd (bcrypt) authentication: challenges, checks, reloads, slow-downs, no secrets in logs."""

from __future__ import annotations

import base64
import os

import bcrypt
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from regd.http.htpasswd import FailedLogins, HtpasswdAccess, HtpasswdError, parse_htpasswd
from regd.oci.errors import Unauthorized
from regd.storage.threads import inline_runner
from tests.support.server import RegistryServer, errors_of, header


def write_htpasswd(path: str, users: dict[str, str], rounds: int = 4) -> str:
    with open(path, "wb") as f:
        for user, password in users.items():
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).replace(b"$2b$", b"$2y$")
            f.write(user.encode() + b":" + hashed + b"\n")
    return path


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class FakeRequest:
    def __init__(self, authorization=None, host="10.1.2.3"):
        self._authorization = authorization
        self._host = host

    def getHeader(self, name):
        return self._authorization if name.lower() == b"authorization" else None

    def getClientAddress(self):
        return type("Address", (), {"host": self._host})()


class ParseTests(SynchronousTestCase):
    def test_only_bcrypt_lines_and_errors_name_the_line(self):
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("# comment\n\nalice:$2y$05$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZa\n"
                    "bob:$apr1$xyz$oldmd5hash\n")
        with self.assertRaises(HtpasswdError) as caught:
            parse_htpasswd(path)
        self.assertEqual(str(caught.exception),
                         f"{path} line 4: only bcrypt entries are accepted (create them with htpasswd -B)")
        self.assertRaises(HtpasswdError, parse_htpasswd, "/no/such/file")


class AccessTests(SynchronousTestCase):
    def setUp(self):
        self.path = write_htpasswd(os.path.abspath(self.mktemp()), {"alice": "wonderland", "bob": "builder"})
        self.clock = Clock()
        self.calls = []

        def counting_runner(function, *args):
            self.calls.append(function.__name__)
            return inline_runner(function, *args)

        self.access = HtpasswdAccess("regd", self.path, counting_runner, self.clock)

    def authorize(self, request):
        return defer.ensureDeferred(self.access.authorize(request, []))

    def test_good_password_and_cache(self):
        self.assertEqual(self.successResultOf(self.authorize(FakeRequest(basic("alice", "wonderland")))).actor,
                         "alice")
        self.successResultOf(self.authorize(FakeRequest(basic("alice", "wonderland"))))
        self.assertEqual(self.calls, ["checkpw"])  # the second check came from the cache

    def test_no_credentials_is_a_challenge(self):
        failure = self.failureResultOf(self.authorize(FakeRequest()), Unauthorized)
        self.assertEqual(failure.value.headers["WWW-Authenticate"], 'Basic realm="regd", charset="UTF-8"')
        self.assertEqual(self.access.failures.total, 0)

    def test_wrong_password_and_unknown_user_slow_down_per_address(self):
        delays = []
        for attempt in range(4):
            d = self.authorize(FakeRequest(basic("alice", "nope")))
            self.assertNoResult(d)
            delays.append(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds())
            self.clock.advance(100)
            self.failureResultOf(d, Unauthorized)
        self.assertEqual([round(d, 6) for d in delays], [0.1, 0.2, 0.4, 0.8])
        d = self.authorize(FakeRequest(basic("mallory", "x"), host="10.9.9.9"))
        self.assertAlmostEqual(self.clock.getDelayedCalls()[0].getTime() - self.clock.seconds(), 0.1)
        self.clock.advance(1)
        self.failureResultOf(d, Unauthorized)
        self.assertEqual(self.calls.count("checkpw"), 5)  # unknown users are checked too (same cost)
        self.successResultOf(self.authorize(FakeRequest(basic("alice", "wonderland"))))
        self.assertEqual(self.access.failures.failed("10.1.2.3"), 0.1)  # success reset the count

    def test_file_changes_are_picked_up(self):
        self.successResultOf(self.authorize(FakeRequest(basic("bob", "builder"))))
        write_htpasswd(self.path, {"alice": "new-password"})
        os.utime(self.path, ns=(1, 1))
        d = self.authorize(FakeRequest(basic("bob", "builder")))
        self.clock.advance(10)
        self.failureResultOf(d, Unauthorized)
        self.successResultOf(self.authorize(FakeRequest(basic("alice", "new-password"))))

    def test_failed_logins_log_no_password(self):
        with capturedLogs() as events:
            d = self.authorize(FakeRequest(basic("alice", "hunter2-secret")))
            self.clock.advance(1)
            self.failureResultOf(d, Unauthorized)
        text = "\n".join(formatEvent(e) for e in events)
        self.assertIn("failed login for alice from 10.1.2.3", text)
        self.assertNotIn("hunter2-secret", text)

    def test_failed_logins_backoff_is_capped(self):
        failures = FailedLogins(base=1.0, cap=5.0)
        self.assertEqual([failures.failed("a") for _ in range(5)], [1.0, 2.0, 4.0, 5.0, 5.0])


class HTTPTests(TestCase):
    async def test_registry_behind_htpasswd(self):
        path = write_htpasswd(os.path.abspath(self.mktemp()), {"alice": "wonderland"})
        from twisted.internet import reactor
        server = RegistryServer(self, access=HtpasswdAccess("my realm", path, inline_runner, reactor,
                                                            FailedLogins(base=0.01)))
        response, body = await server.request("GET", "/v2/")
        self.assertEqual(response.code, 401)
        self.assertEqual(errors_of(body), ["UNAUTHORIZED"])
        self.assertEqual(header(response, "WWW-Authenticate"), 'Basic realm="my realm", charset="UTF-8"')
        self.assertEqual(header(response, "Docker-Distribution-API-Version"), "registry/2.0")
        response, body = await server.request("GET", "/v2/", headers={"Authorization": basic("alice", "bad")})
        self.assertEqual(response.code, 401)
        self.assertNotIn(b"bad", body)
        auth = {"Authorization": basic("alice", "wonderland")}
        response, _ = await server.request("GET", "/v2/", headers=auth)
        self.assertEqual(response.code, 200)
        response, _ = await server.request("POST", "/v2/demo/blobs/uploads/", headers=auth)
        self.assertEqual(response.code, 202)
        self.assertEqual(server.listener.events, [])
        response, _ = await server.request("POST", f"/v2/demo/blobs/uploads/?digest=sha256:"
                                           f"{__import__('hashlib').sha256(b'x').hexdigest()}", b"x", auth)
        self.assertEqual(response.code, 201)
        self.assertEqual(server.listener.events[0].context.actor, "alice")


    async def test_anonymous_chunks_never_reach_an_upload_in_place(self):
        """Bodies without credentials are spooled and dropped; only credentialed ones are written in place."""
        path = write_htpasswd(os.path.abspath(self.mktemp()), {"alice": "wonderland"})
        from twisted.internet import reactor
        server = RegistryServer(self, access=HtpasswdAccess("my realm", path, inline_runner, reactor,
                                                            FailedLogins(base=0.01)))
        opened = []
        sink = server.site.requestFactory.upload_sink

        def recording_sink(name, upload_id, start):
            opened.append((name, start))
            return sink(name, upload_id, start)

        server.site.requestFactory.upload_sink = staticmethod(recording_sink)
        auth = {"Authorization": basic("alice", "wonderland")}
        response, _ = await server.request("POST", "/v2/demo/blobs/uploads/", headers=auth)
        location = header(response, "Location")
        first, second = os.urandom(4096), os.urandom(4096)
        response, _ = await server.request("PATCH", location, first,
                                           {**auth, "Content-Range": "0-4095"})
        self.assertEqual(response.code, 202)
        location = header(response, "Location")
        response, body = await server.request("PATCH", location, second, {"Content-Range": "4096-8191"})
        self.assertEqual(response.code, 401)
        self.assertEqual(errors_of(body), ["UNAUTHORIZED"])
        self.assertEqual(opened, [("demo", 0)])
        response, _ = await server.request("PATCH", location, second, {**auth, "Content-Range": "4096-8191"})
        self.assertEqual(response.code, 202)
        self.assertEqual(opened, [("demo", 0), ("demo", 4096)])
        digest = "sha256:" + __import__("hashlib").sha256(first + second).hexdigest()
        response, _ = await server.request("PUT", f"{location}&digest={digest}" if "?" in location
                                           else f"{location}?digest={digest}", b"", auth)
        self.assertEqual(response.code, 201)
        response, body = await server.request("GET", f"/v2/demo/blobs/{digest}", headers=auth)
        self.assertEqual(body, first + second)


class LoginTimingTests(TestCase):
    """An unknown user name costs what a wrong password costs, so timing tells no names apart."""

    async def test_unknown_users_take_as_long_as_wrong_passwords(self):
        import statistics
        import time

        path = write_htpasswd(self.mktemp(), {f"user{i}": f"secret{i}" for i in range(3)}, rounds=6)
        access = HtpasswdAccess("regd", path, lambda f, *a: defer.execute(f, *a), Clock())

        async def attempt(user):
            started = time.perf_counter()
            self.assertFalse(await access._check(user, b"wrong password"))
            return time.perf_counter() - started

        known, unknown = [], []
        for i in range(40):  # interleaved, so load on the machine hits both alike
            known.append(await attempt(f"user{i % 3}"))
            unknown.append(await attempt(f"nobody{i}"))
        # Medians and lower quartiles (robust to a loaded machine's outliers) agree; with a
        # dummy of another cost they differ by 2**(cost difference), 16x for cost 10 against 6.
        for statistic in (statistics.median, lambda values: sorted(values)[10]):
            ratio = statistic(unknown) / statistic(known)
            self.assertTrue(0.4 < ratio < 2.5, f"unknown/known time ratio {ratio:.2f}")
