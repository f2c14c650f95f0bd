"""mailsrv.testing's MailServer: what a client's test suite gets from it.

Most tests here are synchronous, as a client's tests are: the server runs in
its own reactor thread (``with running() as srv``) and imaplib, poplib and
smtplib block in the test's thread.
"""

from __future__ import annotations

import datetime
import email.message
import gc
import imaplib
import io
import os
import pathlib
import poplib
import smtplib
import socket
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from mailsrv.testing import MailServer, running
from mailsrv.testing.trial import MailServerMixin

MESSAGE = b"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: hello\r\n\r\nHi there\r\n"
TIMEOUT = 15


def imap(srv: MailServer, login: bool = True) -> imaplib.IMAP4:
    client = imaplib.IMAP4(srv.host, srv.imap_port, timeout=TIMEOUT)
    if login:
        client.login(srv.user, srv.password)
    return client


def raw(srv: MailServer, port: int) -> tuple[socket.socket, Callable[[], bytes]]:
    """A socket and a function reading one line from it."""
    sock = socket.create_connection((srv.host, port), timeout=TIMEOUT)
    reader = sock.makefile("rb")
    return sock, reader.readline


def read_until_tag(readline: Callable[[], bytes], tag: bytes) -> list[bytes]:
    lines = []
    while True:
        line = readline()
        lines.append(line)
        if not line or line.startswith(tag + b" "):
            return lines


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


