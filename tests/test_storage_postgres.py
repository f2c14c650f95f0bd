"""The shared storage contract, and what is the PostgreSQL backend's own,
on a real PostgreSQL server (tests/pgcluster.py starts a private one)."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from mailsrv.interfaces import IStorage
from tests.pgcluster import new_dsn, new_storage
from tests.storage_suite import StorageSuiteMixin


class PostgresStorageTests(StorageSuiteMixin, unittest.TestCase):
    bulk_message_count = 500

    def make_storage(self) -> IStorage:
        storage: IStorage = new_storage(self, new_dsn())
        return storage

    def reopen_storage(self, storage: IStorage) -> IStorage:
        old: Any = storage
        reopened: IStorage = new_storage(self, old.dsn)
        return reopened
