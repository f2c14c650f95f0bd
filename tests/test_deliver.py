"""Local delivery (``mailsrv deliver``): where a message lands and how failures read."""

from __future__ import annotations

import errno
import io
import os
from typing import Any, cast

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mailsrv import log
from mailsrv.errors import TemporaryFailure
from mailsrv.storage.deliver import EmptyMessage, deliver, reindex
from mailsrv.storage.maildir import MaildirStorage
from tests.helpers import Trickle

MESSAGE = b"From: a@example.org\nTo: alice@example.org\nSubject: hi\n\nhello\n"


class DeliverTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        self.storage = MaildirStorage(os.path.join(self.base, "{user}", "Maildir"))
        self.account = self.storage.account("alice")
        self.root = os.path.join(self.base, "alice", "Maildir")

    def test_deliver_to_inbox(self) -> None:
        uid = deliver(self.account, io.BytesIO(MESSAGE))
        inbox = self.account.open_mailbox("INBOX")
        self.assertEqual(inbox.uids(), (uid,))
        with inbox.open(uid) as handle:
            self.assertEqual(handle.read(), MESSAGE.replace(b"\n", b"\r\n"))
        self.assertEqual(inbox.claim_recent(), frozenset({uid}))
        self.assertEqual(inbox.fetch([uid])[0].flags, frozenset())
        (name,) = os.listdir(os.path.join(self.root, "cur"))
        self.assertTrue(name.endswith(":2,"))

    def test_delivery_line_follows_the_log_level(self) -> None:
        # [logging] level = "warn" leaves the info line of a delivery out.
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.addCleanup(log.set_level, "info")

        def delivered() -> list[str]:
            return [
                formatEvent(e)
                for e in events
                if e.get("log_namespace") == "mailsrv.storage.deliver"
                and e.get("log_level") == LogLevel.info
            ]

        log.set_level("warn")
        deliver(self.account, io.BytesIO(MESSAGE))
        self.assertEqual(delivered(), [])
        log.set_level("info")
        uid = deliver(self.account, io.BytesIO(MESSAGE))
        self.assertEqual(delivered(), [f"delivered UID {uid} to alice INBOX"])

    def test_deliver_to_folder(self) -> None:
        uid = deliver(self.account, io.BytesIO(MESSAGE), folder="Junk")
        self.assertEqual(self.account.open_mailbox("Junk").uids(), (uid,))
        self.assertEqual(self.account.open_mailbox("INBOX").uids(), ())

    def test_missing_folder_falls_back_to_inbox(self) -> None:
        uid = deliver(self.account, io.BytesIO(MESSAGE), folder="No/Such")
        self.assertEqual(self.account.open_mailbox("INBOX").uids(), (uid,))
        self.assertNotIn("No/Such", [e.name for e in self.account.list_mailboxes()])

    def test_invalid_folder_falls_back_to_inbox(self) -> None:
        uid = deliver(self.account, io.BytesIO(MESSAGE), folder="../../etc")
        self.assertEqual(self.account.open_mailbox("INBOX").uids(), (uid,))

    def test_empty_input_is_refused(self) -> None:
        self.assertRaises(EmptyMessage, deliver, self.account, io.BytesIO(b""))
        self.assertEqual(self.account.open_mailbox("INBOX").uids(), ())
        self.assertEqual(os.listdir(os.path.join(self.root, "tmp")), [])

    def test_message_read_in_small_pieces(self) -> None:
        """The first chunk read to rule out empty input is not lost."""

        uid = deliver(self.account, Trickle(MESSAGE, 3))  # type: ignore[arg-type]
        with self.account.open_mailbox("INBOX").open(uid) as handle:
            self.assertEqual(handle.read(), MESSAGE.replace(b"\n", b"\r\n"))

    def test_disk_full_is_temporary(self) -> None:
        def fsync(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(os, "fsync", fsync)
        error = self.assertRaises(TemporaryFailure, deliver, self.account, io.BytesIO(MESSAGE))
        self.assertIn("ENOSPC", str(error))
        self.assertEqual(error.code, "UNAVAILABLE")
        self.assertEqual(os.listdir(os.path.join(self.root, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(self.root, "cur")), [])

    def test_read_error_is_temporary(self) -> None:
        class Broken(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def read(self, size: int = -1) -> bytes:
                raise OSError(errno.EIO, "Input/output error")

        self.assertRaises(TemporaryFailure, deliver, self.account, Broken())
        self.assertEqual(os.listdir(os.path.join(self.root, "tmp")), [])

    def test_reindex(self) -> None:
        deliver(self.account, io.BytesIO(MESSAGE))
        deliver(self.account, io.BytesIO(MESSAGE), folder="Sent")
        counts = reindex(self.account)
        self.assertEqual(counts["INBOX"], 1)
        self.assertEqual(counts["Sent"], 1)
        self.assertEqual(counts["Trash"], 0)