class SeedingTests(unittest.SynchronousTestCase):
    def test_seeded_messages_as_a_client_sees_them(self) -> None:
        mime = email.message.EmailMessage()
        mime["Subject"] = "from EmailMessage"
        mime.set_content("Body text\n")
        with running() as srv:
            directory = pathlib.Path(self.mktemp())
            directory.mkdir()
            (directory / "m.eml").write_bytes(b"Subject: from a file\n\nfile body\n")
            uids = [
                srv.deliver(
                    srv.user,
                    MESSAGE,
                    flags=["\\Flagged"],
                    keywords=["$Work"],
                    date="Mon, 7 Feb 1994 21:52:25 -0800",
                ),
                srv.deliver(srv.user, mime, folder="Archive/2024"),
                srv.deliver(srv.user, directory / "m.eml", folder="Archive/2024"),
                srv.deliver(srv.user, io.BytesIO(b"Subject: file object\r\n\r\nx\r\n"), date=0),
            ]
            client = imap(srv)
            client.select("INBOX")
            _, fetched_data = client.fetch("1", "(FLAGS INTERNALDATE BODY.PEEK[])")
            fetched: Any = fetched_data
            _, archive = client.select("Archive/2024")
            _, listed = client.list()
            client.select("INBOX")
            client.store("2", "+FLAGS", "(\\Seen)")
            client.append("Sent", "(\\Seen)", None, b"Subject: sent\r\n\r\nbye\r\n")
            client.logout()
            inbox = srv.messages(srv.user)
            sent = srv.messages(srv.user, "Sent")
            stored = srv.messages(srv.user, "Archive/2024")
            mailboxes = srv.mailboxes(srv.user)
        self.assertEqual(uids, [1, 1, 2, 2])
        head = fetched[0][0]
        self.assertIn(b"FLAGS (\\Flagged \\Recent $Work)", head)
        self.assertIn(b'INTERNALDATE "07-Feb-1994 21:52:25 -0800"', head)
        self.assertEqual(fetched[0][1], MESSAGE)
        self.assertEqual(archive, [b"2"])
        self.assertIn(b'(\\HasNoChildren) "/" Archive/2024', listed)
        self.assertIn("Archive/2024", mailboxes)
        self.assertEqual(stored[0].subject, "from EmailMessage")
        self.assertEqual(stored[1].data, b"Subject: from a file\r\n\r\nfile body\r\n")
        self.assertEqual(inbox[0].keywords, {"$Work"})
        self.assertEqual(inbox[1].internal_date, datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC))
        self.assertTrue(inbox[1].seen)  # the client's STORE
        self.assertEqual([m.subject for m in sent], ["sent"])
        self.assertTrue(sent[0].seen)

    def test_refuses_what_it_cannot_take(self) -> None:
        with running() as srv:
            self.assertRaises(TypeError, srv.deliver, srv.user, "Subject: text\r\n\r\n")
            self.assertRaises(ValueError, srv.deliver, srv.user, MESSAGE, date="yesterday")
            self.assertRaises(LookupError, srv.port, "imaps")
        self.assertRaises(ValueError, MailServer, protocols=("smtp",))
        self.assertRaises(ValueError, MailServer, plaintext="sometimes")

    def test_maildir_storage(self) -> None:
        with running(storage="maildir") as srv:
            srv.deliver(srv.user, MESSAGE, flags=["\\Seen"])
            root = srv.maildir(srv.user)
            files = os.listdir(os.path.join(root, "cur"))
            client = imap(srv)
            client.select()
            _, body_data = client.fetch("1", "(BODY.PEEK[])")
            body: Any = body_data
            client.logout()
        self.assertEqual(len(files), 1)
        self.assertTrue(files[0].endswith(":2,S"), files)
        self.assertEqual(body[0][1], MESSAGE)
        self.assertFalse(os.path.exists(root))  # removed at stop

    def test_users_and_sasl(self) -> None:
        with running(users={"joe": "pw"}) as srv:
            srv.add_user("ann", "other")
            client = imap(srv, login=False)
            self.assertEqual(client.login_cram_md5("ann", "other")[0], "OK")
            client.logout()
            client = imap(srv, login=False)
            self.assertRaises(imaplib.IMAP4.error, client.login, "joe", "wrong")
            client.logout()
            self.assertEqual((srv.user, srv.password), ("joe", "pw"))

    def test_lmtp_delivery(self) -> None:
        with running() as srv:
            with smtplib.LMTP(srv.host, srv.lmtp_port) as lmtp:
                lmtp.sendmail("bob@example.org", ["alice@example.org"], MESSAGE)
            messages = srv.messages(srv.user)
        self.assertEqual(len(messages), 1)
        self.assertTrue(messages[0].data.endswith(b"Hi there\r\n"))

    def test_pop3(self) -> None:
        with running() as srv:
            srv.deliver(srv.user, MESSAGE)
            client = poplib.POP3(srv.host, srv.pop3_port, timeout=TIMEOUT)
            client.user(srv.user)
            client.pass_(srv.password)
            _, lines, _ = client.retr(1)
            client.dele(1)
            client.quit()
            left = srv.messages(srv.user)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", MESSAGE)
        self.assertEqual(left, [])

    def test_transcripts(self) -> None:
        with running() as srv:
            client = imap(srv)
            client.select()
            client.logout()
            pop = poplib.POP3(srv.host, srv.pop3_port, timeout=TIMEOUT)
            pop.quit()
            (session,) = srv.transcripts("imap")
            everything = srv.transcripts()
        self.assertEqual(session.commands(), ["CAPABILITY", "LOGIN", "SELECT", "LOGOUT"])
        self.assertTrue(session.closed)
        self.assertIn(b"OK [READ-WRITE] SELECT completed", session.server_bytes)
        self.assertIn("C: ", session.text())
        self.assertEqual([t.protocol for t in everything], ["IMAP", "POP3"])
        self.assertEqual(everything[1].commands(), ["QUIT"])


