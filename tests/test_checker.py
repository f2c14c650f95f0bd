"""The twisted.cred checker over a passwd-file."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any, cast

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import (
    CramMD5Credentials,
    IUsernameHashedPassword,
    UsernamePassword,
)
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor
from twisted.internet.interfaces import IReactorThreads
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import Interface, implementer
from zope.interface.verify import verifyObject

from mailsrv.auth import checker as checker_module
from mailsrv.auth import passwords
from mailsrv.auth.checker import FAILURE_MESSAGE, PasswdFileChecker
from mailsrv.auth.passwdfile import PasswdFile

# Password for bob and erin: "correct horse".
ARGON = (
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$PuxLm1lQ/xL38GrPlChWMw"
    "$Gdai57ZGp/XJkhYrwaDV08qx7/UBJx32mKd7ZEEK9Xs"
)
BLF = "{BLF-CRYPT}$2y$05$cAHPjK6jubZviGBii5At..wih6pu1MXgJ2RG1pD2cSIf5gsHRaUym"

USERS = (
    "alice:{PLAIN}alice-pw\n"
    f"bob:{ARGON}:1000:1000::/home/bob::\n"
    "carol:{PLAIN-B64}Y2Fyb2w6cHc=\n"  # "carol:pw"
    "dave:{SSHA}c29tZXRoaW5n\n"
    f"erin:{BLF}\n"
    "zoë:{PLAIN}zoë-pw\n"
)


def write_users(testcase: SynchronousTestCase, text: str) -> str:
    directory = testcase.mktemp()
    os.makedirs(directory)
    path = os.path.join(directory, "passwd")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def cram_md5(username: bytes, secret: bytes) -> CramMD5Credentials:
    """Credentials as a CRAM-MD5 exchange leaves them (RFC 2195)."""
    credentials = CramMD5Credentials(host=b"mail.example.org")
    challenge = credentials.getChallenge()
    digest = hmac.new(secret, challenge, hashlib.md5).hexdigest().encode("ascii")
    credentials.setResponse(username + b" " + digest)
    return credentials


@implementer(IUsernameHashedPassword)
class APOPStyleCredentials:
    """What POP3 APOP hands the checker: a digest of greeting + shared secret (RFC 1939)."""

    def __init__(self, username: bytes, greeting: bytes, digest: str) -> None:
        self.username = username
        self.greeting = greeting
        self.digest = digest

    def checkPassword(self, password: bytes) -> bool:
        return hmac.compare_digest(hashlib.md5(self.greeting + password).hexdigest(), self.digest)


def apop(username: bytes, secret: bytes) -> APOPStyleCredentials:
    greeting = b"<1896.697170952@dbc.mtview.ca.us>"
    return APOPStyleCredentials(username, greeting, hashlib.md5(greeting + secret).hexdigest())


class InlineCheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = write_users(self, USERS)
        self.checker = PasswdFileChecker(PasswdFile(self.path), run_in_thread=False)

    def login(self, credentials: Any) -> str:
        result = self.successResultOf(self.checker.requestAvatarId(credentials))
        self.assertIsInstance(result, str)
        return result

    def refused(self, credentials: Any) -> str:
        failure = self.failureResultOf(self.checker.requestAvatarId(credentials), UnauthorizedLogin)
        return str(failure.value)

    def test_a_broken_check_is_not_a_refusal(self) -> None:
        """An error inside the check reaches the protocol as itself, so it
        answers UNAVAILABLE instead of counting a failed login."""

        def broken(stored: object, password: object) -> bool:
            raise RuntimeError("hashing library failed")

        self.patch(checker_module, "verify_password", broken)
        failure = self.failureResultOf(
            self.checker.requestAvatarId(UsernamePassword(b"alice", b"alice-pw")), RuntimeError
        )
        self.assertEqual(str(failure.value), "hashing library failed")

    def test_provides_the_interface(self) -> None:
        self.assertTrue(verifyObject(ICredentialsChecker, self.checker))

    def test_right_password(self) -> None:
        self.assertEqual(self.login(UsernamePassword(b"alice", b"alice-pw")), "alice")
        # Twisted types these as bytes, but some callers pass text.
        text_credentials = UsernamePassword("alice", "alice-pw")  # type: ignore[arg-type]
        self.assertEqual(self.login(text_credentials), "alice")
        self.assertEqual(self.login(UsernamePassword(b"bob", b"correct horse")), "bob")
        self.assertEqual(self.login(UsernamePassword(b"carol", b"carol:pw")), "carol")
        self.assertEqual(
            self.login(UsernamePassword(b"erin", "correct horse")),  # type: ignore[arg-type]
            "erin",
        )
        self.assertEqual(self.login(UsernamePassword("zoë".encode(), "zoë-pw".encode())), "zoë")

    def test_failures_are_indistinguishable(self) -> None:
        failures = {
            "wrong password": UsernamePassword(b"alice", b"alice-PW"),
            "wrong argon2 password": UsernamePassword(b"bob", b"correct horse!"),
            "wrong bcrypt password": UsernamePassword(b"erin", b"Correct horse"),
            "empty password": UsernamePassword(b"alice", b""),
            "unknown user": UsernamePassword(b"mallory", b"alice-pw"),
            "user name case": UsernamePassword(b"Alice", b"alice-pw"),
            "unknown scheme": UsernamePassword(b"dave", b"something"),
            "undecodable user name": UsernamePassword(b"\xffalice", b"alice-pw"),
            "cram-md5 for an argon2 user": cram_md5(b"bob", b"correct horse"),
            "cram-md5 wrong secret": cram_md5(b"alice", b"alice-PW"),
            "cram-md5 unknown user": cram_md5(b"mallory", b"x"),
            "apop for an argon2 user": apop(b"bob", b"correct horse"),
            "apop wrong secret": apop(b"alice", b"nope"),
        }
        messages = {reason: self.refused(creds) for reason, creds in failures.items()}
        self.assertEqual(set(messages.values()), {FAILURE_MESSAGE})
        self.assertEqual(FAILURE_MESSAGE, "Authentication failed")

    def test_first_unknown_user_costs_no_extra_hash(self) -> None:
        """The dummy hash unknown users are checked against is made when the
        checker is, so the first unknown user is not answered later than
        the ones after it."""
        made: list[str] = []
        real = passwords.hash_password

        def counting(*args: Any, **kwargs: Any) -> str:
            made.append(args[1] if len(args) > 1 else "")
            return real(*args, **kwargs)

        self.patch(passwords, "_dummy", None)
        self.patch(passwords, "hash_password", counting)
        checker = PasswdFileChecker(PasswdFile(self.path), run_in_thread=False)
        self.assertEqual(made, ["ARGON2ID"])
        self.failureResultOf(
            checker.requestAvatarId(UsernamePassword(b"mallory", b"x")), UnauthorizedLogin
        )
        self.assertEqual(made, ["ARGON2ID"])

    def test_challenge_responses_cost_the_same_for_every_user(self) -> None:
        """A user without a plaintext secret, an unknown user and a wrong
        secret each make exactly one digest computation."""

        @implementer(IUsernameHashedPassword)
        class Counting:
            def __init__(self, username: bytes) -> None:
                self.username = username
                self.checked: list[bytes] = []

            def checkPassword(self, password: bytes) -> bool:
                self.checked.append(password)
                return False

        for name in (b"alice", b"bob", b"mallory"):
            credentials = Counting(name)
            self.assertEqual(self.refused(credentials), FAILURE_MESSAGE)
            self.assertEqual(len(credentials.checked), 1, name)

    def test_cram_md5_for_plaintext_users(self) -> None:
        self.assertEqual(self.login(cram_md5(b"alice", b"alice-pw")), "alice")
        self.assertEqual(self.login(cram_md5(b"carol", b"carol:pw")), "carol")

    def test_apop_for_plaintext_users(self) -> None:
        self.assertEqual(self.login(apop(b"alice", b"alice-pw")), "alice")
        self.assertEqual(self.login(apop("zoë".encode(), "zoë-pw".encode())), "zoë")

    def test_unsupported_credentials(self) -> None:
        class Anonymous:
            username = b"alice"

        self.assertEqual(self.refused(Anonymous()), FAILURE_MESSAGE)

    def test_new_user_needs_no_restart(self) -> None:
        self.refused(UsernamePassword(b"frank", b"frank-pw"))
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("frank:{PLAIN}frank-pw\n")
        self.assertEqual(self.login(UsernamePassword(b"frank", b"frank-pw")), "frank")

    def test_any_plaintext(self) -> None:
        self.assertTrue(self.checker.any_plaintext())
        hashed_only = write_users(self, f"bob:{ARGON}\nerin:{BLF}\ndave:{{PLAIN}}\n")
        checker = PasswdFileChecker(PasswdFile(hashed_only), run_in_thread=False)
        self.assertFalse(checker.any_plaintext())
        with open(hashed_only, "a", encoding="utf-8") as f:
            f.write("frank:{CLEAR}frank-pw\n")
        self.assertTrue(checker.any_plaintext())

    def test_max_parallel_must_be_positive(self) -> None:
        self.assertRaises(ValueError, PasswdFileChecker, PasswdFile(self.path), max_parallel=0)


class AvatarCatcher(Interface):
    """An avatar interface for the portal test."""


@implementer(IRealm)
class RecordingRealm:
    def __init__(self) -> None:
        self.avatar_ids: list[object] = []

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        self.avatar_ids.append(avatarId)
        return AvatarCatcher, object(), lambda: None


class ThreadedCheckerTests(TestCase):
    """Hashes are checked in the reactor's thread pool; results come back in the reactor."""

    def setUp(self) -> None:
        self.passwd = PasswdFile(write_users(self, USERS))

    @defer.inlineCallbacks
    def test_portal_login_in_thread(self) -> Any:
        realm = RecordingRealm()
        portal = Portal(realm, [PasswdFileChecker(self.passwd)])
        interface, _, _ = yield portal.login(
            UsernamePassword(b"bob", b"correct horse"), None, AvatarCatcher
        )
        self.assertIs(interface, AvatarCatcher)
        self.assertEqual(realm.avatar_ids, ["bob"])
        with self.assertRaises(UnauthorizedLogin) as caught:
            yield portal.login(UsernamePassword(b"bob", b"wrong"), None, AvatarCatcher)
        self.assertEqual(str(caught.exception), FAILURE_MESSAGE)

    @defer.inlineCallbacks
    def test_explicit_reactor_and_unknown_user(self) -> Any:
        checker = PasswdFileChecker(
            self.passwd, reactor=cast(IReactorThreads, reactor), max_parallel=1
        )
        results = yield defer.DeferredList(
            [
                checker.requestAvatarId(UsernamePassword(b"nobody", b"correct horse")),
                checker.requestAvatarId(UsernamePassword(b"erin", b"correct horse")),
                checker.requestAvatarId(UsernamePassword(b"alice", b"alice-pw")),
            ],
            consumeErrors=True,
        )
        unknown_ok, unknown = results[0]
        self.assertFalse(unknown_ok)
        self.assertTrue(unknown.check(UnauthorizedLogin))
        self.assertEqual(str(unknown.value), FAILURE_MESSAGE)
        self.assertEqual(results[1:], [(True, "erin"), (True, "alice")])
