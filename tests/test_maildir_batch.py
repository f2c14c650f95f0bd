"""MULTIAPPEND on Maildir: a batch that fails part way leaves no file."""

from __future__ import annotations

import io
import os
from typing import Any

from mailsrv.interfaces import NewMessage
from tests.maildir_case import MESSAGE, MaildirTestCase


class BatchFailureTests(MaildirTestCase):
    def batch(self) -> list[NewMessage]:
        return [NewMessage(io.BytesIO(MESSAGE + b"%d\n" % n)) for n in range(3)]

    def test_rename_failure_takes_back_placed_files(self) -> None:
        """The third rename into cur/ fails: the two placed before it are
        removed again, tmp/ is emptied, and the folder shows nothing new."""
        inbox = self.inbox()
        kept = inbox.append(io.BytesIO(MESSAGE))
        before = self.cur_files()
        real_rename = os.rename
        calls: list[str] = []

        def rename(source: Any, target: Any) -> None:
            if str(target).startswith(os.path.join(self.root, "cur")):
                calls.append(str(target))
                if len(calls) == 3:
                    raise OSError(28, "No space left on device")
            real_rename(source, target)

        self.patch(os, "rename", rename)
        self.assertRaises(OSError, inbox.append_many, self.batch())
        self.assertEqual(len(calls), 3)
        self.assertEqual(self.cur_files(), before)
        self.assertEqual(os.listdir(os.path.join(self.root, "tmp")), [])
        self.assertEqual(list(inbox.uids()), [kept])
        # A fresh look at the folder (another process) finds nothing either.
        again = self.storage().account("alice").open_mailbox("INBOX")
        again.check()
        self.assertEqual(list(again.uids()), [kept])

    def test_write_failure_leaves_tmp_empty(self) -> None:
        inbox = self.inbox()

        class Broken(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def readinto(self, buffer: Any) -> int:
                raise OSError(5, "Input/output error")

        batch = [*self.batch()[:2], NewMessage(io.BufferedReader(Broken()))]
        self.assertRaises(OSError, inbox.append_many, batch)
        self.assertEqual(os.listdir(os.path.join(self.root, "tmp")), [])
        self.assertEqual(self.cur_files(), [])
        self.assertEqual(list(inbox.uids()), [])
