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
