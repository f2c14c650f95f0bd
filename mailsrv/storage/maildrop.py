"""The INBOX as a POP3 maildrop, over any :class:`~mailsrv.interfaces.IAccount`.

POP3 and IMAP share one store: the maildrop lists the INBOX's messages by
their UIDs, and the POP3 UPDATE state becomes ordinary flag changes and a
UID EXPUNGE, so IMAP sessions hear about it like any other change.

Only the interfaces are used, every call through ``maybe_deferred``, so the
adapter works the same over synchronous and asynchronous backends; the
optional :class:`~mailsrv.interfaces.IMaildropLocking` and
:class:`~mailsrv.interfaces.IPop3UidSource` are used where the INBOX
provides them.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Sequence
from typing import IO, Any

from twisted.internet import defer
from zope.interface import implementer

from mailsrv.errors import MailboxInUse, NoSuchMessage
from mailsrv.interfaces import (
    DELETED,
    SEEN,
    IAccount,
    IMailbox,
    IMaildrop,
    IMaildropLocking,
    IMaildropReader,
    IMessage,
    IPop3Listing,
    IPop3UidSource,
    MaildropEntry,
    MaybeDeferred,
    StoreMode,
    maybe_deferred,
)

__all__ = ["Maildrop", "unique_id"]

INBOX = "INBOX"

_VALID_UIDL = re.compile(r"[\x21-\x7e]{1,70}")

#: Maildrops holding their lock, by (user name, INBOX UIDVALIDITY).  Weak, so
#: a maildrop dropped without release (a bug elsewhere) cannot lock the user
#: out for the life of the process.
_held: weakref.WeakValueDictionary[tuple[str, int], Maildrop] = weakref.WeakValueDictionary()


def unique_id(uid: int, uidvalidity: int) -> str:
    """The UIDL of a message: Dovecot's default ``%08Xu%08Xv``.

    Using Dovecot's format means clients that leave mail on the server
    (fetchmail, phones) do not download everything again after a migration.
    """
    return f"{uid:08X}{uidvalidity:08X}"


@implementer(IMaildrop, IMaildropReader)
class Maildrop:
    """A POP3 session's view of one account's INBOX.

    The lock is per process and keyed by the user name and the INBOX's
    UIDVALIDITY, so two storages that happen to have a user of the same name
    (tests, embedding) do not block each other, while every session on one
    INBOX does.  Every method of :class:`IMaildrop` returns a Deferred, as
    the interface allows; :meth:`open_message` answers as the INBOX does.
    """

    def __init__(self, account: IAccount) -> None:
        self.account = account
        self._key: tuple[str, int] | None = None
        self._inbox: IMailbox | None = None
        self._listing: dict[int, MaildropEntry] = {}
        self._unseen_at_open: set[int] = set()
        self._release_backend: weakref.finalize[Any, Any] | None = None

    def __repr__(self) -> str:
        state = "open" if self._key is not None else "closed"
        return f"<Maildrop {self.account.username!r} {state}>"

    @property
    def locked(self) -> bool:
        """Whether this maildrop holds the lock (between open and commit/release)."""
        return self._key is not None

    def open(self) -> defer.Deferred[Sequence[MaildropEntry]]:
        return defer.Deferred.fromCoroutine(self._open())

    async def _open(self) -> Sequence[MaildropEntry]:
        inbox = await maybe_deferred(self.account.get_mailbox, INBOX)
        key = (self.account.username, inbox.uidvalidity)
        holder = _held.get(key)
        if holder is not None:
            raise MailboxInUse("maildrop is in use")
        # Taken before the first wait, so two opens cannot both get it.
        _held[key] = self
        self._key = key
        self._inbox = inbox
        try:
            await self._lock_across_processes(inbox)
            listing = await self._snapshot(inbox)
        except BaseException:
            self._unlock()
            raise
        self._listing = {entry.uid: entry for entry in listing}
        return listing

    async def _lock_across_processes(self, inbox: IMailbox) -> None:
        """Also take the backend's own lock, where it has one
        (:class:`IMaildropLocking`), so sessions in other processes are kept
        out too; the in-process lock above is all a backend without it gets.
        """
        if IMaildropLocking.providedBy(inbox):
            release = await maybe_deferred(IMaildropLocking(inbox).lock_maildrop)
            # Released at commit or release, or when a maildrop that was
            # never released is collected (as the weak _held entry is).
            self._release_backend = weakref.finalize(self, release)

    async def _snapshot(self, inbox: IMailbox) -> list[MaildropEntry]:
        await maybe_deferred(inbox.check)
        listing = await self._listing_of(inbox)
        uidvalidity = inbox.uidvalidity
        carried = await self._carried_uidls(inbox)
        self._unseen_at_open = {uid for uid, _, seen in listing if not seen}
        return [
            MaildropEntry(
                uid=uid, size=size, unique_id=carried.get(uid) or unique_id(uid, uidvalidity)
            )
            for uid, size, _ in listing
        ]

    @staticmethod
    async def _listing_of(inbox: IMailbox) -> Sequence[tuple[int, int, bool]]:
        """``(uid, size, seen)`` per message: as tuples where the backend
        gives them (:class:`IPop3Listing`), else from its metadata."""
        if IPop3Listing.providedBy(inbox):
            found: Sequence[tuple[int, int, bool]] = await maybe_deferred(
                IPop3Listing(inbox).pop3_listing
            )
            return found
        uids = await maybe_deferred(inbox.uids)
        messages: Sequence[IMessage] = await maybe_deferred(inbox.fetch, list(uids))
        return [(m.uid, m.size, SEEN in m.flags) for m in messages]

    async def _carried_uidls(self, inbox: IMailbox) -> dict[int, str]:
        """UIDLs a backend kept from a migration (:class:`IPop3UidSource`);
        without it every message gets the computed form."""
        if not IPop3UidSource.providedBy(inbox):
            return {}
        found = await maybe_deferred(IPop3UidSource(inbox).pop3_uidls)
        # RFC 1939 7: 1 to 70 characters from 0x21 to 0x7E; anything else
        # would break clients, so such a message gets the computed UIDL.
        return {uid: uidl for uid, uidl in found.items() if _VALID_UIDL.fullmatch(uidl)}

    def retrieve(self, uid: int) -> defer.Deferred[IO[bytes]]:
        return maybe_deferred(self.open_message, uid)

    def open_message(self, uid: int) -> MaybeDeferred[IO[bytes]]:
        """The message's file, from the INBOX as it answers: no Deferred per
        RETR over a synchronous backend (:class:`IMaildropReader`)."""
        if self._inbox is None:
            raise NoSuchMessage("the maildrop is not open")
        if uid not in self._listing:
            raise NoSuchMessage(f"message UID {uid} is not in this maildrop")
        return self._inbox.open(uid)

    def commit(self, deleted: Iterable[int], seen: Iterable[int]) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._commit(list(deleted), list(seen)))

    async def _commit(self, deleted: list[int], seen: list[int]) -> None:
        inbox = self._inbox
        if inbox is None or self._key is None:
            return  # already committed or released
        try:
            # Only messages of the listing; ones expunged meanwhile (by an
            # IMAP session) are skipped by store/expunge themselves.
            deleted_uids = sorted({uid for uid in deleted if uid in self._listing})
            # Only what is not \Seen already and not about to go: a client
            # that leaves mail on the server re-reads it every poll, and
            # re-storing the flag of 2,000 read messages was most of QUIT.
            # (A message another session unflagged meanwhile stays unseen;
            # the POP3 client read it before that change.)
            seen_uids = sorted(
                set(seen) & self._unseen_at_open & self._listing.keys() - set(deleted_uids)
            )
            if seen_uids:
                await maybe_deferred(inbox.store, seen_uids, [SEEN], StoreMode.ADD)
            if deleted_uids:
                await maybe_deferred(inbox.store, deleted_uids, [DELETED], StoreMode.ADD)
                await maybe_deferred(inbox.expunge, deleted_uids)
        finally:
            released = self._unlock()
            if isinstance(released, defer.Deferred):
                # A backend lock held elsewhere (PostgreSQL's advisory lock)
                # is free before QUIT is answered, so the client's next
                # login, on any node, is not refused [IN-USE].
                await released

    def release(self) -> defer.Deferred[None]:
        self._unlock()
        return defer.succeed(None)

    def _unlock(self) -> object:
        """Release the locks; answers what the backend's release answered
        (a Deferred when it releases asynchronously)."""
        release, self._release_backend = self._release_backend, None
        released = release() if release is not None else None
        key = self._key
        if key is not None and _held.get(key) is self:
            del _held[key]
        self._key = None
        self._inbox = None
        self._listing = {}
        self._unseen_at_open = set()
        return released
