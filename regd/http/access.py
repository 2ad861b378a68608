# -*- test-case-name: tests.http.test_access -*-
"""
Access control seam: every route states the access it needs as scopes (the
Docker token spec's `type:name:actions`), and one access controller decides.

Without an `auth` section, regd runs open, like the reference registry with
no auth configured; htpasswd and token controllers plug in here.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from zope.interface import Interface, implementer


@attrs.frozen
class Scope:
    type: str  # "repository" or "registry"
    name: str  # repository name, or "catalog"
    actions: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def repository(name: str, *actions: str) -> Scope:
    return Scope("repository", name, tuple(actions))


CATALOG = Scope("registry", "catalog", ("*",))


@attrs.frozen
class Grant:
    """Who the caller is and what they may do beyond the scopes they asked for."""

    actor: str | None
    can_pull: object = attrs.field(default=lambda name: True, eq=False)

    def may_pull(self, name: str) -> bool:
        return bool(self.can_pull(name))


class IAccessController(Interface):
    def authorize(request, scopes):
        """
        Deferred[Grant] if the request may do everything in C{scopes};
        otherwise fail with a RegistryError (401 with a challenge, or 403).
        """


@implementer(IAccessController)
class OpenAccess:
    """No authentication configured: everyone may do everything."""

    def authorize(self, request, scopes):
        return defer.succeed(Grant(actor=None))
