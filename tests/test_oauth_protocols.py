"""OAUTHBEARER and XOAUTH2 over IMAP and POP3 on real sockets: offered
only where a token may travel (TLS here), JWTs signed in the test, an RFC
7662 endpoint on loopback, and RFC 7628's failure sequence on the wire."""

from __future__ import annotations

import base64
import json
import os
from typing import Any, cast

from twisted.cred.portal import Portal
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorThreads
from twisted.trial import unittest

from mailsrv.auth.checker import PasswdFileChecker
from mailsrv.auth.claims import ClaimRules
from mailsrv.auth.introspection import IntrospectionValidator
from mailsrv.auth.jwt import JWTValidator
from mailsrv.auth.oauth import OAuthErrorInfo
from mailsrv.auth.passwdfile import PasswdFile
from mailsrv.auth.realm import MailRealm
from mailsrv.auth.sasl import SaslServices
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryStorage
from tests import pgcluster
from tests.imap_helpers import tls_options
from tests.oauth_helpers import Endpoint, Keys, claims, sign
from tests.test_scram_protocols import Sockets, _Imap, _Pop3

RULES = ClaimRules(audience="imap")


def bearer(user: str, token: str) -> bytes:
    return f"n,a={user},\x01host=localhost\x01auth=Bearer {token}\x01\x01".encode()


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


class _OAuthOverSockets(Sockets):
    """The sockets and dialogues of the SCRAM tests, with a token validator."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.server_tls = tls_options(os.path.join(self.dir, "tls"))
        self.start_sockets()
        path = os.path.join(self.dir, "passwd")
        with open(path, "w") as f:
            f.write("alice:{PLAIN}not-used-here\nbob:{PLAIN}nor-here\n")
        self.key = Keys().ec
        validator = self.make_validator()
        checker, storage = self.make_checker(path, validator)
        self.portal = Portal(MailRealm(storage, checker.home_of), [checker])
        self.policy = SessionPolicy(
            failure_delay=0.0,
            max_failures=3,
            plaintext="never",
            tls_context=self.server_tls,
            sasl=SaslServices(tokens=validator, oauth_info=OAuthErrorInfo(scope="mail")),
        )

    def make_validator(self) -> Any:
        return JWTValidator(RULES, public_key=self.key.public_key())

    def make_checker(self, path: str, validator: Any) -> tuple[Any, Any]:
        """The users' checker (alice and bob) and the mail storage."""
        checker = PasswdFileChecker(
            PasswdFile(path), reactor=cast(IReactorThreads, reactor), token_validator=validator
        )
        return checker, MemoryStorage()

    def token(self, user: str, **more: Any) -> str:
        return sign(claims(user, **{"aud": "imap", **more}), "ES256", self.key)

    async def authenticate(self, client: Any, mechanism: str, message: bytes) -> bytes:
        return await self.dialogue.begin(client, mechanism, message)

    @defer.inlineCallbacks
    def test_offered_only_where_tokens_may_travel(self) -> Any:
        plain = yield defer.Deferred.fromCoroutine(self.connect())
        offered = yield defer.Deferred.fromCoroutine(self.dialogue.mechanisms(plain))
        self.assertEqual(offered, [])
        secure = yield defer.Deferred.fromCoroutine(self.connect(tls="1.3"))
        offered = yield defer.Deferred.fromCoroutine(self.dialogue.mechanisms(secure))
        self.assertEqual(offered, ["PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"])

    @defer.inlineCallbacks
    def test_logins(self) -> Any:
        for mechanism, message in (
            ("OAUTHBEARER", bearer("alice", self.token("alice"))),
            ("XOAUTH2", xoauth2("bob", self.token("bob"))),
        ):
            client = yield defer.Deferred.fromCoroutine(self.connect(tls="1.3"))
            line = yield defer.Deferred.fromCoroutine(self.authenticate(client, mechanism, message))
            self.assertTrue(line.startswith(self.dialogue.OK), line)
            check = yield defer.Deferred.fromCoroutine(self.dialogue.logged_in_check(client))
            self.assertTrue(check.startswith((b"S OK", b"+OK")), check)

    @defer.inlineCallbacks
    def test_rfc7628_failure_sequence(self) -> Any:
        """3.2.2-3.2.3: the JSON status, the client's ^A, the failure; the
        cancel in place of ^A fails the same (4.3's second example)."""
        client = yield defer.Deferred.fromCoroutine(self.connect(tls="1.3"))
        cases = (
            ("OAUTHBEARER", bearer("alice", self.token("alice", lifetime=-3600)), b"\x01"),
            ("OAUTHBEARER", bearer("alice", self.token("bob")), None),
            ("XOAUTH2", xoauth2("alice", self.token("alice", aud="smtp")), b""),
        )
        for mechanism, message, dummy in cases:
            line = yield defer.Deferred.fromCoroutine(self.authenticate(client, mechanism, message))
            status = json.loads(self.dialogue.challenge(line) or b"null")
            expected = (
                {"status": "invalid_token", "scope": "mail"}
                if mechanism == "OAUTHBEARER"
                else {"status": "401", "schemes": "Bearer", "scope": "mail"}
            )
            self.assertEqual(status, expected, mechanism)
            line = yield defer.Deferred.fromCoroutine(self.dialogue.reply(client, dummy))
            self.assertEqual(line, self.dialogue.FAILED)
        yield client.lost  # the third failure was the last

    @defer.inlineCallbacks
    def test_a_valid_token_for_someone_without_an_account(self) -> Any:
        client = yield defer.Deferred.fromCoroutine(self.connect(tls="1.3"))
        message = bearer("dave", self.token("dave"))
        line = yield defer.Deferred.fromCoroutine(self.authenticate(client, "OAUTHBEARER", message))
        self.assertTrue(self.dialogue.refused(line), line)


