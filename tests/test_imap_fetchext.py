"""The search and fetch extensions of issue 13 over each backend (memory,
Maildir, PostgreSQL), on the wire: WITHIN (RFC 5032), SAVEDATE (RFC 8514),
OBJECTID (RFC 8474) and PREVIEW (RFC 8970), with the RFCs' own examples
where they give some, and with ESEARCH, SEARCHRES and BINARY beside them.
"""

from __future__ import annotations

import datetime
import os
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

    # -- OBJECTID (RFC 8474) ----------------------------------------------------

    @defer.inlineCallbacks
    def test_mailboxid_rfc_examples(self) -> Any:
        """RFC 8474 4's examples: CREATE, STATUS, RENAME, LIST-STATUS and
        SELECT; a mailbox deleted and made again is a new one."""
        t: Any = self
        client = yield self.session(None)
        response = yield client.command("3", "create foo")
        found = re.fullmatch(
            rb"3 OK \[MAILBOXID \(([A-Za-z0-9_-]{1,255})\)\] CREATE completed\r\n", response
        )
        assert found is not None, response
        foo = found.group(1)
        response = yield client.command("4", "create bar")
        bar = re.fullmatch(
            rb"4 OK \[MAILBOXID \(([A-Za-z0-9_-]+)\)\] CREATE completed\r\n", response
        )
        assert bar is not None, response
        bar_id = bar.group(1)
        t.assertNotEqual(foo, bar_id)
        response = yield client.command("5", "create foo")
        t.assertTrue(response.startswith(b"5 NO "), response)
        response = yield client.command("6", "status foo (mailboxid)")
        t.assertEqual(response, b"* STATUS foo (MAILBOXID (%s))\r\n6 OK STATUS completed\r\n" % foo)
        response = yield client.command("8", "rename foo renamed")
        t.assertEqual(response, b"8 OK RENAME completed\r\n")
        response = yield client.command("9", "status renamed (mailboxid messages)")
        t.assertEqual(
            response,
            b"* STATUS renamed (MAILBOXID (%s) MESSAGES 0)\r\n9 OK STATUS completed\r\n" % foo,
        )
        response = yield client.command("11", 'list "" "*" return (status (mailboxid))')
        t.assertIn(b"* STATUS bar (MAILBOXID (%s))\r\n" % bar_id, response)
        t.assertIn(b"* STATUS renamed (MAILBOXID (%s))\r\n" % foo, response)
        ids = re.findall(rb"MAILBOXID \(([^)]+)\)", response)
        t.assertEqual(len(ids), len(set(ids)), response)
        response = yield client.command("27", "select renamed")
        t.assertIn(b"* OK [MAILBOXID (%s)] Ok\r\n" % foo, response)
        response = yield client.command("28", "examine bar")
        t.assertIn(b"* OK [MAILBOXID (%s)] Ok\r\n" % bar_id, response)
        yield client.command("29", "unselect")
        yield client.command("30", "delete bar")
        response = yield client.command("31", "create bar")
        again = re.search(rb"MAILBOXID \(([^)]+)\)", response)
        assert again is not None, response
        t.assertNotEqual(again.group(1), bar_id)

    @defer.inlineCallbacks
    def thread_example(self) -> Any:
        """RFC 8474 5.3's three messages; a session on INBOX and the IDs."""
        client = yield self.session(None)
        yield client.command("c", "CREATE foo")
        date = datetime.datetime(
            2018, 3, 20, 3, 7, 37, tzinfo=datetime.timezone(datetime.timedelta(hours=11))
        )
        a = message("Message A", extra="Message-ID: <fake.1521475657.54797@example.com>\r\n")
        b = message(
            "Re: Message A",
            extra="Message-ID: <fake.1521475657.21213@example.org>\r\n"
            "References: <fake.1521475657.54797@example.com>\r\n",
        )
        c = message("Message C", extra="Message-ID: <fake.1521475657.60280@example.com>\r\n")
        for data in (a, b, c):
            yield self.append(client, data, date)
        yield client.command("s", "SELECT INBOX")
        response = yield client.command("22", "fetch 1:* (emailid threadid)")
        ids = re.findall(
            rb"\* (\d) FETCH \(EMAILID \((M[0-9a-f]{24})\) THREADID \((T[0-9a-f]{24})\)\)\r\n",
            response,
        )
        assert len(ids) == 3, response
        return client, {int(seq): (email, thread) for seq, email, thread in ids}

    @defer.inlineCallbacks
    def test_emailid_threadid_rfc_example(self) -> Any:
        """RFC 8474 5.3 and 6: a reply shares its thread, MOVE and COPY keep
        both IDs, SEARCH finds by either, exactly and case-sensitively."""
        t: Any = self
        client, ids = yield self.thread_example()
        t.assertEqual(len({email for email, _ in ids.values()}), 3)
        t.assertEqual(ids[1][1], ids[2][1])
        t.assertNotEqual(ids[1][1], ids[3][1])
        response = yield client.command("27", f"search emailid {ids[1][0].decode()}")
        t.assertEqual(response, b"* SEARCH 1\r\n27 OK SEARCH completed\r\n")
        response = yield client.command("28", f"search threadid {ids[1][1].decode()}")
        t.assertEqual(response, b"* SEARCH 1 2\r\n28 OK SEARCH completed\r\n")
        response = yield client.command("28a", f"search threadid {ids[1][1].decode().upper()}")
        t.assertEqual(response, b"* SEARCH\r\n28a OK SEARCH completed\r\n")
        response = yield client.command(
            "28b", f"uid search return (count save) not threadid {ids[1][1].decode()}"
        )
        t.assertEqual(response, b'* ESEARCH (TAG "28b") UID COUNT 1\r\n28b OK SEARCH completed\r\n')
        response = yield client.command("28c", "fetch $ (emailid)")
        t.assertEqual(
            response, b"* 3 FETCH (EMAILID (%s))\r\n28c OK FETCH completed\r\n" % ids[3][0]
        )
        response = yield client.command("23", "move 2 foo")
        t.assertRegex(response, rb"\* OK \[COPYUID \d+ 2 1\] Moved\r\n\* 2 EXPUNGE\r\n")
        response = yield client.command("23a", "copy 1 foo")
        t.assertRegex(response, rb"23a OK \[COPYUID \d+ 1 2\]")
        response = yield client.command("24", "fetch 1:* (emailid threadid)")
        t.assertEqual(
            response,
            b"* 1 FETCH (EMAILID (%s) THREADID (%s))\r\n"
            b"* 2 FETCH (EMAILID (%s) THREADID (%s))\r\n"
            b"24 OK FETCH completed\r\n" % (*ids[1], *ids[3]),
        )
        yield client.command("25", 'select "foo"')
        response = yield client.command("26", "fetch 1:* (threadid emailid binary.size[1])")
        t.assertEqual(
            response,
            b"* 1 FETCH (THREADID (%s) EMAILID (%s) BINARY.SIZE[1] 14)\r\n"
            b"* 2 FETCH (THREADID (%s) EMAILID (%s) BINARY.SIZE[1] 14)\r\n"
            b"26 OK FETCH completed\r\n" % (ids[2][1], ids[2][0], ids[1][1], ids[1][0]),
        )
        for bad in ("search emailid", "search emailid a.b", "search threadid ()"):
            response = yield client.command("b", bad)
            t.assertTrue(response.startswith(b"b BAD "), response)

    # -- SAVEDATE (RFC 8514) ----------------------------------------------------

    @defer.inlineCallbacks
    def test_savedate_rfc_examples(self) -> Any:
        """RFC 8514 4.2 and 4.3: the save date is when the message arrived,
        not its internal date; COPY gives the copy its own; the SAVED*
        keys compare its day, with ESEARCH and SEARCHRES."""
        t: Any = self
        client = yield self.session()
        yield client.command("c", "CREATE Kept")
        old = datetime.datetime(2001, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
        before = ago(seconds=0)
        yield self.append(client, message("one"), old)
        yield self.append(client, message("two"), old)
        after = ago(seconds=-1)
        yield client.command("n", "NOOP")
        response = yield client.command("A101", "FETCH 1:2 (SAVEDATE INTERNALDATE)")
        found = re.findall(
            rb'\* (\d) FETCH \(SAVEDATE "([^"]+)" INTERNALDATE "03-Feb-2001 04:05:06 \+0000"\)',
            response,
        )
        t.assertEqual([int(seq) for seq, _ in found], [1, 2], response)
        saved = [datetime.datetime.strptime(v.decode(), "%d-%b-%Y %H:%M:%S %z") for _, v in found]
        for value in saved:
            t.assertTrue(before <= value <= after, (before, value, after))
        day = saved[0].date()
        text = day.strftime("%d-%b-%Y")
        response = yield client.command("A102", f"SEARCH SAVEDON {text}")
        on = b"* SEARCH 1 2" if saved[1].date() == day else b"* SEARCH 1"
        t.assertEqual(response, on + b"\r\nA102 OK SEARCH completed\r\n")
        response = yield client.command("A103", f"SEARCH SAVEDBEFORE {text}")
        t.assertEqual(response, b"* SEARCH\r\nA103 OK SEARCH completed\r\n")
        response = yield client.command("A104", "SEARCH SAVEDSINCE 1-Jan-2020 BEFORE 1-Jan-2002")
        t.assertEqual(response, b"* SEARCH 1 2\r\nA104 OK SEARCH completed\r\n")
        response = yield client.command("A105", "SEARCH RETURN (COUNT) SAVEDATESUPPORTED")
        t.assertEqual(response, b'* ESEARCH (TAG "A105") COUNT 2\r\nA105 OK SEARCH completed\r\n')
        response = yield client.command("A106", "SEARCH RETURN (SAVE) SAVEDBEFORE 1-Jan-2002")
        t.assertEqual(response, b"A106 OK SEARCH completed\r\n")
        response = yield client.command("A107", "FETCH $ (UID)")
        t.assertEqual(response, b"A107 OK FETCH completed\r\n")
        # RFC 8514 3: a copy's save date is its own arrival, not the source's.
        before = ago(seconds=0)
        yield client.command("A108", "COPY 1 Kept")
        after = ago(seconds=-1)
        yield client.command("A109", "SELECT Kept")
        response = yield client.command("A110", "FETCH 1 (SAVEDATE)")
        written = re.search(rb'SAVEDATE "([^"]+)"', response)
        assert written is not None, response
        copied = datetime.datetime.strptime(written.group(1).decode(), "%d-%b-%Y %H:%M:%S %z")
        t.assertTrue(before <= copied <= after, (before, copied, after))
        for bad in ("SEARCH SAVEDON", "SEARCH SAVEDSINCE 31-Feb-2020x", "FETCH 1 (SAVEDATE[])"):
            response = yield client.command("b", bad)
            t.assertTrue(response.startswith(b"b BAD "), response)


class MemoryExtensionTests(_Scenarios, TestCase):
    def make_storage(self) -> IStorage:
        return MemoryStorage()


class MaildirExtensionTests(_Scenarios, TestCase):
    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        self.template = self.mktemp() + "/{user}"
        return MaildirStorage(self.template)

    @defer.inlineCallbacks
    def test_index_of_the_previous_schema(self) -> Any:
        """An index written before save dates were kept (schema 1) is
        upgraded in place: its messages keep their UIDs, flags and cached
        previews, their save dates are unknown (NIL, and SAVEDON uses the
        internal date), and what arrives afterwards has one."""
        import sqlite3

        from mailsrv.storage.maildir import MaildirStorage

        t: Any = self
        client = yield self.session()
        old = datetime.datetime(2001, 2, 3, 4, 5, 6, tzinfo=datetime.UTC)
        yield self.append(client, message("one", "Before the upgrade."), old)
        yield client.command("f", "STORE 1 +FLAGS (\\Flagged)")
        yield client.command("p", "FETCH 1 (PREVIEW)")
        yield client.command("z", "LOGOUT")
        yield client.lost
        index = os.path.join(self.template.format(user="joe"), "mailsrv-index.sqlite")
        db = sqlite3.connect(index)
        db.execute("ALTER TABLE messages DROP COLUMN saved")
        db.execute("UPDATE meta SET value = 1 WHERE key = 'schema'")
        db.commit()
        db.close()
        # As after a restart: another storage over the same folders.
        self.factory.portal.realm.storage = MaildirStorage(self.template)  # type: ignore[attr-defined]
        client = yield self.session()
        yield self.append(client, message("two"))
        yield client.command("n", "NOOP")
        response = yield client.command("a", "FETCH 1:2 (UID FLAGS SAVEDATE PREVIEW (LAZY))")
        t.assertRegex(
            response,
            rb"^\* 1 FETCH \(UID 1 FLAGS \(\\Flagged\) SAVEDATE NIL "
            rb'PREVIEW "Before the upgrade."\)\r\n'
            rb'\* 2 FETCH \(UID 2 FLAGS \(\\Recent\) SAVEDATE "[^"]+" PREVIEW NIL\)\r\n',
        )
        response = yield client.command("b", "SEARCH SAVEDON 3-Feb-2001")
        t.assertEqual(response, b"* SEARCH 1\r\nb OK SEARCH completed\r\n")


class PostgresExtensionTests(_Scenarios, TestCase):
    def make_storage(self) -> IStorage:
        from tests.pgcluster import new_dsn, new_storage

        storage: IStorage = new_storage(self, new_dsn())
        return storage
