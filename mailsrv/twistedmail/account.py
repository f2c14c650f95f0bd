"""A twisted.mail ``imap4.IAccount`` served as a mailsrv :class:`~mailsrv.interfaces.IAccount`."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.mail import imap4
from zope.interface import implementer

from mailsrv.errors import InvalidMailboxName, MailboxExists, NoSuchMailbox, StorageError
from mailsrv.interfaces import IAccount, IMailbox, MailboxEntry, MailboxStatus, maybe_deferred
from mailsrv.storage import names
from mailsrv.twistedmail.mailbox import TwistedMailbox, _call, shared_mailbox, storage_error

__all__ = ["TwistedAccount"]

#: LIST attributes a twisted.mail mailbox may give in ``getFlags()`` (its
#: server lists them there); the other flags there are message flags.
_ATTRIBUTES = frozenset(
    {"\\noselect", "\\noinferiors", "\\marked", "\\unmarked", "\\haschildren", "\\hasnochildren"}
)

#: Names subscribed through mailsrv, per twisted.mail account object:
#: twisted.mail's IAccount can answer isSubscribed(name) but cannot list.
_subscribed: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@implementer(IAccount)
class TwistedAccount:
    """A twisted.mail ``imap4.IAccount`` avatar, as mailsrv's IMAP sees it."""

    delimiter = "/"

    def __init__(self, username: str, account: Any) -> None:
        self.username = username
        self.twisted = account

    def _subscriptions(self) -> set[str]:
        try:
            return _subscribed.setdefault(self.twisted, set())
        except TypeError:
            return set()

    async def _listing(self) -> list[tuple[str, Any]]:
        found = await _call(self.twisted.listMailboxes, "", "*")
        return [(_text(name), mailbox) for name, mailbox in list(found)]

    def list_mailboxes(self) -> defer.Deferred[Sequence[MailboxEntry]]:
        async def work() -> Sequence[MailboxEntry]:
            listing = await self._listing()
            all_names = [name for name, _ in listing]
            entries = []
            for name, mailbox in listing:
                declared = {_text(flag) for flag in mailbox.getFlags()}
                attributes = {a for a in declared if a.lower() in _ATTRIBUTES}
                children = any(other.startswith(name + "/") for other in all_names)
                attributes.add("\\HasChildren" if children else "\\HasNoChildren")
                shown = names.INBOX if names.is_inbox(name) else name
                entries.append(MailboxEntry(shown, frozenset(attributes)))
            entries.sort(key=lambda entry: (entry.name != names.INBOX, entry.name))
            return entries

        return defer.Deferred.fromCoroutine(work())

    def get_mailbox(self, name: str) -> defer.Deferred[IMailbox]:
        async def work() -> IMailbox:
            wanted = names.INBOX if names.is_inbox(name) else name
            mailbox = await _call(self.twisted.select, wanted, True)
            if not mailbox:
                raise NoSuchMailbox(f"no mailbox {name!r}")
            adapter: TwistedMailbox = shared_mailbox(wanted, mailbox)
            return adapter

        return defer.Deferred.fromCoroutine(work())

    def create_mailbox(self, name: str, special_use: Iterable[str] = ()) -> defer.Deferred[None]:
        async def work() -> None:
            if not name.strip("/"):
                raise InvalidMailboxName("empty mailbox name")
            try:
                created = await maybe_deferred(self.twisted.create, name)
            except imap4.MailboxCollision:
                raise MailboxExists(f"mailbox {name!r} exists") from None
            except Exception as e:
                raise storage_error(e) from e
            if not created:
                raise MailboxExists(f"mailbox {name!r} exists")

        return defer.Deferred.fromCoroutine(work())

    def delete_mailbox(self, name: str) -> defer.Deferred[None]:
        async def work() -> None:
            if names.is_inbox(name):
                raise StorageError("INBOX cannot be deleted", code="CANNOT")
            await self._must_exist(name)
            await _call(self.twisted.delete, name)

        return defer.Deferred.fromCoroutine(work())

    def rename_mailbox(self, old: str, new: str) -> defer.Deferred[None]:
        async def work() -> None:
            await self._must_exist(old)
            try:
                await maybe_deferred(self.twisted.rename, old, new)
            except imap4.MailboxCollision:
                raise MailboxExists(f"mailbox {new!r} exists") from None
            except Exception as e:
                raise storage_error(e) from e

        return defer.Deferred.fromCoroutine(work())

    async def _must_exist(self, name: str) -> None:
        if not await _call(self.twisted.select, name, True):
            raise NoSuchMailbox(f"no mailbox {name!r}")

    def subscriptions(self) -> defer.Deferred[Sequence[str]]:
        async def work() -> Sequence[str]:
            found = set(self._subscriptions())
            for name, _ in await self._listing():
                if await _call(self.twisted.isSubscribed, name):
                    found.add(name)
            return sorted(found)

        return defer.Deferred.fromCoroutine(work())

    def subscribe(self, name: str) -> defer.Deferred[None]:
        async def work() -> None:
            await _call(self.twisted.subscribe, name)
            self._subscriptions().add(name)

        return defer.Deferred.fromCoroutine(work())

    def unsubscribe(self, name: str) -> defer.Deferred[None]:
        async def work() -> None:
            # RFC 3501 6.3.7 lets a name that was never subscribed be
            # unsubscribed; twisted.mail's memory account refuses it.
            try:
                await maybe_deferred(self.twisted.unsubscribe, name)
            except imap4.MailboxException:
                pass
            self._subscriptions().discard(name)

        return defer.Deferred.fromCoroutine(work())

    def status(self, name: str) -> defer.Deferred[MailboxStatus]:
        async def work() -> MailboxStatus:
            mailbox = await self.get_mailbox(name)
            result: MailboxStatus = await maybe_deferred(mailbox.status)
            return result

        return defer.Deferred.fromCoroutine(work())

    def logout(self) -> None:
        """The realm's logout callable is what ends the avatar."""
