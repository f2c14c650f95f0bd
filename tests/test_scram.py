"""SCRAM-SHA-256 (RFC 5802, RFC 7677): the secret Dovecot's format stores,
SASLprep, the server exchange step by step (the RFC's example dialogue, and
the RFC's answer to each kind of bad input), and the users file's checker
handing out secrets and checking proofs."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.trial import unittest

from mailsrv.auth import passwords, sasl, scram
from mailsrv.auth.channel import ChannelBindings
from mailsrv.auth.checker import PasswdFileChecker
from mailsrv.auth.passwdfile import PasswdFile
from mailsrv.auth.saslprep import saslprep
from mailsrv.auth.scram_server import ScramCredentials, ScramServer
from tests.sasl_helpers import ScramClient

#: ``doveadm pw -s SCRAM-SHA-256 -p pencil`` (Dovecot 2.3.19).
DOVEADM_PENCIL = (
    "{SCRAM-SHA-256}4096,U7A8GnyKTbGvR0kN385lyw==,1AMbrtIFjcXG8CV7tpgseDG0JaUnqCQUjcQpMUdu7Dg=,"
    "hQS4Ae587yBNtoEPoV2uD9+u5dzUHzrqdsmEueJCUMA="
)
#: ``doveadm pw -s SCRAM-SHA-256 -p pässwörd``.
DOVEADM_UMLAUTS = (
    "{SCRAM-SHA-256}4096,wMwgN3GtnjtwBNuwW9Zx5w==,FRV58qhOHmn6FZ5c4fviKcaCY2x6Lk99jCD8MobgvqY=,"
    "wK8xppzpca5L2cbBX+aYuFNoK/5iJtKcDOMzFmxDCjA="
)


class SecretTests(unittest.SynchronousTestCase):
    def test_reads_what_doveadm_writes(self) -> None:
        self.assertTrue(passwords.is_known_scheme(DOVEADM_PENCIL))
        self.assertTrue(passwords.verify_password(DOVEADM_PENCIL, "pencil"))
        self.assertFalse(passwords.verify_password(DOVEADM_PENCIL, "pencil "))
        self.assertTrue(passwords.verify_password(DOVEADM_UMLAUTS, "pässwörd"))
        self.assertFalse(passwords.verify_password(DOVEADM_UMLAUTS, "passwörd"))

    def test_written_secret_round_trips_and_keeps_no_plaintext(self) -> None:
        stored = passwords.hash_password("correct horse", "SCRAM-SHA-256")
        self.assertTrue(stored.startswith("{SCRAM-SHA-256}4096,"))
        self.assertNotIn("correct", stored)
        self.assertIsNone(passwords.plaintext_secret_bytes(stored))
        self.assertTrue(passwords.verify_password(stored, "correct horse"))
        self.assertFalse(passwords.verify_password(stored, "correct horsE"))
        salt = base64.b64decode(stored.split(",")[1])
        self.assertEqual(len(salt), 16)
        again = passwords.hash_password("correct horse", "SCRAM-SHA-256")
        self.assertNotEqual(stored, again)  # a fresh salt each time

    def test_doveadm_verifies_what_we_write(self) -> None:
        if shutil.which("doveadm") is None:
            raise unittest.SkipTest("doveadm (dovecot-core) is not installed")
        stored = passwords.hash_password("pässwörd", "SCRAM-SHA-256", rounds=5000)
        result = subprocess.run(
            ["doveadm", "pw", "-t", stored, "-p", "pässwörd"], capture_output=True, text=True
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("(verified)", result.stdout)

    def test_iteration_bounds(self) -> None:
        good = DOVEADM_PENCIL.removeprefix("{SCRAM-SHA-256}")
        for count in ("1", "4095", "1000001", "04096", "-4096", "x"):
            self.assertFalse(passwords.is_known_scheme("{SCRAM-SHA-256}" + count + good[4:]))
        for rounds in (4095, 1_000_001):
            error = self.assertRaises(
                ValueError, passwords.hash_password, "pw", "SCRAM-SHA-256", rounds=rounds
            )
            self.assertIn("between 4096 and 1000000", str(error))
        stored = passwords.hash_password("pw", "SCRAM-SHA-256", rounds=8192)
        self.assertTrue(stored.startswith("{SCRAM-SHA-256}8192,"))

    def test_malformed_secrets_are_unknown(self) -> None:
        parts = DOVEADM_PENCIL.removeprefix("{SCRAM-SHA-256}").split(",")
        for broken in (
            parts[:3],
            [*parts, "x"],
            [parts[0], "", parts[2], parts[3]],
            [parts[0], parts[1], parts[2][:-4], parts[3]],
            [parts[0], "not base64!", parts[2], parts[3]],
        ):
            value = "{SCRAM-SHA-256}" + ",".join(broken)
            self.assertFalse(passwords.is_known_scheme(value), broken)
            self.assertFalse(passwords.verify_password(value, "pencil"))


class SaslprepTests(unittest.SynchronousTestCase):
    def test_rfc4013_examples(self) -> None:
        # RFC 4013 3, the examples table.
        self.assertEqual(saslprep("I\u00adX"), "IX")
        self.assertEqual(saslprep("user"), "user")
        self.assertEqual(saslprep("USER"), "USER")
        self.assertEqual(saslprep("\u00aa"), "a")
        self.assertEqual(saslprep("\u2168"), "IX")
        self.assertRaises(ValueError, saslprep, "\u0007")
        self.assertRaises(ValueError, saslprep, "\u0627\u0031")

    def test_spaces_and_unassigned(self) -> None:
        self.assertEqual(saslprep("a\u00a0b"), "a b")
        self.assertRaises(ValueError, saslprep, "a\U000e0001")  # tagging character
        self.assertRaises(ValueError, saslprep, "\u0378")  # unassigned, stored string
        self.assertEqual(saslprep("\u0378", stored=False), "\u0378")


class _Lookup:
    """Secrets by user name; anyone else gets the fake secret."""

    def __init__(self, **secrets: scram.ScramSecret) -> None:
        self.secrets = secrets
        self.key = b"k" * 32

    def scram_secret(self, name: str) -> defer.Deferred[scram.ScramSecret]:
        found = self.secrets.get(name) or scram.fake_secret(self.key, name)
        return defer.succeed(found)


class _Bindings(ChannelBindings):
    """The given binding data, in place of a TLS connection's."""

    def __init__(self, **data: bytes) -> None:
        self._data = data

    def types(self) -> tuple[str, ...]:
        return tuple(kind.replace("_", "-") for kind in self._data)

    def data(self, kind: str) -> bytes | None:
        return self._data.get(kind.replace("-", "_"))


