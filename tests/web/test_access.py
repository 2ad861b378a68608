"""The browser's rights come from the same auth layer as the API's."""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from regd.http.access import OpenAccess
from regd.http.htpasswd import HtpasswdAccess
from regd.http.tokenissuer import parse_rules
from regd.storage.threads import inline_runner
from regd.web.access import web_access
from tests.http.test_htpasswd import write_htpasswd


class _Peer:
    host = "10.0.0.9"


class _Request:
    def getClientAddress(self):
        return _Peer()


def check(access, user, password):
    return defer.ensureDeferred(access.check_password(_Request(), user, password))


class _Issuer:
    def __init__(self, passwords, rules):
        self.passwords, self.rules = passwords, rules


class WebAccessTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        path = write_htpasswd(os.path.abspath(self.mktemp()), {"alice": "wonderland", "bob": "builder"})
        self.passwords = HtpasswdAccess("regd", path, inline_runner, self.clock)

    def test_open_registry_lets_everyone_do_everything_and_has_no_login(self):
        for controller in (None, OpenAccess()):
            access = web_access(controller)
            self.assertFalse(access.login_supported)
            self.assertEqual(access.actions(None, "any/repo"), {"pull", "push", "delete"})

    def test_htpasswd_users_may_do_everything_anonymous_nothing(self):
        access = web_access(self.passwords)
        self.assertTrue(access.login_supported)
        self.assertEqual(access.actions("alice", "x"), {"pull", "push", "delete"})
        self.assertFalse(access.may_pull(None, "x"))
        self.assertTrue(self.successResultOf(check(access, "alice", "wonderland")))

    def test_a_user_removed_from_the_file_loses_their_rights_at_once(self):
        access = web_access(self.passwords, admins={"alice"})
        self.assertEqual(access.current("alice"), "alice")
        write_htpasswd(self.passwords.path, {"bob": "builder"})
        os.utime(self.passwords.path, ns=(0, 1))  # a different stamp even within one clock tick
        self.assertIsNone(access.current("alice"))
        self.assertFalse(access.may_pull(access.current("alice"), "x"))
        self.assertFalse(access.is_admin(access.current("alice")))
        self.assertEqual(access.current("bob"), "bob")
        self.assertEqual(web_access(None).current("anyone"), "anyone")

    def test_wrong_passwords_are_slowed_down_by_the_auth_layer(self):
        access = web_access(self.passwords)
        d = check(access, "alice", "nope")
        self.assertNoResult(d)  # answered after the htpasswd checker's delay
        self.clock.advance(10)
        self.assertFalse(self.successResultOf(d))
        self.assertEqual(self.passwords.failures.total, 1)
        for user in ("", "a:b", "nobody"):
            d = check(access, user, "x")
            self.clock.advance(20)
            self.assertFalse(self.successResultOf(d))

    def test_builtin_token_issuer_rules_decide_per_user_and_anonymous(self):
        rules = parse_rules([
            {"names": ["public/*"], "actions": ["pull"], "anonymous": True},
            {"names": ["team/*"], "actions": ["pull", "push"], "users": ["alice"]},
            {"names": ["team/*"], "actions": ["*"], "groups": ["admins"]},
        ], {"admins": ["bob"]})
        access = web_access(object(), _Issuer(self.passwords, rules))
        self.assertTrue(access.login_supported)
        self.assertTrue(access.may_pull(None, "public/x"))
        self.assertFalse(access.may_pull(None, "team/x"))
        self.assertTrue(access.may_pull("alice", "team/x"))
        self.assertFalse(access.may_delete("alice", "team/x"))
        self.assertTrue(access.may_delete("bob", "team/x"))

    def test_external_token_issuer_means_no_login_and_nothing_anonymous(self):
        access = web_access(object(), None)
        self.assertFalse(access.login_supported)
        self.assertFalse(access.may_pull(None, "public/x"))
