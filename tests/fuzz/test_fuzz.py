"""
Hypothesis-driven requests over every route of a real regd HTTP server on
127.0.0.1: names, references, digests, upload ids, query strings, headers
(Host included), bodies (nested JSON included) and methods, valid and not.

Whatever arrives: no 5xx, every error is the spec's JSON, no traceback in
the log for a client's mistake, no filesystem path in any body, nothing
written outside the storage root. CI runs a bounded number of examples;
`make fuzz` sets REGD_FUZZ_EXAMPLES for a longer run.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import threads
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests.support.server import RegistryServer, simple_image
from tests.support.strategies import repository_names, sha256_digests, tags

EXAMPLES = int(os.environ.get("REGD_FUZZ_EXAMPLES", "400"))

_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40)
_escapes = st.sampled_from(["%2e%2e", "%2F", "%00", "%ff", "%c3%28", "..", ".", "%", "%zz", "~", "%20", "a/../b"])
_hostile = st.one_of(_text, _escapes, st.text("./%_-:@abcAZ09", max_size=30), st.just(""), st.just("x" * 300))


def _quoted(text: str) -> str:
    return quote(text, safe="/:@%")


class Fuzz:
    """The values the suite knows exist (so generated requests reach deep code as well as shallow refusals)."""

    def __init__(self):
        self.names = ["fuzz", "fuzz/deep/name"]
        self.tags = ["latest"]
        self.digests = []
        self.uploads = []
        self.tokens = []


def _b64(data: bytes) -> str:
    import base64
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def authorizations(known: Fuzz):
    """Bearer tokens that are real, forged, truncated or nonsense; Basic credentials good and bad."""
    import base64
    jwt_headers = st.fixed_dictionaries({"alg": st.sampled_from(["RS256", "ES256", "HS256", "none", "PS512", ""]),
                                         "typ": st.just("JWT")},
                                        optional={"kid": st.one_of(_text, st.integers()),
                                                  "x5c": st.one_of(st.lists(st.one_of(_text, st.integers()), max_size=2),
                                                                   _text, st.integers()),
                                                  "jwk": st.dictionaries(_text, _text, max_size=2)})
    claims = st.fixed_dictionaries({}, optional={
        "iss": st.one_of(st.just("regd-issuer"), _text), "aud": st.one_of(st.just("regd-test"), _text),
        "exp": st.one_of(st.integers(), _text, st.floats(allow_nan=False)), "nbf": st.one_of(st.integers(), _text),
        "access": st.lists(st.fixed_dictionaries({"type": _text, "name": _text, "actions": st.lists(_text)}),
                           max_size=2)})
    forged = st.builds(lambda h, c, sig: f"{_b64(json.dumps(h).encode())}.{_b64(json.dumps(c).encode())}.{_b64(sig)}",
                       jwt_headers, claims, st.binary(max_size=64))
    tokens = st.one_of(st.sampled_from(known.tokens or ["x"]), forged,
                       st.sampled_from(known.tokens or ["x"]).map(lambda t: t[:-3]), _text)
    basics = st.builds(lambda u, p: "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode(),
                       st.one_of(st.sampled_from(["alice", "bob"]), _text), st.one_of(st.just("a-pass"), _text))
    values = st.one_of(tokens.map(lambda t: "Bearer " + t), basics, _text)
    return values.map(lambda v: v.encode("utf-8").decode("latin-1"))  # as raw bytes on the wire


def _known(values):
    return st.sampled_from(values) if values else st.nothing()


def strategies(known: Fuzz):
    names = st.one_of(st.sampled_from(known.names), repository_names(), _hostile)
    references = st.one_of(_known(known.tags + known.digests), tags, sha256_digests, _hostile,
                           st.sampled_from(["sha512:" + "a" * 128, "sha256:" + "A" * 64, "md5:x", "sha256:"]))
    digests = st.one_of(_known(known.digests), sha256_digests, _hostile,
                        st.sampled_from(["sha256:" + "0" * 63, "sha384:" + "b" * 96, "sha256:" + "z" * 64]))
    uploads = st.one_of(_known(known.uploads), st.uuids().map(str), _hostile)
    numbers = st.one_of(st.integers(-5, 10**12).map(str), _hostile)
    query = st.lists(st.tuples(st.sampled_from(["n", "last", "digest", "mount", "from", "artifactType", "q",
                                               "service", "scope", "account", "x"]),
                               st.one_of(numbers, digests, names, _hostile)), max_size=3)
    paths = st.one_of(
        st.just("/"), st.just("/v2/"), st.just("/v2"), st.just("/v2/_catalog"), st.just("/v1/_ping"),
        st.just("/v1/search"), st.just("/auth/token"),
        st.builds("/v2/{}/tags/list".format, names),
        st.builds("/v2/{}/manifests/{}".format, names, references),
        st.builds("/v2/{}/blobs/{}".format, names, digests),
        st.builds("/v2/{}/blobs/uploads/".format, names),
        st.builds("/v2/{}/blobs/uploads/{}".format, names, uploads),
        st.builds("/v2/{}/referrers/{}".format, names, digests),
        st.lists(st.one_of(_hostile, st.sampled_from(["v2", "blobs", "uploads", "manifests", "_catalog", ""])),
                 max_size=6).map(lambda parts: "/" + "/".join(parts)),
    )
    defined = st.sampled_from(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"])
    methods = st.one_of(defined, defined, defined, defined,
                        st.sampled_from(["OPTIONS", "TRACE", "get", "Put", "PROPFIND", "CONNECT"]),
                        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=12))
    json_values = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _text),
        lambda children: st.one_of(st.lists(children, max_size=4),
                                   st.dictionaries(st.sampled_from(["schemaVersion", "mediaType", "config", "layers",
                                                                    "manifests", "digest", "size", "urls",
                                                                    "subject", "annotations", "artifactType"])
                                                   | _text, children, max_size=5)),
        max_leaves=30)
    manifests = st.fixed_dictionaries({
        "schemaVersion": st.one_of(st.just(2), json_values),
        "mediaType": st.one_of(st.sampled_from(["application/vnd.oci.image.manifest.v1+json",
                                                "application/vnd.docker.distribution.manifest.v2+json",
                                                "application/vnd.oci.image.index.v1+json"]), json_values),
        "config": st.one_of(st.fixed_dictionaries({"digest": digests, "size": st.integers(-1, 10**15),
                                                   "mediaType": _text}), json_values),
        "layers": st.lists(st.fixed_dictionaries({"digest": digests, "size": st.integers(-1, 10**15),
                                                  "mediaType": _text, "urls": st.lists(_text, max_size=2)}),
                           max_size=3),
    })
    nested = st.integers(1, 6000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth)
    bodies = st.one_of(st.none(), st.binary(max_size=3000),
                       json_values.map(lambda v: json.dumps(v).encode()),
                       manifests.map(lambda v: json.dumps(v).encode()), nested)
    header_values = st.one_of(_text.map(lambda t: t.encode("utf-8").decode("latin-1")), _escapes)
    headers = st.dictionaries(
        st.sampled_from(["Host", "Content-Type", "Content-Range", "Range", "Authorization", "Accept",
                         "X-Forwarded-Proto", "X-Forwarded-Host", "Transfer-Encoding", "Expect", "X-Custom"]),
        st.one_of(header_values, st.sampled_from(["..", "a/..", "[::1]:5000", "bytes=0-1", "0-0", "chunked",
                                                  "application/vnd.oci.image.manifest.v1+json",
                                                  "Basic Zm9vOmJhcg==", "Bearer x.y.z", "100-continue"])),
        max_size=4)
    if known.tokens:
        headers = st.tuples(headers, authorizations(known)).map(lambda pair: {**pair[0], "Authorization": pair[1]})
    return st.tuples(methods, paths, query, headers, bodies)


def ui_strategies(known: Fuzz):
    """Requests a browser (or an attacker posing as one) sends to the web UI under /ui/."""
    names = st.one_of(st.sampled_from(known.names), repository_names(), _hostile, st.just("<script>x</script>"))
    references = st.one_of(_known(known.tags + known.digests), tags, sha256_digests, _hostile)
    numbers = st.one_of(st.integers(-5, 10**30).map(str), _hostile)
    query = st.lists(st.tuples(st.sampled_from(["q", "page", "orgpage", "tagpage", "next", "reference", "deleted",
                                               "x"]), st.one_of(numbers, names, references)), max_size=3)
    paths = st.one_of(
        st.sampled_from(["/", "/ui", "/ui/", "/ui/search", "/ui/login", "/ui/logout", "/ui/static/regd.css",
                         "/ui/static/copy.js"]),
        st.builds("/ui/o/{}".format, names),
        st.builds("/ui/r/{}".format, names),
        st.builds("/ui/r/{}/-/tags/{}".format, names, references),
        st.builds("/ui/r/{}/-/manifests/{}".format, names, references),
        st.builds("/ui/r/{}/-/delete".format, names),
        st.builds("/ui/r/{}/-/description".format, names),
        st.builds("/ui/static/{}".format, _hostile),
        st.lists(st.one_of(_hostile, st.sampled_from(["ui", "r", "-", "tags", "manifests", "o", "static", ""])),
                 max_size=6).map(lambda parts: "/ui/" + "/".join(parts)),
    )
    methods = st.one_of(st.sampled_from(["GET", "GET", "POST", "POST", "HEAD"]),
                        st.sampled_from(["PUT", "DELETE", "OPTIONS", "get", "PATCH"]))
    form = st.lists(st.tuples(st.sampled_from(["csrf", "username", "password", "reference", "description", "next",
                                              "confirm", "x"]), st.one_of(_hostile, names, references)), max_size=5)
    bodies = st.one_of(st.none(), form.map(lambda pairs: "&".join(f"{k}={_quoted(v)}" for k, v in pairs).encode()),
                       st.binary(max_size=2000))
    cookies = st.one_of(st.none(), _text.map(lambda t: "regd_session=" + t.encode("utf-8").decode("latin-1")),
                        st.builds(lambda a, b: f"regd_session={_b64(a)}.{_b64(b)}", st.binary(max_size=40),
                                  st.binary(max_size=40)))
    header_values = st.one_of(_text.map(lambda t: t.encode("utf-8").decode("latin-1")), _escapes)
    headers = st.builds(
        lambda extra, content_type, cookie: {**extra, **({"Content-Type": content_type} if content_type else {}),
                                             **({"Cookie": cookie} if cookie else {})},
        st.dictionaries(st.sampled_from(["Host", "Accept", "Referer", "Origin", "X-Forwarded-Proto",
                                         "X-Forwarded-Host"]), header_values, max_size=3),
        st.one_of(st.none(), st.sampled_from(["application/x-www-form-urlencoded", "multipart/form-data",
                                              "text/plain"]), header_values),
        cookies)
    return st.tuples(methods, paths, query, headers, bodies)


def send(port: int, method: str, path: str, headers: dict, body: bytes | None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host="Host" in headers, skip_accept_encoding=True)
        for name, value in headers.items():
            if name in ("Content-Length", "Transfer-Encoding"):
                continue
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class FuzzTests(TestCase):
    async def seed(self, server, known: Fuzz, headers=None):
        for name in known.names:
            manifest = await simple_image(server, name)
            response, _, body = await server.push_manifest(name, "latest", manifest)
            self.assertEqual(response.code, 201)
            known.digests += ["sha256:" + hashlib.sha256(body).hexdigest(), manifest["config"]["digest"],
                              manifest["layers"][0]["digest"]]
            response, _ = await server.request("POST", f"/v2/{name}/blobs/uploads/", headers=headers)
            known.uploads.append(response.headers.getRawHeaders("Docker-Upload-UUID")[0])

    async def fuzz(self, server, known: Fuzz, examples: int, requests=strategies):
        failures = []

        def observe(event):
            if event.get("log_failure") is not None or event.get("isError"):
                failures.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        port = server.port.getHost().port
        root = os.path.abspath(server.root)

        @settings(max_examples=examples, deadline=None, database=None,
                  derandomize=not os.environ.get("REGD_FUZZ_RANDOM"), suppress_health_check=list(HealthCheck))
        @given(requests(known))
        def check(request):
            method, path, query, headers, body = request
            if query:
                path += "?" + "&".join(f"{key}={_quoted(value)}" for key, value in query)
            path = quote(path, safe="/:@%?=&")  # escapes (%ff, %2e%2e) go through as generated
            before = len(failures)
            status, content = send(port, method, path, headers, body)
            described = f"{method} {path[:200]} {headers} -> {status} {content[:300]!r}"
            assert status < 500, described
            assert b"Traceback" not in content, described
            assert root.encode() not in content and b"/tmp/" not in content, described
            assert len(failures) == before, f"{described}: logged {failures[before:]}"
            if status >= 400 and content and path.startswith("/v2") and method.upper() != "HEAD":
                assert json.loads(content)["errors"][0]["code"], described
            assert b"<script>x</script>" not in content, f"{described}: markup from the request was not escaped"

        await threads.deferToThread(check)
        parent = os.path.dirname(root)
        self.assertEqual(os.listdir(parent), [os.path.basename(root)], "something was written outside the root")

    async def test_no_request_gets_a_5xx_a_traceback_or_a_path(self):
        server = RegistryServer(self, spool_threshold=1024)
        known = Fuzz()
        await self.seed(server, known)
        await self.fuzz(server, known, EXAMPLES)

    async def test_with_token_auth_forged_and_real_credentials(self):
        """Behind the built-in token issuer: tokens real and forged, Basic logins good and bad."""
        import base64

        from regd.daemon.authsetup import build_token_access
        from regd.storage.threads import inline_runner
        from tests.http.test_htpasswd import write_htpasswd
        from tests.support.certs import token_signing_pair
        from twisted.internet import reactor

        directory = os.path.abspath(self.mktemp())
        cert, key = token_signing_pair(directory)
        htpasswd = write_htpasswd(os.path.join(directory, "htpasswd"), {"alice": "a-pass", "bob": "b-pass"})
        rules = {"access": [{"names": ["*"], "users": ["alice"], "actions": ["pull", "push", "delete"]},
                            {"names": ["fuzz"], "anonymous": True, "actions": ["pull"]}]}
        section = {"realm": "http://placeholder/auth/token", "service": "regd-test", "issuer": "regd-issuer",
                   "rootcertbundle": cert, "builtin": dict(rules, key=key, htpasswd=htpasswd)}
        access, issuer = build_token_access(section, reactor, inline_runner)
        issuer.passwords.failures.base = 0  # no growing slow-down for the fuzzer's bad passwords
        server = RegistryServer(self, spool_threshold=1024, access=access)
        server.api.token_issuer = issuer
        access.realm = server.base + "/auth/token"
        known = Fuzz()
        login = {"Authorization": "Basic " + base64.b64encode(b"alice:a-pass").decode()}
        for scope in ["repository:fuzz:pull,push,delete", "repository:fuzz/deep/name:pull,push", "registry:catalog:*"]:
            response, body = await server.request("GET", f"/auth/token?service=regd-test&scope={scope}",
                                                  headers=login)
            self.assertEqual(response.code, 200, body)
            known.tokens.append(json.loads(body)["token"])
        self.assertTrue(known.tokens)
        await self.fuzz(server, known, max(EXAMPLES // 2, 50))

    async def test_web_ui_pages_and_forms(self):
        """The web UI's pages and forms: hostile names, queries, forms, forged session cookies, odd methods."""
        from tests.support.web import WebServer

        server = WebServer(self, spool_threshold=1024)
        known = Fuzz()
        await self.seed(server, known)
        await self.fuzz(server, known, max(EXAMPLES // 2, 50), requests=ui_strategies)
