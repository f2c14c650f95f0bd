"""An in-memory storage backend: for tests, embedding and client test fixtures.

Everything answers synchronously with plain values and lives only as long as
the :class:`MemoryStorage`.  It follows the whole contract of
:mod:`mailsrv.interfaces` (UIDs never reused, MODSEQ, \\Recent handed out
once, listeners shared between every object of one mailbox), so a protocol
tested over it behaves the same over Maildir.

Typical use in a client's test suite::

    storage = MemoryStorage()
    storage.deliver("alice", b"Subject: hi\\r\\n\\r\\nHello\\r\\n")
"""

from __future__ import annotations

import bisect
import datetime
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

from twisted.internet import defer
from zope.interface import implementer

from mailsrv.criteria import Criterion, matches
from mailsrv.errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxNotEmpty,
    NoSuchMailbox,
    NoSuchMessage,
    StorageError,
)
from mailsrv.interfaces import (
    DEFAULT_FOLDERS,
    DELETED,
    SEEN,
    SPECIAL_USES,
    IAccount,
    ICachedSearch,
    IIndexSearch,
    IMailbox,
    IMailboxListener,
    IMessage,
    IMessageCache,
    IMessageColumns,
    IMessageRows,
    IMetadataStore,
    IPop3Listing,
    IQuotaUsage,
    IStorage,
    MailboxEntry,
    MailboxStatus,
    MaybeDeferred,
    MessageColumns,
    MessageRow,
    NewMessage,
    StoreMode,
    StoreResult,
    Usage,
    maybe_deferred,
)
from mailsrv.storage import names
from mailsrv.storage.flags import check_flags
from mailsrv.storage.memory_state import MailboxState, StoredMessage, uid_runs
from mailsrv.storage.metadata import merged
from mailsrv.storage.wire import wire_chunks

__all__ = ["MemoryAccount", "MemoryMailbox", "MemoryStorage"]

INBOX = "INBOX"
DELIMITER = names.DELIMITER
_READ_CHUNK = 64 * 1024


def _is_under(name: str, top: str) -> bool:
    return name == top or name.startswith(top + DELIMITER)


