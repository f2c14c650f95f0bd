"""What the Maildir tests share: a storage in a temporary tree, a listener
that records what it hears, and a small message with LF line ends."""

from __future__ import annotations

import os
from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailsrv.interfaces import IMailbox, IMailboxListener, IMessage
from mailsrv.storage.maildir import MaildirAccount, MaildirMailbox, MaildirStorage

MESSAGE = b"From: a@example.org\nSubject: test\n\nline one\nline two\n"
MESSAGE_CRLF = MESSAGE.replace(b"\n", b"\r\n")


@implementer(IMailboxListener)
class Recorder:
    """A listener that keeps what it was told."""

    def __init__(self) -> None:
        self.added: list[int] = []
        self.changed: list[tuple[int, frozenset[str]]] = []
        self.expunged: list[int] = []

    def messages_added(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        self.added.extend(uids)

    def flags_changed(self, mailbox: IMailbox, messages: Sequence[IMessage]) -> None:
        self.changed.extend((m.uid, m.flags) for m in messages)

    def messages_expunged(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        self.expunged.extend(uids)


class MaildirTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.template = os.path.join(self.base, "{user}", "Maildir")
        self.root = os.path.join(self.base, "alice", "Maildir")

    def storage(self) -> MaildirStorage:
        return MaildirStorage(self.template)

    def account(self) -> MaildirAccount:
        return self.storage().account("alice")

    def inbox(self) -> MaildirMailbox:
        return self.account().open_mailbox("INBOX")

    def read(self, mailbox: MaildirMailbox, uid: int) -> bytes:
        with mailbox.open(uid) as handle:
            return handle.read()

    def cur_files(self, folder: str = "") -> list[str]:
        return sorted(os.listdir(os.path.join(self.root, folder, "cur")))

    def drop_into_new(self, data: bytes, name: str, folder: str = "") -> str:
        """Deliver like Postfix: write in tmp/, then rename into new/."""
        tmp = os.path.join(self.root, folder, "tmp", name)
        with open(tmp, "wb") as handle:
            handle.write(data)
        target = os.path.join(self.root, folder, "new", name)
        os.rename(tmp, target)
        return target
