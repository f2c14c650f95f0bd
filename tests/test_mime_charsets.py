"""Charset names a sender chooses: whatever Python's codec registry makes
of them, text in an unknown or bogus charset reads as UTF-8 (with
replacement), as text without one does.

``codecs.lookup`` also finds bytes-to-bytes transforms (``base64``,
``zlib``, ``hex``...), and codecs that refuse the "replace" error handler
(``idna``, ``punycode``, ``undefined``); a NUL in the name is a ValueError.
Each of them made SEARCH over such a message fail (NO [SERVERBUG]) before.
"""

from __future__ import annotations

import datetime
import io
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol, reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.imap.protocol import IMAP4ServerFactory
from mailsrv.mime.decoding import decode_text
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryStorage
from tests.imap_helpers import Client

BOGUS = ("base64", "zlib", "hex", "rot13", "uu", "quopri", "bz2", "idna", "punycode", "undefined")

HOSTILE = [
    b"Subject: =?base64?B?aGVsbG8=?= =?undefined?Q?there?=\r\n"
    b'Content-Type: text/plain; charset="zlib"\r\n\r\nneedle one\r\n',
    b'Subject: =?idna?Q?quiet?=\r\nContent-Type: text/plain; charset="a\x00b"\r\n\r\n'
    b"needle two\r\n",
    b"Subject: x\r\nContent-Type: text/plain; charset=punycode\r\n\r\nneedle \xff three\r\n",
]


class DecodeTextTests(SynchronousTestCase):
    def test_bogus_charsets_read_as_utf8(self) -> None:
        for charset in (*BOGUS, "a\x00b"):
            self.assertEqual(decode_text(b"caf\xc3\xa9 \xff", charset), "caf\xe9 \ufffd", charset)

    def test_real_charsets_still_apply(self) -> None:
        self.assertEqual(decode_text(b"caf\xe9", "iso-8859-1"), "caf\xe9")
        self.assertEqual(decode_text(b"+AOk-", "utf-7"), "\xe9")


class SearchTests(TestCase):
    def setUp(self) -> None:
        storage = MemoryStorage()
        inbox = storage.account("joe").get_mailbox("INBOX")
        when = datetime.datetime(2024, 5, 10, 12, 0, tzinfo=datetime.UTC)
        for data in HOSTILE:
            inbox.append(io.BytesIO(data), [], when)
        portal = Portal(MailRealm(storage), [InMemoryUsernamePasswordDatabaseDontUse(joe=b"pw")])
        factory = IMAP4ServerFactory(portal, SessionPolicy(failure_delay=0.0))
        self.port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def test_search_reads_them_as_utf8(self) -> Any:
        creator = protocol.ClientCreator(reactor, Client)
        client = yield creator.connectTCP("127.0.0.1", self.port.getHost().port)
        self.addCleanup(client.transport.loseConnection)
        yield client.until(b"\r\n")
        yield client.command("L", "LOGIN joe pw")
        yield client.command("S", "SELECT INBOX")
        for key, hits in (
            ("TEXT needle", b"1 2 3"),
            ("BODY three", b"3"),
            ("SUBJECT hello", b"1"),
            ("SUBJECT there", b"1"),
            ("SUBJECT quiet", b"2"),
        ):
            response = yield client.command("t", "SEARCH " + key)
            self.assertEqual(response, b"* SEARCH " + hits + b"\r\nt OK SEARCH completed\r\n", key)
