"""What the storage suite's tests stand on: the hooks a backend overrides,
helpers that call a storage whatever it answers with, and a listener that
records what it hears."""

# mypy: allow-untyped-calls
# (trial's assertion methods are not annotated)

from __future__ import annotations

import datetime
import io
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer
from twisted.trial.unittest import SkipTest
from zope.interface import implementer

from mailsrv.interfaces import (
    IAccount,
    IMailbox,
    IMailboxListener,
    IMessage,
    IStorage,
    MailboxEntry,
    MailboxStatus,
)

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase

    _Base = TestCase
else:
    _Base = object

__all__ = ["ListenerRecorder", "SuiteBase", "call", "message_bytes", "wire_form"]

_E = TypeVar("_E", bound=Exception)


def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    """Call a storage method that may answer with a value or a Deferred."""
    return defer.maybeDeferred(function, *args, **kwargs)


def message_bytes(number: int, body: bytes = b"", newline: bytes = b"\r\n") -> bytes:
    """A small, distinct RFC 5322 message; ``newline`` picks its line ends."""
    lines = [
        b"From: Sender <sender@example.org>",
        b"To: Recipient <rcpt@example.org>",
        b"Subject: message %d" % number,
        b"Message-ID: <%d@example.org>" % number,
        b"",
        b"Body of message %d." % number,
    ]
    if body:
        lines.append(body)
    return newline.join(lines) + newline


def wire_form(data: bytes) -> bytes:
    """What the contract says a backend stores: every line end as CRLF."""
    return re.sub(rb"\r?\n", b"\r\n", data)


@implementer(IMailboxListener)
class ListenerRecorder:
    """Keeps every notification a mailbox gives, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def messages_added(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        self.events.append(("added", list(uids)))

    def flags_changed(self, mailbox: IMailbox, messages: Sequence[IMessage]) -> None:
        self.events.append(("flags", [(m.uid, frozenset(m.flags), m.modseq) for m in messages]))

    def messages_expunged(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        self.events.append(("expunged", list(uids)))

    def added(self) -> list[int]:
        return [uid for kind, uids in self.events if kind == "added" for uid in uids]

    def expunged(self) -> list[int]:
        return [uid for kind, uids in self.events if kind == "expunged" for uid in uids]

    def flags(self) -> dict[int, frozenset[str]]:
        """The last flags heard for each UID."""
        result: dict[int, frozenset[str]] = {}
        for kind, values in self.events:
            if kind == "flags":
                for uid, flags, _modseq in values:
                    result[uid] = flags
        return result


class SuiteBase(_Base):
    """The hooks a backend overrides and the helpers the tests use."""

    #: The user every test works as.
    username: str = "alice"
    #: Messages appended by :meth:`test_many_messages`.
    bulk_message_count: int = 2000

    # -- hooks ------------------------------------------------------------------

    def make_storage(self) -> IStorage:
        """A fresh storage with no accounts; backends must override this."""
        raise NotImplementedError("mix StorageSuiteMixin into a TestCase that defines make_storage")

    def reopen_storage(self, storage: IStorage) -> IStorage:
        """A storage over the same data as ``storage``, as after a restart."""
        return storage

    def deliver_outside(self, storage: IStorage, data: bytes) -> object:
        """Put ``data`` into :attr:`username`'s INBOX in ``storage`` from
        outside ``storage``'s objects: what ``IMailbox.check`` must find.
        May answer a Deferred or be a coroutine function."""
        raise SkipTest(
            f"{type(self).__name__} defines no deliver_outside: no writer outside the "
            "storage object to check against"
        )

    def forget_expunges(self, storage: IStorage, mailbox: IMailbox) -> object:
        """Make ``mailbox`` drop every entry of its expunge log, as the
        backend's retention drops old ones, so the suite can check the
        answers beyond the log.  May answer a Deferred or be a coroutine
        function."""
        raise SkipTest(
            f"{type(self).__name__} defines no forget_expunges: the backend's "
            "expunge-log retention cannot be triggered from the suite"
        )

    # -- helpers ----------------------------------------------------------------

    async def account(self, storage: IStorage | None = None) -> IAccount:
        if storage is None:
            storage = self.make_storage()
        account: IAccount = await call(storage.account, self.username)
        return account

    async def reopen(self, storage: IStorage) -> IAccount:
        """The suite user's account in a reopened ``storage``."""
        return await self.account(self.reopen_storage(storage))

    async def mailbox(self, account: IAccount, name: str) -> IMailbox:
        mailbox: IMailbox = await call(account.get_mailbox, name)
        return mailbox

    async def append(
        self,
        mailbox: IMailbox,
        data: bytes,
        flags: Iterable[str] = (),
        internal_date: datetime.datetime | None = None,
    ) -> int:
        uid: int = await call(mailbox.append, io.BytesIO(data), flags, internal_date)
        return uid

    async def seed(self, mailbox: IMailbox, count: int, start: int = 1) -> list[int]:
        uids = []
        for number in range(start, start + count):
            uids.append(await self.append(mailbox, message_bytes(number)))
        return uids

    async def read(self, mailbox: IMailbox, uid: int) -> bytes:
        handle = await call(mailbox.open, uid)
        try:
            data: bytes = handle.read()
        finally:
            handle.close()
        return data

    async def info(self, mailbox: IMailbox, uid: int) -> IMessage:
        found: list[IMessage] = list(await call(mailbox.fetch, [uid]))
        self.assertEqual([m.uid for m in found], [uid])
        return found[0]

    async def flags_of(self, mailbox: IMailbox, uid: int) -> frozenset[str]:
        return frozenset((await self.info(mailbox, uid)).flags)

    async def status(self, mailbox: IMailbox) -> MailboxStatus:
        status: MailboxStatus = await call(mailbox.status)
        return status

    async def uids(self, mailbox: IMailbox) -> list[int]:
        return list(await call(mailbox.uids))

    async def entries(self, account: IAccount) -> dict[str, frozenset[str]]:
        listed: Sequence[MailboxEntry] = await call(account.list_mailboxes)
        return {entry.name: frozenset(entry.attributes) for entry in listed}

    async def fails(
        self, error: type[_E], function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> _E:
        """Assert that the call fails with ``error``; return the exception."""
        try:
            result = await call(function, *args, **kwargs)
        except error as exc:
            return exc
        self.fail(f"{function.__name__}{args!r} gave {result!r}, not {error.__name__}")
