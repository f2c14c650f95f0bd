"""The search and fetch extensions of issue 13 over each backend (memory,
Maildir, PostgreSQL), on the wire: WITHIN (RFC 5032), SAVEDATE (RFC 8514),
OBJECTID (RFC 8474) and PREVIEW (RFC 8970), with the RFCs' own examples
where they give some, and with ESEARCH, SEARCHRES and BINARY beside them.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mailsrv.imap.syntax import format_date_time
from mailsrv.interfaces import IStorage
from mailsrv.storage.memory import MemoryStorage
from tests.test_imap_backends import _BackendBase


def message(subject: str, body: str = "Hello there.", extra: str = "") -> bytes:
    text = f"From: a@example.org\r\nSubject: {subject}\r\n{extra}\r\n{body}\r\n"
    return text.encode("utf-8")


def ago(**delta: float) -> datetime.datetime:
    """A moment that long before now, to the second (what IMAP carries)."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return now - datetime.timedelta(**delta)


class _Scenarios(_BackendBase):
    def deliver(self, number: int) -> Any:
        raise NotImplementedError  # these tests APPEND through IMAP

    @defer.inlineCallbacks
    def append(
        self,
        client: Any,
        data: bytes,
        date: datetime.datetime | None = None,
        mailbox: str = "INBOX",
    ) -> Any:
        """APPEND ``data`` (with an internal date, if given); its UID."""
        when = f' "{format_date_time(date)}"' if date is not None else ""
        response = yield client.command(
            "ap", b"APPEND %s%s {%d+}\r\n" % (mailbox.encode(), when.encode(), len(data)) + data
        )
        found = re.search(rb"ap OK \[APPENDUID \d+ (\d+)\]", response)
        assert found is not None, response
        return int(found.group(1))

    # -- WITHIN (RFC 5032) ------------------------------------------------------

    @defer.inlineCallbacks
    def test_within_older_younger(self) -> Any:
        """RFC 5032 4's example and its mirror: the internal date measured
        from the server's current time, in seconds, whatever the zone."""
        t: Any = self
        client = yield self.session()
        yield self.append(client, message("ten days"), ago(days=10))
        yield self.append(client, message("two days"), ago(days=2))
        east = datetime.timezone(datetime.timedelta(hours=9))
        yield self.append(client, message("an hour"), ago(hours=1).astimezone(east))
        yield client.command("n", "NOOP")
        yield client.command("s", "STORE 2 +FLAGS (\\Seen)")
        response = yield client.command("a1", "SEARCH UNSEEN YOUNGER 259200")
        t.assertEqual(response, b"* SEARCH 3\r\na1 OK SEARCH completed\r\n")
        response = yield client.command("a2", "SEARCH YOUNGER 259200")
        t.assertEqual(response, b"* SEARCH 2 3\r\na2 OK SEARCH completed\r\n")
        response = yield client.command("a3", "SEARCH OLDER 7200")
        t.assertEqual(response, b"* SEARCH 1 2\r\na3 OK SEARCH completed\r\n")
        response = yield client.command("a4", "UID SEARCH RETURN (COUNT MIN) NOT OLDER 864000")
        t.assertEqual(
            response, b'* ESEARCH (TAG "a4") UID MIN 2 COUNT 2\r\na4 OK SEARCH completed\r\n'
        )
        # SEARCHRES: the saved result of a WITHIN search names messages.
        response = yield client.command("a5", "SEARCH RETURN (SAVE) OR OLDER 604800 YOUNGER 60")
        t.assertEqual(response, b"a5 OK SEARCH completed\r\n")
        response = yield client.command("a6", "FETCH $ (UID)")
        t.assertEqual(response, b"* 1 FETCH (UID 1)\r\na6 OK FETCH completed\r\n")
        for bad in ("OLDER 0", "YOUNGER -1", "OLDER", "YOUNGER 4294967296"):
            response = yield client.command("b", f"SEARCH {bad}")
            t.assertTrue(response.startswith(b"b BAD "), response)

    # -- PREVIEW (RFC 8970) -----------------------------------------------------

    @defer.inlineCallbacks
    def previews(self) -> Any:
        """A session over five messages: plain text, quoted reply, HTML,
        an image alone, long UTF-8 text."""
        client = yield self.session()
        yield self.append(client, message("one", "Preview text!"))
        quoted = "Sounds good.\r\n\r\n> What about lunch?\r\n> At noon\r\n-- \r\nJoe"
        yield self.append(client, message("two", quoted))
        page = (
            "<html><head><style>p {color: red}</style></head>"
            "<body><p>Hello &amp; welcome</p><p>to the <b>list</b></p></body></html>"
        )
        yield self.append(
            client, message("three", page, "Content-Type: text/html; charset=utf-8\r\n")
        )
        image = "Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n"
        yield self.append(client, message("four", "iVBORw0KGgo=", image))
        long_text = "Grüße aus Köln. " * 30
        yield self.append(
            client,
            message(
                "five",
                long_text,
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n",
            ),
        )
        yield client.command("n", "NOOP")
        return client

    @defer.inlineCallbacks
    def test_preview_rfc_examples(self) -> Any:
        """RFC 8970 5's examples 1 and 2: LAZY answers NIL for a preview not
        worked out yet, the plain FETCH works it out, and LAZY then has it."""
        t: Any = self
        client = yield self.previews()
        response = yield client.command("A1", "FETCH 1 (PREVIEW)")
        t.assertEqual(response, b'* 1 FETCH (PREVIEW "Preview text!")\r\nA1 OK FETCH completed\r\n')
        response = yield client.command("B1", "FETCH 1:4 (UID PREVIEW (LAZY))")
        t.assertEqual(
            response,
            b'* 1 FETCH (UID 1 PREVIEW "Preview text!")\r\n'
            b"* 2 FETCH (UID 2 PREVIEW NIL)\r\n"
            b"* 3 FETCH (UID 3 PREVIEW NIL)\r\n"
            b"* 4 FETCH (UID 4 PREVIEW NIL)\r\n"
            b"B1 OK FETCH completed\r\n",
        )
        response = yield client.command("B2", "FETCH 2:5 (PREVIEW)")
        expected_five = ("Grüße aus Köln. " * 13)[:200].rstrip().encode("utf-8")
        t.assertEqual(
            response,
            b'* 2 FETCH (PREVIEW "Sounds good.")\r\n'
            b'* 3 FETCH (PREVIEW "Hello & welcome to the list")\r\n'
            b'* 4 FETCH (PREVIEW "")\r\n'
            b"* 5 FETCH (PREVIEW {%d}\r\n%s)\r\n"
            b"B2 OK FETCH completed\r\n" % (len(expected_five), expected_five),
        )
        response = yield client.command("B3", "FETCH 2:4 PREVIEW (LAZY)")
        t.assertEqual(
            response,
            b'* 2 FETCH (PREVIEW "Sounds good.")\r\n'
            b'* 3 FETCH (PREVIEW "Hello & welcome to the list")\r\n'
            b'* 4 FETCH (PREVIEW "")\r\n'
            b"B3 OK FETCH completed\r\n",
        )
        # Either modifier list, and a lone PREVIEW before FETCH modifiers.
        response = yield client.command("B4", "FETCH 1 PREVIEW (CHANGEDSINCE 1)")
        t.assertRegex(response, rb'\* 1 FETCH \(PREVIEW "Preview text!" MODSEQ \(\d+\)\)\r\nB4 OK')
        for bad in ("FETCH 1 (PREVIEW (LAZY FAST))", "FETCH 1 (PREVIEW (LAZY)"):
            response = yield client.command("b", bad)
            t.assertTrue(response.startswith(b"b BAD "), response)

    @defer.inlineCallbacks
    def test_preview_with_searchres_and_binary(self) -> Any:
        """RFC 8970 5's example 3 (SEARCHRES), and PREVIEW beside BINARY."""
        t: Any = self
        client = yield self.previews()
        yield client.command("C0", "FETCH 3 (PREVIEW)")
        client.send(b'C2 SEARCH RETURN (SAVE) OR SUBJECT "three" SUBJECT "four"\r\n')
        response = yield client.command("C3", "FETCH $ (UID PREVIEW (LAZY))")
        t.assertEqual(
            response,
            b"C2 OK SEARCH completed\r\n"
            b'* 3 FETCH (UID 3 PREVIEW "Hello & welcome to the list")\r\n'
            b"* 4 FETCH (UID 4 PREVIEW NIL)\r\n"
            b"C3 OK FETCH completed\r\n",
        )
        response = yield client.command("C4", "UID FETCH 4 (PREVIEW BINARY.PEEK[1])")
        t.assertEqual(
            response,
            b'* 4 FETCH (PREVIEW "" BINARY[1] ~{8}\r\n\x89PNG\r\n\x1a\n UID 4)\r\n'
            b"C4 OK FETCH completed\r\n",
        )


class MemoryExtensionTests(_Scenarios, TestCase):
    def make_storage(self) -> IStorage:
        return MemoryStorage()


class MaildirExtensionTests(_Scenarios, TestCase):
    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        self.template = self.mktemp() + "/{user}"
        return MaildirStorage(self.template)


class PostgresExtensionTests(_Scenarios, TestCase):
    def make_storage(self) -> IStorage:
        from tests.pgcluster import new_dsn, new_storage

        storage: IStorage = new_storage(self, new_dsn())
        return storage