class TLSTests(unittest.SynchronousTestCase):
    def test_every_tls_way_in(self) -> None:
        with running(tls=True, plaintext="never") as srv:
            context = srv.ssl_context()
            client = imap(srv, login=False)
            before = client.capabilities
            self.assertRaises(imaplib.IMAP4.error, client.login, srv.user, srv.password)
            client.starttls(context)
            self.assertEqual(client.login(srv.user, srv.password)[0], "OK")
            client.logout()
            secure = imaplib.IMAP4_SSL(srv.host, srv.imaps_port, ssl_context=context)
            self.assertEqual(secure.login(srv.user, srv.password)[0], "OK")
            secure.logout()
            pop = poplib.POP3(srv.host, srv.pop3_port, timeout=TIMEOUT)
            pop.stls(context)
            pop.user(srv.user)
            self.assertTrue(pop.pass_(srv.password).startswith(b"+OK"))
            pop.quit()
            pops = poplib.POP3_SSL(srv.host, srv.pop3s_port, context=context)
            pops.user(srv.user)
            self.assertTrue(pops.pass_(srv.password).startswith(b"+OK"))
            pops.quit()
            transcript = srv.transcripts("imap")[0]
            certificate = srv.certificate
        self.assertIn("LOGINDISABLED", before)
        # Recorded inside TLS: the LOGIN after STARTTLS is in the clear here.
        self.assertEqual(
            transcript.commands(),
            ["CAPABILITY", "LOGIN", "STARTTLS", "CAPABILITY", "LOGIN", "LOGOUT"],
        )
        assert certificate is not None
        self.assertFalse(os.path.exists(certificate))


class ShutdownTests(unittest.SynchronousTestCase):
    def test_nothing_is_left_behind(self) -> None:
        """No thread, descriptor, port or file outlives the server, even with
        a client still connected when it stops."""
        # What a process opens once, on its first TLS server (OpenSSL's
        # random source), is not the server's: open it before counting.
        with MailServer(tls=True):
            pass
        # Earlier tests' garbage closes its descriptors when collected: not
        # in the middle of the count.
        gc.collect()
        threads_before = set(threading.enumerate())
        fds_before = open_fds()
        srv = MailServer(tls=True, storage="maildir")
        with srv:
            port = srv.imap_port
            directory = srv.maildir(srv.user)
            srv.deliver(srv.user, MESSAGE)
            client = imap(srv)
            client.select()
        self.assertEqual(set(threading.enumerate()), threads_before)
        # The client's socket is the only descriptor left, and it sees EOF.
        self.assertRaises(imaplib.IMAP4.abort, client.noop)
        client.shutdown()
        self.assertEqual(open_fds(), fds_before)
        self.assertRaises(ConnectionRefusedError, socket.create_connection, ("127.0.0.1", port))
        self.assertFalse(os.path.exists(os.path.dirname(os.path.dirname(directory))))

    def test_failed_start_leaves_nothing(self) -> None:
        threads_before = set(threading.enumerate())
        srv = MailServer(storage=object())  # type: ignore[arg-type]
        self.assertRaises(TypeError, srv.start_thread)
        self.assertEqual(set(threading.enumerate()), threads_before)


class InProcessTests(MailServerMixin, unittest.TestCase):
    """The trial mixin: the server in trial's reactor, the client in a thread."""

    mail_server_options = {"protocols": ("imap",)}

    async def test_client_in_a_thread(self) -> None:
        srv = self.mail_server
        srv.deliver(srv.user, MESSAGE)

        def session() -> Any:
            client = imap(srv)
            client.select()
            client.store("1", "+FLAGS", "(\\Answered)")
            client.logout()
            # From the client's thread too: the call runs in the reactor's.
            srv.deliver(srv.user, MESSAGE, folder="Later")
            return srv.messages(srv.user)

        (message,) = await self.in_client_thread(session)
        self.assertIn("\\Answered", message.flags)
        self.assertEqual(len(srv.messages(srv.user, "Later")), 1)
        self.assertRaises(LookupError, srv.port, "pop3")


class ThreadMixinTests(MailServerMixin, unittest.SynchronousTestCase):
    """The trial mixin's thread mode: a blocking client in the test body."""

    mail_server_thread = True

    def test_blocking_client(self) -> None:
        client = imap(self.mail_server)
        self.assertEqual(client.select()[0], "OK")
        client.logout()


class UnusedStopTests(unittest.TestCase):
    def test_stop_without_connections(self) -> defer.Deferred[None]:
        return MailServer().start().stop()
