"""The shared storage contract, and what is the PostgreSQL backend's own,
on a real PostgreSQL server (tests/pgcluster.py starts a private one)."""

from __future__ import annotations

import datetime
import io
import os
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from mailsrv.errors import NoSuchMailbox, StorageError, TemporaryFailure
from mailsrv.interfaces import (
    DELETED,
    SEEN,
    IAccount,
    IMailbox,
    IMaildropLocking,
    IMessageCache,
    IStorage,
    IWatchingStorage,
    StoreMode,
)
from mailsrv.testing.storage import ListenerRecorder, StorageSuiteMixin
from tests.helpers import Trickle
from tests.pgcluster import new_dsn, new_storage


class PostgresStorageTests(StorageSuiteMixin, unittest.TestCase):
    bulk_message_count = 500

    def make_storage(self) -> IStorage:
        storage: IStorage = new_storage(self, new_dsn())
        return storage

    def reopen_storage(self, storage: IStorage) -> IStorage:
        old: Any = storage
        reopened: IStorage = new_storage(self, old.dsn)
        return reopened

    def forget_expunges(self, storage: IStorage, mailbox: IMailbox) -> None:
        """What ``mailsrv db prune`` does to rows past their retention."""
        import psycopg

        from mailsrv.storage.postgres.maintenance import prune

        old: Any = storage
        dsn: str = old.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            prune(conn, datetime.timedelta(0))

    async def deliver_outside(self, storage: IStorage, data: bytes) -> None:
        """Another node on the same database appends it."""
        other = self.reopen_storage(storage)
        account: IAccount = await call(other.account, self.username)
        inbox: IMailbox = await call(account.get_mailbox, "INBOX")
        await call(inbox.append, io.BytesIO(data))


async def wait_until(predicate: Callable[[], bool], what: str, deadline: float = 30.0) -> None:
    """Let the reactor run until ``predicate()`` holds; fail after ``deadline`` seconds."""
    give_up = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)


async def call(function: Callable[..., Any], *args: Any) -> Any:
    return await defer.maybeDeferred(function, *args)


def message(number: int, size: int = 0) -> bytes:
    body = b"x" * size
    return b"Subject: %d\r\n\r\nbody %d\r\n%s" % (number, number, body)


