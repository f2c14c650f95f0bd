"""A PostgreSQL mailbox: the IMailbox methods, and telling listeners.

Every method that touches the database answers with a Deferred (the work
runs in :class:`~mailsrv.storage.postgres.db.Database`'s threads) or, in a
storage without a reactor, with the value.  The attributes IMAP reads
synchronously (``uidnext``, ``highest_modseq``) are kept from the last
answer the database gave this process about the mailbox.

Listeners: all handles of one mailbox in a process share a
:class:`MailboxState`, which remembers the MODSEQ and UIDNEXT its listeners
were last told about.  Whatever the source of news -- this process's own
change, a NOTIFY from another node, a ``check()`` -- it comes as
:class:`~mailsrv.storage.postgres.queries.Changes` "above MODSEQ *n*", and
:meth:`MailboxState.apply` announces only what lies above what the
listeners already heard.  Results may arrive out of order; the newer
snapshot wins and the older one adds nothing, so nothing is announced twice
or skipped.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer
from zope.interface import implementer

from mailsrv.criteria import Criterion
from mailsrv.errors import NoSuchMailbox, StorageError
from mailsrv.interfaces import (
    DELETED,
    ICachedSearch,
    IIndexSearch,
    IMailbox,
    IMailboxListener,
    IMaildropLocking,
    IMessage,
    IMessageCache,
    IPop3Listing,
    IPop3UidSource,
    MailboxStatus,
    NewMessage,
    StoreMode,
    StoreResult,
    maybe_deferred,
)
from mailsrv.log import get_logger
from mailsrv.storage.flags import check_flags
from mailsrv.storage.postgres import queries, sqlsearch
from mailsrv.storage.postgres.blobs import Spool, new_spool
from mailsrv.storage.postgres.db import REPEATABLE_READ

if TYPE_CHECKING:
    from mailsrv.storage.postgres.storage import PostgresStorage

__all__ = ["MailboxState", "PostgresMailbox"]

log = get_logger(__name__)

T = TypeVar("T")
U = TypeVar("U")


def then(result: defer.Deferred[T] | T, function: Callable[[T], U]) -> defer.Deferred[U] | U:
    """``function(result)``, now or when the Deferred fires."""
    if isinstance(result, defer.Deferred):
        return result.addCallback(function)
    return function(result)


def uid_argument(uids: Iterable[int]) -> range | list[int]:
    """UIDs in a form safe to hand to a worker thread (ranges stay lazy)."""
    if isinstance(uids, range):
        return uids
    return sorted(set(uids))


class MailboxState:
    """What every handle of one mailbox in this process shares."""

    def __init__(self, storage: PostgresStorage, row: queries.MailboxRow) -> None:
        self.storage = storage
        self.user = row.user
        self.mailbox_id = row.mailbox_id
        self.name: str = row.name
        self.special_use = row.special_use
        self.uidvalidity = row.uidvalidity
        self.uidnext = row.uidnext
        self.highest_modseq = row.highest_modseq
        #: What the listeners have been told about.
        self.seen_modseq = row.highest_modseq
        self.seen_uidnext = row.uidnext
        self.listeners: list[tuple[IMailboxListener, PostgresMailbox]] = []
        self.deleted = False
        #: A catch-up is in flight / another is wanted after it.
        self.catching_up = False
        self.again = False

    @property
    def key(self) -> tuple[str, int]:
        return (self.user, self.mailbox_id)

    def refresh(self, row: queries.MailboxRow) -> None:
        """Newer facts from the database (opening the mailbox again)."""
        self.name = row.name
        self.special_use = row.special_use
        self.deleted = False
        self._advance(row.highest_modseq, row.uidnext)

    def _advance(self, highest_modseq: int, uidnext: int) -> None:
        self.highest_modseq = max(self.highest_modseq, highest_modseq)
        self.uidnext = max(self.uidnext, uidnext)
        if not self.listeners:
            self.seen_modseq = self.highest_modseq
            self.seen_uidnext = self.uidnext

    def base(self) -> int | None:
        """The MODSEQ a change should report changes above, or None when
        nobody here listens (then nothing needs reporting)."""
        return self.seen_modseq if self.listeners else None

    def written(self, result: queries.Written) -> Any:
        """Take in a change's outcome; return its value."""
        if result.changes is not None:
            self.apply(result.changes)
        else:
            self._advance(result.highest_modseq, result.uidnext)
        return result.value

    def apply(self, changes: queries.Changes) -> None:
        """Announce what ``changes`` holds beyond what listeners heard."""
        if changes.name is None:
            # Deleted: sessions learn it from check() (NoSuchMailbox), as on
            # Maildir, rather than as an EXPUNGE of every message.
            self.deleted = True
            return
        if changes.name != self.name:
            self.name = changes.name
        self.highest_modseq = max(self.highest_modseq, changes.highest_modseq)
        self.uidnext = max(self.uidnext, changes.uidnext)
        if changes.highest_modseq <= self.seen_modseq:
            return  # an older snapshot than one already announced
        seen_modseq, seen_uidnext = self.seen_modseq, self.seen_uidnext
        added = [m.uid for m in changes.messages if m.uid >= seen_uidnext]
        changed = [m for m in changes.messages if m.uid < seen_uidnext and m.modseq > seen_modseq]
        expunged = sorted(
            uid for uid, modseq in changes.expunged if uid < seen_uidnext and modseq > seen_modseq
        )
        self.seen_modseq = changes.highest_modseq
        self.seen_uidnext = max(seen_uidnext, changes.uidnext)
        for listener, mailbox in list(self.listeners):
            for event, value in (
                ("messages_added", added),
                ("flags_changed", changed),
                ("messages_expunged", expunged),
            ):
                if not value:
                    continue
                try:
                    getattr(listener, event)(mailbox, value)
                except Exception:
                    log.failure(
                        "mailbox listener {listener!r} failed on {event}",
                        listener=listener,
                        event=event,
                    )


