"""POP3 over the real storage: MailRealm + Maildrop over the memory and
Maildir backends, shared with IMAP-side access to the same mailbox."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer

from mailsrv.auth.checker import PasswdFileChecker
from mailsrv.auth.realm import MailRealm
from mailsrv.interfaces import (
    SEEN,
    IMailbox,
    IMailboxListener,
    IMessage,
    IStorage,
    maybe_deferred,
)
from mailsrv.policy import SessionPolicy
from mailsrv.storage.maildir import MaildirAccount, MaildirStorage, reindex
from mailsrv.storage.memory import MemoryStorage
from tests.helpers import at_once, source_env
from tests.pop3_helpers import (
    MESSAGE_1,
    MESSAGE_2,
    MESSAGE_3,
    USERS,
    Session,
    TCPServer,
    write_passwd,
)


class StorageFixture:
    """What tests.pop3_helpers.Session and TCPServer need, over a real storage."""

    def __init__(self, test: unittest.TestCase, storage: IStorage) -> None:
        self.test = test
        self.storage = storage
        checker = PasswdFileChecker(write_passwd(test.mktemp()), run_in_thread=False)
        self.portal = Portal(MailRealm(storage), [checker])
        self.policy = SessionPolicy(
            hostname="mail.test", challenge_auth_available=checker.any_plaintext
        )

    def inbox(self, user: str = "alice") -> Any:
        """The user's INBOX, synchronously (memory and Maildir only)."""
        return at_once(self.storage.account(user)).get_mailbox("INBOX")

    async def open_inbox(self, user: str = "alice") -> Any:
        """The user's INBOX from any backend, synchronous or not."""
        account = await maybe_deferred(self.storage.account, user)
        return await maybe_deferred(account.get_mailbox, "INBOX")

    def deliver(self, message: bytes, user: str = "alice") -> int:
        uid: int = self.inbox(user).append(io.BytesIO(message))
        return uid

    async def add(self, message: bytes, user: str = "alice") -> int:
        """:meth:`deliver` for any backend."""
        inbox = await self.open_inbox(user)
        uid: int = await defer.maybeDeferred(inbox.append, io.BytesIO(message))
        return uid


async def call(function: Any, *args: Any) -> Any:
    return await defer.maybeDeferred(function, *args)


class TCPSession:
    """A POP3 client over loopback TCP: works whether the storage answers at
    once or later (from the PostgreSQL backend's threads)."""

    def __init__(self, server: TCPServer) -> None:
        self.server = server
        self.client: Any = None

    async def connect(self) -> TCPSession:
        self.client, _greeting = await self.server.connect()
        return self

    async def command(self, line: str) -> bytes:
        """A command with a one-line answer."""
        answer: bytes = await self.client.command(line.encode())
        return answer

    async def multiline(self, line: str) -> bytes:
        """A command with a multi-line answer (RETR, TOP, UIDL, LIST)."""
        self.client.send(line.encode() + b"\r\n")
        answer: bytes = await self.client.response()
        return answer

    async def login(self, user: str = "alice") -> bytes:
        await self.command(f"USER {user}")
        return await self.command(f"PASS {USERS[user]}")

    async def drop(self) -> None:
        """The client vanishes mid-session; returns once the server saw it."""
        ended = self.server.factory.ended[self.server.clients.index(self.client)]
        self.client.transport.abortConnection()
        await self.client.lost
        await ended


