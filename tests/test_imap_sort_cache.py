"""SORT and THREAD answered from the keys kept in the process, on the wire.

The keys of each mailbox live in :mod:`mailsrv.imap.sortcache` once a first
SORT or THREAD has read them, and a whole-mailbox answer is remembered
while no message comes or goes.  These tests warm both, then change the
mailbox in every way a client or another process can (APPEND from this
and from another session, EXPUNGE, flags, a file delivered into the Maildir
by another process) and check each answer against the one RFC 5256 gives
for the mailbox as it is now, over :data:`tests.test_imap_sort.MESSAGES`:

sent dates (UTC) 1: 1 Jan 10:00, 2: 31 Dec 10:00, 3: 31 Dec 17:00,
4: 31 Dec 12:00 (its INTERNALDATE), 5: 2 Jan 08:00; base subjects BANANA
(1, 2) and APPLE (3, 4, 5).  The message added, 6, is a reply to 1 sent
on 30 Dec: the earliest of all, a BANANA, a child of 1 before 2.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mailsrv.imap import contexts as sortcontexts
from tests import test_imap_sort as base
from tests.test_imap_sort import SortServerMixin

NEW = (
    b"From: Ann <ann@a.example>\r\n"
    b"To: Dave <dave@example.org>\r\n"
    b"Subject: Re: Banana\r\n"
    b"Date: Sat, 30 Dec 2023 09:00:00 +0000\r\n"
    b"Message-ID: <6@x>\r\n"
    b"In-Reply-To: <1@x>\r\n"
    b"\r\n"
    b"Early reply.\r\n"
)

WARM = {
    "SORT (DATE) UTF-8 ALL": "* SORT 2 4 3 1 5",
    "SORT (SUBJECT) UTF-8 ALL": "* SORT 3 4 5 1 2",
    "UID SORT (DATE) UTF-8 ALL": "* SORT 2 4 3 1 5",
    "THREAD REFERENCES UTF-8 ALL": "* THREAD (1 2)(5 (4)(3))",
    "SORT (REVERSE DATE) UTF-8 ALL": "* SORT 5 1 3 4 2",
    "SORT (SUBJECT REVERSE DATE) UTF-8 ALL": "* SORT 5 3 4 1 2",
    "UID SORT (REVERSE SUBJECT FROM) UTF-8 ALL": "* SORT 2 1 3 4 5",
}
#: After message 6 is added (put into the orders remembered for WARM).
ADDED = {
    "SORT (DATE) UTF-8 ALL": "* SORT 6 2 4 3 1 5",
    "SORT (SUBJECT) UTF-8 ALL": "* SORT 3 4 5 1 2 6",
    "UID SORT (DATE) UTF-8 ALL": "* SORT 6 2 4 3 1 5",
    "THREAD REFERENCES UTF-8 ALL": "* THREAD (1 (6)(2))(5 (4)(3))",
    "SORT (REVERSE DATE) UTF-8 ALL": "* SORT 5 1 3 4 2 6",
    "SORT (SUBJECT REVERSE DATE) UTF-8 ALL": "* SORT 5 3 4 1 2 6",
    # FROM's addr-mailbox: ALICE (2) < ANN (6) < CAROL (1).
    "UID SORT (REVERSE SUBJECT FROM) UTF-8 ALL": "* SORT 2 6 1 3 4 5",
}


class CacheMixin(SortServerMixin):
    @defer.inlineCallbacks
    def check(self, client: Any, expected: dict[str, str]) -> Any:
        for text, line in expected.items():
            lines = yield self.answer(client, "c", text)
            self.assertEqual(lines, [line], text)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def warm(self) -> Any:
        client = yield self.session()
        # Twice: the second answers come from the remembered answers.
        yield self.check(client, WARM)
        yield self.check(client, WARM)
        return client

    @defer.inlineCallbacks
    def test_append_in_this_session(self) -> Any:
        client = yield self.warm()
        response = yield client.command("a", b"APPEND INBOX {%d+}\r\n%s" % (len(NEW), NEW))
        self.assertIn(b"a OK", response)  # type: ignore[attr-defined]
        yield client.command("n", "NOOP")
        yield self.check(client, ADDED)

    @defer.inlineCallbacks
    def test_append_from_another_session(self) -> Any:
        client = yield self.warm()
        other = yield self.session()
        response = yield other.command("a", b"APPEND INBOX {%d+}\r\n%s" % (len(NEW), NEW))
        self.assertIn(b"a OK", response)  # type: ignore[attr-defined]
        response = yield client.command("n", "NOOP")
        self.assertIn(b"* 6 EXISTS", response)  # type: ignore[attr-defined]
        yield self.check(client, ADDED)
        # The other session, which never sorted, agrees.
        yield self.check(other, ADDED)

    @defer.inlineCallbacks
    def test_many_appended(self) -> Any:
        """More new messages than are put into the last order one by one:
        the whole mailbox is sorted again, to the same answer."""
        client = yield self.warm()
        count = 2 * sortcontexts._INSERTED_AT_MOST + 1
        for n in range(count):
            message = NEW.replace(b"<6@x>", b"<6.%d@x>" % n)
            yield client.command("a", b"APPEND INBOX {%d+}\r\n%s" % (len(message), message))
        yield client.command("n", "NOOP")
        # The new messages share a Date: they follow each other, by UID.
        extra = " ".join(str(6 + n) for n in range(count))
        lines = yield self.answer(client, "s", "SORT (DATE) UTF-8 ALL")
        self.assertEqual(lines, [f"* SORT {extra} 2 4 3 1 5"])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_expunge(self) -> Any:
        client = yield self.warm()
        yield client.command("a", b"APPEND INBOX {%d+}\r\n%s" % (len(NEW), NEW))
        yield self.check(client, ADDED)
        response = yield client.command("e", "UID STORE 2 +FLAGS.SILENT (\\Deleted)")
        response = yield client.command("e", "EXPUNGE")
        self.assertIn(b"* 2 EXPUNGE", response)  # type: ignore[attr-defined]
        # UIDs 1 3 4 5 6 are now sequence numbers 1 2 3 4 5.
        yield self.check(
            client,
            {
                "SORT (DATE) UTF-8 ALL": "* SORT 5 3 2 1 4",
                "UID SORT (DATE) UTF-8 ALL": "* SORT 6 4 3 1 5",
                "SORT (SUBJECT) UTF-8 ALL": "* SORT 2 3 4 1 5",
                "THREAD REFERENCES UTF-8 ALL": "* THREAD (1 5)(4 (3)(2))",
            },
        )

    @defer.inlineCallbacks
    def test_flag_changes(self) -> Any:
        client = yield self.warm()
        undeleted = "SORT (DATE) UTF-8 UNDELETED"
        lines = yield self.answer(client, "u", undeleted)
        self.assertEqual(lines, ["* SORT 2 4 3 1 5"])  # type: ignore[attr-defined]
        yield client.command("f", "STORE 4 +FLAGS.SILENT (\\Deleted)")
        lines = yield self.answer(client, "u", undeleted)
        self.assertEqual(lines, ["* SORT 2 3 1 5"])  # type: ignore[attr-defined]
        lines = yield self.answer(client, "u", "THREAD REFERENCES UTF-8 UNDELETED")
        # Without 4, 5 has the one child 3.
        self.assertEqual(lines, ["* THREAD (1 2)(5 3)"])  # type: ignore[attr-defined]
        # Flags are no sort key: the whole mailbox sorts as before.
        yield self.check(client, WARM)
        yield client.command("f", "STORE 4 -FLAGS.SILENT (\\Deleted)")
        lines = yield self.answer(client, "u", undeleted)
        self.assertEqual(lines, ["* SORT 2 4 3 1 5"])  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_warm_keys_read_no_cached_record(self) -> Any:
        """Once warm, the keys come from the process, not from the
        storage's cache: a SORT or THREAD over a search program (which the
        remembered answers do not cover) reads no cached record."""
        client = yield self.session()
        commands = {
            "SORT (DATE) UTF-8 UNDELETED": "* SORT 2 4 3 1 5",
            "SORT (REVERSE SUBJECT FROM) UTF-8 UNDELETED": "* SORT 2 1 3 4 5",
            "THREAD REFERENCES UTF-8 UNDELETED": "* THREAD (1 2)(5 (4)(3))",
        }
        yield self.check(client, commands)

        def no_cache(*args: Any) -> Any:
            raise AssertionError("the storage's cache was read")

        for name in ("get_cached", "get_cached_many"):
            self.patch(self.mailbox_class, name, no_cache)  # type: ignore[attr-defined]
        yield self.check(client, commands)


class MemorySortCacheTests(CacheMixin, TestCase):
    mailbox_class = base.MemorySortTests.mailbox_class
    make_storage = base.MemorySortTests.make_storage


class MaildirSortCacheTests(CacheMixin, TestCase):
    mailbox_class = base.MaildirSortTests.mailbox_class
    make_storage = base.MaildirSortTests.make_storage

    @defer.inlineCallbacks
    def test_delivery_by_another_process(self) -> Any:
        """A file another process delivers into ``new/`` (as an MDA does:
        written in ``tmp/``, renamed) joins the answers at the next NOOP."""
        client = yield self.warm()
        maildir = self.storage.account("joe").get_mailbox("INBOX").path
        name = f"{int(time.time())}.P{os.getpid()}Q1.sortcache"
        staged = os.path.join(maildir, "tmp", name)
        with open(staged, "wb") as f:
            f.write(NEW.replace(b"\r\n", b"\n"))
        os.rename(staged, os.path.join(maildir, "new", name))
        response = yield client.command("n", "NOOP")
        self.assertIn(b"* 6 EXISTS", response)
        yield self.check(client, ADDED)