@implementer(
    IMailbox,
    IMessageCache,
    IMessageRows,
    IMessageColumns,
    IPop3Listing,
    IIndexSearch,
    ICachedSearch,
)
class MemoryMailbox:
    """A handle on one in-memory mailbox; all handles of a name share state."""

    def __init__(self, state: MailboxState) -> None:
        self._state = state

    def __repr__(self) -> str:
        return f"<MemoryMailbox {self._state.name!r}>"

    @property
    def name(self) -> str:
        return self._state.name

    @property
    def uidvalidity(self) -> int:
        return self._state.uidvalidity

    @property
    def uidnext(self) -> int:
        return self._state.uidnext

    @property
    def highest_modseq(self) -> int:
        return self._state.highest_modseq

    @property
    def special_use(self) -> frozenset[str]:
        return self._state.special_use

    #: Memory holds any number of keywords.
    keyword_limit: int | None = None

    # -- reading ----------------------------------------------------------------

    def status(self) -> MailboxStatus:
        state = self._state
        return MailboxStatus(
            messages=len(state.messages),
            recent=len(state.unclaimed),
            unseen=state.unseen,
            deleted=state.deleted,
            size=state.size,
            uidnext=state.uidnext,
            uidvalidity=state.uidvalidity,
            highest_modseq=state.highest_modseq,
            mailbox_id=state.mailbox_id,
        )

    def uids(self) -> Sequence[int]:
        return self._state.uids()

    def keywords(self) -> Sequence[str]:
        return tuple(self._state.keywords)

    def fetch(self, uids: Iterable[int]) -> Sequence[IMessage]:
        return [message.info() for message in self._state.select(uids)]

    def message_rows(self, uids: Iterable[int]) -> list[MessageRow]:
        return [message.row() for message in self._state.select(uids)]

    def message_columns(
        self, first: int, last: int, names: frozenset[str]
    ) -> MessageColumns | None:
        """The rows turned into columns (flags keyed by their own set, each
        date with its zone): the reference the Maildir backend is held to."""
        rows = self.message_rows(range(first, last + 1))
        if last < first or len(rows) != last - first + 1:
            return None

        def column(name: str, index: int) -> list[Any]:
            return [row[index] for row in rows] if name in names else []

        flags = column("flags", 1)
        return MessageColumns(
            first,
            len(rows),
            flags,
            {key: key for key in flags},
            dates=column("dates", 2),
            zones=column("dates", 3) or None,
            sizes=column("sizes", 4),
            modseqs=column("modseqs", 5),
        )

    def uid_runs(self) -> list[tuple[int, int]]:
        return uid_runs(self._state.uids())

    def pop3_listing(self) -> Sequence[tuple[int, int, bool]]:
        messages = self._state.messages
        return [
            (uid, len(messages[uid].data), SEEN in messages[uid].flags) for uid in sorted(messages)
        ]

    def search_index(self, criterion: Criterion) -> Sequence[int]:
        """The reference meaning itself: memory has no index to ask."""
        messages = self._state.messages
        return [uid for uid in sorted(messages) if matches(criterion, messages[uid].info())]

    def open(self, uid: int) -> IO[bytes]:
        message = self._state.messages.get(uid)
        if message is None:
            raise NoSuchMessage(f"message UID {uid} no longer exists")
        return io.BytesIO(message.data)

    def changed_since(self, modseq: int) -> Sequence[IMessage]:
        return [m.info() for m in self._state.messages.values() if m.modseq > modseq]

    def changed_uids(self, modseq: int) -> Sequence[int]:
        return [uid for uid, m in self._state.messages.items() if m.modseq > modseq]

    def expunged_since(self, modseq: int) -> Sequence[int]:
        found = self.vanished_since(modseq)
        if found is not None:
            return found
        state = self._state
        return [uid for uid in range(1, state.uidnext) if uid not in state.messages]

    def vanished_since(self, modseq: int) -> Sequence[int] | None:
        state = self._state
        if modseq < state.expunged_floor:
            return None
        start = bisect.bisect_right(state.expunged, (modseq, float("inf")))
        return sorted(uid for _, uid in state.expunged[start:])

    @property
    def announced_modseq(self) -> int:
        """Listeners hear every change as it is made."""
        return self._state.highest_modseq

    def forget_expunges(self) -> None:
        """Drop the expunge log, as a backend's retention does with old
        entries (for tests of QRESYNC beyond the log)."""
        state = self._state
        if state.expunged:
            state.expunged_floor = max(state.expunged_floor, state.expunged[-1][0])
            state.expunged = []

    # -- IMessageCache ------------------------------------------------------------

    def get_cached(self, uid: int, kind: str) -> bytes | None:
        message = self._state.messages.get(uid)
        if message is None or message.cache is None:
            return None
        return message.cache.get(kind)

    def set_cached(self, uid: int, kind: str, value: bytes) -> None:
        message = self._state.messages.get(uid)
        if message is not None:
            if message.cache is None:
                message.cache = {}
            message.cache[kind] = bytes(value)

    def get_cached_many(self, uids: Iterable[int], kind: str) -> Mapping[int, bytes]:
        out: dict[int, bytes] = {}
        for uid in uids:
            value = self.get_cached(uid, kind)
            if value is not None:
                out[uid] = value
        return out

    def set_cached_many(self, kind: str, values: Mapping[int, bytes]) -> None:
        for uid, value in values.items():
            self.set_cached(uid, kind, value)

    def search_cached(
        self, kind: str, needle: bytes, low: int, high: int
    ) -> tuple[Sequence[int], Sequence[int]]:
        matched: list[int] = []
        missing: list[int] = []
        uids = self._state.uids()  # ascending: only the range is visited
        for uid in uids[bisect.bisect_left(uids, low) : bisect.bisect_right(uids, high)]:
            value = self.get_cached(uid, kind)
            if value is None:
                missing.append(uid)
            elif (needle in value) if needle else value:
                matched.append(uid)
        return matched, missing

    # -- writing ----------------------------------------------------------------

    def append(
        self,
        source: IO[bytes],
        flags: Iterable[str] = (),
        internal_date: datetime.datetime | None = None,
    ) -> int:
        self._state.check_alive()
        stored_flags = check_flags(flags)
        date = _internal_date(internal_date)
        data = b"".join(wire_chunks(source, _READ_CHUNK))
        uid = self._state.add(data, stored_flags, date)
        self._state.announce("messages_added", [uid])
        return uid

    def append_many(self, messages: Sequence[NewMessage]) -> Sequence[int]:
        # Everything is read and checked before the first message is added,
        # so a bad one leaves the mailbox as it was (RFC 3502).
        self._state.check_alive()
        ready = [
            (
                b"".join(wire_chunks(m.source, _READ_CHUNK)),
                check_flags(m.flags),
                _internal_date(m.internal_date),
            )
            for m in messages
        ]
        uids = [self._state.add(data, flags, date) for data, flags, date in ready]
        if uids:
            self._state.announce("messages_added", uids)
        return uids

    def remove(self, uids: Iterable[int]) -> Sequence[int]:
        self._state.check_alive()
        return self._remove([m.uid for m in self._state.select(uids)])

    def store(
        self,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: str,
        unchanged_since: int | None = None,
    ) -> StoreResult:
        if mode not in (StoreMode.REPLACE, StoreMode.ADD, StoreMode.REMOVE):
            raise StorageError(f"unknown store mode {mode!r}", code="CANNOT")
        state = self._state
        state.check_alive()
        given = check_flags(flags)
        changes: list[tuple[StoredMessage, frozenset[str]]] = []
        conflicts: list[int] = []
        for message in state.select(uids):
            if unchanged_since is not None and message.modseq > unchanged_since:
                conflicts.append(message.uid)
                continue
            if mode == StoreMode.ADD:
                new = message.flags | given
            elif mode == StoreMode.REMOVE:
                new = message.flags - given
            else:
                new = given
            if new != message.flags:
                changes.append((message, new))
        updated: tuple[IMessage, ...] = ()
        if changes:
            state.highest_modseq += 1
            for message, new in changes:
                state.set_flags(message, new, state.highest_modseq)
            updated = tuple(message.info() for message, _ in changes)
            state.announce("flags_changed", updated)
        return StoreResult(updated=updated, conflicts=tuple(conflicts))

    def copy(
        self, uids: Iterable[int], destination: IMailbox
    ) -> MaybeDeferred[Sequence[tuple[int, int]]]:
        """Copy messages; synchronous into memory, via the interface elsewhere.

        Into another backend's mailbox the copies go through its ``append``
        and the answer is a Deferred.
        """
        messages = self._state.select(uids)
        if isinstance(destination, MemoryMailbox):
            target = destination._state
            target.check_alive()
            pairs = [(m.uid, target.add(m.data, m.flags, m.internal_date)) for m in messages]
            if pairs:
                target.announce("messages_added", [dst for _, dst in pairs])
            return pairs
        return self._copy_elsewhere(messages, destination)

    def _copy_elsewhere(
        self, messages: list[StoredMessage], destination: IMailbox
    ) -> defer.Deferred[Sequence[tuple[int, int]]]:
        """Append copies one by one to a mailbox of another backend."""

        async def run() -> Sequence[tuple[int, int]]:
            pairs: list[tuple[int, int]] = []
            for message in messages:
                uid = await maybe_deferred(
                    destination.append,
                    io.BytesIO(message.data),
                    message.flags,
                    message.internal_date,
                )
                pairs.append((message.uid, uid))
            return pairs

        return defer.Deferred.fromCoroutine(run())

    def move(
        self, uids: Iterable[int], destination: IMailbox
    ) -> MaybeDeferred[Sequence[tuple[int, int]]]:
        if isinstance(destination, MemoryMailbox):
            pairs = self.copy(uids, destination)
            assert isinstance(pairs, list)
            self._remove([src for src, _ in pairs])
            return pairs
        result = self._copy_elsewhere(self._state.select(uids), destination)
        result.addCallback(self._remove_copied)
        return result

    def _remove_copied(self, pairs: Sequence[tuple[int, int]]) -> Sequence[tuple[int, int]]:
        self._remove([src for src, _ in pairs])
        return pairs

    def _remove(self, uids: list[int]) -> list[int]:
        state = self._state
        present = [uid for uid in uids if uid in state.messages]
        if present:
            state.remove(present)
            state.announce("messages_expunged", present)
        return present

    def expunge(self, uids: Iterable[int] | None = None) -> Sequence[int]:
        state = self._state
        candidates = state.messages.values() if uids is None else state.select(uids)
        return self._remove([m.uid for m in candidates if DELETED in m.flags])

    def claim_recent(self) -> frozenset[int]:
        claimed = frozenset(self._state.unclaimed)
        self._state.unclaimed.clear()
        return claimed

    def check(self) -> None:
        """Nothing changes behind this process's back in memory; but a
        mailbox deleted since it was opened is gone, as in Maildir."""
        self._state.check_alive()

    def add_listener(self, listener: IMailboxListener) -> None:
        entry = (listener, self)
        if entry not in self._state.listeners:
            self._state.listeners.append(entry)

    def remove_listener(self, listener: IMailboxListener) -> None:
        entry = (listener, self)
        if entry in self._state.listeners:
            self._state.listeners.remove(entry)


