"""SCRAM-SHA-256(-PLUS) logins at a real daemon by clients others wrote:
scramp (pg8000's SCRAM, from PyPI) over Python's imaplib and poplib, and
GNU SASL's ``gsasl`` (the SASL library Debian's mutt and neomutt use, with
GnuTLS) over IMAP STARTTLS.  The users are made with ``mailsrv user add
--scheme SCRAM-SHA-256``, so the users file holds no password."""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import socket
import ssl
from collections.abc import Callable
from typing import Any

import scramp

from tests.interop.support import InteropTestCase, MailServer, make_message


def add_scram_user(server: MailServer, prefix: str, password: str) -> tuple[str, str]:
    """``mailsrv user add NAME --scheme SCRAM-SHA-256`` with a fresh name."""
    name = f"{prefix}{next(server._names)}"
    server.mailsrv(
        "user",
        "add",
        name,
        "--scheme",
        "SCRAM-SHA-256",
        "--password-stdin",
        stdin=password.encode() + b"\n",
    )
    return name, password


def _tls12(context: ssl.SSLContext) -> ssl.SSLContext:
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


class _Scramp:
    """The SCRAM conversation of a scramp client, one server message at a time."""

    def __init__(self, mechanisms: list[str], user: str, password: str, binding: Any) -> None:
        self.client = scramp.ScramClient(mechanisms, user, password, channel_binding=binding)
        self.step = 0
        self.error: Exception | None = None

    def answer(self, challenge: bytes) -> bytes | None:
        """The answer to ``challenge``; None (cancel) when the server's last
        message does not verify or carries an error."""
        self.step += 1
        if self.step == 1:
            first: str = self.client.get_client_first()
            return first.encode()
        if self.step == 2:
            self.client.set_server_first(challenge.decode())
            final: str = self.client.get_client_final()
            return final.encode()
        try:
            self.client.set_server_final(challenge.decode())
        except scramp.ScramException as e:
            self.error = e
            return None
        return b""


class ScrampTests(InteropTestCase):
    """scramp over imaplib and poplib: plaintext on loopback, implicit TLS
    1.3 with tls-server-end-point, STARTTLS/STLS on TLS 1.2 with tls-unique."""

    def setUp(self) -> None:
        super().setUp()
        # SASLprep (RFC 4013) maps the circled digit to "1" on both sides.
        self.user, self.password = add_scram_user(self.server, "scram", "pässwörd ①")
        with open(self.server.passwd, encoding="utf-8") as f:
            line = next(entry for entry in f if entry.startswith(self.user + ":"))
        self.assertRegex(line, r"^[^:]+:\{SCRAM-SHA-256\}4096,[^,]+,[^,]+,[^,:]+\n$")
        self.server.deliver(self.user, make_message("hello SCRAM"))

    def scram(self, binding: Any = None) -> _Scramp:
        mechanisms = ["SCRAM-SHA-256-PLUS" if binding is not None else "SCRAM-SHA-256"]
        return _Scramp(mechanisms, self.user, self.password, binding)

    def tls_version(self, sock: socket.socket) -> str | None:
        """The TLS version ``sock`` negotiated (it must be a TLS socket)."""
        self.assertIsInstance(sock, ssl.SSLSocket)
        assert isinstance(sock, ssl.SSLSocket)
        return sock.version()

    def imap_login(self, session: imaplib.IMAP4, conversation: _Scramp) -> None:
        self.addCleanup(session.shutdown)
        mechanism = conversation.client.mechanism_name
        self.assertIn(f"AUTH={mechanism}", session.capabilities)
        typ, _ = session.authenticate(mechanism, conversation.answer)
        self.assertEqual(typ, "OK")
        typ, data = session.select("INBOX", readonly=True)
        self.assertEqual((typ, data), ("OK", [b"1"]))

    def test_imap_plaintext_on_loopback(self) -> None:
        session = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"], timeout=30)
        self.imap_login(session, self.scram())

    def test_imaps_plus_tls13(self) -> None:
        session = imaplib.IMAP4_SSL(
            "localhost", self.server.ports["imaps"], ssl_context=self.server.ssl_context()
        )
        self.assertEqual(self.tls_version(session.sock), "TLSv1.3")
        self.imap_login(session, self.scram(("tls-server-end-point", session.sock)))

    def test_imap_starttls_plus_tls12(self) -> None:
        session = imaplib.IMAP4("localhost", self.server.ports["imap"], timeout=30)
        session.starttls(_tls12(self.server.ssl_context()))
        self.assertEqual(self.tls_version(session.sock), "TLSv1.2")
        self.imap_login(session, self.scram(("tls-unique", session.sock)))

    def test_imap_wrong_password(self) -> None:
        session = imaplib.IMAP4("127.0.0.1", self.server.ports["imap"], timeout=30)
        self.addCleanup(session.shutdown)
        conversation = _Scramp(["SCRAM-SHA-256"], self.user, "wrong", None)
        with self.assertRaises(imaplib.IMAP4.error) as caught:
            session.authenticate("SCRAM-SHA-256", conversation.answer)
        self.assertIn("[AUTHENTICATIONFAILED]", str(caught.exception))
        self.assertIn("invalid-proof", str(conversation.error))

    def pop3_login(self, pop: poplib.POP3, conversation: _Scramp) -> None:
        self.addCleanup(_quit, pop)
        mechanism = conversation.client.mechanism_name
        self.assertIn(mechanism, pop.capa()["SASL"])
        answer = _pop3_auth(pop, mechanism, conversation.answer)
        self.assertTrue(answer.startswith(b"+OK Logged in: 1 message"), answer)

    def test_pop3_plaintext_on_loopback(self) -> None:
        pop = poplib.POP3("127.0.0.1", self.server.ports["pop3"], timeout=30)
        self.pop3_login(pop, self.scram())

    def test_pop3s_plus_tls13(self) -> None:
        pop = poplib.POP3_SSL(
            "localhost", self.server.ports["pop3s"], context=self.server.ssl_context()
        )
        self.assertEqual(self.tls_version(pop.sock), "TLSv1.3")
        self.pop3_login(pop, self.scram(("tls-server-end-point", pop.sock)))

    def test_pop3_stls_plus_tls12(self) -> None:
        pop = poplib.POP3("localhost", self.server.ports["pop3"], timeout=30)
        pop.stls(_tls12(self.server.ssl_context()))
        self.assertEqual(self.tls_version(pop.sock), "TLSv1.2")
        self.pop3_login(pop, self.scram(("tls-unique", pop.sock)))


