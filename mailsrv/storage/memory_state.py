"""The state behind :mod:`mailsrv.storage.memory`: its messages and what
every handle on one mailbox shares (UIDs, MODSEQs, counters, the expunge
log, listeners), kept apart from the handles that follow the storage
contract.
"""

from __future__ import annotations

import datetime
import math
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from mailsrv.errors import NoSuchMailbox
from mailsrv.interfaces import DELETED, SEEN, IMailbox, IMailboxListener, MessageInfo, MessageRow
from mailsrv.log import get_logger

__all__ = ["MailboxState", "StoredMessage", "new_uidvalidity", "uid_runs"]

# The backend's namespace: its log lines name it, not this module.
log = get_logger("mailsrv.storage.memory")

_uidvalidity_last = 0


def new_uidvalidity() -> int:
    """A UIDVALIDITY no other mailbox of this process got: the time, or higher.

    Re-creating a mailbox therefore always changes it, so clients drop their
    cache of the old one (RFC 3501 2.3.1.1).
    """
    global _uidvalidity_last
    _uidvalidity_last = max(int(time.time()), _uidvalidity_last + 1) % 2**32 or 1
    return _uidvalidity_last


def uid_runs(uids: Sequence[int]) -> list[tuple[int, int]]:
    """Ascending ``uids`` as inclusive runs of consecutive UIDs."""
    runs: list[tuple[int, int]] = []
    for uid in uids:
        if runs and uid == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], uid)
        else:
            runs.append((uid, uid))
    return runs


class StoredMessage:
    """One stored message; ``cache`` holds IMessageCache values."""

    __slots__ = ("cache", "data", "flags", "internal_date", "modseq", "save_date", "uid")

    def __init__(
        self,
        uid: int,
        data: bytes,
        flags: frozenset[str],
        internal_date: datetime.datetime,
        modseq: int,
    ) -> None:
        self.uid = uid
        self.data = data
        self.flags = flags
        self.internal_date = internal_date
        self.modseq = modseq
        self.cache: dict[str, bytes] | None = None
        # RFC 8514 3: when it arrived here; a copy gets its own.
        self.save_date = datetime.datetime.now(datetime.UTC).replace(microsecond=0)

    def info(self) -> MessageInfo:
        return MessageInfo(
            uid=self.uid,
            flags=self.flags,
            internal_date=self.internal_date,
            size=len(self.data),
            modseq=self.modseq,
            save_date=self.save_date,
        )

    def row(self) -> MessageRow:
        """The IMessageRows tuple: the date as UTC seconds and its offset."""
        when = self.internal_date
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        offset = when.utcoffset() or datetime.timedelta(0)
        minutes = int(offset.total_seconds()) // 60
        seconds = math.floor(when.timestamp())
        return (self.uid, self.flags, seconds, minutes, len(self.data), self.modseq)


class MailboxState:
    """What every :class:`MemoryMailbox` of one mailbox shares."""

    def __init__(self, name: str, special_use: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.special_use = special_use
        self.uidvalidity = new_uidvalidity()
        self.mailbox_id = uuid.uuid4().hex  # RFC 8474 MAILBOXID; kept by a rename
        self.uidnext = 1
        self.highest_modseq = 1
        self.messages: dict[int, StoredMessage] = {}  # ascending UID order
        #: Every keyword any message ever had, in order of first use (a
        #: dict as an ordered set).
        self.keywords: dict[str, None] = {}
        self.unclaimed: set[int] = set()  # \Recent, not yet claimed
        # (modseq, uid) of every expunge, ascending, for QRESYNC; entries
        # at or below expunged_floor were dropped (forget_expunges).
        self.expunged: list[tuple[int, int]] = []
        self.expunged_floor = 0
        self.listeners: list[tuple[IMailboxListener, IMailbox]] = []
        self.alive = True
        self.size = 0
        self.unseen = 0
        #: RFC 5464 annotations: they follow the state through a rename.
        self.metadata: dict[str, bytes] = {}
        self.deleted = 0
        self._uids: tuple[int, ...] | None = None

    def uids(self) -> tuple[int, ...]:
        if self._uids is None:
            self._uids = tuple(self.messages)
        return self._uids

    def check_alive(self) -> None:
        if not self.alive:
            raise NoSuchMailbox(f"mailbox {self.name!r} was deleted")

    def _count(self, message: StoredMessage, sign: int) -> None:
        self.size += sign * len(message.data)
        if SEEN not in message.flags:
            self.unseen += sign
        if DELETED in message.flags:
            self.deleted += sign

    def add(self, data: bytes, flags: frozenset[str], internal_date: datetime.datetime) -> int:
        """Store a message as a new arrival; the caller announces it."""
        self.check_alive()
        uid = self.uidnext
        self.uidnext += 1
        self.highest_modseq += 1
        message = StoredMessage(uid, data, flags, internal_date, self.highest_modseq)
        self.messages[uid] = message
        self._define(flags)
        self.unclaimed.add(uid)
        self._count(message, 1)
        self._uids = None
        return uid

    def _define(self, flags: frozenset[str]) -> None:
        for flag in sorted(flags):
            if flag not in self.keywords and not flag.startswith("\\"):
                self.keywords[flag] = None

    def set_flags(self, message: StoredMessage, flags: frozenset[str], modseq: int) -> None:
        self._count(message, -1)
        message.flags = flags
        self._define(flags)
        message.modseq = modseq
        self._count(message, 1)

    def remove(self, uids: Sequence[int]) -> None:
        """Expunge these (existing) UIDs under one new MODSEQ."""
        if not uids:
            return
        self.highest_modseq += 1
        for uid in uids:
            message = self.messages.pop(uid)
            self._count(message, -1)
            self.unclaimed.discard(uid)
            self.expunged.append((self.highest_modseq, uid))
        self._uids = None

    def select(self, uids: Iterable[int]) -> list[StoredMessage]:
        """The existing messages among ``uids``, ascending."""
        if isinstance(uids, range) and len(uids) > len(self.messages):
            wanted: Iterable[int] = [uid for uid in self.messages if uid in uids]
        else:
            wanted = sorted({uid for uid in uids if uid in self.messages})
        return [self.messages[uid] for uid in wanted]

    def announce(self, event: str, *args: Any) -> None:
        """Tell every listener; one failing listener does not stop the others."""
        for listener, mailbox in list(self.listeners):
            try:
                getattr(listener, event)(mailbox, *args)
            except Exception:
                log.failure(
                    "mailbox listener {listener!r} failed on {event}",
                    listener=listener,
                    event=event,
                )
