"""The shared storage contract, run against the Maildir backend."""

from __future__ import annotations

import os
import time

from twisted.trial import unittest

from mailsrv.interfaces import IStorage
from mailsrv.storage.maildir import MaildirStorage
from mailsrv.testing.storage import StorageSuiteMixin


class MaildirStorageTests(StorageSuiteMixin, unittest.TestCase):
    def make_storage(self) -> IStorage:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        return MaildirStorage(os.path.join(base, "{user}", "Maildir"))

    def reopen_storage(self, storage: IStorage) -> IStorage:
        assert isinstance(storage, MaildirStorage)
        return MaildirStorage(storage.template)

    def deliver_outside(self, storage: IStorage, data: bytes) -> None:
        """As an MTA delivers: LF line ends, written in tmp/, renamed into new/."""
        assert isinstance(storage, MaildirStorage)
        root = storage.root(self.username)
        name = f"{time.time_ns()}.P{os.getpid()}.outside"
        with open(os.path.join(root, "tmp", name), "wb") as handle:
            handle.write(data.replace(b"\r\n", b"\n"))
        os.rename(os.path.join(root, "tmp", name), os.path.join(root, "new", name))
