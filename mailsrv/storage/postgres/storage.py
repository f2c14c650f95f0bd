"""The PostgreSQL storage and its accounts.

:class:`PostgresStorage` is what ``[storage] backend = "postgresql"`` builds:
one per process (node), over one database shared by every node.  It keeps
the per-process registry of mailbox states (so handles of one mailbox share
listeners), the node's LISTEN connection (:mod:`.notify`) that wakes those
listeners when another node changes a mailbox, and the POP3 lock
connection (:mod:`.locks`).
"""

from __future__ import annotations

import io
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from mailsrv.errors import NoSuchMailbox, StorageError
from mailsrv.interfaces import (
    SPECIAL_USES,
    IAccount,
    IMetadataStore,
    IQuotaUsage,
    IStorage,
    IWatchingStorage,
    MailboxEntry,
    Usage,
)
from mailsrv.log import get_logger
from mailsrv.storage import names
from mailsrv.storage.postgres import accounts, metadata, queries
from mailsrv.storage.postgres.blobs import IBlobStore, PostgresBlobStore
from mailsrv.storage.postgres.db import REPEATABLE_READ, Database
from mailsrv.storage.postgres.locks import AdvisoryLocks
from mailsrv.storage.postgres.mailbox import MailboxState, PostgresMailbox, then
from mailsrv.storage.postgres.notify import Notifier

__all__ = ["PostgresAccount", "PostgresStorage"]

log = get_logger(__name__)


def _check_username(username: str) -> None:
    if not isinstance(username, str) or not username:
        raise StorageError("user name must be non-empty text", code="CANNOT")
    if "\x00" in username or len(username) > 255:
        raise StorageError("user name cannot be stored", code="CANNOT")


@implementer(IAccount, IQuotaUsage, IMetadataStore)
class PostgresAccount:
    """One user's mailbox tree in the database."""

    delimiter = names.DELIMITER

    def __init__(self, storage: PostgresStorage, username: str) -> None:
        self._storage = storage
        self._db = storage.db
        self.username = username

    def __repr__(self) -> str:
        return f"<PostgresAccount {self.username!r}>"

    def list_mailboxes(self) -> Any:
        def entries(found: list[tuple[str, frozenset[str]]]) -> Sequence[MailboxEntry]:
            uses = dict(found)
            known = set(uses)
            for name in uses:
                known.update(names.parents(name))
            parents = {parent for name in known for parent in names.parents(name)}
            result = []
            for name in sorted(known, key=lambda n: (n != names.INBOX, n)):
                attributes = {"\\HasChildren" if name in parents else "\\HasNoChildren"}
                if name in uses:
                    attributes.update(uses[name])
                else:
                    attributes.add("\\Noselect")
                result.append(MailboxEntry(name, frozenset(attributes)))
            return result

        return then(
            self._db.run(accounts.list_mailboxes, self.username, transaction=False), entries
        )

    def get_mailbox(self, name: str) -> Any:
        name = names.normalize(name)
        found = self._db.run(queries.find_mailbox, self.username, name, transaction=False)
        return then(found, self._storage.handle)

    def create_mailbox(self, name: str, special_use: Iterable[str] = ()) -> Any:
        name = names.normalize(name)
        uses = frozenset(special_use)
        unknown = uses - SPECIAL_USES
        if unknown:
            raise StorageError(
                f"unknown special-use attribute {sorted(unknown)[0]}", code="USEATTR"
            )
        return self._db.run(accounts.create_mailbox, self.username, name, uses)

    def delete_mailbox(self, name: str) -> Any:
        name = names.normalize(name)
        if name == names.INBOX:
            raise StorageError("INBOX cannot be deleted", code="CANNOT")
        result = self._db.run(accounts.delete_mailbox, self._storage.blobs, self.username, name)

        def deleted(found: tuple[int, int]) -> Any:
            state = self._storage.state((self.username, found[0]))
            if state is None:
                return None
            state.deleted = True
            return self._storage.catch_up(state, wait=True)

        return then(result, deleted)

    def rename_mailbox(self, old: str, new: str) -> Any:
        old = names.normalize(old)
        new = names.normalize(new)
        result = self._db.run(accounts.rename_mailbox, self._storage.blobs, self.username, old, new)

        def renamed(moved: list[tuple[int, str]]) -> Any:
            for mailbox_id, name in moved:
                state = self._storage.state((self.username, mailbox_id))
                if state is not None:
                    state.name = name
            if old == names.INBOX:
                # INBOX's messages moved out: tell whoever watches it here.
                inbox = [s for s in self._storage.states() if s.user == self.username]
                waits = [
                    self._storage.catch_up(s, wait=True)
                    for s in inbox
                    if s.listeners and s.name == names.INBOX
                ]
                return defer.gatherResults(waits).addCallback(lambda _: None) if waits else None
            return None

        return then(result, renamed)

    def subscriptions(self) -> Any:
        return self._db.run(accounts.subscriptions, self.username, transaction=False)

    def subscribe(self, name: str) -> Any:
        return self._db.run(
            accounts.subscribe, self.username, names.normalize(name), transaction=False
        )

    def unsubscribe(self, name: str) -> Any:
        return self._db.run(
            accounts.unsubscribe, self.username, names.normalize(name), transaction=False
        )

    def status(self, name: str) -> Any:
        name = names.normalize(name)

        def counters(mailbox: PostgresMailbox) -> Any:
            return mailbox.status()

        return then(self.get_mailbox(name), counters)

    def get_metadata(self, mailbox: str) -> Any:
        name = names.normalize(mailbox) if mailbox else ""
        return self._db.run(metadata.get_metadata, self.username, name, read_only=True)

    def set_metadata(
        self, mailbox: str, changes: Mapping[str, bytes | None], max_entries: int
    ) -> Any:
        name = names.normalize(mailbox) if mailbox else ""
        return self._db.run(metadata.set_metadata, self.username, name, changes, max_entries)

    def usage(self) -> Any:
        found = self._db.run(accounts.usage, self.username, transaction=False)
        return then(found, lambda row: Usage(*row))

    def logout(self) -> None:
        """Sessions hold nothing an account must free (POP3's lock goes with
        the maildrop's release)."""


