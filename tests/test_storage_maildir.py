"""The shared storage contract, run against the Maildir backend."""

from __future__ import annotations

import os

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
