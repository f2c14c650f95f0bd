"""The SASL mechanisms and APOP credentials shared by POP3 and IMAP."""

from __future__ import annotations

import hashlib
import hmac
import re

from twisted.cred.credentials import IUsernameHashedPassword, IUsernamePassword, UsernamePassword
from twisted.internet.address import IPv4Address
from twisted.trial import unittest

from mailsrv.auth import sasl
from mailsrv.policy import SessionPolicy

LOCAL = IPv4Address("TCP", "127.0.0.1", 1)
REMOTE = IPv4Address("TCP", "192.0.2.1", 1)


class PlainTests(unittest.SynchronousTestCase):
    def credentials(self, step: sasl.StepResult) -> UsernamePassword:
        self.assertIsInstance(step, sasl.Credentials)
        assert isinstance(step, sasl.Credentials)
        self.assertIsInstance(step.credentials, UsernamePassword)
        credentials: UsernamePassword = step.credentials
        return credentials

    def test_initial_response(self) -> None:
        mechanism = sasl.create("PLAIN", "h")
        assert mechanism is not None
        creds = self.credentials(mechanism.start(b"\0alice\0s3 cret"))
        self.assertTrue(IUsernamePassword.providedBy(creds))
        self.assertEqual((creds.username, creds.password), (b"alice", b"s3 cret"))

    def test_empty_challenge_then_response(self) -> None:
        mechanism = sasl.create("plain", "h")
        assert mechanism is not None
        self.assertEqual(mechanism.start(None), sasl.Challenge(b""))
        creds = self.credentials(mechanism.respond(b"alice\0alice\0pw"))
        self.assertEqual(creds.username, b"alice")

    def test_utf8(self) -> None:
        creds = self.credentials(sasl.Plain().start("\0jürgen\0pässword".encode()))
        self.assertEqual(creds.password, "pässword".encode())

    def test_refusals(self) -> None:
        cases = {
            b"": "Malformed PLAIN message",
            b"alice\0pw": "Malformed PLAIN message",
            b"\0alice\0pw\0": "Malformed PLAIN message",
            b"\0\0pw": "Empty user name or password",
            b"\0alice\0": "Empty user name or password",
            b"bob\0alice\0pw": "Proxy authorization is not supported",
            b"\0\xff\0pw": "PLAIN message is not UTF-8",
        }
        for message, reason in cases.items():
            self.assertEqual(sasl.Plain().start(message), sasl.Refusal(reason), message)


class LoginTests(unittest.SynchronousTestCase):
    def test_exchange(self) -> None:
        mechanism = sasl.Login()
        self.assertEqual(mechanism.start(None), sasl.Challenge(b"Username:"))
        self.assertEqual(mechanism.respond(b"alice"), sasl.Challenge(b"Password:"))
        step = mechanism.respond(b"pass word")
        assert isinstance(step, sasl.Credentials)
        self.assertEqual(
            (step.credentials.username, step.credentials.password), (b"alice", b"pass word")
        )

    def test_initial_response_is_the_user_name(self) -> None:
        mechanism = sasl.Login()
        self.assertEqual(mechanism.start(b"alice"), sasl.Challenge(b"Password:"))
        self.assertIsInstance(mechanism.respond(b"pw"), sasl.Credentials)

    def test_empty_initial_response_asks_for_user_name(self) -> None:
        self.assertEqual(sasl.Login().start(b""), sasl.Challenge(b"Username:"))

    def test_refusals(self) -> None:
        mechanism = sasl.Login()
        mechanism.start(None)
        self.assertEqual(mechanism.respond(b""), sasl.Refusal("Invalid user name"))
        mechanism = sasl.Login()
        mechanism.start(b"alice")
        self.assertEqual(mechanism.respond(b""), sasl.Refusal("Empty password"))


