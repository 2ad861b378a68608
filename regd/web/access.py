# -*- test-case-name: tests.web.test_access -*-
"""
What a browser user may do, decided by the same auth layer as the API:

- no `auth` section: everyone may pull, push and delete (as the API allows);
- htpasswd: a logged-in user may do everything, anonymous nothing;
- token with the built-in issuer: the issuer's access rules for the user
  (or for anonymous), exactly as a token request would be granted;
- token from an external issuer: regd holds no passwords, so nobody can log
  in here and anonymous sees nothing.

Passwords are checked by the auth layer's own htpasswd checker, so failed
logins are slowed down and counted as they are for `docker login`.
"""

from __future__ import annotations

import base64

import attrs

from regd.http.access import OpenAccess
from regd.http.htpasswd import HtpasswdAccess
from regd.oci.errors import RegistryError

ALL = frozenset({"pull", "push", "delete"})
NONE: frozenset = frozenset()


@attrs.frozen
class _BasicRequest:
    """Just enough of a request for the htpasswd checker: a Basic header and the client address."""

    authorization: bytes
    address: object

    def getHeader(self, name):
        return self.authorization if name.lower() == b"authorization" else None

    def getClientAddress(self):
        return self.address


class WebAccess:
    def __init__(self, actions_for, passwords=None, *, open: bool = False, admins=frozenset()):
        self._actions_for = actions_for  # (user or None, repository name) -> set of actions
        self.passwords = passwords  # an HtpasswdAccess, or None when nobody can log in here
        self.open = open  # no auth at all: nothing is hidden from anyone
        self.admins = frozenset(admins)  # auth's `admins`: the users who may use the admin endpoints

    @property
    def login_supported(self) -> bool:
        return self.passwords is not None

    def actions(self, user: str | None, name: str) -> frozenset:
        return frozenset(self._actions_for(user, name))

    def current(self, user: str | None) -> str | None:
        """
        C{user} while the password file still has them, else None (anonymous):
        a session's user is checked once per request, not once per repository.
        """
        if user is not None and self.passwords is not None and not self.passwords.knows(user):
            return None
        return user

    def may_pull(self, user: str | None, name: str) -> bool:
        return "pull" in self.actions(user, name)

    def may_delete(self, user: str | None, name: str) -> bool:
        return "delete" in self.actions(user, name)

    def is_admin(self, user: str | None) -> bool:
        """May set repository descriptions: an admin, or anyone on a registry without auth."""
        return self.open or (user is not None and user in self.admins)

    async def check_password(self, request, user: str, password: str) -> bool:
        """True for the right password; a wrong one is answered after the auth layer's slow-down."""
        if self.passwords is None or not user or ":" in user:
            return False
        header = b"Basic " + base64.b64encode(user.encode("utf-8") + b":" + password.encode("utf-8"))
        try:
            grant = await self.passwords.authorize(_BasicRequest(header, request.getClientAddress()), [])
        except RegistryError:
            return False
        return grant.actor == user




def web_access(controller, issuer=None, admins=frozenset()) -> WebAccess:
    """The browser-side policy matching the API's access controller (see the module docstring)."""
    if controller is None or isinstance(controller, OpenAccess):
        return WebAccess(lambda user, name: ALL, None, open=True)
    if isinstance(controller, HtpasswdAccess):
        return WebAccess(lambda user, name: ALL if user is not None else NONE, controller, admins=admins)
    if issuer is not None:
        return WebAccess(lambda user, name: issuer.rules.allowed(user, name), issuer.passwords, admins=admins)
    return WebAccess(lambda user, name: NONE, None)