def _pop3_auth(pop: poplib.POP3, mechanism: str, answer: Callable[[bytes], bytes | None]) -> bytes:
    """RFC 5034 AUTH, which poplib lacks: challenges ``+ base64`` until +OK/-ERR."""
    pop._putcmd(f"AUTH {mechanism}")  # type: ignore[attr-defined]
    while True:
        line, _ = pop._getline()  # type: ignore[attr-defined]
        if not line.startswith(b"+ ") and line != b"+":
            return bytes(line)
        response = answer(base64.b64decode(line[2:]))
        pop._putcmd("*" if response is None else base64.b64encode(response).decode())  # type: ignore[attr-defined]


def _quit(pop: poplib.POP3) -> None:
    try:
        pop.quit()
    except (poplib.error_proto, OSError):
        pop.close()


class GsaslTests(InteropTestCase):
    """GNU SASL's command-line client: STARTTLS, then SCRAM-SHA-256-PLUS
    bound with tls-exporter on TLS 1.3 and tls-unique on TLS 1.2."""

    programs = (("gsasl", "gsasl"),)

    def setUp(self) -> None:
        super().setUp()
        self.user, self.password = add_scram_user(self.server, "gsasl", "gsasl-s3cret")

    def gsasl(self, mechanism: str, *options: str, password: str = "", ok: bool = True) -> str:
        args = [
            self.paths["gsasl"],
            "--imap",
            "localhost",
            str(self.server.ports["imap"]),
            "--mechanism",
            mechanism,
            "--authentication-id",
            self.user,
            "--password",
            password or self.password,
            "--x509-ca-file",
            self.server.cafile,
            "--starttls",
            *options,
        ]
        result = self.run_client(args, ok_codes=(0,) if ok else (1,))
        return result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")

    def client_first(self, output: str) -> str:
        """The gs2 header gsasl sent (its first base64 line after the "+ ")."""
        for line in output.splitlines():
            text = line.strip()
            if len(text) >= 8 and len(text) % 4 == 0 and re.fullmatch(r"[A-Za-z0-9+/]+=*", text):
                decoded = base64.b64decode(text).decode(errors="replace")
                if decoded[:2] in ("p=", "n,", "y,"):
                    return decoded.split(",n=", 1)[0]
        raise AssertionError(f"no client-first message in:\n{output}")

    def test_plus_tls13_exporter(self) -> None:
        output = self.gsasl("SCRAM-SHA-256-PLUS", "--verbose")
        self.assertEqual(self.client_first(output), "p=tls-exporter,")
        self.assertIn("Logged in", output)
        self.assertIn("server trusted", output)  # gsasl checked our signature

    def test_plus_tls12_unique(self) -> None:
        output = self.gsasl("SCRAM-SHA-256-PLUS", "--verbose", "--priority", "NORMAL:-VERS-TLS1.3")
        self.assertEqual(self.client_first(output), "p=tls-unique,")
        self.assertIn("Logged in", output)

    def test_without_channel_binding(self) -> None:
        output = self.gsasl("SCRAM-SHA-256", "--verbose", "--no-cb")
        self.assertEqual(self.client_first(output), "n,")
        self.assertIn("Logged in", output)

    def test_wrong_password(self) -> None:
        output = self.gsasl("SCRAM-SHA-256-PLUS", password="not it", ok=False)
        self.assertNotIn("Logged in", output)
