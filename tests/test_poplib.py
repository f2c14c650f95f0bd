"""Python's poplib against the server: every method poplib has.

The server runs in the test's reactor; poplib, which blocks, runs in a
thread (``deferToThread``) and returns what it got for the test to check.
"""

from __future__ import annotations

import contextlib
import io
import os
import poplib
import ssl as stdlib_ssl
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import threads
from twisted.trial import unittest

from mailsrv.interfaces import SEEN
from mailsrv.storage.maildir import MaildirStorage
from tests.helpers import at_once, make_tls_context
from tests.pop3_helpers import MESSAGE_1, MESSAGE_2, MESSAGE_3, Fixture, TCPServer

T = TypeVar("T")

TIMEOUT = 15


def unstuffed_lines(message: bytes) -> list[bytes]:
    lines = message.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


class PoplibTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        directory = self.mktemp()
        self.server_context, _ = make_tls_context(directory)
        self.cafile = os.path.join(directory, "cert.pem")
        self.fixture = Fixture(self, tls_context=self.server_context, failure_delay=0.01)
        self.server = TCPServer(self, self.fixture)
        self.port = self.server.port.getHost().port

    def client_context(self) -> stdlib_ssl.SSLContext:
        return stdlib_ssl.create_default_context(cafile=self.cafile)

    def in_thread(self, function: Callable[[], T]) -> Any:
        return threads.deferToThread(function)

    def connect(self) -> poplib.POP3:
        return poplib.POP3("127.0.0.1", self.port, timeout=TIMEOUT)

    async def test_user_pass_stat_list_retr_dele_quit(self) -> None:
        def session() -> dict[str, Any]:
            pop = self.connect()
            out: dict[str, Any] = {"welcome": pop.getwelcome()}
            out["user"] = pop.user("alice")
            out["pass"] = pop.pass_("secret")
            out["stat"] = pop.stat()
            out["list"] = pop.list()
            out["list2"] = pop.list(2)
            out["retr"] = pop.retr(1)
            out["dele"] = pop.dele(2)
            out["stat_after_dele"] = pop.stat()
            out["quit"] = pop.quit()
            return out

        out = await self.in_thread(session)
        sizes = [len(MESSAGE_1), len(MESSAGE_2), len(MESSAGE_3)]
        self.assertRegex(out["welcome"], rb"^\+OK mailsrv POP3 server ready\. <[^>]+@mail\.test>$")
        self.assertEqual(out["user"], b"+OK Send your password.")
        self.assertTrue(out["pass"].startswith(b"+OK Logged in: 3 messages"))
        self.assertEqual(out["stat"], (3, sum(sizes)))
        resp, listing, _ = out["list"]
        self.assertTrue(resp.startswith(b"+OK 3 messages"))
        self.assertEqual(listing, [b"1 %d" % sizes[0], b"2 %d" % sizes[1], b"3 %d" % sizes[2]])
        self.assertEqual(out["list2"], b"+OK 2 %d" % sizes[1])
        resp, lines, octets = out["retr"]
        self.assertEqual(resp, b"+OK %d octets" % sizes[0])
        self.assertEqual(lines, unstuffed_lines(MESSAGE_1))  # poplib undoes the dot-stuffing
        self.assertEqual(octets, sizes[0])
        self.assertEqual(out["dele"], b"+OK Message 2 marked for deletion.")
        self.assertEqual(out["stat_after_dele"], (2, sizes[0] + sizes[2]))
        self.assertEqual(out["quit"], b"+OK Logging out, 1 message deleted.")
        self.assertEqual(self.fixture.uids(), [1, 3])
        self.assertEqual(self.fixture.seen(), [1])

    async def test_top_uidl_rset_noop(self) -> None:
        def session() -> dict[str, Any]:
            pop = self.connect()
            pop.user("alice")
            pop.pass_("secret")
            out = {
                "top": pop.top(1, 1),
                "top_all": pop.top(3, 10),
                "uidl": pop.uidl(),
                "uidl1": pop.uidl(1),
                "dele": pop.dele(1),
                "rset": pop.rset(),
                "noop": pop.noop(),
                "stat": pop.stat(),
            }
            pop.quit()
            return out

        out = await self.in_thread(session)
        resp, lines, _ = out["top"]
        self.assertEqual(resp, b"+OK Top of message follows")
        self.assertEqual(lines, [b"From: a@example.org", b"Subject: one", b"", b"Hello"])
        self.assertEqual(out["top_all"][1], unstuffed_lines(MESSAGE_3))
        resp, listing, _ = out["uidl"]
        uidvalidity = self.fixture.inbox().uidvalidity
        self.assertEqual(listing, [b"%d %08X%08X" % (n, n, uidvalidity) for n in (1, 2, 3)])
        self.assertEqual(out["uidl1"], b"+OK 1 00000001%08X" % uidvalidity)
        self.assertTrue(out["rset"].startswith(b"+OK Maildrop has 3 messages"))
        self.assertEqual(out["noop"], b"+OK")
        self.assertEqual(out["stat"][0], 3)
        self.assertEqual(self.fixture.uids(), [1, 2, 3])
        self.assertEqual(self.fixture.seen(), [3])  # TOP of the whole message 3 read it

    async def test_apop(self) -> None:
        def session() -> tuple[bytes, tuple[int, int], bytes]:
            pop = self.connect()
            result = pop.apop("bob", "hunter2")
            stat = pop.stat()
            return result, stat, pop.quit()

        result, stat, quit_ = await self.in_thread(session)
        self.assertEqual(result, b"+OK Logged in: 0 messages (0 octets).")
        self.assertEqual(stat, (0, 0))
        self.assertTrue(quit_.startswith(b"+OK Logging out"))

    async def test_apop_wrong_password(self) -> None:
        def session() -> str:
            pop = self.connect()
            try:
                pop.apop("bob", "wrong")
            except poplib.error_proto as e:
                pop.quit()
                return str(e.args[0], "ascii")
            raise AssertionError("APOP with a wrong password succeeded")

        self.assertEqual(await self.in_thread(session), "-ERR [AUTH] Authentication failed.")

    async def test_errors_raise_error_proto(self) -> None:
        """rpop, bad numbers and wrong-state commands all get a -ERR poplib raises
        (utf8 is answered +OK before login, RFC 6856)."""

        def session() -> list[str]:
            pop = self.connect()
            errors = []
            calls: list[Callable[[], object]] = [
                lambda: pop.rpop("alice"),
                lambda: errors.append(pop.utf8().decode()),
                lambda: pop.stat(),
                lambda: pop.pass_("secret"),
            ]
            pop_after: list[Callable[[], object]] = [
                lambda: pop.retr(9),
                lambda: pop.list(0),
                lambda: pop.top(1, -1),
                lambda: pop.dele(4),
                lambda: pop.uidl(7),
                lambda: pop.user("alice"),
            ]
            for call in calls:
                try:
                    call()
                except poplib.error_proto as e:
                    errors.append(e.args[0].decode())
            pop.user("alice")
            pop.pass_("secret")
            for call in pop_after:
                try:
                    call()
                except poplib.error_proto as e:
                    errors.append(e.args[0].decode())
            pop.quit()
            return errors

        self.assertEqual(
            await self.in_thread(session),
            [
                "-ERR RPOP is not supported.",
                "+OK UTF-8 headers will be sent as stored.",
                "-ERR STAT is only valid after login.",
                "-ERR Send USER first.",
                "-ERR No such message.",
                "-ERR No such message.",
                "-ERR Invalid number of lines.",
                "-ERR No such message.",
                "-ERR No such message.",
                "-ERR USER is not valid after login.",
            ],
        )

    async def test_capa(self) -> None:
        def session() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
            pop = self.connect()
            before = pop.capa()
            pop.user("alice")
            pop.pass_("secret")
            after = pop.capa()
            pop.quit()
            return before, after

        before, after = await self.in_thread(session)
        self.assertEqual(
            before,
            {
                "TOP": [],
                "USER": [],
                "UIDL": [],
                "RESP-CODES": [],
                "AUTH-RESP-CODE": [],
                "PIPELINING": [],
                "SASL": ["PLAIN", "LOGIN", "CRAM-MD5"],
                "STLS": [],
                "UTF8": [],
                "EXPIRE": ["NEVER"],
                "LOGIN-DELAY": ["0"],
                "IMPLEMENTATION": ["mailsrv"],
            },
        )
        # RFC 2449 5: what AUTHORIZATION offers is announced after login too.
        self.assertEqual(after, {k: v for k, v in before.items() if k != "STLS"})

    async def test_stls(self) -> None:
        def session() -> dict[str, Any]:
            pop = self.connect()
            out: dict[str, Any] = {"stls": pop.stls(self.client_context())}
            out["cipher"] = pop.sock.cipher()  # type: ignore[attr-defined]  # an SSLSocket now
            out["capa"] = pop.capa()
            pop.user("alice")
            out["pass"] = pop.pass_("secret")
            out["retr"] = pop.retr(2)
            try:
                pop.stls(self.client_context())
            except poplib.error_proto as e:
                out["stls_again"] = e.args[0]
            out["quit"] = pop.quit()
            return out

        out = await self.in_thread(session)
        self.assertEqual(out["stls"], b"+OK Begin TLS negotiation now.")
        self.assertIsNotNone(out["cipher"])
        self.assertNotIn("STLS", out["capa"])
        self.assertTrue(out["pass"].startswith(b"+OK Logged in"))
        self.assertEqual(out["retr"][1], unstuffed_lines(MESSAGE_2))
        # poplib itself refuses a second STLS before asking the server
        self.assertEqual(out["stls_again"], "-ERR TLS session already established")

    async def test_pop3_ssl(self) -> None:
        tls_server = TCPServer(self, self.fixture, implicit_tls=True)
        port = tls_server.port.getHost().port

        def session() -> dict[str, Any]:
            pop = poplib.POP3_SSL("127.0.0.1", port, context=self.client_context(), timeout=TIMEOUT)
            out: dict[str, Any] = {"welcome": pop.getwelcome(), "capa": pop.capa()}
            out["pass"] = (pop.user("alice"), pop.pass_("secret"))
            out["retr"] = pop.retr(1)
            out["quit"] = pop.quit()
            return out

        out = await self.in_thread(session)
        self.assertTrue(out["welcome"].startswith(b"+OK mailsrv"))
        self.assertNotIn("STLS", out["capa"])
        self.assertIn("USER", out["capa"])
        self.assertEqual(out["retr"][1], unstuffed_lines(MESSAGE_1))
        self.assertEqual(self.fixture.seen(), [1])

    async def test_set_debuglevel(self) -> None:
        def session() -> str:
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                pop = self.connect()
                pop.set_debuglevel(2)
                pop.user("alice")
                pop.pass_("secret")
                pop.noop()
                pop.quit()
            return buffer.getvalue()

        debug = await self.in_thread(session)
        self.assertIn("*cmd* 'NOOP'", debug)
        self.assertIn("*resp* b'+OK'", debug)
        self.assertIn("*get* b'+OK Logging out, 0 messages deleted.\\r\\n'", debug)

    async def test_close_without_quit_keeps_messages(self) -> None:
        def session() -> None:
            pop = self.connect()
            pop.user("alice")
            pop.pass_("secret")
            pop.dele(1)
            pop.close()

        await self.in_thread(session)
        for ended in self.server.factory.ended:
            await ended
        self.assertEqual(self.fixture.uids(), [1, 2, 3])
        self.assertFalse(self.fixture.locked())