class CramMD5Tests(unittest.SynchronousTestCase):
    def test_challenge_format_and_uniqueness(self) -> None:
        first = sasl.create("CRAM-MD5", "mail.example.org")
        second = sasl.create("CRAM-MD5", "mail.example.org")
        assert first is not None and second is not None
        a, b = first.start(None), second.start(None)
        assert isinstance(a, sasl.Challenge) and isinstance(b, sasl.Challenge)
        self.assertRegex(a.data, rb"^<[0-9]+\.[0-9]+\.[0-9]+@mail\.example\.org>$")
        self.assertNotEqual(a.data, b.data)

    def test_rfc2195_example(self) -> None:
        """The worked example of RFC 2195 2."""
        challenge = b"<1896.697170952@postoffice.reston.mci.net>"
        mechanism = sasl.CramMD5("postoffice.reston.mci.net", challenge)
        self.assertEqual(mechanism.start(None), sasl.Challenge(challenge))
        step = mechanism.respond(b"tim b913a602c7eda7a495b4e6e7334d3890")
        assert isinstance(step, sasl.Credentials)
        creds = step.credentials
        self.assertTrue(IUsernameHashedPassword.providedBy(creds))
        self.assertEqual(creds.username, b"tim")
        self.assertTrue(creds.checkPassword(b"tanstaaftanstaaf"))
        self.assertTrue(creds.checkPassword("tanstaaftanstaaf"))
        self.assertFalse(creds.checkPassword(b"tanstaaf"))

    def test_uppercase_digest(self) -> None:
        mechanism = sasl.CramMD5("h", b"<1.2@h>")
        mechanism.start(None)
        digest = hmac.new(b"pw", b"<1.2@h>", hashlib.md5).hexdigest().upper().encode()
        step = mechanism.respond(b"user name " + digest)
        assert isinstance(step, sasl.Credentials)
        self.assertEqual(step.credentials.username, b"user name")
        self.assertTrue(step.credentials.checkPassword(b"pw"))

    def test_refusals(self) -> None:
        self.assertEqual(
            sasl.CramMD5("h").start(b"x"),
            sasl.Refusal("CRAM-MD5 does not take an initial response"),
        )
        self.assertEqual(
            sasl.CramMD5("h").respond(b"a " + b"0" * 32),
            sasl.Refusal("CRAM-MD5 exchange not started"),
        )
        for answer in (
            b"",
            b"alice",
            b"alice 123",
            b" " + b"0" * 32,
            b"alice " + b"g" * 32,
            b"alice 0x" + b"0" * 30,
        ):
            mechanism = sasl.CramMD5("h")
            mechanism.start(None)
            self.assertEqual(
                mechanism.respond(answer), sasl.Refusal("Malformed CRAM-MD5 response"), answer
            )

    def test_empty_initial_response_is_no_initial_response(self) -> None:
        self.assertIsInstance(sasl.CramMD5("h").start(b""), sasl.Challenge)


class APOPTests(unittest.SynchronousTestCase):
    def test_rfc1939_example(self) -> None:
        """The example of RFC 1939 7 (APOP)."""
        creds = sasl.APOPCredentials(
            b"mrose",
            b"<1896.697170952@dbc.mtview.ca.us>",
            b"c4c9334bac560ecc979e58001b3e22fb",
        )
        self.assertTrue(IUsernameHashedPassword.providedBy(creds))
        self.assertTrue(creds.checkPassword(b"tanstaaf"))
        self.assertFalse(creds.checkPassword(b"tanstaaf2"))

    def test_make_challenge(self) -> None:
        value = sasl.make_challenge("host.example", clock=lambda: 1234.5)
        self.assertTrue(re.fullmatch(rb"<[0-9]+\.[0-9]+\.1234@host\.example>", value), value)


class CreateAndOfferTests(unittest.SynchronousTestCase):
    def test_unknown(self) -> None:
        self.assertIsNone(sasl.create("GSSAPI", "h"))
        self.assertIsNone(sasl.create("", "h"))

    def test_offers(self) -> None:
        on = SessionPolicy(challenge_auth_available=lambda: True)
        off = SessionPolicy(challenge_auth_available=lambda: False)
        self.assertEqual(sasl.mechanisms(on, False, LOCAL), ["PLAIN", "LOGIN", "CRAM-MD5"])
        self.assertEqual(sasl.mechanisms(on, False, REMOTE), ["CRAM-MD5"])
        self.assertEqual(sasl.mechanisms(on, True, REMOTE), ["PLAIN", "LOGIN", "CRAM-MD5"])
        self.assertEqual(sasl.mechanisms(off, False, REMOTE), [])
        self.assertEqual(sasl.mechanisms(off, True, REMOTE), ["PLAIN", "LOGIN"])
        never = SessionPolicy(plaintext="never")
        self.assertEqual(sasl.mechanisms(never, False, LOCAL), [])
        always = SessionPolicy(plaintext="always")
        self.assertEqual(sasl.mechanisms(always, False, REMOTE), ["PLAIN", "LOGIN"])
