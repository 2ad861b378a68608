# -*- test-case-name: tests.http.test_htpasswd -*-
"""
Basic authentication against an htpasswd file of bcrypt entries (as
`htpasswd -Bbn` writes them), re-read whenever the file changes.

bcrypt is slow by design, so checks run in a thread and a successful check
is remembered (keyed by a hash of user, password and stored hash) until the
file changes. Unknown users cost the same as wrong passwords. Failed logins
are answered later and later per client address.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections import Counter, OrderedDict

import bcrypt
from twisted.internet import task
from twisted.logger import Logger
from zope.interface import implementer

from regd.http.access import Grant, IAccessController
from regd.oci.errors import Unauthorized

log = Logger()

_BCRYPT_PREFIXES = (b"$2y$", b"$2b$", b"$2a$")
_DUMMIES: dict[int, bytes] = {}


def dummy_hash(users: dict[str, bytes]) -> bytes:
    """
    A bcrypt hash of a random password at the cost most of the file's entries
    use, checked for unknown users: a dummy of another cost would answer them
    measurably faster or slower, telling which user names exist.
    """
    costs = Counter(_cost(h) for h in users.values())
    cost = costs.most_common(1)[0][0] if costs else 10
    if cost not in _DUMMIES:
        _DUMMIES[cost] = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(cost))
    return _DUMMIES[cost]


def _cost(hashed: bytes) -> int:
    try:
        return min(max(int(hashed[4:6]), 4), 31)
    except ValueError:
        return 10


class HtpasswdError(Exception):
    """An htpasswd file regd cannot use; names the file and line."""


def parse_htpasswd(path: str) -> dict[str, bytes]:
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise HtpasswdError(f"auth.htpasswd.path: cannot read {path}: {e.strerror or e}") from None
    users: dict[str, bytes] = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, hashed = line.partition(b":")
        if not sep or not user:
            raise HtpasswdError(f"{path} line {number}: expected user:hash")
        if not hashed.startswith(_BCRYPT_PREFIXES):
            raise HtpasswdError(f"{path} line {number}: only bcrypt entries are accepted "
                                f"(create them with htpasswd -B)")
        users[user.decode("utf-8", "replace")] = hashed
    return users


class FailedLogins:
    """Per-address failure counts and the delay each next failure is answered after."""

    def __init__(self, base: float = 0.1, cap: float = 10.0):
        self._counts: dict[str, int] = {}
        self.base, self.cap = base, cap
        self.total = 0

    def failed(self, address: str) -> float:
        self.total += 1
        count = self._counts.get(address, 0) + 1
        self._counts[address] = count
        if len(self._counts) > 100_000:  # bounded memory under a spray of addresses
            self._counts.pop(next(iter(self._counts)))
        return min(self.cap, self.base * 2 ** (count - 1))

    def succeeded(self, address: str) -> None:
        self._counts.pop(address, None)


@implementer(IAccessController)
class HtpasswdAccess:
    def __init__(self, realm: str, path: str, run_in_thread, clock, failures: FailedLogins | None = None):
        self.realm = realm
        self.path = path
        self._run = run_in_thread
        self._clock = clock
        self.failures = failures or FailedLogins()
        self._users = parse_htpasswd(path)
        self._dummy = dummy_hash(self._users)
        self._stamp = self._file_stamp()
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    def _file_stamp(self):
        try:
            st = os.stat(self.path)
            return st.st_mtime_ns, st.st_size, st.st_ino
        except OSError:
            return None

    def _reload_if_changed(self) -> None:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._users = parse_htpasswd(self.path)
        except HtpasswdError as e:
            log.error("htpasswd not reloaded, keeping the previous users: {error}", error=str(e))
            return
        self._dummy = dummy_hash(self._users)
        self._verified.clear()
        log.info("htpasswd reloaded: {count} users", count=len(self._users))

    def knows(self, user: str) -> bool:
        """Whether C{user} is (still) in the file; web sessions of removed users end with it."""
        self._reload_if_changed()
        return user in self._users

    def challenge(self) -> Unauthorized:
        return Unauthorized(headers={"WWW-Authenticate": f'Basic realm="{self.realm}", charset="UTF-8"'})

    async def authorize(self, request, scopes):
        credentials = _basic_credentials(request.getHeader(b"Authorization"))
        if credentials is None:
            raise self.challenge()
        user, password = credentials
        self._reload_if_changed()
        if await self._check(user, password):
            self.failures.succeeded(_address(request))
            return Grant(actor=user)
        delay = self.failures.failed(_address(request))
        log.warn("failed login for {user} from {addr}", user=user[:64], addr=_address(request))
        await task.deferLater(self._clock, delay, lambda: None)
        raise self.challenge()

    async def _check(self, user: str, password: bytes) -> bool:
        stored = self._users.get(user)
        key = hashlib.sha256(user.encode() + b"\0" + password + b"\0" + (stored or b"")).digest()
        if stored is not None and key in self._verified:
            self._verified.move_to_end(key)
            return True
        matched = await self._run(bcrypt.checkpw, password, stored if stored is not None else self._dummy)
        if matched and stored is not None:
            self._verified[key] = None
            if len(self._verified) > 10_000:
                self._verified.popitem(last=False)
            return True
        return False


def _address(request) -> str:
    return getattr(request.getClientAddress(), "host", "")


def _basic_credentials(header) -> tuple[str, bytes] | None:
    if not header:
        return None
    scheme, _, value = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except ValueError:
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "replace"), password