class PoplibOverMaildirTests(unittest.TestCase):
    """poplib against the real Maildir store, checked on disk and from the IMAP side."""

    timeout = 60

    async def test_session_changes_the_maildir(self) -> None:
        root = os.path.abspath(self.mktemp())
        storage = MaildirStorage(os.path.join(root, "{user}", "Maildir"))
        fixture = Fixture(self, storage=storage)
        uids = fixture.uids()
        server = TCPServer(self, fixture)
        port = server.port.getHost().port

        def session() -> dict[str, Any]:
            pop = poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)
            pop.user("alice")
            pop.pass_("secret")
            out = {"uidl": pop.uidl(), "retr": pop.retr(2), "dele": pop.dele(1)}
            out["quit"] = pop.quit()
            return out

        out = await threads.deferToThread(session)
        inbox = fixture.inbox()
        uidvalidity = inbox.uidvalidity
        self.assertEqual(
            out["uidl"][1],
            [b"%d %08X%08X" % (n + 1, uid, uidvalidity) for n, uid in enumerate(uids)],
        )
        self.assertEqual(out["retr"][1], unstuffed_lines(MESSAGE_2))
        self.assertEqual(out["quit"], b"+OK Logging out, 1 message deleted.")
        self.assertEqual(list(inbox.uids()), uids[1:])
        self.assertIn(SEEN, at_once(inbox.fetch([uids[1]]))[0].flags)
        maildir = os.path.join(root, "alice", "Maildir")
        files = os.listdir(os.path.join(maildir, "cur")) + os.listdir(os.path.join(maildir, "new"))
        self.assertEqual(len(files), 2)
        self.assertEqual(len([f for f in files if f.split(":2,")[-1].count("S")]), 1)