class _Introspected(_OAuthOverSockets):
    """The same with the tokens checked by an introspection endpoint."""

    def make_validator(self) -> Any:
        self.endpoint = Endpoint(self)
        rules = ClaimRules(user_claims=("username",), audience="imap", require_exp=False)
        return IntrospectionValidator(
            self.endpoint.url, "mailsrv", "client secret", rules, reactor=reactor
        )

    def token(self, user: str, **more: Any) -> str:
        token = base64.urlsafe_b64encode(os.urandom(18)).decode()
        answer = {"active": True, "username": user, "aud": "imap", **more}
        if more.get("lifetime", 0) < 0:
            answer["active"] = False
        self.endpoint.tokens[token] = answer
        return token


class _Unreachable(_Introspected):
    @defer.inlineCallbacks
    def test_endpoint_away_is_temporary(self) -> Any:
        """Not the client's fault: answered at once as unavailable, not
        counted (three tries with max_failures = 3 keep the connection)."""
        client = yield defer.Deferred.fromCoroutine(self.connect(tls="1.3"))
        message = bearer("alice", self.token("alice"))
        yield self.endpoint.stop()
        for _ in range(3):
            line = yield defer.Deferred.fromCoroutine(
                self.authenticate(client, "OAUTHBEARER", message)
            )
            self.assertEqual(line, self.dialogue.UNAVAILABLE)
        self.assertIsNotNone(client.transport)


class _JWTInPostgres(_OAuthOverSockets):
    """The users (and their mail) in PostgreSQL."""

    def make_checker(self, path: str, validator: Any) -> tuple[Any, Any]:
        pgcluster.require()
        from mailsrv.auth.pgusers import PostgresChecker, add_user

        storage = pgcluster.new_storage(self, pgcluster.new_dsn(), pool_size=2)
        conn = storage.db.connect()
        try:
            for name in ("alice", "bob"):
                add_user(conn, name, "{PLAIN}not-used-here")
        finally:
            conn.close()
        checker = PostgresChecker(
            storage.db, reactor=cast(IReactorThreads, reactor), token_validator=validator
        )
        return checker, storage


class ImapJWTPostgresTests(_JWTInPostgres, unittest.TestCase):
    dialogue = _Imap()


class Pop3JWTPostgresTests(_JWTInPostgres, unittest.TestCase):
    dialogue = _Pop3()


class ImapJWTTests(_OAuthOverSockets, unittest.TestCase):
    dialogue = _Imap()


class Pop3JWTTests(_OAuthOverSockets, unittest.TestCase):
    dialogue = _Pop3()


class ImapIntrospectionTests(_Unreachable, unittest.TestCase):
    dialogue = _Imap()


class Pop3IntrospectionTests(_Unreachable, unittest.TestCase):
    dialogue = _Pop3()
