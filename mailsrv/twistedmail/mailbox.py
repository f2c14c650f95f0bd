"""A twisted.mail IMAP mailbox served as a mailsrv :class:`~mailsrv.interfaces.IMailbox`.

twisted.mail's ``imap4.IMailbox`` addresses messages by sequence number and
hands out ``imap4.IMessage`` objects; mailsrv addresses them by UID and
wants metadata in batches and bytes as files.  :class:`TwistedMailbox`
keeps a snapshot of the mailbox (UID, flags, internal date and the message
object of every message, in sequence order), taken with one
``fetch(1:*, uid=False)``, and answers from it.  The snapshot is taken
again after every change made through the adapter, at ``check()`` (NOOP,
SELECT...), and when the mailbox tells its ``IMailboxListener``\\s of a
change; comparing two snapshots is how new, changed and expunged messages
are announced to mailsrv's listeners.

What twisted.mail's interfaces cannot express is made up here, and only for
the life of the process: MODSEQ values (one counter per mailbox, raised for
every change seen), the expunge log, ``\\Recent`` hand-out.  See
docs/twisted-mail.md for the whole list.
"""

from __future__ import annotations

import datetime
import email.utils
import io
import re
import weakref
from collections.abc import Iterable, Sequence
from typing import IO, Any, cast

import attrs
from twisted.internet import defer
from twisted.mail import imap4
from zope.interface import implementer

from mailsrv.errors import NoSuchMessage, StorageError
from mailsrv.interfaces import (
    DELETED,
    RECENT,
    SEEN,
    IMailbox,
    IMailboxListener,
    IMessage,
    MailboxStatus,
    MessageInfo,
    NewMessage,
    StoreMode,
    StoreResult,
    canonical_flag,
    maybe_deferred,
)

__all__ = ["TwistedMailbox", "shared_mailbox", "storage_error"]

_TWISTED_MODE = {StoreMode.ADD: 1, StoreMode.REMOVE: -1, StoreMode.REPLACE: 0}
_LINE_END = re.compile(rb"\r?\n")


def storage_error(error: Exception) -> StorageError:
    """twisted.mail's exception as the mailsrv error a protocol answers."""
    if isinstance(error, StorageError):
        return error
    code = "CANNOT"
    if isinstance(error, imap4.ReadOnlyMailbox):
        code = "READ-ONLY"
    return StorageError(str(error) or type(error).__name__, code=code)


async def _call(function: Any, *args: Any) -> Any:
    """A twisted.mail method's answer (value or Deferred), errors translated."""
    try:
        return await maybe_deferred(function, *args)
    except StorageError:
        raise
    except Exception as e:
        raise storage_error(e) from e


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _flags(raw: Iterable[Any]) -> tuple[frozenset[str], bool]:
    """Canonical flags without ``\\Recent``, and whether it was there."""
    flags = {canonical_flag(_text(flag)) for flag in raw}
    recent = RECENT in flags
    flags.discard(RECENT)
    return frozenset(flags), recent


