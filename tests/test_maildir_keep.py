"""Folders kept open after their last session (``MailboxRegistry``'s grace
period): the next SELECT reuses the open folder, and still sees what other
processes did meanwhile."""

# mypy: allow-untyped-calls

from __future__ import annotations

import gc
import imaplib
import io
import os
import re
import weakref
from typing import cast

from twisted.trial import unittest

from mailsrv import cli
from mailsrv.interfaces import SEEN, StoreMode
from mailsrv.storage.maildir.folder import MaildirMailbox
from mailsrv.storage.maildir.registry import MailboxRegistry
from mailsrv.storage.maildir.storage import MaildirStorage
from tests.helpers import Daemon, daemon_config, free_port, loopback
from tests.maildir_case import Recorder


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RegistryKeepTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.clock = Clock()
        self.storage = MaildirStorage(os.path.join(self.base, "{user}", "Maildir"))
        self.storage._mailboxes = self.registry = MailboxRegistry(
            keep_seconds=60, keep_count=2, clock=self.clock
        )
        self.addCleanup(self.storage.close)
        self.account = self.storage.account("alice")

    def released(self, name: str) -> weakref.ref[MaildirMailbox]:
        """Open a folder and let go of it at once (its session left)."""
        ref = weakref.ref(self.account.open_mailbox(name))
        gc.collect()
        return ref

    def test_a_released_folder_is_reused_within_the_grace_period(self) -> None:
        inbox = self.released("INBOX")
        self.assertIsNotNone(inbox())
        self.clock.now += 59
        self.assertIs(self.account.open_mailbox("INBOX"), inbox())

    def test_kept_folders_expire_and_are_bounded(self) -> None:
        self.account.create_mailbox("A")
        self.account.create_mailbox("B")
        inbox = self.released("INBOX")
        self.released("A")
        self.released("B")
        # Three used, two kept: the INBOX, least recently used, went.
        self.assertIsNone(inbox())
        inbox = self.released("INBOX")
        self.assertIsNotNone(inbox())
        self.clock.now += 61
        self.released("A")  # any use lets the expired ones go
        self.assertIsNone(inbox())

    def test_the_last_listener_leaving_restarts_the_grace_period(self) -> None:
        mailbox = self.account.open_mailbox("INBOX")
        recorder = Recorder()
        mailbox.add_listener(recorder)
        self.clock.now += 3600  # a long session
        mailbox.remove_listener(recorder)
        inbox = weakref.ref(mailbox)
        del mailbox
        gc.collect()
        self.assertIsNotNone(inbox())

    def test_a_kept_folder_catches_up_with_other_writers(self) -> None:
        inbox = self.account.open_mailbox("INBOX")
        old = inbox.append(io.BytesIO(b"Subject: one\r\n\r\nx\r\n"))
        kept = weakref.ref(inbox)
        del inbox
        gc.collect()
        # Another process's storage (deliver, another worker) and an MTA
        # writing straight into new/.
        other = MaildirStorage(os.path.join(self.base, "{user}", "Maildir"))
        self.addCleanup(other.close)
        elsewhere = other.account("alice").open_mailbox("INBOX")
        added = elsewhere.append(io.BytesIO(b"Subject: two\r\n\r\nx\r\n"))
        elsewhere.store([old], [SEEN], StoreMode.ADD)
        root = os.path.join(self.base, "alice", "Maildir")
        with open(os.path.join(root, "new", "1700000000.M1P1.mx"), "wb") as f:
            f.write(b"Subject: three\r\n\r\nx\r\n")
        again = self.account.open_mailbox("INBOX")
        self.assertIs(again, kept())
        uids = list(again.uids())
        self.assertEqual(uids[:2], [old, added])
        self.assertEqual(len(uids), 3)
        self.assertEqual(again.status().messages, 3)
        self.assertEqual(again.status().uidnext, uids[-1] + 1)
        self.assertEqual(again.fetch([old])[0].flags, frozenset({SEEN}))

    def test_a_deleted_folder_is_not_kept(self) -> None:
        self.account.create_mailbox("Gone")
        box = self.released("Gone")
        self.account.delete_mailbox("Gone")
        gc.collect()
        self.assertIsNone(box())


class KeptFolderOverSocketsTests(unittest.TestCase):
    """A message delivered by ``mailsrv deliver`` while the daemon keeps the
    INBOX open with no session in it is seen by the next SELECT with its
    UID, EXISTS and UIDNEXT."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.port = free_port()
        self.config = daemon_config(
            self.dir, {"server": {"hostname": "localhost"}, "imap": {"listen": loopback(self.port)}}
        )
        self.run_cli("user", "add", "alice", "--config", self.config, "--password-stdin")

    def run_cli(self, *argv: str, stdin: bytes = b"pw\n") -> None:
        cwd = os.getcwd()
        os.chdir(self.dir)
        try:
            text = not argv[0] == "deliver"
            source: io.StringIO | io.BytesIO
            source = io.StringIO(stdin.decode()) if text else io.BytesIO(stdin)
            self.assertEqual(cli.main(list(argv), stdin=source, stdout=io.StringIO()), 0)
        finally:
            os.chdir(cwd)

    def deliver(self, subject: str) -> None:
        message = f"Subject: {subject}\n\nbody\n".encode()
        self.run_cli("deliver", "alice", "--config", self.config, stdin=message)

    def select(self) -> tuple[int, int, list[int]]:
        """EXISTS, UIDNEXT and the UIDs of a new session's SELECT."""
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        self.addCleanup(client.socket().close)
        client.login("alice", "pw")
        status, data = client.select("INBOX")
        self.assertEqual(status, "OK")
        exists = int(cast(bytes, data[0]))
        uidnext = int(cast(bytes, client.untagged_responses["UIDNEXT"][-1]))
        uids: list[int] = []
        if exists:
            status, lines = client.fetch("1:*", "(UID)")
            for line in lines:
                assert isinstance(line, bytes)
                match = re.search(rb"UID (\d+)", line)
                assert match is not None
                uids.append(int(match.group(1)))
        client.logout()
        return exists, uidnext, uids

    def test_delivery_during_the_grace_period_is_seen(self) -> None:
        self.deliver("one")
        daemon = Daemon.start(["--config", self.config], cwd=self.dir)
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on")
        self.assertEqual(self.select(), (1, 2, [1]))
        self.deliver("two")
        self.assertEqual(self.select(), (2, 3, [1, 2]))
        self.deliver("three")
        self.assertEqual(self.select(), (3, 4, [1, 2, 3]))
        # Straight into new/, as an MTA without mailsrv writes.
        new = os.path.join(self.dir, "mail", "alice", "Maildir", "new")
        with open(os.path.join(new, "1700000000.M1P1.mx"), "wb") as f:
            f.write(b"Subject: four\n\nbody\n")
        self.assertEqual(self.select(), (4, 5, [1, 2, 3, 4]))
