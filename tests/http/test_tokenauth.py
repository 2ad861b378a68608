"""Token auth: Bearer challenges with exact scopes, JWT verification, the built-in issuer and its rules."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.parse

import jwt
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from regd.storage.threads import inline_runner
from regd.daemon.tap import build_token_access
from tests.http.test_htpasswd import write_htpasswd
from tests.support.certs import token_signing_pair
from tests.support.server import RegistryServer, errors_of, header

RULES = {
    "groups": {"team": ["alice"]},
    "access": [
        {"names": ["team/*"], "groups": ["team"], "actions": ["pull", "push"]},
        {"names": ["team/*"], "users": ["bob"], "actions": ["pull"]},
        {"names": ["public/*"], "anonymous": True, "actions": ["pull"]},
        {"names": ["*"], "users": ["alice"], "actions": ["delete"]},
    ],
}


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class TokenHTTPTests(TestCase):
    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        self.cert, self.key = token_signing_pair(directory)
        htpasswd = write_htpasswd(os.path.join(directory, "htpasswd"), {"alice": "a-pass", "bob": "b-pass"})
        section = {"realm": "http://placeholder/auth/token", "service": "regd-test", "issuer": "regd-issuer",
                   "rootcertbundle": self.cert, "builtin": dict(RULES, key=self.key, htpasswd=htpasswd)}
        access, issuer = build_token_access(section, reactor, inline_runner)
        self.server = RegistryServer(self, access=access)
        self.server.api.token_issuer = issuer
        access.realm = self.server.base + "/auth/token"
        self.access = access

    async def token(self, scopes, user=None, password=None):
        query = "service=regd-test&" + "&".join("scope=" + urllib.parse.quote(s) for s in scopes)
        headers = {"Authorization": basic(user, password)} if user else {}
        response, body = await self.server.request("GET", "/auth/token?" + query, headers=headers)
        self.assertEqual(response.code, 200, body)
        return json.loads(body)["token"]

    async def call(self, method, path, token=None, body=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.server.request(method, path, body, headers)

    async def test_challenge_names_the_exact_scope(self):
        response, body = await self.call("POST", "/v2/team/app/blobs/uploads/")
        self.assertEqual(response.code, 401)
        self.assertEqual(errors_of(body), ["UNAUTHORIZED"])
        self.assertEqual(header(response, "WWW-Authenticate"),
                         f'Bearer realm="{self.server.base}/auth/token",service="regd-test",'
                         f'scope="repository:team/app:pull,push"')
        response, _ = await self.call("GET", "/v2/_catalog")
        self.assertIn('scope="registry:catalog:*"', header(response, "WWW-Authenticate"))

    async def test_two_users_with_different_rights(self):
        alice = await self.token(["repository:team/app:pull,push"], "alice", "a-pass")
        claims = jwt.decode(alice, options={"verify_signature": False})
        self.assertEqual(claims["access"], [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}])
        self.assertEqual(claims["sub"], "alice")
        response, _ = await self.call("POST", "/v2/team/app/blobs/uploads/", alice)
        self.assertEqual(response.code, 202)
        bob = await self.token(["repository:team/app:pull,push"], "bob", "b-pass")
        self.assertEqual(jwt.decode(bob, options={"verify_signature": False})["access"][0]["actions"], ["pull"])
        response, _ = await self.call("POST", "/v2/team/app/blobs/uploads/", bob)
        self.assertEqual(response.code, 401)
        self.assertIn('error="insufficient_scope"', header(response, "WWW-Authenticate"))
        response, _ = await self.call("GET", "/v2/team/app/tags/list", bob)
        self.assertEqual(response.code, 404)  # allowed to look; the repository does not exist yet

    async def test_anonymous_pull_where_allowed_only(self):
        anonymous = await self.token(["repository:public/x:pull", "repository:team/app:pull"])
        granted = {a["name"]: a["actions"] for a in jwt.decode(anonymous, options={"verify_signature": False})["access"]}
        self.assertEqual(granted, {"public/x": ["pull"], "team/app": []})

    async def test_wrong_password_gets_no_token(self):
        response, _ = await self.server.request("GET", "/auth/token?service=regd-test&scope=repository:team/a:pull",
                                                headers={"Authorization": basic("alice", "wrong")})
        self.assertEqual(response.code, 401)

    async def test_catalog_lists_only_pullable_repositories(self):
        alice = await self.token(["repository:team/app:push,pull", "repository:other/thing:push,pull",
                                  "registry:catalog:*"], "alice", "a-pass")
        # Repositories are directories holding _manifests.
        for name in ("team/app", "public/site", "secret/stuff"):
            os.makedirs(os.path.join(self.server.root, "docker/registry/v2/repositories", name, "_manifests"))
        # Made behind regd's back: search's index learns of them by a rebuild (regd reindex).
        await self.server.registry.index.rebuild()
        response, body = await self.call("GET", "/v2/_catalog", alice)
        self.assertEqual(json.loads(body)["repositories"], ["public/site", "team/app"])
        anonymous = await self.token(["registry:catalog:*"])
        response, body = await self.call("GET", "/v2/_catalog", anonymous)
        self.assertEqual(json.loads(body)["repositories"], ["public/site"])
        # docker search: the same rule.
        response, body = await self.call("GET", "/v1/search?q=t", alice)
        self.assertEqual([r["name"] for r in json.loads(body)["results"]], ["team/app", "public/site"])
        response, body = await self.call("GET", "/v1/search?q=t", anonymous)
        self.assertEqual([r["name"] for r in json.loads(body)["results"]], ["public/site"])
        response, body = await self.call("GET", "/v1/search?q=t")
        self.assertEqual(response.code, 401)


class VerificationTests(SynchronousTestCase):
    def setUp(self):
        directory = os.path.abspath(self.mktemp())
        self.cert, self.key = token_signing_pair(directory)
        self.other_cert, self.other_key = token_signing_pair(directory, "other")
        section = {"realm": "https://r/auth", "service": "svc", "issuer": "iss", "rootcertbundle": self.cert}
        self.access, _ = build_token_access(section, reactor)
        with open(self.key, "rb") as f:
            self.key_pem = f.read()
        with open(self.cert, "rb") as f:
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization
            certificate = x509.load_pem_x509_certificate(f.read())
            self.x5c = [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()]
            from regd.http.tokenauth import libtrust_key_id
            self.kid = libtrust_key_id(certificate.public_key())

    def make(self, key_pem=None, headers=None, **claims):
        now = time.time()
        body = {"iss": "iss", "aud": "svc", "sub": "u", "exp": now + 60, "nbf": now - 1,
                "access": [{"type": "repository", "name": "r", "actions": ["pull"]}]}
        body.update(claims)
        return jwt.encode(body, key_pem or self.key_pem, algorithm="ES256",
                          headers=headers if headers is not None else {"x5c": self.x5c})

    def test_valid_tokens_by_x5c_and_by_libtrust_kid(self):
        self.assertEqual(self.access.verify(self.make())["sub"], "u")
        self.assertEqual(self.access.verify(self.make(headers={"kid": self.kid}))["sub"], "u")

    def test_rejections(self):
        with open(self.other_key, "rb") as f:
            other = f.read()
        bad = [self.make(exp=time.time() - 3600), self.make(nbf=time.time() + 3600), self.make(aud="elsewhere"),
               self.make(iss="someone"), self.make(key_pem=other), self.make(headers={"kid": "NOPE"}),
               self.make(headers={})]
        for token in bad:
            self.assertRaises(jwt.PyJWTError, self.access.verify, token)
        unsigned = jwt.encode({"iss": "iss", "aud": "svc", "exp": time.time() + 60}, None, algorithm="none")
        self.assertRaises(jwt.PyJWTError, self.access.verify, unsigned)


class JWKSTests(SynchronousTestCase):
    def test_keys_from_a_jwks_file(self):
        from cryptography.hazmat.primitives.asymmetric import ec
        directory = os.path.abspath(self.mktemp())
        cert, _ = token_signing_pair(directory)
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk.update(kid="key-1", alg="ES256", use="sig")
        jwks = os.path.join(directory, "jwks.json")
        with open(jwks, "w") as f:
            json.dump({"keys": [jwk]}, f)
        access, _ = build_token_access({"realm": "r", "service": "svc", "issuer": "iss", "rootcertbundle": cert,
                                        "jwks": jwks}, reactor)
        token = jwt.encode({"iss": "iss", "aud": "svc", "exp": time.time() + 60, "sub": "ci"}, key,
                           algorithm="ES256", headers={"kid": "key-1"})
        self.assertEqual(access.verify(token)["sub"], "ci")
        forged = jwt.encode({"iss": "iss", "aud": "svc", "exp": time.time() + 60}, ec.generate_private_key(
            ec.SECP256R1()), algorithm="ES256", headers={"kid": "key-1"})
        self.assertRaises(jwt.PyJWTError, access.verify, forged)


class _HeaderOnly:
    def __init__(self, token: str):
        self._authorization = b"Bearer " + token.encode("ascii")

    def getHeader(self, name):
        return self._authorization if name.lower() == b"authorization" else None


def _b64(document) -> str:
    raw = json.dumps(document).encode() if not isinstance(document, bytes) else document
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class MalformedTokenTests(SynchronousTestCase):
    """Every malformed token is a 401 with the Bearer challenge, never an internal error."""

    setUp = VerificationTests.setUp
    make = VerificationTests.make

    def assert_challenged(self, token: str):
        from regd.http.access import repository
        from regd.oci.errors import Unauthorized
        try:
            self.access._authorize(_HeaderOnly(token), [repository("r", "pull")])
        except Unauthorized as e:
            self.assertIn("Bearer ", e.headers["WWW-Authenticate"])
            self.assertIn('error="invalid_token"', e.headers["WWW-Authenticate"])
        else:
            self.fail(f"token accepted: {token}")

    def forged(self, header, claims=None) -> str:
        now = time.time()
        body = claims if claims is not None else {"iss": "iss", "aud": "svc", "exp": now + 60}
        return f"{_b64(header)}.{_b64(body)}.{_b64(b'signature')}"

    def test_malformed_headers(self):
        for header in [{"alg": "ES256", "x5c": 5}, {"alg": "ES256", "x5c": [5]}, {"alg": "ES256", "x5c": [{}]},
                       {"alg": "ES256", "x5c": "abc"}, {"alg": "ES256", "x5c": ["!!"]},
                       {"alg": "ES256", "x5c": [[]]}, {"alg": "ES256", "kid": ["x"]}, {"alg": "ES256", "kid": 5},
                       {"alg": ["ES256"]}, {"alg": "RS256", "kid": self.kid}, {"alg": "ES384", "kid": self.kid},
                       {"alg": "RS256", "x5c": self.x5c}, [], "x", {"alg": "ES256", "x5c": [], "kid": {}}]:
            self.assert_challenged(self.forged(header))
        self.assert_challenged(self.forged(b'{"a":' * 5000 + b"1" + b"}" * 5000))

    def test_claims_of_the_wrong_type_are_refused(self):
        now = time.time()
        for claims in [{"exp": str(int(now + 60))}, {"exp": [now + 60]}, {"exp": True}, {"exp": {"a": 1}},
                       {"nbf": str(int(now - 10))}, {"nbf": [1]}, {"nbf": None}, {"iat": "x"},
                       {"access": 5}, {"access": "pull"}, {"sub": {"a": 1}}, {"exp": 1e400}, {"nbf": -1e400}]:
            token = self.make(**claims)
            self.assert_challenged(token)