@implementer(IStorage, IWatchingStorage)
class PostgresStorage:
    """Accounts in a PostgreSQL database, shared by every node.

    :param dsn: libpq connection string or URI.
    :param pool_size: worker threads (and so connections) for queries.
    :param reactor: the reactor; without one (``mailsrv deliver``) every
        call answers synchronously in the calling thread and no
        notifications are received.
    :param blob_store: where bodies live (default: the same database).
    :param clock: schedules reconnection of the LISTEN connection (tests
        pass a ``task.Clock``); the reactor by default.
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        reactor: Any = None,
        blob_store: IBlobStore | None = None,
        clock: Any = None,
    ) -> None:
        self.dsn = dsn
        self.db = Database(dsn, pool_size, reactor)
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.blobs: IBlobStore = blob_store if blob_store is not None else PostgresBlobStore()
        self.locks = AdvisoryLocks(self.db)
        self._states: weakref.WeakValueDictionary[tuple[str, int], MailboxState] = (
            weakref.WeakValueDictionary()
        )
        self._watched: dict[tuple[str, int], MailboxState] = {}
        self._known_users: set[str] = set()
        self.notifier: Notifier | None = None

    def __repr__(self) -> str:
        return "<PostgresStorage>"

    # -- accounts --------------------------------------------------------------------

    def account(self, username: str, home: str | None = None) -> Any:
        _check_username(username)
        account = PostgresAccount(self, username)
        if username in self._known_users:
            return account

        def known(_: None) -> PostgresAccount:
            self._known_users.add(username)
            return account

        return then(self.db.run(accounts.ensure_user, username), known)

    def deliver(
        self,
        username: str,
        message: bytes,
        folder: str = names.INBOX,
        flags: Iterable[str] = (),
        internal_date: Any = None,
    ) -> Any:
        """Put a message into a user's folder (which must exist); its UID."""

        def mailbox(account: PostgresAccount) -> Any:
            return account.get_mailbox(folder)

        def append(box: PostgresMailbox) -> Any:
            return box.append(io.BytesIO(message), flags, internal_date)

        return then(then(self.account(username), mailbox), append)

    # -- mailbox states ----------------------------------------------------------------

    def handle(self, row: queries.MailboxRow) -> PostgresMailbox:
        """A handle on the mailbox of ``row``, sharing state with the others."""
        state = self._states.get((row.user, row.mailbox_id))
        if state is None:
            state = MailboxState(self, row)
            self._states[state.key] = state
        else:
            state.refresh(row)
        return PostgresMailbox(state)

    def state(self, key: tuple[str, int]) -> MailboxState | None:
        return self._states.get(key)

    def states(self) -> list[MailboxState]:
        return list(self._states.values())

    def watch(self, state: MailboxState) -> None:
        """A listener joined: make sure news from other nodes reaches it."""
        self._watched[state.key] = state
        if self.notifier is None and self.reactor is not None and not self.db.closed:
            self.notifier = Notifier(
                self.db, self.reactor, self.clock, self._notified, self._reconnected
            )
            self.notifier.start()

    def unwatch(self, state: MailboxState) -> None:
        self._watched.pop(state.key, None)

    def _notified(self, payload: str) -> None:
        """A NOTIFY from some node: "mailbox_id modseq user"."""
        try:
            mailbox_id, modseq, user = payload.split(" ", 2)
            key = (user, int(mailbox_id))
            number = int(modseq)
        except ValueError:
            log.warn("ignoring malformed notification {payload!r}", payload=payload)
            return
        state = self._watched.get(key)
        if state is not None and number > state.seen_modseq:
            self.catch_up(state)

    def _reconnected(self) -> None:
        """The LISTEN connection is (back) up: notifications may have been
        missed meanwhile, so every watched mailbox catches up from the
        MODSEQ its listeners last heard."""
        for state in list(self._watched.values()):
            self.catch_up(state)

    def catch_up(self, state: MailboxState, wait: bool = False) -> Any:
        """Read what changed above what ``state``'s listeners heard and tell them.

        Notification-driven catch-ups are coalesced (one in flight, one
        more queued); ``wait`` (``check()``) always reads afresh, so it sees
        everything committed before it was called.
        """
        if not state.listeners:
            return self._refresh(state) if wait else None
        if not wait and not _coalesce(state):
            return None
        result = self.db.run(
            queries.changes,
            state.user,
            state.mailbox_id,
            state.seen_modseq,
            isolation=REPEATABLE_READ,
            read_only=True,
        )

        def apply(changes: queries.Changes) -> None:
            state.apply(changes)

        def finished(outcome: Any) -> Any:
            if not wait:
                state.catching_up = False
                if state.again:
                    state.again = False
                    self.catch_up(state)
            return outcome

        if isinstance(result, defer.Deferred):
            result.addCallback(apply)
            result.addBoth(finished)
            if not wait:
                result.addErrback(self._catch_up_failed, state)
            return result
        apply(result)
        finished(None)
        return None

    def _refresh(self, state: MailboxState) -> Any:
        def counters(row: tuple[int, ...]) -> None:
            state._advance(row[7], row[5])

        def gone(failure: Any) -> None:
            failure.trap(NoSuchMailbox)
            state.deleted = True

        try:
            result = self.db.run(queries.status, state.user, state.mailbox_id, transaction=False)
        except NoSuchMailbox:  # no reactor: the same answer, synchronously
            state.deleted = True
            return None
        if isinstance(result, defer.Deferred):
            return result.addCallbacks(counters, gone)
        counters(result)
        return None

    def _catch_up_failed(self, failure: Any, state: MailboxState) -> None:
        if failure.check(StorageError):
            # The database is away: the LISTEN connection's reconnection
            # catches everybody up once it is back.
            log.info("catching up {mailbox} failed: {e}", mailbox=state.name, e=failure.value)
            return
        log.failure("catching up {mailbox} failed", failure, mailbox=state.name)

    # -- life cycle ------------------------------------------------------------------

    def check_schema(self) -> None:
        """Refuse to serve from a database whose schema is not this code's
        (:class:`~mailsrv.storage.postgres.schema.SchemaError`); a database
        that cannot be reached raises TemporaryFailure."""
        from mailsrv.storage.postgres import schema

        conn = self.db.connect()
        try:
            schema.check_version(conn)
        finally:
            conn.close()

    def close(self) -> None:
        """Stop listening, release locks and close every connection."""
        if self.notifier is not None:
            self.notifier.stop()
            self.notifier = None
        self.locks.close()
        self.db.close()
        self._watched.clear()

    def stop_watching(self) -> None:
        """The daemon is stopping (StorageService): close everything."""
        self.close()


def _coalesce(state: MailboxState) -> bool:
    """Whether a notification-driven catch-up of ``state`` may start now;
    if one is in flight, one more is queued behind it instead."""
    if state.catching_up:
        state.again = True
        return False
    state.catching_up = True
    return True