class PostgresBackendTests(unittest.TestCase):
    """What the PostgreSQL backend promises beyond the shared contract."""

    def setUp(self) -> None:
        self.dsn = new_dsn()
        self.storage = new_storage(self, self.dsn)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return list(conn.execute(sql, args).fetchall())

    def orphans(self) -> list[tuple[Any, ...]]:
        """Bodies whose reference count is not the number of messages using
        them, and chunks without a body: what a crash must never leave."""
        return self.query(
            "SELECT b.digest, b.refcount, count(m.digest) FROM blobs b "
            "LEFT JOIN messages m ON m.digest = b.digest GROUP BY b.digest, b.refcount "
            "HAVING b.refcount <> count(m.digest) "
            "UNION ALL SELECT c.digest, 0, 0 FROM blob_chunks c "
            "LEFT JOIN blobs b ON b.digest = c.digest WHERE b.digest IS NULL"
        )

    async def mailbox(self, storage: Any, name: str = "INBOX", user: str = "alice") -> Any:
        account = await call(storage.account, user)
        return await call(account.get_mailbox, name)

    async def test_interfaces(self) -> None:
        account = await call(self.storage.account, "alice")
        mailbox = await call(account.get_mailbox, "INBOX")
        self.assertTrue(verifyObject(IStorage, self.storage))
        self.assertTrue(verifyObject(IAccount, account))
        self.assertTrue(verifyObject(IMailbox, mailbox))
        self.assertTrue(verifyObject(IMessageCache, mailbox))
        self.assertTrue(verifyObject(IMaildropLocking, mailbox))
        self.assertTrue(verifyObject(IWatchingStorage, self.storage))

    async def test_bodies_stored_once_and_deleted_with_the_last_reference(self) -> None:
        data = message(1, 1000)
        for user in ("alice", "bob", "carol"):
            await call(self.storage.deliver, user, data)
        self.assertEqual(self.query("SELECT refcount FROM blobs"), [(3,)])
        inbox = await self.mailbox(self.storage)
        archive = await self.mailbox(self.storage, "Archive")
        [(_, copied)] = await call(inbox.copy, [1], archive)
        self.assertEqual(self.query("SELECT refcount FROM blobs"), [(4,)])
        [(_, _moved)] = await call(
            archive.move, [copied], await self.mailbox(self.storage, "Trash")
        )
        self.assertEqual(self.query("SELECT refcount FROM blobs"), [(4,)])
        for user in ("alice", "bob", "carol"):
            box = await self.mailbox(self.storage, user=user)
            await call(box.store, [1], [DELETED], StoreMode.ADD)
            await call(box.expunge)
        self.assertEqual(self.query("SELECT refcount FROM blobs"), [(1,)])
        account = await call(self.storage.account, "alice")
        await call(account.delete_mailbox, "Trash")
        self.assertEqual(self.query("SELECT count(*) FROM blobs"), [(0,)])
        self.assertEqual(self.query("SELECT count(*) FROM blob_chunks"), [(0,)])
        self.assertEqual(self.orphans(), [])

    async def test_large_message_streams_in_chunks(self) -> None:
        from mailsrv.storage.postgres.blobs import CHUNK

        size = 3 * 1024 * 1024 + 17
        data = message(1, size)
        inbox = await self.mailbox(self.storage)
        uid = await call(inbox.append, Trickle(data, 4093))
        [info] = await call(inbox.fetch, [uid])
        self.assertEqual(info.size, len(data))
        chunks = self.query("SELECT seq, length(data) FROM blob_chunks ORDER BY seq")
        self.assertEqual(len(chunks), -(-len(data) // CHUNK))
        self.assertTrue(all(length == CHUNK for _, length in chunks[:-1]))
        handle = await call(inbox.open, uid)
        try:
            self.assertEqual(handle.read(), data)
        finally:
            handle.close()

    async def test_line_ends_across_read_boundaries(self) -> None:
        inbox = await self.mailbox(self.storage)
        data = b"Subject: x\r\n\r\nbare\nlf\r\ncr\rend\n"
        for piece in (1, 2, 3, 5):
            uid = await call(inbox.append, Trickle(data, piece))
            handle = await call(inbox.open, uid)
            self.assertEqual(handle.read(), b"Subject: x\r\n\r\nbare\r\nlf\r\ncr\rend\r\n")
            handle.close()
        # One body for all four: the wire form is what is addressed.
        self.assertEqual(self.query("SELECT refcount FROM blobs"), [(4,)])

    async def test_bad_input_is_refused(self) -> None:
        inbox = await self.mailbox(self.storage)
        with self.assertRaises(StorageError):
            await call(inbox.append, io.StringIO("text"))
        with self.assertRaises(StorageError):
            await call(inbox.append, io.BytesIO(message(1)), ["two words"])
        naive = datetime.datetime(2020, 1, 1)
        with self.assertRaises(StorageError):
            await call(inbox.append, io.BytesIO(message(1)), (), naive)
        self.assertEqual((await call(inbox.status)).messages, 0)
        with self.assertRaises(StorageError):
            await call(self.storage.account, "")
        self.assertEqual(self.orphans(), [])

    async def test_two_nodes_appending_at_once(self) -> None:
        """UIDs and MODSEQs come from the database: two nodes appending to
        one mailbox concurrently never collide, and each \\Recent message is
        claimed by exactly one session."""
        other = new_storage(self, self.dsn)
        mine = await self.mailbox(self.storage)
        theirs = await self.mailbox(other)
        appends = [
            defer.maybeDeferred(box.append, io.BytesIO(message(n)))
            for n in range(40)
            for box in (mine, theirs)
        ]
        uids = await defer.gatherResults(appends)
        self.assertEqual(sorted(uids), list(range(1, 81)))
        modseqs = self.query("SELECT modseq FROM messages ORDER BY uid")
        self.assertEqual(len({m for (m,) in modseqs}), 80)
        claims = await defer.gatherResults(
            [defer.maybeDeferred(box.claim_recent) for box in (mine, theirs) * 3]
        )
        claimed = [uid for claim in claims for uid in claim]
        self.assertEqual(sorted(claimed), list(range(1, 81)))

    async def test_other_node_changes_heard_and_deleted_mailbox(self) -> None:
        other = new_storage(self, self.dsn)
        account = await call(self.storage.account, "alice")
        await call(account.create_mailbox, "Shared")
        watched = await self.mailbox(self.storage, "Shared")
        recorder = ListenerRecorder()
        watched.add_listener(recorder)
        theirs = await self.mailbox(other, "Shared")
        uid = await call(theirs.append, io.BytesIO(message(1)))
        await wait_until(lambda: recorder.added() == [uid], "the other node's append")
        await call(theirs.store, [uid], [SEEN], StoreMode.ADD)
        await wait_until(lambda: SEEN in recorder.flags().get(uid, ()), "the flag change")
        other_account = await call(other.account, "alice")
        await call(other_account.delete_mailbox, "Shared")
        # As on Maildir: the deletion is learnt from check(), not as an
        # EXPUNGE of every message, so IMAP can end the session with a BYE.
        with self.assertRaises(NoSuchMailbox):
            await call(watched.check)
        self.assertEqual(recorder.expunged(), [])
        with self.assertRaises(NoSuchMailbox):
            await call(watched.append, io.BytesIO(message(2)))
        watched.remove_listener(recorder)

    async def test_lost_notifications_are_recovered_on_reconnect(self) -> None:
        """Changes committed while a node's LISTEN connection is down are
        announced when it is back, from the MODSEQ and expunge log."""
        clock = task.Clock()
        node = new_storage(self, self.dsn, clock=clock)
        other = new_storage(self, self.dsn)
        inbox = await self.mailbox(other)
        first, second = [await call(inbox.append, io.BytesIO(message(n))) for n in (1, 2)]
        watched = await self.mailbox(node)
        recorder = ListenerRecorder()
        watched.add_listener(recorder)
        await wait_until(lambda: node.notifier.connected, "the LISTEN connection")
        self.query(
            "SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity "
            "WHERE application_name = 'mailsrv-listen'"
        )
        await wait_until(lambda: not node.notifier.connected, "the node to notice")
        await call(inbox.store, [first], [DELETED], StoreMode.ADD)
        await call(inbox.expunge)
        third = await call(inbox.append, io.BytesIO(message(3)))
        await call(inbox.store, [second], ["$Late"], StoreMode.ADD)
        self.assertEqual(recorder.events, [])  # nothing reaches a node cut off
        clock.advance(10)  # the reconnection's delay
        await wait_until(lambda: node.notifier.connections == 2, "the reconnection")
        await wait_until(lambda: recorder.added() == [third], "the catch-up")
        self.assertEqual(recorder.expunged(), [first])
        self.assertEqual(recorder.flags(), {second: frozenset({"$Late"})})
        watched.remove_listener(recorder)

    async def test_unreachable_database_is_a_temporary_failure(self) -> None:
        unreachable = new_storage(
            self, f"host={os.path.abspath(self.mktemp())} dbname=x connect_timeout=2"
        )
        error = None
        try:
            await call(unreachable.account, "alice")
        except TemporaryFailure as exc:
            error = exc
        self.assertIsNotNone(error)
        self.assertEqual(getattr(error, "code", None), "UNAVAILABLE")

    async def test_connections_cut_by_the_server_are_replaced(self) -> None:
        """After the server ended every session (a restart), the next
        commands work on new connections instead of failing once per thread."""
        inbox = await self.mailbox(self.storage)
        await defer.gatherResults(
            [defer.maybeDeferred(inbox.append, io.BytesIO(message(n))) for n in range(8)]
        )
        self.query(
            "SELECT pg_terminate_backend(pid, 30000) FROM pg_stat_activity "
            "WHERE application_name = 'mailsrv' AND pid <> pg_backend_pid()"
        )
        results = await defer.gatherResults([defer.maybeDeferred(inbox.status) for _ in range(8)])
        self.assertEqual({status.messages for status in results}, {8})