def _internal_date(value: datetime.datetime | None) -> datetime.datetime:
    """A timezone-aware date to the second (what IMAP can express)."""
    if value is None:
        return datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    if not isinstance(value, datetime.datetime):
        raise StorageError("internal date must be a datetime", code="CANNOT")
    if value.tzinfo is None or value.utcoffset() is None:
        raise StorageError("internal date must carry a time zone", code="CANNOT")
    return value.replace(microsecond=0)


@implementer(
    IMailbox,
    IMessageCache,
    IMaildropLocking,
    IPop3UidSource,
    IPop3Listing,
    IIndexSearch,
    ICachedSearch,
)
class PostgresMailbox:
    """A handle on one mailbox; all handles of a mailbox share its state."""

    def __init__(self, state: MailboxState) -> None:
        self._state = state
        self._storage = state.storage
        self._db = state.storage.db

    def __repr__(self) -> str:
        return f"<PostgresMailbox {self._state.user!r} {self._state.name!r}>"

    # -- attributes (as last heard from the database) --------------------------------

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

    @property
    def _key(self) -> tuple[str, int]:
        return self._state.key

    # -- reading -------------------------------------------------------------------

    def status(self) -> Any:
        state = self._state

        def counters(row: tuple[Any, ...]) -> MailboxStatus:
            messages, recent, unseen, deleted, size, uidnext, uidvalidity, modseq, guid = row
            state._advance(modseq, uidnext)
            return MailboxStatus(
                messages=messages,
                recent=recent,
                unseen=unseen,
                deleted=deleted,
                size=size,
                uidnext=uidnext,
                uidvalidity=uidvalidity,
                highest_modseq=modseq,
                mailbox_id=guid,
            )

        return then(self._db.run(queries.status, *self._key, transaction=False), counters)

    def uids(self) -> Any:
        return self._db.run(queries.uids, *self._key, transaction=False)

    #: Keywords live in a text array: no per-mailbox limit.
    keyword_limit: int | None = None

    def keywords(self) -> Any:
        return self._db.run(queries.keywords, *self._key, transaction=False)

    def fetch(self, uids: Iterable[int]) -> Any:
        return self._db.run(queries.fetch, *self._key, uid_argument(uids), transaction=False)

    def search_index(self, criterion: Criterion) -> Any:
        """One query (:mod:`.sqlsearch`): no row becomes a MessageInfo."""
        return self._db.run(sqlsearch.search_index, *self._key, criterion, transaction=False)

    def search_cached(self, kind: str, needle: bytes, low: int, high: int) -> Any:
        """One query (:func:`.sqlsearch.search_cached`)."""
        return self._db.run(
            sqlsearch.search_cached, *self._key, kind, needle, low, high, transaction=False
        )

    def open(self, uid: int) -> Any:
        """The message copied into a local temporary file, in a worker thread,
        so reading it never waits on the database."""
        blobs = self._storage.blobs
        key = self._key

        def read(conn: Any) -> IO[bytes]:
            target = new_spool()
            try:
                queries.read_message(conn, blobs, *key, uid, target)
            except BaseException:
                target.close()
                raise
            target.seek(0)
            return target

        return self._db.run(read, isolation=REPEATABLE_READ, read_only=True)

    def changed_since(self, modseq: int) -> Any:
        return self._db.run(queries.changed_since, *self._key, modseq, transaction=False)

    def changed_uids(self, modseq: int) -> Any:
        return self._db.run(queries.changed_uids, *self._key, modseq, transaction=False)

    def vanished_since(self, modseq: int) -> Any:
        return self._db.run(
            queries.vanished_since, *self._key, modseq, isolation=REPEATABLE_READ, read_only=True
        )

    @property
    def announced_modseq(self) -> int:
        """Listeners here have heard everything up to this (see
        :meth:`MailboxState.apply`); with none, it follows the database."""
        return self._state.seen_modseq

    def expunged_since(self, modseq: int) -> Any:
        found = self._db.run(
            queries.expunged_since, *self._key, modseq, isolation=REPEATABLE_READ, read_only=True
        )
        return then(found, lambda pairs: sorted(uid for uid, _ in pairs))

    # -- IMessageCache ----------------------------------------------------------------

    def get_cached(self, uid: int, kind: str) -> Any:
        found = self.get_cached_many([uid], kind)
        return then(found, lambda values: values.get(uid))

    def set_cached(self, uid: int, kind: str, value: bytes) -> Any:
        return self.set_cached_many(kind, {uid: value})

    def get_cached_many(self, uids: Iterable[int], kind: str) -> Any:
        wanted = uid_argument(uids)
        if not wanted:
            return {}
        return self._db.run(queries.get_cached_many, *self._key, wanted, kind, transaction=False)

    def set_cached_many(self, kind: str, values: Mapping[int, bytes]) -> Any:
        if not values:
            return None
        return self._db.run(
            queries.set_cached_many, *self._key, kind, dict(values), transaction=False
        )

    # -- writing ---------------------------------------------------------------------

    def append(
        self,
        source: IO[bytes],
        flags: Iterable[str] = (),
        internal_date: datetime.datetime | None = None,
    ) -> Any:
        found = self.append_many([NewMessage(source, flags, internal_date)])
        return then(found, lambda uids: uids[0])

    def append_many(self, messages: Sequence[NewMessage]) -> Any:
        checked = [
            (m.source, check_flags(m.flags), _internal_date(m.internal_date)) for m in messages
        ]
        state = self._state
        if state.deleted:
            raise NoSuchMailbox(f"mailbox {state.name!r} was deleted")
        blobs = self._storage.blobs
        key = self._key
        base = state.base()

        def spool_and_store() -> queries.Written:
            # The sources are read here, in the worker thread: a large
            # literal or a pipe from the MTA never stalls the reactor.
            spools: list[Spool] = []
            try:
                for source, _flags, _date in checked:
                    spools.append(Spool(source))
                batch = [
                    (spool, stored, date)
                    for spool, (_source, stored, date) in zip(spools, checked, strict=True)
                ]
                return self._db.call(queries.append, (blobs, *key, batch, base))
            finally:
                for spool in spools:
                    spool.close()

        return then(self._db.in_thread(spool_and_store), state.written)

    def remove(self, uids: Iterable[int]) -> Any:
        state = self._state
        result = self._db.run(
            queries.expunge,
            self._storage.blobs,
            *self._key,
            uid_argument(uids),
            state.base(),
            False,
        )
        return then(result, state.written)

    def store(
        self,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: str,
        unchanged_since: int | None = None,
    ) -> Any:
        if mode not in (StoreMode.REPLACE, StoreMode.ADD, StoreMode.REMOVE):
            raise StorageError(f"unknown store mode {mode!r}", code="CANNOT")
        given = check_flags(flags)
        state = self._state
        result = self._db.run(
            queries.store,
            *self._key,
            uid_argument(uids),
            given,
            mode,
            unchanged_since,
            state.base(),
        )

        def done(written: queries.Written) -> StoreResult:
            updated, conflicts = state.written(written)
            return StoreResult(updated=updated, conflicts=conflicts)

        return then(result, done)

    def copy(self, uids: Iterable[int], destination: IMailbox) -> Any:
        return self._transfer(uids, destination, move=False)

    def move(self, uids: Iterable[int], destination: IMailbox) -> Any:
        return self._transfer(uids, destination, move=True)

    def _transfer(self, uids: Iterable[int], destination: IMailbox, move: bool) -> Any:
        if not (isinstance(destination, PostgresMailbox) and destination._db is self._db):
            return self._transfer_elsewhere(uid_argument(uids), destination, move)
        target = destination._state
        source = self._state
        result = self._db.run(
            queries.copy,
            self._storage.blobs,
            source.key,
            target.key,
            uid_argument(uids),
            move,
            target.base(),
            source.base() if move else None,
        )

        def done(written: tuple[queries.Written, queries.Written | None]) -> Any:
            copied, moved = written
            if moved is not None:
                source.written(moved)
            return target.written(copied)

        return then(result, done)

    def _transfer_elsewhere(
        self, uids: range | list[int], destination: IMailbox, move: bool
    ) -> defer.Deferred[list[tuple[int, int]]]:
        """Copy into another backend's mailbox: one append per message."""

        async def run() -> list[tuple[int, int]]:
            pairs: list[tuple[int, int]] = []
            messages: Sequence[IMessage] = await defer.maybeDeferred(self.fetch, uids)
            for message in messages:
                try:
                    body: IO[bytes] = await defer.maybeDeferred(self.open, message.uid)
                except StorageError:
                    continue  # expunged meanwhile
                try:
                    uid = await maybe_deferred(
                        destination.append, body, message.flags, message.internal_date
                    )
                finally:
                    body.close()
                pairs.append((message.uid, uid))
            if move and pairs:
                await self._expunge_moved([src for src, _ in pairs])
            return pairs

        return defer.Deferred.fromCoroutine(run())

    async def _expunge_moved(self, uids: list[int]) -> None:
        await defer.maybeDeferred(self.store, uids, [DELETED], StoreMode.ADD)
        await defer.maybeDeferred(self.expunge, uids)

    def expunge(self, uids: Iterable[int] | None = None) -> Any:
        state = self._state
        wanted = None if uids is None else uid_argument(uids)
        result = self._db.run(
            queries.expunge, self._storage.blobs, *self._key, wanted, state.base()
        )
        return then(result, state.written)

    def claim_recent(self) -> Any:
        return then(self._db.run(queries.claim_recent, *self._key), frozenset)

    def check(self) -> Any:
        """Catch up with changes from anywhere (NOOP, CHECK, POP3 login);
        :class:`NoSuchMailbox` once the mailbox was deleted anywhere."""
        state = self._state

        def gone(_: object) -> None:
            if state.deleted:
                raise NoSuchMailbox(f"mailbox {state.name!r} was deleted")

        return defer.maybeDeferred(self._storage.catch_up, state, wait=True).addCallback(gone)

    # -- listeners ----------------------------------------------------------------------

    def add_listener(self, listener: IMailboxListener) -> None:
        entry = (listener, self)
        if entry not in self._state.listeners:
            self._state.listeners.append(entry)
        self._storage.watch(self._state)

    def remove_listener(self, listener: IMailboxListener) -> None:
        entry = (listener, self)
        if entry in self._state.listeners:
            self._state.listeners.remove(entry)
        if not self._state.listeners:
            self._storage.unwatch(self._state)

    # -- POP3 ------------------------------------------------------------------------

    def pop3_listing(self) -> Any:
        return self._db.run(queries.pop3_listing, *self._key, transaction=False)

    def pop3_uidls(self) -> Any:
        """UIDLs carried over by ``mailsrv migrate`` (UID -> UIDL); the
        others are computed from UID and UIDVALIDITY by the maildrop."""
        return self._db.run(queries.pop3_uidls, *self._key, transaction=False)

    def lock_maildrop(self) -> Any:
        """Take the POP3 maildrop lock of this user on every node; answers
        with its release (see :mod:`mailsrv.storage.postgres.locks`)."""
        return self._storage.locks.acquire(self._state.user)
