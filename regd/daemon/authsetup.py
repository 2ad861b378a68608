# -*- test-case-name: tests.http.test_tokenauth -*-
"""
The `auth` section turned into access controllers: validation at start-up
(one-line errors), htpasswd or token access with the built-in issuer, and
who may use the admin endpoints.
"""

from __future__ import annotations

from twisted.logger import Logger

log = Logger()


def auth_settings(config, tls_enabled: bool):
    """
    Validate the `auth` section; returns it (or None for an open registry).
    Passwords over plain HTTP beyond loopback are refused unless
    `allowinsecure` says a TLS proxy is in front.
    """
    auth = config.auth
    if not auth:
        return None
    from regd.http.htpasswd import HtpasswdError, parse_htpasswd
    unsupported = sorted(set(auth) - {"htpasswd", "token"})
    if unsupported or len(auth) != 1:
        raise HtpasswdError(f"auth.{(unsupported or sorted(auth))[0]}: configure exactly one of htpasswd or token")
    method, section = next(iter(auth.items()))
    section = section or {}
    if method == "htpasswd":
        if not section.get("realm") or not section.get("path"):
            raise HtpasswdError("auth.htpasswd: realm and path are both required")
        parse_htpasswd(section["path"])
        passwords_here = True
    else:
        build_token_access(section, clock=None)  # reads and checks every file now
        passwords_here = bool(section.get("builtin"))
    loopback = config.http.host_addr in ("127.0.0.1", "::1", "localhost")
    if passwords_here and not tls_enabled and not loopback:
        if not section.get("allowinsecure"):
            raise HtpasswdError(f"auth.{method}: passwords would cross the network in clear text; configure "
                                f"http.tls or set auth.{method}.allowinsecure: true (behind a TLS proxy)")
        log.warn("allowinsecure is set: passwords are accepted over plain HTTP")
    return method, section


def build_token_access(section, clock, run_in_thread=None):
    """TokenAccess (and the built-in TokenIssuer when configured) from auth.token."""
    from regd.http.tokenauth import TokenAccess, TokenConfigError, load_bundle, load_jwks
    for key in ("realm", "service", "issuer", "rootcertbundle"):
        if not section.get(key):
            raise TokenConfigError(f"auth.token.{key}: required")
    roots = load_bundle(section["rootcertbundle"])
    jwks = load_jwks(section["jwks"]) if section.get("jwks") else None
    issuer = None
    builtin = section.get("builtin")
    if builtin:
        from regd.http.htpasswd import HtpasswdAccess
        from regd.http.tokenissuer import TokenIssuer, parse_rules
        from regd.units import parse_duration
        rules = parse_rules(builtin.get("access") or [], builtin.get("groups"))
        try:
            with open(builtin["key"], "rb") as f:
                key_pem = f.read()
            with open(section["rootcertbundle"], "rb") as f:
                certificate_pem = f.read()
        except (KeyError, OSError) as e:
            raise TokenConfigError(f"auth.token.builtin.key: cannot read the signing key: {e}") from None
        passwords = HtpasswdAccess(section["realm"], builtin.get("htpasswd", ""), run_in_thread, clock) \
            if builtin.get("htpasswd") else None
        if passwords is None:
            raise TokenConfigError("auth.token.builtin.htpasswd: required (the users who may log in)")
        try:
            issuer = TokenIssuer(service=section["service"], issuer=section["issuer"], key_pem=key_pem,
                                 certificate_pem=certificate_pem, passwords=passwords, rules=rules,
                                 clock=clock or __import__("time"),
                                 expiration=parse_duration(builtin.get("expiration", "5m")))
        except ValueError as e:
            raise TokenConfigError(f"auth.token.builtin.key: {e}") from None
    visible = (lambda subject, name: issuer.rules.may_pull(subject or None, name)) if issuer else None
    access = TokenAccess(section["realm"], section["service"], section["issuer"], roots, clock, jwks, visible)
    return access, issuer


def admin_authorizer(section, access, passwords):
    """
    Who may use the admin endpoints: users listed in `admins` (checked with
    their password), or, with an external token issuer, tokens granting
    registry:notifications:*.
    """
    from regd.http.access import Scope
    from regd.oci.errors import Denied
    admins = {str(a) for a in (section.get("admins") or (section.get("builtin") or {}).get("admins") or [])}

    async def authorize(request):
        if passwords is None:
            return await access.authorize(request, [Scope("registry", "notifications", ("*",))])
        grant = await passwords.authorize(request, [])
        if grant.actor not in admins:
            raise Denied("admin access required")
        return grant

    return authorize