def _internal_date(value: datetime.datetime | None) -> datetime.datetime:
    """A timezone-aware date to the second (what IMAP can express)."""
    if value is None:
        return datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    if not isinstance(value, datetime.datetime):
        raise StorageError("internal date must be a datetime", code="CANNOT")
    if value.tzinfo is None or value.utcoffset() is None:
        raise StorageError("internal date must carry a time zone", code="CANNOT")
    return value.replace(microsecond=0)


@implementer(IAccount, IQuotaUsage, IMetadataStore)
class MemoryAccount:
    """One user's mailbox tree in memory."""

    delimiter = DELIMITER

    def __init__(self, username: str) -> None:
        self.username = username
        self._mailboxes: dict[str, MailboxState] = {INBOX: MailboxState(INBOX)}
        self._subscriptions: list[str] = []
        self._server_metadata: dict[str, bytes] = {}
        for name, use in DEFAULT_FOLDERS:
            self._mailboxes[name] = MailboxState(name, frozenset({use}))

    def __repr__(self) -> str:
        return f"<MemoryAccount {self.username!r}>"

    def _state(self, name: str) -> MailboxState:
        name = names.normalize(name)
        state = self._mailboxes.get(name)
        if state is None:
            raise NoSuchMailbox(f"no mailbox named {name!r}")
        return state

    def _has_children(self, name: str) -> bool:
        prefix = name + DELIMITER
        return any(other.startswith(prefix) for other in self._mailboxes)

    def _exists(self, name: str) -> bool:
        """Whether ``name`` is a mailbox or a \\Noselect parent of one."""
        return name in self._mailboxes or self._has_children(name)

    def list_mailboxes(self) -> Sequence[MailboxEntry]:
        known = set(self._mailboxes)
        for name in self._mailboxes:
            known.update(names.parents(name))
        parents = {parent for name in known for parent in names.parents(name)}
        entries = []
        for name in sorted(known, key=lambda n: (n != INBOX, n)):
            attributes = {"\\HasChildren" if name in parents else "\\HasNoChildren"}
            state = self._mailboxes.get(name)
            if state is None:
                attributes.add("\\Noselect")
            else:
                attributes.update(state.special_use)
            entries.append(MailboxEntry(name, frozenset(attributes)))
        return entries

    def get_mailbox(self, name: str) -> MemoryMailbox:
        return MemoryMailbox(self._state(name))

    def create_mailbox(self, name: str, special_use: Iterable[str] = ()) -> None:
        name = names.normalize(name)
        uses = frozenset(special_use)
        unknown = uses - SPECIAL_USES
        if unknown:
            raise StorageError(
                f"unknown special-use attribute {sorted(unknown)[0]}", code="USEATTR"
            )
        if name in self._mailboxes:
            raise MailboxExists(f"mailbox {name!r} already exists")
        for parent in names.parents(name):
            if parent not in self._mailboxes:
                self._mailboxes[parent] = MailboxState(parent)
        self._mailboxes[name] = MailboxState(name, uses)

    def delete_mailbox(self, name: str) -> None:
        name = names.normalize(name)
        if name == INBOX:
            raise StorageError("INBOX cannot be deleted", code="CANNOT")
        state = self._mailboxes.get(name)
        if state is None:
            if self._has_children(name):
                raise MailboxNotEmpty(
                    f"{name!r} has inferior mailboxes and holds no messages of its own"
                )
            raise NoSuchMailbox(f"no mailbox named {name!r}")
        del self._mailboxes[name]
        uids = list(state.uids())
        state.remove(uids)
        state.alive = False
        if uids:
            state.announce("messages_expunged", uids)

    def rename_mailbox(self, old: str, new: str) -> None:
        old = names.normalize(old)
        new = names.normalize(new)
        if new == INBOX or self._exists(new):
            raise MailboxExists(f"mailbox {new!r} already exists")
        if _is_under(new, old):
            raise InvalidMailboxName("a mailbox cannot be renamed to a name inside itself")
        if old == INBOX:
            self._rename_inbox(new)
            return
        moving = [name for name in self._mailboxes if _is_under(name, old)]
        if not moving:
            raise NoSuchMailbox(f"no mailbox named {old!r}")
        for parent in names.parents(new):
            if parent not in self._mailboxes:
                self._mailboxes[parent] = MailboxState(parent)
        for name in moving:
            state = self._mailboxes.pop(name)
            state.name = new + name[len(old) :]
            self._mailboxes[state.name] = state

    def _rename_inbox(self, new: str) -> None:
        """RFC 3501 6.3.5: INBOX's messages move to ``new``; INBOX stays, empty."""
        self.create_mailbox(new)
        self._mailboxes[new].metadata = dict(self._mailboxes[INBOX].metadata)
        inbox = MemoryMailbox(self._mailboxes[INBOX])
        inbox.move(list(inbox.uids()), MemoryMailbox(self._mailboxes[new]))

    def subscriptions(self) -> Sequence[str]:
        return list(self._subscriptions)

    def subscribe(self, name: str) -> None:
        name = names.normalize(name)
        if name not in self._subscriptions:
            self._subscriptions.append(name)

    def unsubscribe(self, name: str) -> None:
        name = names.normalize(name)
        if name in self._subscriptions:
            self._subscriptions.remove(name)

    def usage(self) -> Usage:
        states = self._mailboxes.values()
        return Usage(sum(s.size for s in states), sum(len(s.messages) for s in states))

    def status(self, name: str) -> MailboxStatus:
        return self.get_mailbox(name).status()

    def get_metadata(self, mailbox: str) -> dict[str, bytes]:
        return dict(self._server_metadata if mailbox == "" else self._state(mailbox).metadata)

    def set_metadata(
        self, mailbox: str, changes: Mapping[str, bytes | None], max_entries: int
    ) -> None:
        if mailbox == "":
            self._server_metadata = merged(self._server_metadata, changes, max_entries)
        else:
            state = self._state(mailbox)
            state.metadata = merged(state.metadata, changes, max_entries)

    def logout(self) -> None:
        """Sessions hold nothing an account must free."""


@implementer(IStorage)
class MemoryStorage:
    """Accounts kept in memory, created with the default folders on first use."""

    def __init__(self) -> None:
        self._accounts: dict[str, MemoryAccount] = {}

    def account(self, username: str, home: str | None = None) -> MemoryAccount:
        if not isinstance(username, str) or not username:
            raise StorageError("user name must be non-empty text", code="CANNOT")
        account = self._accounts.get(username)
        if account is None:
            account = self._accounts[username] = MemoryAccount(username)
        return account

    def deliver(
        self,
        username: str,
        message: bytes,
        folder: str = INBOX,
        flags: Iterable[str] = (),
        internal_date: datetime.datetime | None = None,
    ) -> int:
        """Put a message into a user's folder (which must exist); return its UID.

        The way a test or an embedding application plays the MTA: the
        account is created on first use, listeners hear the new message.
        """
        if not isinstance(message, bytes | bytearray):
            raise StorageError("message must be bytes", code="CANNOT")
        mailbox = self.account(username).get_mailbox(folder)
        return mailbox.append(io.BytesIO(bytes(message)), flags, internal_date)
