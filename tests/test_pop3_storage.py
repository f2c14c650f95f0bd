"""POP3 over the real storage: MailRealm + Maildrop over the memory and
Maildir backends, shared with IMAP-side access to the same mailbox."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.trial import unittest
from zope.interface import implementer

from mailsrv.interfaces import SEEN, IMailbox, IMailboxListener, IMessage, IStorage
from mailsrv.pop3 import State
from mailsrv.storage.maildir import MaildirStorage, reindex
from mailsrv.storage.memory import MemoryStorage
from tests.helpers import source_env
from tests.pop3_helpers import IN_USE, MESSAGE_1, MESSAGE_2, MESSAGE_3, Fixture, Session, TCPServer

if TYPE_CHECKING:
    _TestCase = unittest.TestCase
else:
    _TestCase = object  # a mixin: only its subclasses are test cases


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


class SharedMailboxMixin(_TestCase):
    """The same tests over each backend; subclasses say how to make storage."""

    def make_storage(self) -> IStorage:
        raise NotImplementedError

    def setUp(self) -> None:
        self.fixture = Fixture(self, storage=self.make_storage())
        self.uids = self.fixture.uids()

    def session(self, fixture: Fixture | None = None) -> Session:
        return Session(fixture or self.fixture)

    def test_imap_sees_pop3_deletions_and_seen_after_quit(self) -> None:
        imap_view = self.fixture.inbox()
        recorder = Recorder()
        imap_view.add_listener(recorder)
        session = self.session()
        session.login()
        session.command("RETR 1")
        session.command("TOP 3 100")
        session.command("DELE 2")
        self.assertEqual(recorder.expunged, [])  # nothing before QUIT
        self.assertEqual(session.command("QUIT"), b"+OK Logging out, 1 message deleted.\r\n")
        self.assertEqual(recorder.expunged, [self.uids[1]])
        self.assertEqual(list(imap_view.uids()), [self.uids[0], self.uids[2]])
        flags = {m.uid: m.flags for m in imap_view.fetch(imap_view.uids())}
        self.assertIn(SEEN, flags[self.uids[0]])
        self.assertIn(SEEN, flags[self.uids[2]])
        self.assertIn(SEEN, recorder.flags[self.uids[0]])
        imap_view.remove_listener(recorder)

    def test_uidl_is_the_imap_identity(self) -> None:
        session = self.session()
        session.login()
        uidvalidity = self.fixture.inbox().uidvalidity
        expected = b"".join(
            b"%d %08X%08X\r\n" % (n + 1, uid, uidvalidity) for n, uid in enumerate(self.uids)
        )
        self.assertEqual(
            session.command("UIDL"), b"+OK Unique-ID listing follows\r\n" + expected + b".\r\n"
        )

    def test_sizes_and_bytes_agree(self) -> None:
        session = self.session()
        session.login()
        for n, message in enumerate((MESSAGE_1, MESSAGE_2, MESSAGE_3), start=1):
            size = int(session.command(f"LIST {n}").split()[2])
            retr = session.command(f"RETR {n}")
            self.assertEqual(retr.split(b"\r\n", 1)[0], b"+OK %d octets" % size)
            body = retr.split(b"\r\n", 1)[1][: -len(b".\r\n")]
            unstuffed = b"".join(
                (line[1:] if line.startswith(b"..") else line) + b"\r\n"
                for line in body.split(b"\r\n")[:-1]
            )
            expected = message if message.endswith(b"\r\n") else message + b"\r\n"
            self.assertEqual(unstuffed, expected)
            self.assertEqual(size, len(message))

    def test_second_pop3_session_in_use(self) -> None:
        first, second, third = self.session(), self.session(), self.session()
        first.login()
        self.assertEqual(second.login(), IN_USE)
        self.assertIs(second.protocol.state, State.AUTHORIZATION)
        self.assertFalse(second.closed)
        # the refused session's logout must not have released the first's lock
        self.assertEqual(third.login(), IN_USE)
        first.command("DELE 1")
        first.command("QUIT")
        first.drop()
        self.assertTrue(second.login().startswith(b"+OK Logged in: 2 messages"))

    def test_dropped_session_deletes_nothing_and_unlocks(self) -> None:
        session = self.session()
        session.login()
        session.command("DELE 1")
        session.command("DELE 2")
        session.command("RETR 3")
        session.drop()
        inbox = self.fixture.inbox()
        self.assertEqual(list(inbox.uids()), self.uids)
        self.assertNotIn(SEEN, inbox.fetch([self.uids[2]])[0].flags)
        again = self.session()
        self.assertTrue(again.login().startswith(b"+OK Logged in: 3 messages"))

    def test_message_expunged_by_imap_during_session(self) -> None:
        session = self.session()
        session.login()
        inbox = self.fixture.inbox()
        inbox.store([self.uids[0]], ["\\Deleted"], "add")
        inbox.expunge()
        self.assertEqual(
            session.command("RETR 1"), b"-ERR Message 1 was removed by another session.\r\n"
        )
        session.command("DELE 1")
        self.assertEqual(session.command("QUIT"), b"+OK Logging out, 1 message deleted.\r\n")
        self.assertEqual(list(inbox.uids()), self.uids[1:])

    def test_new_mail_waits_for_next_session(self) -> None:
        session = self.session()
        session.login()
        self.fixture.deliver(b"Subject: late\r\n\r\nhi\r\n")
        self.assertTrue(session.command("STAT").startswith(b"+OK 3 "))
        session.command("QUIT")
        again = self.session()
        self.assertTrue(again.login().startswith(b"+OK Logged in: 4 messages"))

    def test_other_users_unaffected(self) -> None:
        alice = self.session()
        alice.login()
        bob = self.session()
        self.assertTrue(bob.login("bob").startswith(b"+OK Logged in: 0 messages"))


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
        restarted = Fixture(
            self, storage=MaildirStorage(os.path.join(self.root, "{user}", "Maildir")), mail={}
        )
        again = self.session(restarted)
        again.login()
        self.assertEqual(again.command("UIDL"), before)

    def test_uidl_stable_across_reindex(self) -> None:
        session = self.session()
        session.login()
        before = session.command("UIDL")
        session.command("QUIT")
        reindex(self.fixture.storage.account("alice"))  # type: ignore[arg-type]
        again = self.session()
        again.login()
        self.assertEqual(again.command("UIDL"), before)

    def test_in_use_across_processes(self) -> None:
        """Two storages over one Maildir, as two daemons have: the second
        POP3 login gets [IN-USE] and the lock goes with the session (the
        next test holds the lock from a real second process)."""
        other_process = Fixture(
            self, storage=MaildirStorage(os.path.join(self.root, "{user}", "Maildir")), mail={}
        )
        first = self.session()
        self.assertTrue(first.login().startswith(b"+OK Logged in"))
        elsewhere = self.session(other_process)
        self.assertEqual(elsewhere.login(), IN_USE)
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
        server = TCPServer(self, self.fixture)
        client, _ = await server.connect()
        await client.command(b"USER alice")
        await client.command(b"PASS secret")
        self.assertEqual(await client.command(b"DELE 1"), b"+OK Message 1 marked for deletion.\r\n")
        client.abort()
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
