"""The shared storage contract, run against the Maildir backend."""

from __future__ import annotations

import datetime
import io
import os
import time

from twisted.trial import unittest

from mailsrv.interfaces import IMailbox, IStorage
from mailsrv.storage.maildir import MaildirStorage
from mailsrv.storage.maildir.folder import MaildirMailbox
from mailsrv.storage.maildir.index import Index
from mailsrv.storage.maildir.layout import INDEX_NAME
from mailsrv.testing.storage import StorageSuiteMixin
from tests.maildir_case import MaildirTestCase


class MaildirStorageTests(StorageSuiteMixin, unittest.TestCase):
    def make_storage(self) -> IStorage:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        return MaildirStorage(os.path.join(base, "{user}", "Maildir"))

    def reopen_storage(self, storage: IStorage) -> IStorage:
        assert isinstance(storage, MaildirStorage)
        return MaildirStorage(storage.template)

    def forget_expunges(self, storage: IStorage, mailbox: IMailbox) -> None:
        """As the log's retention does when it is full, but from another
        connection to the index, as another process would."""
        assert isinstance(mailbox, MaildirMailbox)
        index = Index.open(os.path.join(mailbox.path, INDEX_NAME))
        try:
            with index.transaction():
                index.prune_expunged(0)
        finally:
            index.close()

    def deliver_outside(self, storage: IStorage, data: bytes) -> None:
        """As an MTA delivers: LF line ends, written in tmp/, renamed into new/."""
        assert isinstance(storage, MaildirStorage)
        root = storage.root(self.username)
        name = f"{time.time_ns()}.P{os.getpid()}.outside"
        with open(os.path.join(root, "tmp", name), "wb") as handle:
            handle.write(data.replace(b"\r\n", b"\n"))
        os.rename(os.path.join(root, "tmp", name), os.path.join(root, "new", name))


class ThreadedMaildirStorageTests(MaildirStorageTests):
    """The same contract with the daemon's threaded writes: every write
    waits for its lock and fsyncs in the reactor's thread pool."""

    def make_storage(self) -> IStorage:
        from twisted.internet import reactor

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        storage = MaildirStorage(
            os.path.join(base, "{user}", "Maildir"), reactor=reactor, threaded_writes=True
        )
        self.addCleanup(storage.stop_watching)
        return storage

    def reopen_storage(self, storage: IStorage) -> IStorage:
        from twisted.internet import reactor

        assert isinstance(storage, MaildirStorage)
        reopened = MaildirStorage(storage.template, reactor=reactor, threaded_writes=True)
        self.addCleanup(reopened.stop_watching)
        return reopened


class CopyToAnotherBackendTests(MaildirTestCase):
    """COPY and MOVE from a Maildir folder to a mailbox of another backend
    (no rename reaches it): each message appended there with its bytes,
    flags and date; MOVE removes it here only after."""

    def setUp(self) -> None:
        from mailsrv.storage.memory import MemoryStorage

        super().setUp()
        self.source = self.inbox()
        self.other = MemoryStorage().account("alice").get_mailbox("INBOX")
        when = datetime.datetime(2024, 3, 1, 12, 0, tzinfo=datetime.UTC)
        self.first = self.source.append(
            io.BytesIO(b"Subject: a\r\n\r\none\r\n"), ["\\Seen", "k1"], when
        )
        self.second = self.source.append(io.BytesIO(b"Subject: b\r\n\r\ntwo\r\n"), [], when)

    def test_copy(self) -> None:
        pairs = self.source.copy([self.first], self.other)
        self.assertEqual(len(pairs), 1)
        ((source, target),) = pairs
        self.assertEqual(source, self.first)
        copied = self.other.fetch([target])[0]
        self.assertEqual(copied.flags, frozenset({"\\Seen", "k1"}))
        self.assertEqual(copied.internal_date.timestamp(), 1709294400)
        with self.other.open(target) as handle:
            self.assertEqual(handle.read(), b"Subject: a\r\n\r\none\r\n")
        self.assertEqual(len(self.source.uids()), 2)

    def test_move(self) -> None:
        pairs = self.source.move([self.first], self.other)
        ((source, target),) = pairs
        self.assertEqual(source, self.first)
        self.assertEqual(list(self.other.uids()), [target])
        self.assertEqual(self.other.fetch([target])[0].flags, frozenset({"\\Seen", "k1"}))
        with self.other.open(target) as handle:
            self.assertEqual(handle.read(), b"Subject: a\r\n\r\none\r\n")
        self.assertEqual(list(self.source.uids()), [self.second])  # the other one stays