def _date(raw: Any) -> datetime.datetime:
    """``IMessage.getInternalDate()`` (an RFC 822 date) as a datetime."""
    if isinstance(raw, datetime.datetime):
        return raw if raw.tzinfo else raw.replace(tzinfo=datetime.UTC)
    try:
        parsed = email.utils.parsedate_to_datetime(_text(raw))
    except (TypeError, ValueError):
        return datetime.datetime.now(datetime.UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def _imap_date(date: datetime.datetime | None) -> str | None:
    """An APPEND date-time (RFC 3501), as twisted.mail's server passes it."""
    return None if date is None else date.strftime("%d-%b-%Y %H:%M:%S %z")


def render(message: Any) -> bytes:
    """A twisted.mail ``IMessage``'s bytes in wire form: the file of an
    ``IMessageFile``, else its headers (``getHeaders(True)``: every one)
    and body, as twisted.mail's own server writes BODY[]."""
    as_file: Any = imap4.IMessageFile(message, None)
    if as_file is not None:
        source = as_file.open()
        try:
            data = source.read()
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
    else:
        headers = message.getHeaders(True)
        head = b"".join(
            _text(name).encode("utf-8") + b": " + _text(value).encode("utf-8") + b"\r\n"
            for name, value in headers.items()
        )
        data = head + b"\r\n" + message.getBodyFile().read()
    data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return _LINE_END.sub(b"\r\n", data)


@attrs.frozen
class _Entry:
    uid: int
    flags: frozenset[str]
    internal_date: datetime.datetime
    message: Any


class _TwistedListener:
    """Registered on the twisted.mail mailbox: any change it announces
    makes the adapter look again."""

    def __init__(self, adapter: TwistedMailbox) -> None:
        self._adapter = weakref.ref(adapter)

    def _changed(self) -> None:
        adapter = self._adapter()
        if adapter is not None:
            adapter.check()

    def modeChanged(self, writeable: object) -> None:
        self._changed()

    def flagsChanged(self, newFlags: object) -> None:
        self._changed()

    def newMessages(self, exists: object, recent: object) -> None:
        self._changed()


#: One adapter per twisted.mail mailbox object, so every session that
#: selects it shares listeners (mailsrv's contract).
_adapters: weakref.WeakKeyDictionary[Any, TwistedMailbox] = weakref.WeakKeyDictionary()


def shared_mailbox(name: str, mailbox: Any) -> TwistedMailbox:
    """The adapter of ``mailbox`` (made on first use), known as ``name`` now."""
    try:
        adapter = _adapters.get(mailbox)
    except TypeError:  # not weakly referenceable or not hashable: no sharing
        return TwistedMailbox(name, mailbox)
    if adapter is None:
        adapter = TwistedMailbox(name, mailbox)
        _adapters[mailbox] = adapter
    adapter.name = name
    return adapter


@implementer(IMailbox)
class TwistedMailbox:
    """A twisted.mail ``imap4.IMailbox`` as a mailsrv ``IMailbox``."""

    special_use: frozenset[str] = frozenset()
    keyword_limit: int | None = None

    def __init__(self, name: str, mailbox: Any) -> None:
        self.name = name
        self.twisted = mailbox
        self.highest_modseq = 1
        self._entries: list[_Entry] = []
        self._by_uid: dict[int, _Entry] = {}
        self._modseq: dict[int, int] = {}
        self._expunged: list[tuple[int, int]] = []  # (modseq, uid)
        self._content: dict[int, bytes] = {}
        self._recent: set[int] = set()
        self._scanned = False
        self._listeners: list[IMailboxListener] = []
        self._twisted_listener: _TwistedListener | None = None
        self._lock = defer.DeferredLock()

    def __repr__(self) -> str:
        return f"<TwistedMailbox {self.name!r} over {self.twisted!r}>"

    # -- snapshots ------------------------------------------------------------------

    async def _fetch_all(self) -> list[_Entry]:
        count = int(await _call(self.twisted.getMessageCount))
        if count <= 0:
            return []
        # "1:*" with no last value, as twisted.mail's server passes it.
        everything = imap4.parseIdList(b"1:*")  # type: ignore[no-untyped-call,unused-ignore]
        pairs = await _call(self.twisted.fetch, everything, False)
        entries = []
        for _seq, message in list(pairs):
            flags, recent = _flags(message.getFlags())
            uid = int(message.getUID())
            entries.append(_Entry(uid, flags, _date(message.getInternalDate()), message))
            if recent and not self._scanned:
                self._recent.add(uid)
        return entries

    async def _refresh(self) -> None:
        """Take a new snapshot and tell listeners what changed since the last."""
        entries = await self._fetch_all()
        before = self._by_uid
        after = {entry.uid: entry for entry in entries}
        expunged = sorted(set(before) - set(after))
        added = sorted(set(after) - set(before))
        changed = [e.uid for e in entries if e.uid in before and before[e.uid].flags != e.flags]
        first = not self._scanned
        self._entries, self._by_uid, self._scanned = entries, after, True
        if first:
            self._modseq = dict.fromkeys(after, 1)
            return
        for uid in expunged:
            self.highest_modseq += 1
            self._expunged.append((self.highest_modseq, uid))
            self._modseq.pop(uid, None)
            self._content.pop(uid, None)
            self._recent.discard(uid)
        for uid in (*added, *changed):
            self.highest_modseq += 1
            self._modseq[uid] = self.highest_modseq
        self._recent.update(added)
        self._announce(expunged, added, changed)

    def _announce(self, expunged: list[int], added: list[int], changed: list[int]) -> None:
        for listener in list(self._listeners):
            if expunged:
                listener.messages_expunged(self, expunged)
            if added:
                listener.messages_added(self, added)
            if changed:
                listener.flags_changed(self, [self._info(uid) for uid in changed])

    def _locked(self, work: Any) -> defer.Deferred[Any]:
        """Run the coroutine function ``work`` alone (one change at a time)."""

        async def run() -> Any:
            if not self._scanned:
                await self._refresh()
            return await work()

        return self._lock.run(lambda: defer.Deferred.fromCoroutine(run()))

    def _info(self, uid: int) -> IMessage:
        entry = self._by_uid[uid]
        return MessageInfo(
            uid=uid,
            flags=entry.flags,
            internal_date=entry.internal_date,
            size=len(self._bytes(uid)),
            modseq=self._modseq.get(uid, 1),
        )

    def _bytes(self, uid: int) -> bytes:
        data = self._content.get(uid)
        if data is None:
            entry = self._by_uid.get(uid)
            if entry is None:
                raise NoSuchMessage(f"no message with UID {uid}")
            data = self._content[uid] = render(entry.message)
        return data

    def _sequence_set(self, uids: Iterable[int]) -> Any:
        """The sequence numbers of ``uids`` in the snapshot, as a MessageSet
        (twisted.mail mailboxes are asked by sequence number)."""
        wanted = set(uids)
        numbers = [seq for seq, e in enumerate(self._entries, 1) if e.uid in wanted]
        message_set = imap4.MessageSet()  # type: ignore[no-untyped-call,unused-ignore]
        for number in numbers:
            message_set.add(number)  # type: ignore[no-untyped-call,unused-ignore]
        return message_set, numbers

    # -- IMailbox: reading ------------------------------------------------------------

    @property
    def uidvalidity(self) -> int:
        return int(self.twisted.getUIDValidity())

    @property
    def uidnext(self) -> int:
        highest = self._entries[-1].uid if self._entries else 0
        return max(int(self.twisted.getUIDNext()), highest + 1)

    def status(self) -> defer.Deferred[MailboxStatus]:
        async def work() -> MailboxStatus:
            entries = self._entries
            return MailboxStatus(
                messages=len(entries),
                recent=len(self._recent),
                unseen=sum(SEEN not in e.flags for e in entries),
                deleted=sum(DELETED in e.flags for e in entries),
                size=sum(len(self._bytes(e.uid)) for e in entries),
                uidnext=self.uidnext,
                uidvalidity=self.uidvalidity,
                highest_modseq=self.highest_modseq,
            )

        return self._locked(work)

    def uids(self) -> defer.Deferred[Sequence[int]]:
        async def work() -> Sequence[int]:
            return [e.uid for e in self._entries]

        return self._locked(work)

    def keywords(self) -> defer.Deferred[Sequence[str]]:
        async def work() -> Sequence[str]:
            declared = [_text(f) for f in self.twisted.getFlags()]
            found = {f for e in self._entries for f in e.flags if not f.startswith("\\")}
            names = [f for f in declared if not f.startswith("\\")]
            return list(dict.fromkeys([*names, *sorted(found)]))

        return self._locked(work)

    def fetch(self, uids: Iterable[int]) -> defer.Deferred[Sequence[IMessage]]:
        wanted = sorted(set(uids))

        async def work() -> Sequence[IMessage]:
            return [self._info(uid) for uid in wanted if uid in self._by_uid]

        return self._locked(work)

    def open(self, uid: int) -> defer.Deferred[IO[bytes]]:
        async def work() -> IO[bytes]:
            return io.BytesIO(self._bytes(uid))

        return self._locked(work)

    def claim_recent(self) -> defer.Deferred[frozenset[int]]:
        async def work() -> frozenset[int]:
            claimed, self._recent = frozenset(self._recent), set()
            return claimed

        return self._locked(work)

    def check(self) -> defer.Deferred[None]:
        async def work() -> None:
            await self._refresh()

        return self._locked(work)

    def changed_since(self, modseq: int) -> defer.Deferred[Sequence[IMessage]]:
        async def work() -> Sequence[IMessage]:
            return [self._info(e.uid) for e in self._entries if self._modseq[e.uid] > modseq]

        return self._locked(work)

    def expunged_since(self, modseq: int) -> defer.Deferred[Sequence[int]]:
        async def work() -> Sequence[int]:
            return sorted(uid for seq, uid in self._expunged if seq > modseq)

        return self._locked(work)

    @property
    def announced_modseq(self) -> int:
        """Listeners hear of each refresh's changes as it is made."""
        return self.highest_modseq

    def changed_uids(self, modseq: int) -> defer.Deferred[Sequence[int]]:
        async def work() -> Sequence[int]:
            return sorted(e.uid for e in self._entries if self._modseq[e.uid] > modseq)

        return self._locked(work)

    def vanished_since(self, modseq: int) -> defer.Deferred[Sequence[int] | None]:
        """The snapshot keeps its whole expunge log: always an answer."""
        return cast("defer.Deferred[Sequence[int] | None]", self.expunged_since(modseq))

    # -- IMailbox: changing -----------------------------------------------------------

    def append(
        self,
        source: IO[bytes],
        flags: Iterable[str] = (),
        internal_date: datetime.datetime | None = None,
    ) -> defer.Deferred[int]:
        data = _LINE_END.sub(b"\r\n", source.read())
        flag_list = list(flags)

        async def work() -> int:
            before = set(self._by_uid)
            await _call(
                self.twisted.addMessage, io.BytesIO(data), flag_list, _imap_date(internal_date)
            )
            await self._refresh()
            added = sorted(set(self._by_uid) - before)
            if not added:
                raise StorageError("the mailbox did not show the appended message", code="CANNOT")
            return added[-1]

        return self._locked(work)

    def append_many(self, messages: Sequence[NewMessage]) -> defer.Deferred[Sequence[int]]:
        """One ``addMessage`` after the other; if one fails, the messages
        already added are expunged again.  Not atomic to other sessions
        (twisted.mail has no batch), so the bridge does not offer
        MULTIAPPEND; the contract's all or none holds for the caller."""
        batch = [
            (_LINE_END.sub(b"\r\n", m.source.read()), list(m.flags), m.internal_date)
            for m in messages
        ]

        async def work() -> Sequence[int]:
            before = set(self._by_uid)
            try:
                for data, flags, date in batch:
                    await _call(self.twisted.addMessage, io.BytesIO(data), flags, _imap_date(date))
            except BaseException:
                await self._refresh()
                await self._remove(sorted(set(self._by_uid) - before))
                raise
            await self._refresh()
            added = sorted(set(self._by_uid) - before)
            if len(added) < len(batch):
                raise StorageError("the mailbox did not show the appended messages", code="CANNOT")
            return added[-len(batch) :] if batch else []

        return self._locked(work)

    def remove(self, uids: Iterable[int]) -> defer.Deferred[Sequence[int]]:
        wanted = sorted(set(uids))

        async def work() -> Sequence[int]:
            return await self._remove(wanted)

        return self._locked(work)

    async def _remove(self, uids: list[int]) -> list[int]:
        """Expunge exactly ``uids``: flag them \\Deleted, then expunge them
        alone (as MOVE's second half)."""
        present = [uid for uid in uids if uid in self._by_uid]
        if not present:
            return []
        message_set, _ = self._sequence_set(present)
        await _call(self.twisted.store, message_set, [DELETED], 1, False)
        self._entries = await self._fetch_all()
        return await self._expunge(set(present))

    def store(
        self,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: str,
        unchanged_since: int | None = None,
    ) -> defer.Deferred[StoreResult]:
        wanted = sorted(set(uids))
        flag_list = list(flags)

        async def work() -> StoreResult:
            present = [uid for uid in wanted if uid in self._by_uid]
            conflicts: list[int] = []
            if unchanged_since is not None:
                conflicts = [uid for uid in present if self._modseq[uid] > unchanged_since]
                present = [uid for uid in present if uid not in conflicts]
            before = {uid: self._by_uid[uid].flags for uid in present}
            if present:
                message_set, _ = self._sequence_set(present)
                await _call(self.twisted.store, message_set, flag_list, _TWISTED_MODE[mode], False)
                await self._refresh()
            updated = [
                self._info(uid)
                for uid in present
                if uid in self._by_uid and self._by_uid[uid].flags != before[uid]
            ]
            return StoreResult(updated=tuple(updated), conflicts=tuple(conflicts))

        return self._locked(work)

    def expunge(self, uids: Iterable[int] | None = None) -> defer.Deferred[Sequence[int]]:
        only = None if uids is None else set(uids)

        async def work() -> Sequence[int]:
            return await self._expunge(only)

        return self._locked(work)

    async def _expunge(self, only: set[int] | None) -> list[int]:
        """twisted.mail's ``expunge()`` removes every ``\\Deleted`` message;
        for UID EXPUNGE (``only``) the others lose the flag meanwhile and
        get it back after."""
        deleted = {e.uid for e in self._entries if DELETED in e.flags}
        spared = sorted(deleted - only) if only is not None else []
        if spared:
            message_set, _ = self._sequence_set(spared)
            await _call(self.twisted.store, message_set, [DELETED], -1, False)
        before = set(self._by_uid)
        await _call(self.twisted.expunge)
        if spared:
            # Their sequence numbers moved: look again before giving the flag back.
            self._entries = await self._fetch_all()
            message_set, _ = self._sequence_set(spared)
            await _call(self.twisted.store, message_set, [DELETED], 1, False)
        await self._refresh()
        return sorted(before - set(self._by_uid))

    def copy(
        self, uids: Iterable[int], destination: IMailbox
    ) -> defer.Deferred[Sequence[tuple[int, int]]]:
        wanted = sorted(set(uids))

        async def work() -> Sequence[tuple[int, int]]:
            if not isinstance(destination, TwistedMailbox):
                raise StorageError("cannot copy out of a twisted.mail mailbox", code="CANNOT")
            return await destination._receive(
                [(uid, self._by_uid[uid]) for uid in wanted if uid in self._by_uid], self
            )

        return self._locked(work)

    def _receive(
        self, entries: list[tuple[int, _Entry]], source: TwistedMailbox
    ) -> defer.Deferred[list[tuple[int, int]]]:
        """Add copies of ``source``'s messages: ``IMessageCopier.copy`` where
        the mailbox has it, else ``addMessage`` (as twisted.mail's COPY)."""

        async def work() -> list[tuple[int, int]]:
            copier = imap4.IMessageCopier(self.twisted, None)
            before = set(self._by_uid)
            for uid, entry in entries:
                if copier is not None:
                    await _call(copier.copy, entry.message)
                else:
                    data = io.BytesIO(source._bytes(uid))
                    flags = sorted(entry.flags)
                    await _call(
                        self.twisted.addMessage, data, flags, _imap_date(entry.internal_date)
                    )
            await self._refresh()
            added = sorted(set(self._by_uid) - before)
            return list(zip([uid for uid, _ in entries], added, strict=False))

        if self is source:
            # Already inside this mailbox's lock.
            return defer.Deferred.fromCoroutine(work())
        return self._locked(work)

    def move(
        self, uids: Iterable[int], destination: IMailbox
    ) -> defer.Deferred[Sequence[tuple[int, int]]]:
        wanted = sorted(set(uids))
        d = self.copy(wanted, destination)

        def copied(pairs: Sequence[tuple[int, int]]) -> defer.Deferred[Sequence[tuple[int, int]]]:
            moved = [source for source, _ in pairs]

            async def work() -> Sequence[tuple[int, int]]:
                if moved:
                    message_set, _ = self._sequence_set(moved)
                    await _call(self.twisted.store, message_set, [DELETED], 1, False)
                    self._entries = await self._fetch_all()
                    await self._expunge(set(moved))
                return pairs

            return self._locked(work)

        return d.addCallback(copied)

    # -- listeners ---------------------------------------------------------------------

    def add_listener(self, listener: IMailboxListener) -> None:
        self._listeners.append(listener)
        if self._twisted_listener is None:
            self._twisted_listener = _TwistedListener(self)
            add = getattr(self.twisted, "addListener", None)
            if add is not None:
                add(self._twisted_listener)

    def remove_listener(self, listener: IMailboxListener) -> None:
        if listener not in self._listeners:
            return
        self._listeners.remove(listener)
        # A session deselects: twisted.mail's server closes the mailbox then.
        closeable = imap4.ICloseableMailbox(self.twisted, None)
        if closeable is not None:
            maybe_deferred(closeable.close).addErrback(lambda _: None)
        if not self._listeners and self._twisted_listener is not None:
            twisted_listener, self._twisted_listener = self._twisted_listener, None
            remove = getattr(self.twisted, "removeListener", None)
            if remove is not None:
                try:
                    remove(twisted_listener)
                except ValueError:
                    pass
