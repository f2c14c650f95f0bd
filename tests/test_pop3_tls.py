"""STLS (RFC 2595) and implicit TLS for POP3: in memory, where the
transport records when TLS started, and with real TLS over loopback."""

from __future__ import annotations

from twisted.internet import ssl
from twisted.trial import unittest

from tests.helpers import make_tls_context
from tests.pop3_helpers import (
    PLAINTEXT_REFUSED,
    Fixture,
    Session,
    TCPServer,
    TLSStringTransport,
    b64,
)


class STLSTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.context = object()
        self.fixture = Fixture(self, tls_context=self.context, plaintext="never")

    def test_stls(self) -> None:
        session = Session(self.fixture)
        self.assertEqual(session.command("STLS"), b"+OK Begin TLS negotiation now.\r\n")
        assert isinstance(session.transport, TLSStringTransport)
        self.assertIs(session.transport.tls_context, self.context)
        self.assertEqual(
            session.transport.written_before_tls, b"+OK Begin TLS negotiation now.\r\n"
        )
        self.assertTrue(session.login().startswith(b"+OK Logged in"))

    def test_pipelined_commands_after_stls_are_discarded(self) -> None:
        """RFC 2595 3.1: the injected USER is never executed."""
        session = Session(self.fixture, peer="192.0.2.7")
        out = session.send(b"STLS\r\nUSER evil\r\nPASS x\r\nQUIT\r\npartial line")
        self.assertEqual(out, b"+OK Begin TLS negotiation now.\r\n")
        self.assertFalse(session.closed)
        self.assertEqual(session.command("PASS secret"), b"-ERR Send USER first.\r\n")

    def test_stls_after_other_lines_of_a_packet_discards_the_rest(self) -> None:
        session = Session(self.fixture, peer="192.0.2.7")
        session.command(b"AUTH CRAM-MD5")
        session.send(b"*\r\nSTLS\r\nUSER evil\r\n")
        self.assertEqual(session.command("PASS secret"), b"-ERR Send USER first.\r\n")

    def test_user_name_forgotten(self) -> None:
        fixture = Fixture(self, tls_context=self.context, plaintext="always")
        session = Session(fixture)
        session.command("USER alice")
        session.command("STLS")
        self.assertEqual(session.command("PASS secret"), b"-ERR Send USER first.\r\n")

    def test_stls_twice(self) -> None:
        session = Session(self.fixture)
        session.command("STLS")
        self.assertEqual(session.command("STLS"), b"-ERR TLS is already active.\r\n")

    def test_stls_on_implicit_tls(self) -> None:
        session = Session(self.fixture, secure=True)
        self.assertEqual(session.command("STLS"), b"-ERR TLS is already active.\r\n")

    def test_stls_without_certificate(self) -> None:
        session = Session(Fixture(self))
        self.assertEqual(session.command("STLS"), b"-ERR TLS is not available.\r\n")

    def test_stls_with_arguments(self) -> None:
        session = Session(self.fixture)
        self.assertEqual(session.command("STLS now"), b"-ERR This command takes no arguments.\r\n")


class TLSTests(unittest.TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.server_context, self.cert = make_tls_context(self.mktemp())
        self.client_context = ssl.optionsForClientTLS("localhost", trustRoot=self.cert)

    async def test_stls_with_injected_command(self) -> None:
        """``STLS\\r\\nUSER evil\\r\\n`` in one packet: USER is never executed,
        and the session after the handshake starts fresh."""
        fixture = Fixture(self, tls_context=self.server_context, plaintext="never")
        server = TCPServer(self, fixture)
        client, _ = await server.connect()
        client.send(b"CAPA\r\n")
        self.assertIn(b"\r\nSTLS\r\n", await client.response())
        self.assertEqual(await client.command(b"USER alice"), PLAINTEXT_REFUSED)
        client.send(b"STLS\r\nUSER evil\r\n")
        self.assertEqual(await client.line(), b"+OK Begin TLS negotiation now.\r\n")
        self.assertEqual(client.buffer, b"")
        client.start_tls(self.client_context)
        self.assertEqual(await client.command(b"PASS secret"), b"-ERR Send USER first.\r\n")
        client.send(b"CAPA\r\n")
        capa = await client.response()
        self.assertNotIn(b"STLS", capa)
        self.assertIn(b"\r\nUSER\r\n", capa)
        self.assertEqual(await client.command(b"STLS"), b"-ERR TLS is already active.\r\n")
        await client.command(b"USER alice")
        self.assertTrue((await client.command(b"PASS secret")).startswith(b"+OK Logged in: 3"))
        client.send(b"RETR 1\r\n")
        self.assertTrue((await client.response()).endswith(b"...two dots\r\n.\r\n"))
        self.assertEqual(await client.command(b"QUIT"), b"+OK Logging out, 0 messages deleted.\r\n")

    async def test_implicit_tls(self) -> None:
        fixture = Fixture(self, tls_context=self.server_context, plaintext="never")
        server = TCPServer(self, fixture, implicit_tls=True)
        client, greeting = await server.connect(tls=self.client_context)
        self.assertTrue(greeting.startswith(b"+OK mailsrv"))
        client.send(b"CAPA\r\n")
        capa = await client.response()
        self.assertNotIn(b"STLS", capa)
        self.assertIn(b"\r\nUSER\r\n", capa)
        client.send(b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n")
        self.assertTrue((await client.line()).startswith(b"+OK Logged in: 3"))
        line = b"a line of text that is exactly sixty-four characters long......\r\n"
        message = b"Subject: big\r\n\r\n" + line * (2 * 1024 * 1024 // len(line))
        fixture.deliver(message, "bob")
        await client.command(b"QUIT")
        client, _ = await server.connect(tls=self.client_context)
        await client.command(b"USER bob")
        await client.command(b"PASS hunter2")
        client.send(b"RETR 1\r\n")
        self.assertEqual(
            await client.response(), b"+OK %d octets\r\n" % len(message) + message + b".\r\n"
        )
