"""The IMAP session's dispatch: whatever a command's parser, handler or SASL
mechanism raises ends in a tagged answer, and the connection goes on."""

from __future__ import annotations

import io
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mailsrv.auth import sasl
from mailsrv.imap.commands import REGISTRY
from mailsrv.imap.lexer import Reader
from mailsrv.imap.protocol import IMAP4Server
from mailsrv.imap.registry import ANY, Command, CommandSpec, Registry, Simple, no_arguments
from mailsrv.storage.memory import MemoryStorage
from tests.imap_helpers import in_process


def _broken_parser(reader: Reader, tag: str, name: str, uid: bool) -> Command:
    raise TypeError("a bug in a parser")


def _broken_handler(session: Any, command: Simple) -> Any:
    raise TypeError("a bug in a handler")


class UnexpectedErrorTests(SynchronousTestCase):
    def connect(self) -> tuple[IMAP4Server, StringTransport]:
        storage = MemoryStorage()
        storage.deliver("joe", b"Subject: hi\r\n\r\nhello\r\n")
        server, transport = in_process(storage)
        server.session.registry = Registry(
            [
                *REGISTRY,
                CommandSpec("XPARSE", _broken_parser, _broken_handler, ANY),
                CommandSpec("XHANDLE", no_arguments, _broken_handler, ANY),
                CommandSpec("XFETCH", no_arguments, _broken_handler, ANY, names_messages=True),
            ]
        )
        return server, transport

    def test_a_parser_bug_is_bad_and_logged(self) -> None:
        server, transport = self.connect()
        server.dataReceived(b"a XPARSE x\r\nb NOOP\r\n")
        self.assertEqual(
            transport.value(),
            b"a BAD malformed command (TypeError)\r\nb OK NOOP completed\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_a_handler_bug_is_serverbug_and_logged(self) -> None:
        server, transport = self.connect()
        server.dataReceived(b"L LOGIN joe secret\r\nS SELECT INBOX\r\n")
        # Mail arrives, so the command that names messages flushes first.
        server.session.logged_in_account().get_mailbox("INBOX").append(
            io.BytesIO(b"Subject: more\r\n\r\n")
        )
        transport.clear()
        server.dataReceived(b"a XFETCH\r\nb XHANDLE\r\nc NOOP\r\n")
        self.assertEqual(
            transport.value(),
            b"* 2 EXISTS\r\n* 2 RECENT\r\n"
            b"a NO [SERVERBUG] Internal server error\r\n"
            b"b NO [SERVERBUG] Internal server error\r\n"
            b"c OK NOOP completed\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 2)

    def test_a_sasl_mechanism_bug_is_serverbug(self) -> None:
        class Broken:
            name = "PLAIN"

            def start(self, initial: bytes | None) -> sasl.Step:
                return sasl.Challenge(b"")

            def respond(self, data: bytes) -> sasl.Step:
                raise TypeError("a bug in a mechanism")

        self.patch(sasl, "create", lambda name, hostname: Broken())
        server, transport = self.connect()
        server.dataReceived(b"a AUTHENTICATE PLAIN\r\n")
        self.assertEqual(transport.value(), b"+ \r\n")
        server.dataReceived(b"AGpvZQBzZWNyZXQ=\r\nb NOOP\r\n")
        self.assertEqual(
            transport.value(),
            b"+ \r\na NO [SERVERBUG] Internal server error\r\nb OK NOOP completed\r\n",
        )
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)
