"""The shared storage contract, and what is the PostgreSQL backend's own,
on a real PostgreSQL server (tests/pgcluster.py starts a private one)."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial import unittest

from mailsrv.interfaces import IStorage
from tests import pgcluster
from tests.storage_suite import StorageSuiteMixin


class PostgresTestMixin:
    """Gives each test a fresh database on the shared private cluster."""

    def postgres_dsn(self) -> str:
        pgcluster.require()
        cluster = pgcluster.Cluster.shared()
        return cluster.create_schema()

    def postgres_storage(self, dsn: str, **kwargs: Any) -> Any:
        from mailsrv.storage.postgres import PostgresStorage

        kwargs.setdefault("reactor", reactor)
        storage = PostgresStorage(dsn, **kwargs)
        test: Any = self
        test.addCleanup(storage.close)
        return storage


class PostgresStorageTests(PostgresTestMixin, StorageSuiteMixin, unittest.TestCase):
    bulk_message_count = 500

    def make_storage(self) -> IStorage:
        storage: IStorage = self.postgres_storage(self.postgres_dsn())
        return storage

    def reopen_storage(self, storage: IStorage) -> IStorage:
        reopened: IStorage = self.postgres_storage(storage.dsn)  # type: ignore[attr-defined]
        return reopened