@implementer(IMailboxListener)
class Recorder:
    """An IMAP session's view of changes: what a listener on INBOX hears."""

    def __init__(self) -> None:
        self.added: list[int] = []
        self.flags: dict[int, frozenset[str]] = {}
        self.expunged: list[int] = []

    def messages_added(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        self.added.extend(uids)

    def flags_changed(self, mailbox: IMailbox, messages: Sequence[IMessage]) -> None:
        for message in messages:
            self.flags[message.uid] = message.flags

    def messages_expunged(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        self.expunged.extend(uids)


class SharedMailboxMixin:
    """The same tests over each backend; subclasses say how to make storage.

    Sessions talk over loopback TCP, so the tests hold for backends that
    answer later (from threads) as well as at once.
    """

    def make_storage(self) -> IStorage:
        raise NotImplementedError

    def setUp(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return defer.ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.fixture = StorageFixture(self, self.make_storage())  # type: ignore[arg-type]
        self.uids = [await self.fixture.add(m) for m in (MESSAGE_1, MESSAGE_2, MESSAGE_3)]
        self.server = TCPServer(self, self.fixture)  # type: ignore[arg-type]

    def session(self, fixture: StorageFixture | None = None) -> Session:
        """A session that ends with the test (Session registers its own cleanup)."""
        return Session(fixture or self.fixture)  # type: ignore[arg-type]

    async def tcp_session(self, server: TCPServer | None = None) -> TCPSession:
        return await TCPSession(server or self.server).connect()

    async def test_imap_sees_pop3_deletions_and_seen_after_quit(self) -> None:
        t: Any = self
        imap_view = await self.fixture.open_inbox()
        recorder = Recorder()
        imap_view.add_listener(recorder)
        session = await self.tcp_session()
        await session.login()
        await session.multiline("RETR 1")
        await session.multiline("TOP 3 100")
        await session.command("DELE 2")
        t.assertEqual(recorder.expunged, [])  # nothing before QUIT
        t.assertEqual(await session.command("QUIT"), b"+OK Logging out, 1 message deleted.\r\n")
        t.assertEqual(recorder.expunged, [self.uids[1]])
        t.assertEqual(list(await call(imap_view.uids)), [self.uids[0], self.uids[2]])
        messages = await call(imap_view.fetch, await call(imap_view.uids))
        flags = {m.uid: m.flags for m in messages}
        t.assertIn(SEEN, flags[self.uids[0]])
        t.assertIn(SEEN, flags[self.uids[2]])
        t.assertIn(SEEN, recorder.flags[self.uids[0]])
        imap_view.remove_listener(recorder)

    async def test_uidl_is_the_imap_identity(self) -> None:
        t: Any = self
        session = await self.tcp_session()
        await session.login()
        uidvalidity = (await self.fixture.open_inbox()).uidvalidity
        expected = b"".join(
            b"%d %08X%08X\r\n" % (n + 1, uid, uidvalidity) for n, uid in enumerate(self.uids)
        )
        t.assertEqual(
            await session.multiline("UIDL"),
            b"+OK Unique-ID listing follows\r\n" + expected + b".\r\n",
        )

    async def test_sizes_and_bytes_agree(self) -> None:
        t: Any = self
        session = await self.tcp_session()
        await session.login()
        for n, message in enumerate((MESSAGE_1, MESSAGE_2, MESSAGE_3), start=1):
            size = int((await session.command(f"LIST {n}")).split()[2])
            retr = await session.multiline(f"RETR {n}")
            t.assertEqual(retr.split(b"\r\n", 1)[0], b"+OK %d octets" % size)
            body = retr.split(b"\r\n", 1)[1][: -len(b".\r\n")]
            unstuffed = b"".join(
                (line[1:] if line.startswith(b"..") else line) + b"\r\n"
                for line in body.split(b"\r\n")[:-1]
            )
            expected = message if message.endswith(b"\r\n") else message + b"\r\n"
            t.assertEqual(unstuffed, expected)
            t.assertEqual(size, len(message))

    async def test_second_pop3_session_in_use(self) -> None:
        t: Any = self
        first = await self.tcp_session()
        second = await self.tcp_session()
        third = await self.tcp_session()
        await first.login()
        in_use = b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n"
        t.assertEqual(await second.login(), in_use)
        # the refused session's logout must not have released the first's lock
        t.assertEqual(await third.login(), in_use)
        await first.command("DELE 1")
        await first.command("QUIT")
        await first.client.lost
        t.assertTrue((await second.login()).startswith(b"+OK Logged in: 2 messages"))

    async def test_dropped_session_deletes_nothing_and_unlocks(self) -> None:
        t: Any = self
        session = await self.tcp_session()
        await session.login()
        await session.command("DELE 1")
        await session.command("DELE 2")
        await session.multiline("RETR 3")
        await session.drop()
        inbox = await self.fixture.open_inbox()
        t.assertEqual(list(await call(inbox.uids)), self.uids)
        [third] = await call(inbox.fetch, [self.uids[2]])
        t.assertNotIn(SEEN, third.flags)
        again = await self.tcp_session()
        t.assertTrue((await again.login()).startswith(b"+OK Logged in: 3 messages"))

    async def test_message_expunged_by_imap_during_session(self) -> None:
        t: Any = self
        session = await self.tcp_session()
        await session.login()
        inbox = await self.fixture.open_inbox()
        await call(inbox.store, [self.uids[0]], ["\\Deleted"], "add")
        await call(inbox.expunge)
        t.assertEqual(
            await session.command("RETR 1"),
            b"-ERR Message 1 was removed by another session.\r\n",
        )
        await session.command("DELE 1")
        t.assertEqual(await session.command("QUIT"), b"+OK Logging out, 1 message deleted.\r\n")
        t.assertEqual(list(await call(inbox.uids)), self.uids[1:])

    async def test_new_mail_waits_for_next_session(self) -> None:
        t: Any = self
        session = await self.tcp_session()
        await session.login()
        await self.fixture.add(b"Subject: late\r\n\r\nhi\r\n")
        t.assertTrue((await session.command("STAT")).startswith(b"+OK 3 "))
        await session.command("QUIT")
        again = await self.tcp_session()
        t.assertTrue((await again.login()).startswith(b"+OK Logged in: 4 messages"))

    async def test_other_users_unaffected(self) -> None:
        t: Any = self
        alice = await self.tcp_session()
        await alice.login()
        bob = await self.tcp_session()
        t.assertTrue((await bob.login("bob")).startswith(b"+OK Logged in: 0 messages"))


class MemoryStorageTests(SharedMailboxMixin, unittest.TestCase):
    def make_storage(self) -> IStorage:
        return MemoryStorage()


class MaildirStorageTests(SharedMailboxMixin, unittest.TestCase):
    def make_storage(self) -> IStorage:
        self.root = os.path.abspath(self.mktemp())
        return MaildirStorage(os.path.join(self.root, "{user}", "Maildir"))

    def test_uidl_stable_across_restart(self) -> None:
        session = self.session()
        session.login()
        before = session.command("UIDL")
        session.command("QUIT")
        restarted = StorageFixture(
            self, MaildirStorage(os.path.join(self.root, "{user}", "Maildir"))
        )
        again = self.session(restarted)
        again.login()
        self.assertEqual(again.command("UIDL"), before)

    def test_uidl_stable_across_reindex(self) -> None:
        session = self.session()
        session.login()
        before = session.command("UIDL")
        session.command("QUIT")
        account = at_once(self.fixture.storage.account("alice"))
        assert isinstance(account, MaildirAccount)
        reindex(account)
        again = self.session()
        again.login()
        self.assertEqual(again.command("UIDL"), before)

    def test_in_use_across_processes(self) -> None:
        """Two storages over one Maildir, as two daemons have: the second
        POP3 login gets [IN-USE] and the lock goes with the session (the
        next test holds the lock from a real second process)."""
        other_process = StorageFixture(
            self, MaildirStorage(os.path.join(self.root, "{user}", "Maildir"))
        )
        first = self.session()
        self.assertTrue(first.login().startswith(b"+OK Logged in"))
        elsewhere = self.session(other_process)
        self.assertEqual(
            elsewhere.login(), b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n"
        )
        first.command("QUIT")
        self.assertTrue(elsewhere.login().startswith(b"+OK Logged in: 3 messages"))
        elsewhere.drop()  # a connection that just ends releases it too
        self.assertTrue(self.session().login().startswith(b"+OK Logged in"))

    def test_in_use_while_another_process_holds_the_maildrop(self) -> None:
        script = (
            "import sys; from mailsrv.storage.maildir import MaildirStorage; "
            "inbox = MaildirStorage(sys.argv[1]).account('alice').open_mailbox('INBOX'); "
            "release = inbox.lock_maildrop(); print('locked', flush=True); sys.stdin.read()"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", script, os.path.join(self.root, "{user}", "Maildir")],
            env=source_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None and child.stdin is not None
        self.assertEqual(child.stdout.readline(), b"locked\n")
        self.assertTrue(self.session().login().startswith(b"-ERR [IN-USE]"))
        child.kill()  # a SIGKILLed holder leaves no stale lock
        child.wait()
        child.stdin.close()
        child.stdout.close()
        self.assertTrue(self.session().login().startswith(b"+OK Logged in"))

    def test_message_with_bare_lf_on_disk(self) -> None:
        """Octet counts are those of the CRLF form RETR sends, for files with LF ends."""
        inbox_dir = os.path.join(self.root, "alice", "Maildir", "new")
        with open(os.path.join(inbox_dir, "1700000000.M1P1.test"), "wb") as f:
            f.write(b"Subject: lf\n\n.dot\nbody\n")
        session = self.session()
        session.login()
        self.assertEqual(
            session.command("LIST 4"), b"+OK 4 %d\r\n" % len(b"Subject: lf\r\n\r\n.dot\r\nbody\r\n")
        )
        self.assertEqual(
            session.command("RETR 4"),
            b"+OK 27 octets\r\nSubject: lf\r\n\r\n..dot\r\nbody\r\n.\r\n",
        )

    async def test_crash_over_tcp(self) -> None:
        """A client that vanishes after DELE: the files stay on disk."""
        server = TCPServer(self, self.fixture)  # type: ignore[arg-type]
        client, _ = await server.connect()
        await client.command(b"USER alice")
        await client.command(b"PASS secret")
        self.assertEqual(await client.command(b"DELE 1"), b"+OK Message 1 marked for deletion.\r\n")
        transport: Any = client.transport
        transport.abortConnection()
        await client.lost
        await server.factory.ended[0]
        cur = os.listdir(os.path.join(self.root, "alice", "Maildir", "cur"))
        new = os.listdir(os.path.join(self.root, "alice", "Maildir", "new"))
        self.assertEqual(len(cur) + len(new), 3)
        client, _ = await server.connect()
        await client.command(b"USER alice")
        self.assertTrue((await client.command(b"PASS secret")).startswith(b"+OK Logged in: 3"))
        self.assertEqual(await client.command(b"DELE 1"), b"+OK Message 1 marked for deletion.\r\n")
        self.assertEqual(await client.command(b"QUIT"), b"+OK Logging out, 1 message deleted.\r\n")
        await client.lost
        cur = os.listdir(os.path.join(self.root, "alice", "Maildir", "cur"))
        new = os.listdir(os.path.join(self.root, "alice", "Maildir", "new"))
        self.assertEqual(len(cur) + len(new), 2)


class PostgresStorageTests(SharedMailboxMixin, unittest.TestCase):
    """POP3 over the PostgreSQL backend; its maildrop lock holds across nodes."""

    def make_storage(self) -> IStorage:
        from tests.pgcluster import new_dsn, new_storage

        self.dsn = new_dsn()
        storage: IStorage = new_storage(self, self.dsn)
        return storage

    def advisory_locks(self) -> int:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            ).fetchone()
        assert row is not None
        return int(row[0])

    async def test_maildrop_lock_is_held_in_the_database(self) -> None:
        """The lock other nodes see is a PostgreSQL advisory lock, held from
        login, and free by the time QUIT is answered (so the client's next
        login, on whichever node, is not refused).  Refusal by another
        daemon process is tests/test_postgres_nodes.py's."""
        self.assertEqual(self.advisory_locks(), 0)
        first = await self.tcp_session()
        self.assertTrue((await first.login()).startswith(b"+OK Logged in"))
        self.assertEqual(self.advisory_locks(), 1)
        self.assertEqual(await first.command("QUIT"), b"+OK Logging out, 0 messages deleted.\r\n")
        self.assertEqual(self.advisory_locks(), 0)
        second = await self.tcp_session()
        self.assertTrue((await second.login()).startswith(b"+OK Logged in"))
        self.assertEqual(self.advisory_locks(), 1)
        await second.drop()  # a connection that just ends releases it too
        third = await self.tcp_session()
        self.assertTrue((await third.login()).startswith(b"+OK Logged in"))