def _now(result: Any) -> Any:
    """The value of a step that fired already."""
    if isinstance(result, defer.Deferred):
        out: list[Any] = []
        result.addBoth(out.append)
        assert out, "the step has not fired"
        return out[0]
    return result


class ExchangeTests(unittest.SynchronousTestCase):
    """The server's side of the exchange, message by message."""

    def setUp(self) -> None:
        salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
        self.lookup = _Lookup(user=scram.make_secret("pencil", 4096, salt))

    def test_rfc7677_example(self) -> None:
        """RFC 7677 3, byte for byte: the server's nonce is the example's."""
        server = ScramServer(self.lookup, nonce=b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
        self.assertEqual(server.start(None), sasl.Challenge(b""))
        first = _now(server.respond(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"))
        self.assertEqual(
            first,
            sasl.Challenge(
                b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
            ),
        )
        final = server.respond(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        )
        self.assertEqual(final, sasl.Challenge(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="))
        done = server.respond(b"")
        assert isinstance(done, sasl.Credentials)
        self.assertEqual(done.credentials.username, b"user")
        self.assertTrue(done.credentials.check(self.lookup.secrets["user"]))

    def run_client(
        self, client: ScramClient, server: ScramServer, password: bytes | None = None
    ) -> Any:
        first = _now(server.start(client.first()))
        assert isinstance(first, sasl.Challenge), first
        return server.respond(client.final(first.data, password=password))

    def test_forged_proof_gets_invalid_proof(self) -> None:
        server = ScramServer(self.lookup)
        step = self.run_client(ScramClient("user", "pencil"), server, password=b"crayon")
        self.assertEqual(step, sasl.Challenge(b"e=invalid-proof", failed=True))
        # Whatever the client answers, the login has failed.
        self.assertIsInstance(server.respond(b""), sasl.Refusal)

    def test_unknown_user_looks_like_a_wrong_password(self) -> None:
        firsts = []
        for _ in range(2):
            client = ScramClient("nobody", "pencil")
            server = ScramServer(self.lookup)
            first = _now(server.start(client.first()))
            firsts.append(first.data.split(b",", 1)[1])
            step = server.respond(client.final(first.data))
            self.assertEqual(step, sasl.Challenge(b"e=invalid-proof", failed=True))
        # The same salt and count every time, as a real user's.
        self.assertEqual(firsts[0], firsts[1])
        self.assertRegex(firsts[0].decode(), r"^s=[A-Za-z0-9+/]{22}==,i=4096$")

    def test_nonce_must_be_the_servers(self) -> None:
        client = ScramClient("user", "pencil")
        server = ScramServer(self.lookup)
        first = _now(server.start(client.first()))
        tampered = first.data.replace(b"r=" + client.nonce.encode(), b"r=" + client.nonce.encode())
        final = client.final(tampered).replace(b",r=", b",r=x", 1)
        self.assertEqual(server.respond(final), sasl.Challenge(b"e=other-error", failed=True))

    def test_channel_binding_header_must_match(self) -> None:
        client = ScramClient("user", "pencil")
        server = ScramServer(self.lookup)
        first = _now(server.start(client.first()))
        final = client.final(first.data).replace(b"c=biws", b"c=eSws")  # "y,," instead of "n,,"
        self.assertEqual(
            server.respond(final), sasl.Challenge(b"e=channel-bindings-dont-match", failed=True)
        )

    def test_client_first_refusals(self) -> None:
        """RFC 5802 5.1 and 7: what ends the exchange before the server's
        first message (there is no message yet to carry an error)."""
        cases = {
            b"x,,n=user,r=abc": "Malformed SCRAM client-first message",
            b"n,,m=ext,n=user,r=abc": "SCRAM mandatory extensions are not supported",
            b"n,,n=us=er,r=abc": "Malformed SCRAM user name",
            b"n,,n=,r=abc": "Empty SCRAM user name",
            b"n,,n=user,r=a,b": "Malformed SCRAM client-first message",
            b"n,,n=user": "Malformed SCRAM client-first message",
            b"n,,n=user,r=\x7f": "Malformed SCRAM nonce",
            b"n,a=other,n=user,r=abc": "Proxy authorization is not supported",
            b"n,,n=\xff,r=abc": "SCRAM message is not UTF-8",
            b"n,,n=\x07,r=abc": "SCRAM user name refused by SASLprep: prohibited character U+0007",
        }
        for message, reason in cases.items():
            step = ScramServer(self.lookup).start(message)
            self.assertIsInstance(step, sasl.Refusal, repr(message))
            assert isinstance(step, sasl.Refusal)
            self.assertTrue(step.reason.startswith(reason), (message, step))

    def test_escaped_names_and_own_authzid(self) -> None:
        lookup = _Lookup(**{"a,b=c": scram.make_secret("pw")})
        client = ScramClient("a,b=c", "pw", authzid="a=2Cb=3Dc")
        server = ScramServer(lookup)
        step = self.run_client(client, server)
        self.assertIsInstance(step, sasl.Challenge)
        self.assertTrue(client.verified(step.data))
        done = server.respond(b"")
        self.assertIsInstance(done, sasl.Credentials)
        assert isinstance(done, sasl.Credentials)
        self.assertEqual(done.credentials.username, b"a,b=c")

    def test_nothing_may_follow_the_server_signature(self) -> None:
        server = ScramServer(self.lookup)
        self.run_client(ScramClient("user", "pencil"), server)
        self.assertIsInstance(server.respond(b"extra"), sasl.Refusal)


class ChannelBindingTests(unittest.SynchronousTestCase):
    """RFC 5802 6 and RFC 9266: who must bind, and to what."""

    def setUp(self) -> None:
        self.lookup = _Lookup(user=scram.make_secret("pencil"))
        self.bindings = _Bindings(tls_exporter=b"E" * 32, tls_server_end_point=b"S" * 32)

    def exchange(self, server: ScramServer, client: ScramClient) -> Any:
        first = _now(server.start(client.first()))
        if not isinstance(first, sasl.Challenge):
            return first
        return server.respond(client.final(first.data))

    def test_plus_with_each_type(self) -> None:
        for kind, data in (("tls-exporter", b"E" * 32), ("tls-server-end-point", b"S" * 32)):
            client = ScramClient("user", "pencil", flag=f"p={kind}", binding=data)
            server = ScramServer(self.lookup, plus=True, bindings=self.bindings)
            step = self.exchange(server, client)
            self.assertIsInstance(step, sasl.Challenge, kind)
            self.assertTrue(client.verified(step.data), kind)

    def test_plus_with_other_data_fails(self) -> None:
        client = ScramClient("user", "pencil", flag="p=tls-exporter", binding=b"X" * 32)
        server = ScramServer(self.lookup, plus=True, bindings=self.bindings)
        self.assertEqual(
            self.exchange(server, client),
            sasl.Challenge(b"e=channel-bindings-dont-match", failed=True),
        )

    def test_refusals(self) -> None:
        exporter_only = _Bindings(tls_exporter=b"E" * 32)
        cases = [
            # -PLUS without binding.
            (True, self.bindings, "n", "SCRAM-SHA-256-PLUS needs channel binding"),
            (True, self.bindings, "y", "SCRAM-SHA-256-PLUS needs channel binding"),
            # A type the connection cannot give (TLS 1.2: no exporter).
            (True, _Bindings(tls_server_end_point=b"S"), "p=tls-exporter", "Unsupported"),
            (True, exporter_only, "p=tls-unique", "Unsupported channel binding type"),
            (True, None, "p=tls-exporter", "Unsupported channel binding type"),
            # p= with the plain mechanism.
            (False, self.bindings, "p=tls-exporter", "Channel binding needs SCRAM-SHA-256-PLUS"),
            # "y" where -PLUS was offered: a downgrade (RFC 5802 6).
            (False, self.bindings, "y", "Channel binding is supported: downgrade refused"),
        ]
        for plus, bindings, flag, reason in cases:
            server = ScramServer(self.lookup, plus=plus, bindings=bindings)
            step = server.start(ScramClient("user", "pencil", flag=flag).first())
            self.assertIsInstance(step, sasl.Refusal, (plus, flag))
            assert isinstance(step, sasl.Refusal)
            self.assertTrue(step.reason.startswith(reason), (plus, flag, step))

    def test_y_without_tls_is_fine(self) -> None:
        for bindings in (None, _Bindings()):
            client = ScramClient("user", "pencil", flag="y")
            server = ScramServer(self.lookup, bindings=bindings)
            step = self.exchange(server, client)
            self.assertTrue(client.verified(step.data))


class CheckerTests(unittest.TestCase):
    """The users file's checker: secrets for the exchange, proofs for the
    Portal, and PLAIN logins against a SCRAM secret."""

    def setUp(self) -> None:
        path = os.path.join(self.mktemp())
        with open(path, "w") as f:
            f.write(
                f"alice:{DOVEADM_PENCIL}\n"
                "bob:{PLAIN}secret\n"
                "carol:{BLF-CRYPT}$2y$04$J4/cOaM8uV1lQwGm1Zc5He2f5mzOdIoIWe4h8Hr6W2Q3iIRw1bG8a\n"
            )
        self.checker = PasswdFileChecker(PasswdFile(path), run_in_thread=False)

    async def proved(self, name: str, password: str) -> str:
        client = ScramClient(name, password)
        server = ScramServer(self.checker)
        started = server.start(client.first())
        self.assertIsInstance(started, defer.Deferred)  # the secret is looked up
        assert isinstance(started, defer.Deferred)
        first = await started
        self.assertIsInstance(first, sasl.Challenge)
        assert isinstance(first, sasl.Challenge)
        step = server.respond(client.final(first.data))
        if not isinstance(step, sasl.Challenge) or step.failed:
            return f"refused: {step}"
        self.assertTrue(client.verified(step.data))
        done = server.respond(b"")
        self.assertIsInstance(done, sasl.Credentials)
        assert isinstance(done, sasl.Credentials)
        credentials = done.credentials
        try:
            return str(await self.checker.requestAvatarId(credentials))
        except UnauthorizedLogin:
            return "refused by the checker"

    @defer.inlineCallbacks
    def test_scram_logins(self) -> Any:
        check = defer.Deferred.fromCoroutine
        self.assertEqual((yield check(self.proved("alice", "pencil"))), "alice")
        # A PLAIN secret gives SCRAM a derived one.
        self.assertEqual((yield check(self.proved("bob", "secret"))), "bob")
        refused = "refused: Challenge(data=b'e=invalid-proof', failed=True)"
        self.assertEqual((yield check(self.proved("alice", "crayon"))), refused)
        # bcrypt cannot serve SCRAM: the same answer as a wrong password.
        self.assertEqual((yield check(self.proved("carol", "x"))), refused)
        self.assertEqual((yield check(self.proved("nobody", "x"))), refused)

    @defer.inlineCallbacks
    def test_forged_credentials_do_not_pass_the_checker(self) -> Any:
        forged = ScramCredentials(b"alice", b"n=alice,r=x,r=xy,s=c2FsdA==,i=4096,c=biws,r=xy", b"")
        with self.assertRaises(UnauthorizedLogin):
            yield self.checker.requestAvatarId(forged)
        forged.proof = b"\0" * 32
        with self.assertRaises(UnauthorizedLogin):
            yield self.checker.requestAvatarId(forged)

    @defer.inlineCallbacks
    def test_plain_login_against_a_scram_secret(self) -> Any:
        name = yield self.checker.requestAvatarId(UsernamePassword(b"alice", b"pencil"))
        self.assertEqual(name, "alice")
        with self.assertRaises(UnauthorizedLogin):
            yield self.checker.requestAvatarId(UsernamePassword(b"alice", b"crayon"))

    def test_any_scram(self) -> None:
        self.assertTrue(self.checker.any_scram())
