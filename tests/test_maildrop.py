"""The POP3 maildrop adapter over the in-memory storage."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import alsoProvides

from mailsrv.errors import MailboxInUse, NoSuchMessage, TemporaryFailure
from mailsrv.interfaces import (
    DELETED,
    SEEN,
    IMaildrop,
    IMaildropLocking,
    IPop3UidSource,
    MaildropEntry,
    StoreMode,
)
from mailsrv.storage.maildrop import Maildrop, unique_id
from mailsrv.storage.memory import MemoryStorage
from mailsrv.testing.storage import ListenerRecorder


def message(number: int, newline: bytes = b"\r\n") -> bytes:
    return newline.join([b"Subject: pop %d" % number, b"", b"Body %d" % number, b""])


class _Proxy:
    """Answers every call of the wrapped object through a Deferred; also
    provides the optional interfaces given (for the methods overridden)."""

    def __init__(self, wrapped: Any, *provides: Any, **overrides: Any) -> None:
        self._wrapped = wrapped
        self._overrides = overrides
        alsoProvides(self, *provides)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)  # zope.interface's own, not the wrapped object's
        if name in self._overrides:
            return self._overrides[name]
        value = getattr(self._wrapped, name)
        if not callable(value):
            return value

        def deferred(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            return defer.maybeDeferred(value, *args, **kwargs)

        return deferred


class MaildropTests(unittest.SynchronousTestCase):
    def setUp(self) -> None:
        self.storage = MemoryStorage()
        self.account = self.storage.account("alice")
        self.inbox = self.account.get_mailbox("INBOX")
        self.uids = [
            self.storage.deliver("alice", message(1)),
            self.storage.deliver("alice", message(2, b"\n")),
            self.storage.deliver("alice", message(3)),
        ]
        self.opened: list[Maildrop] = []

    def tearDown(self) -> None:
        for maildrop in self.opened:
            maildrop.release()

    def maildrop(self, account: Any = None) -> Maildrop:
        maildrop = Maildrop(self.account if account is None else account)
        self.opened.append(maildrop)
        return maildrop

    def open(self, maildrop: Maildrop) -> Sequence[MaildropEntry]:
        listing: Sequence[MaildropEntry] = self.successResultOf(maildrop.open())
        return listing

    def retrieve(self, maildrop: Maildrop, uid: int) -> bytes:
        handle = self.successResultOf(maildrop.retrieve(uid))
        try:
            data: bytes = handle.read()
        finally:
            handle.close()
        return data

    def test_provides_interface(self) -> None:
        self.assertTrue(IMaildrop.providedBy(self.maildrop()))

    def test_listing(self) -> None:
        maildrop = self.maildrop()
        listing = self.open(maildrop)
        validity = self.inbox.uidvalidity
        self.assertEqual([entry.uid for entry in listing], self.uids)
        self.assertEqual(
            [entry.size for entry in listing],
            [len(message(1)), len(message(2)), len(message(3))],
        )
        self.assertEqual(
            [entry.unique_id for entry in listing],
            [f"{uid:08X}{validity:08X}" for uid in self.uids],
        )
        # Mail arriving after the listing is not shown (RFC 1939).
        late = self.storage.deliver("alice", message(4))
        self.failureResultOf(maildrop.retrieve(late), NoSuchMessage)
        self.assertEqual(self.retrieve(maildrop, self.uids[1]), message(2))

    def test_listing_without_metadata_objects(self) -> None:
        """A login lists the INBOX from (uid, size, seen) tuples where the
        backend gives them (IPop3Listing): no message's metadata is fetched,
        and QUIT still flags only what was unseen at login."""
        self.inbox.store([self.uids[0]], [SEEN], StoreMode.ADD)
        fetch = type(self.inbox).fetch

        def no_fetch(*args: Any) -> Any:
            raise AssertionError("fetch called by the login")

        self.patch(type(self.inbox), "fetch", no_fetch)
        maildrop = self.maildrop()
        listing = self.open(maildrop)
        self.assertEqual(
            [(e.uid, e.size) for e in listing],
            [(u, len(message(n))) for n, u in enumerate(self.uids, 1)],
        )
        self.successResultOf(maildrop.commit([], self.uids[:2]))
        flags = {m.uid: m.flags for m in fetch(self.inbox, self.uids)}
        self.assertEqual([SEEN in flags[u] for u in self.uids], [True, True, False])

    def test_unique_id_format(self) -> None:
        self.assertEqual(unique_id(1, 1700000000), "000000016553F100")
        self.assertEqual(unique_id(0x1234ABCD, 5), "1234ABCD00000005")

    def test_unique_ids_stable(self) -> None:
        first = self.open(self.maildrop())
        self.successResultOf(self.opened[-1].release())
        # An IMAP session changing flags does not change the UIDLs.
        self.inbox.store(self.uids, [SEEN, "$Label"], StoreMode.ADD)
        second = self.open(self.maildrop())
        self.assertEqual([e.unique_id for e in first], [e.unique_id for e in second])
        self.assertEqual(len(set(e.unique_id for e in first)), 3)

    def test_retrieve(self) -> None:
        maildrop = self.maildrop()
        self.failureResultOf(maildrop.retrieve(self.uids[0]), NoSuchMessage)
        self.open(maildrop)
        self.assertEqual(self.retrieve(maildrop, self.uids[0]), message(1))
        self.assertEqual(self.retrieve(maildrop, self.uids[1]), message(2, b"\r\n"))
        self.failureResultOf(maildrop.retrieve(9999), NoSuchMessage)

    def test_in_use(self) -> None:
        holder = self.maildrop()
        self.open(holder)
        other = self.maildrop(self.storage.account("alice"))
        failure = self.failureResultOf(other.open(), MailboxInUse)
        self.assertEqual(str(failure.value), "maildrop is in use")
        self.assertEqual(failure.value.code, "INUSE")
        # The holder itself cannot open twice either.
        self.failureResultOf(holder.open(), MailboxInUse)
        # Other users, and a namesake in another storage, are not blocked.
        self.open(self.maildrop(self.storage.account("bob")))
        self.open(self.maildrop(MemoryStorage().account("alice")))

    def test_release(self) -> None:
        holder = self.maildrop()
        self.open(holder)
        self.assertIsNone(self.successResultOf(holder.release()))
        self.assertIsNone(self.successResultOf(holder.release()))
        second = self.maildrop()
        self.assertEqual(len(self.open(second)), 3)
        # Releasing the old holder again does not free the new one's lock.
        self.successResultOf(holder.release())
        self.failureResultOf(self.maildrop().open(), MailboxInUse)
        # Nothing was changed by opening and releasing.
        self.assertEqual([m.flags for m in self.inbox.fetch(self.uids)], [frozenset()] * 3)

    def test_commit(self) -> None:
        u1, u2, u3 = self.uids
        # An IMAP client flagged u3 \Deleted but did not expunge it: the POP3
        # session's commit must not expunge it for them.
        self.inbox.store([u3], [DELETED], StoreMode.ADD)
        maildrop = self.maildrop()
        self.open(maildrop)
        self.assertIsNone(self.successResultOf(maildrop.commit(deleted=[u1], seen=[u1, u2])))
        self.assertEqual(list(self.inbox.uids()), [u2, u3])
        flags = {m.uid: m.flags for m in self.inbox.fetch([u2, u3])}
        self.assertEqual(flags, {u2: frozenset({SEEN}), u3: frozenset({DELETED})})
        # The lock is released, and committing again changes nothing.
        self.assertIsNone(self.successResultOf(maildrop.commit(deleted=[u2], seen=[u3])))
        self.assertEqual(list(self.inbox.uids()), [u2, u3])
        listing = self.open(self.maildrop())
        self.assertEqual([entry.uid for entry in listing], [u2, u3])

    def test_commit_only_listed(self) -> None:
        maildrop = self.maildrop()
        self.open(maildrop)
        late = self.storage.deliver("alice", message(4))
        self.successResultOf(maildrop.commit(deleted=[late], seen=[late]))
        self.assertEqual(self.inbox.fetch([late])[0].flags, frozenset())

    def test_commit_skips_messages_expunged_meanwhile(self) -> None:
        u1, u2, u3 = self.uids
        maildrop = self.maildrop()
        self.open(maildrop)
        self.inbox.store([u2], [DELETED], StoreMode.ADD)
        self.assertEqual(list(self.inbox.expunge()), [u2])
        self.failureResultOf(maildrop.retrieve(u2), NoSuchMessage)
        self.successResultOf(maildrop.commit(deleted=[u1, u2], seen=[u2, u3]))
        self.assertEqual(list(self.inbox.uids()), [u3])
        self.assertEqual(self.inbox.fetch([u3])[0].flags, frozenset({SEEN}))
        self.open(self.maildrop())

    def test_imap_listener_hears_commit(self) -> None:
        u1, u2, u3 = self.uids
        imap_view = self.account.get_mailbox("INBOX")
        recorder = ListenerRecorder()
        imap_view.add_listener(recorder)
        maildrop = self.maildrop()
        self.open(maildrop)
        self.successResultOf(maildrop.commit(deleted=[u1, u3], seen=[u2]))
        self.assertEqual(recorder.expunged(), [u1, u3])
        self.assertEqual(recorder.flags()[u2], frozenset({SEEN}))
        imap_view.remove_listener(recorder)

    def test_failed_open_releases_lock(self) -> None:
        def broken_fetch(uids: object) -> None:
            raise TemporaryFailure("index unavailable")

        inbox = _Proxy(self.inbox, fetch=broken_fetch)
        account = _Proxy(self.account, get_mailbox=lambda name: inbox)
        self.failureResultOf(self.maildrop(account).open(), TemporaryFailure)
        self.assertEqual(len(self.open(self.maildrop())), 3)

    def test_deferred_backend(self) -> None:
        """A backend answering with Deferreds works the same."""
        inbox = _Proxy(self.inbox)
        account = _Proxy(self.account, get_mailbox=lambda name: defer.succeed(inbox))
        maildrop = self.maildrop(account)
        listing = self.open(maildrop)
        self.assertEqual([entry.uid for entry in listing], self.uids)
        self.assertEqual(self.retrieve(maildrop, self.uids[2]), message(3))
        self.successResultOf(maildrop.commit(deleted=[self.uids[0]], seen=[]))
        self.assertEqual(list(self.inbox.uids()), self.uids[1:])

    def test_carried_uidls(self) -> None:
        """UIDLs a backend kept from a migration are used as they are."""
        carried = {self.uids[1]: "dovecot-legacy-uidl"}
        inbox = _Proxy(self.inbox, IPop3UidSource, pop3_uidls=lambda: carried)
        account = _Proxy(self.account, get_mailbox=lambda name: inbox)
        listing = self.open(self.maildrop(account))
        self.assertEqual(listing[1].unique_id, "dovecot-legacy-uidl")
        self.assertEqual(listing[0].unique_id, unique_id(self.uids[0], self.inbox.uidvalidity))

    def backend_lock(self, refuse: bool = False) -> tuple[Any, list[str]]:
        """An account whose INBOX has its own maildrop lock, recording its use."""
        events: list[str] = []

        def lock_maildrop() -> Any:
            if refuse:
                raise MailboxInUse("held by another process")
            events.append("locked")
            return lambda: events.append("released")

        inbox = _Proxy(self.inbox, IMaildropLocking, lock_maildrop=lock_maildrop)
        return _Proxy(self.account, get_mailbox=lambda name: inbox), events

    def test_backend_lock_held_until_commit(self) -> None:
        account, events = self.backend_lock()
        maildrop = self.maildrop(account)
        self.open(maildrop)
        self.assertEqual(events, ["locked"])
        self.successResultOf(maildrop.commit(deleted=[], seen=[]))
        self.assertEqual(events, ["locked", "released"])
        maildrop.release()
        self.assertEqual(events, ["locked", "released"])

    def test_commit_ends_when_an_asynchronous_release_is_done(self) -> None:
        """A backend that releases its lock asynchronously (PostgreSQL's
        advisory lock, on another connection) is waited for: QUIT is
        answered only once the maildrop is free for a login on any node."""
        unlocked: defer.Deferred[None] = defer.Deferred()

        def lock_maildrop() -> Any:
            return lambda: unlocked

        inbox = _Proxy(self.inbox, IMaildropLocking, lock_maildrop=lock_maildrop)
        account = _Proxy(self.account, get_mailbox=lambda name: inbox)
        maildrop = self.maildrop(account)
        self.open(maildrop)
        committed = maildrop.commit(deleted=[], seen=[])
        self.assertNoResult(committed)
        unlocked.callback(None)
        self.successResultOf(committed)

    def test_backend_lock_refused(self) -> None:
        account, _ = self.backend_lock(refuse=True)
        self.failureResultOf(self.maildrop(account).open(), MailboxInUse)
        # The in-process lock was given back too.
        self.assertEqual(len(self.open(self.maildrop())), 3)

    def test_backend_lock_released_with_a_forgotten_maildrop(self) -> None:
        account, events = self.backend_lock()
        maildrop = Maildrop(account)
        self.successResultOf(maildrop.open())
        del maildrop
        gc.collect()
        self.assertEqual(events, ["locked", "released"])

    def test_undeclared_optional_methods_are_not_used(self) -> None:
        """The optional features are what a backend declares: methods that
        happen to carry their names, on a mailbox that does not provide
        IMaildropLocking or IPop3UidSource, are left alone."""
        called: list[str] = []

        def lock_maildrop() -> Any:
            called.append("lock_maildrop")
            return lambda: None

        def pop3_uidls() -> dict[int, str]:
            called.append("pop3_uidls")
            return {self.uids[0]: "not-to-be-used"}

        inbox = _Proxy(self.inbox, lock_maildrop=lock_maildrop, pop3_uidls=pop3_uidls)
        account = _Proxy(self.account, get_mailbox=lambda name: inbox)
        listing = self.open(self.maildrop(account))
        self.assertEqual(called, [])
        self.assertEqual(listing[0].unique_id, unique_id(self.uids[0], self.inbox.uidvalidity))

    def test_carried_uidls_that_break_rfc_1939_are_not_used(self) -> None:
        """RFC 1939 7: a unique-id is 1 to 70 characters in 0x21..0x7E."""
        carried = {self.uids[0]: "x" * 71, self.uids[1]: "has space", self.uids[2]: "ok-\u00e9"}
        inbox = _Proxy(self.inbox, IPop3UidSource, pop3_uidls=lambda: carried)
        account = _Proxy(self.account, get_mailbox=lambda name: inbox)
        listing = self.open(self.maildrop(account))
        validity = self.inbox.uidvalidity
        self.assertEqual(
            [e.unique_id for e in listing], [unique_id(u, validity) for u in self.uids]
        )
