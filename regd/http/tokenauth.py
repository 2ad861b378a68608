# -*- test-case-name: tests.http.test_tokenauth -*-
"""
Token authentication in the Docker registry token spec: Bearer challenges
naming the exact scope a request needs, and JWT verification (RS256/ES256
and friends) of tokens from a trusted issuer: a certificate chain in the
token's x5c header ending at `rootcertbundle`, or a key id found in the
bundle (libtrust ids, as registry:2 issuers use) or in a JWKS file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from zope.interface import implementer

from regd.http.access import Grant, IAccessController
from regd.oci.errors import Unauthorized

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
LEEWAY = 60.0  # seconds of clock skew tolerated on exp/nbf
# The key type each algorithm family needs: a kid or x5c naming another type is a forgery, not a crash.
_KEY_TYPES = {"RS": rsa.RSAPublicKey, "ES": ec.EllipticCurvePublicKey}
_TIME_CLAIMS = ("exp", "nbf", "iat")


class TokenConfigError(Exception):
    pass


def libtrust_key_id(public_key) -> str:
    """The key id registry:2 issuers use: base32 of a SHA-256 of the DER public key, grouped by 4."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i:i + 4] for i in range(0, 48, 4))


def load_bundle(path: str) -> list[x509.Certificate]:
    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as e:
        raise TokenConfigError(f"auth.token.rootcertbundle: cannot use {path}: {e}") from None


def load_jwks(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            keys = jwt.PyJWKSet.from_dict(json.load(f))
    except (OSError, ValueError, jwt.PyJWTError) as e:
        raise TokenConfigError(f"auth.token.jwks: cannot use {path}: {e}") from None
    return {k.key_id: k.key for k in keys.keys if k.key_id}


@implementer(IAccessController)
class TokenAccess:
    def __init__(self, realm: str, service: str, issuer: str, roots: list[x509.Certificate], clock,
                 jwks: dict | None = None, visible=None):
        self.realm, self.service, self.issuer = realm, service, issuer
        self._roots = roots
        self._keys_by_id = {libtrust_key_id(c.public_key()): c.public_key() for c in roots}
        self._keys_by_id.update(jwks or {})
        self._clock = clock
        # name -> bool for listings, given the subject; defaults to what the token grants.
        self._visible = visible

    def challenge(self, scopes, error: str | None = None, status_error=Unauthorized):
        parts = [f'realm="{self.realm}"', f'service="{self.service}"']
        if scopes:
            parts.append('scope="' + " ".join(str(s) for s in scopes) + '"')
        if error:
            parts.append(f'error="{error}"')
        return status_error(headers={"WWW-Authenticate": "Bearer " + ",".join(parts)})

    def authorize(self, request, scopes):
        from twisted.internet import defer
        return defer.execute(self._authorize, request, scopes)

    def _authorize(self, request, scopes):
        header = request.getHeader(b"Authorization") or b""
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            raise self.challenge(scopes)
        try:
            claims = self.verify(token.strip().decode("ascii"))
        except (jwt.PyJWTError, ValueError, UnicodeDecodeError, RecursionError):
            raise self.challenge(scopes, "invalid_token") from None
        granted = granted_actions(claims)
        for scope in scopes:
            have = granted.get((scope.type, scope.name), set())
            if not ("*" in have or set(scope.actions) <= have):
                raise self.challenge(scopes, "insufficient_scope")
        subject = claims.get("sub") or None

        def can_pull(name: str) -> bool:
            if self._visible is not None:
                return self._visible(subject, name)
            have = granted.get(("repository", name), set())
            return "pull" in have or "*" in have

        return Grant(actor=subject, can_pull=can_pull)

    def verify(self, token: str) -> dict:
        header = jwt.get_unverified_header(token)
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise jwt.InvalidAlgorithmError("algorithm not allowed")
        key = self._key_for(header)
        if not isinstance(key, _KEY_TYPES[algorithm[:2]]):
            raise jwt.InvalidKeyError("key type does not match the token's algorithm")
        # pyjwt would accept "exp": "123" (it calls int()); the spec says NumericDate.
        _check_claim_types(jwt.decode(token, options={"verify_signature": False}))
        return jwt.decode(token, key, algorithms=[algorithm], audience=self.service, issuer=self.issuer,
                          leeway=LEEWAY, options={"require": ["exp", "iss", "aud"]})

    def _key_for(self, header: dict):
        chain = header.get("x5c")
        if chain is not None:
            if not (isinstance(chain, list) and chain and all(isinstance(c, str) for c in chain)):
                raise jwt.InvalidTokenError("x5c must be a list of base64 certificates")
            certificates = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in chain]
            self._check_chain(certificates)
            return certificates[0].public_key()
        kid = header.get("kid", "")
        if not isinstance(kid, str):
            raise jwt.InvalidTokenError("kid must be a string")
        key = self._keys_by_id.get(kid)
        if key is None:
            raise jwt.InvalidTokenError("no trusted key for this token")
        return key

    def _check_chain(self, certificates: list[x509.Certificate]) -> None:
        now = self._clock.seconds()
        for certificate in certificates:
            if not (certificate.not_valid_before_utc.timestamp() - LEEWAY <= now
                    <= certificate.not_valid_after_utc.timestamp() + LEEWAY):
                raise jwt.InvalidTokenError("certificate in x5c not valid now")
        try:
            for child, parent in zip(certificates, certificates[1:]):
                child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise jwt.InvalidTokenError("x5c chain is broken") from None
        last = certificates[-1]
        for root in self._roots:
            if last == root:
                return
            try:
                last.verify_directly_issued_by(root)
                return
            except (ValueError, TypeError, InvalidSignature):
                continue
        raise jwt.InvalidTokenError("x5c chain does not lead to a trusted root")


def _check_claim_types(claims: dict) -> None:
    for name in _TIME_CLAIMS:
        if name in claims:
            value = claims[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise jwt.InvalidTokenError(f"{name} must be a number of seconds")
    if not isinstance(claims.get("access", []), list):
        raise jwt.InvalidTokenError("access must be a list")
    if not isinstance(claims.get("sub", ""), (str, type(None))):
        raise jwt.InvalidTokenError("sub must be a string")


def granted_actions(claims: dict) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for entry in claims.get("access") or []:
        if isinstance(entry, dict) and isinstance(entry.get("actions"), list):
            key = (str(entry.get("type", "")), str(entry.get("name", "")))
            granted.setdefault(key, set()).update(str(a) for a in entry["actions"])
    return granted
