"""Opening Maildir messages in UID order: the files of the next messages are
read ahead from the index with the first, and a name read ahead that has
gone since (a flag change renames a file, an expunge removes it) sends the
open back to the index; a small file is read in one piece."""

from __future__ import annotations

import io
import os

from mailsrv.errors import NoSuchMessage
from mailsrv.interfaces import DELETED, FLAGGED, StoreMode
from mailsrv.storage.maildir import layout
from tests.maildir_case import MESSAGE, MESSAGE_CRLF, MaildirTestCase


def _contents(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def message(n: int) -> bytes:
    return b"Subject: %d\r\n\r\nbody of message %d\r\n" % (n, n)


class ReadAheadTests(MaildirTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.mailbox = self.inbox()
        self.uids = [self.deliver(n) for n in range(1, 41)]

    def deliver(self, n: int) -> int:
        uid: int = self.mailbox.append(io.BytesIO(message(n)))
        return uid

    def test_in_order_with_renames_and_expunges_between(self) -> None:
        """Opened in order while another session renames and removes files
        that were read ahead: each open gives its message or NoSuchMessage."""
        self.assertEqual(self.read(self.mailbox, self.uids[0]), message(1))
        other = self.account().open_mailbox("INBOX")  # another session's view
        other.store([self.uids[1], self.uids[5]], [FLAGGED], StoreMode.ADD)  # renamed
        other.store([self.uids[2]], [DELETED], StoreMode.ADD)
        other.expunge([self.uids[2]])  # removed
        for n, uid in enumerate(self.uids, 1):
            if n == 1:
                continue
            if n == 3:
                self.assertRaises(NoSuchMessage, self.mailbox.open, uid)
            else:
                self.assertEqual(self.read(self.mailbox, uid), message(n), n)

    def test_a_file_renamed_outside_is_found(self) -> None:
        """A flag set by another program (a rename the index has not seen):
        the open catches up with the folder, as before."""
        self.assertEqual(self.read(self.mailbox, self.uids[0]), message(1))
        cur = os.path.join(self.root, "cur")
        [third] = [f for f in self.cur_files() if _contents(os.path.join(cur, f)) == message(3)]
        os.rename(os.path.join(cur, third), os.path.join(cur, third + "F"))
        self.assertEqual(self.read(self.mailbox, self.uids[2]), message(3))
        os.unlink(os.path.join(cur, third + "F"))
        self.assertRaises(NoSuchMessage, self.mailbox.open, self.uids[2])

    def test_out_of_order_and_again(self) -> None:
        for n in (40, 1, 20, 20, 2, 39, 40):
            self.assertEqual(self.read(self.mailbox, self.uids[n - 1]), message(n), n)
        self.assertRaises(NoSuchMessage, self.mailbox.open, self.uids[-1] + 1)


class OpenWireTests(MaildirTestCase):
    def write(self, data: bytes) -> str:
        path = os.path.join(self.base, "message")
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    def test_small_files_whole(self) -> None:
        path = self.write(MESSAGE_CRLF)
        with layout.open_wire(path, True, len(MESSAGE_CRLF)) as handle:
            self.assertEqual(handle.read(), MESSAGE_CRLF)
        path = self.write(MESSAGE)
        with layout.open_wire(path, False, len(MESSAGE_CRLF)) as handle:
            self.assertEqual(handle.read(), MESSAGE_CRLF)

    def test_file_longer_than_the_index_says(self) -> None:
        """All of it, whatever the index said (as a buffered file gave)."""
        data = MESSAGE_CRLF * 5000  # over the first read, and over 64 KiB
        path = self.write(data)
        for size in (10, len(MESSAGE_CRLF), layout.RAW_WHOLE_LIMIT):
            with layout.open_wire(path, True, size) as handle:
                self.assertEqual(handle.read(), data, size)
        path = self.write(MESSAGE * 5000)
        with layout.open_wire(path, False, 10) as handle:
            self.assertEqual(handle.read(), data)

    def test_missing_file(self) -> None:
        missing = os.path.join(self.base, "gone")
        for raw in (True, False):
            self.assertRaises(FileNotFoundError, layout.open_wire, missing, raw, 10)
