# -*- test-case-name: tests.http.test_tokenauth -*-
"""
regd's built-in token issuer, so a small team gets per-repository rights
with no other server: `docker login` sends htpasswd credentials to the
token endpoint, which grants the requested actions the access rules allow
and signs a short-lived JWT that TokenAccess verifies.
"""

from __future__ import annotations

import base64
import fnmatch
import time
import uuid

import attrs
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from regd.http.responses import respond_json
from regd.oci.errors import Unauthorized

ACTIONS = ("pull", "push", "delete", "*")


@attrs.frozen
class Rule:
    names: tuple[str, ...]
    actions: frozenset
    users: frozenset = frozenset()
    groups: frozenset = frozenset()
    anonymous: bool = False

    def applies(self, user: str | None, groups: set[str], name: str) -> bool:
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.names):
            return False
        if self.anonymous:
            return True
        if user is None:
            return False
        return "*" in self.users or user in self.users or bool(groups & self.groups)


class AccessRules:
    """First-class per-repository rights: user or group → name patterns → actions."""

    def __init__(self, rules: list[Rule], groups: dict[str, set[str]]):
        self.rules = rules
        self._groups = groups

    def groups_of(self, user: str | None) -> set[str]:
        return {g for g, members in self._groups.items() if user is not None and user in members}

    def allowed(self, user: str | None, name: str) -> set[str]:
        groups = self.groups_of(user)
        actions: set[str] = set()
        for rule in self.rules:
            if rule.applies(user, groups, name):
                actions |= rule.actions
        return {"pull", "push", "delete"} if "*" in actions else actions

    def may_pull(self, user: str | None, name: str) -> bool:
        return "pull" in self.allowed(user, name)


def parse_rules(raw_rules, raw_groups, where: str = "auth.token.builtin") -> AccessRules:
    from regd.http.tokenauth import TokenConfigError
    if not isinstance(raw_rules, list):
        raise TokenConfigError(f"{where}.access: expected a list of rules")
    groups = {}
    for group, members in (raw_groups or {}).items():
        if not isinstance(members, list):
            raise TokenConfigError(f"{where}.groups.{group}: expected a list of users")
        groups[str(group)] = {str(m) for m in members}
    rules = []
    for i, raw in enumerate(raw_rules):
        at = f"{where}.access[{i}]"
        if not isinstance(raw, dict):
            raise TokenConfigError(f"{at}: expected a map")
        names = raw.get("names")
        actions = raw.get("actions")
        if not isinstance(names, list) or not names:
            raise TokenConfigError(f"{at}.names: expected a list of repository name patterns")
        if not isinstance(actions, list) or not actions or any(a not in ACTIONS for a in actions):
            raise TokenConfigError(f"{at}.actions: expected a list of pull, push, delete or *")
        rule = Rule(tuple(str(n) for n in names), frozenset(actions), frozenset(map(str, raw.get("users") or [])),
                    frozenset(map(str, raw.get("groups") or [])), bool(raw.get("anonymous", False)))
        if not (rule.users or rule.groups or rule.anonymous):
            raise TokenConfigError(f"{at}: name users, groups, or anonymous: true")
        rules.append(rule)
    return AccessRules(rules, groups)


def _signing_algorithm(key) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return "ES384"
    raise ValueError("the issuer key must be RSA, EC P-256 or EC P-384")


class TokenIssuer:
    def __init__(self, *, service: str, issuer: str, key_pem: bytes, certificate_pem: bytes, passwords,
                 rules: AccessRules, clock=time, expiration: float = 300.0):
        self.service, self.issuer = service, issuer
        self._key = serialization.load_pem_private_key(key_pem, None)
        self._algorithm = _signing_algorithm(self._key)
        chain = x509.load_pem_x509_certificates(certificate_pem)
        self._x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]
        self.passwords = passwords  # HtpasswdAccess: checks Basic credentials
        self.rules = rules
        self._clock = clock
        self._expiration = expiration

    def _now(self) -> float:
        return self._clock.seconds() if hasattr(self._clock, "seconds") else self._clock.time()

    async def handle(self, request) -> bytes:
        user = None
        if request.getHeader(b"Authorization"):
            grant = await self.passwords.authorize(request, [])  # 401 after a slow-down on bad passwords
            user = grant.actor
        service = _arg(request, "service")
        if service is not None and service != self.service:
            raise Unauthorized("unknown service", detail={"service": service[:100]})
        access = []
        for scope in request.args.get(b"scope", []):
            for item in scope.decode("utf-8", "replace").split(" "):
                parsed = _parse_scope(item)
                if parsed is None:
                    continue
                kind, name, actions = parsed
                if kind == "repository":
                    allowed = self.rules.allowed(user, name)
                    granted = sorted(a for a in actions if a in allowed)
                elif kind == "registry" and name == "catalog":
                    granted = ["*"] if user is not None or self.rules.rules else []
                else:
                    granted = []
                access.append({"type": kind, "name": name, "actions": granted})
        now = self._now()
        claims = {"iss": self.issuer, "sub": user or "", "aud": self.service, "exp": int(now + self._expiration),
                  "nbf": int(now) - 1, "iat": int(now), "jti": uuid.uuid4().hex, "access": access}
        token = jwt.encode(claims, self._key, algorithm=self._algorithm, headers={"x5c": self._x5c})
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return respond_json(request, 200, {"token": token, "access_token": token,
                                           "expires_in": int(self._expiration), "issued_at": issued})


def _arg(request, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None


def _parse_scope(text: str):
    parts = text.split(":")
    if len(parts) < 3:
        return None
    kind, actions = parts[0], parts[-1]
    name = ":".join(parts[1:-1])  # names may carry a registry port in other tools' scopes
    return kind, name, [a for a in actions.split(",") if a]
