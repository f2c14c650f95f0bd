"""One session's view of its selected mailbox.

IMAP's message sequence numbers belong to the session: they change only
when the server tells the client so with an EXPUNGE (or grow with EXISTS),
and RFC 3501 5.5 and 7.4.1 forbid EXPUNGE responses during FETCH, STORE and
SEARCH.  :class:`SelectedMailbox` therefore keeps the session's own
seq <-> UID map and queues what other sessions and deliveries change; the
server calls :meth:`SelectedMailbox.flush` after each command to turn the
queue into the untagged responses that are allowed at that moment.

The map itself, stored as runs of UIDs, is :class:`~mailsrv.imap.uidmap.UidMap`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, Protocol, cast

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from mailsrv import log
from mailsrv.errors import TemporaryFailure
from mailsrv.imap import response
from mailsrv.imap.syntax import SequenceSet
from mailsrv.imap.uidmap import MessageSet, UidMap, ranges_text, runs
from mailsrv.interfaces import (
    ANSWERED,
    DELETED,
    DRAFT,
    FLAGGED,
    RECENT,
    SEEN,
    SYSTEM_FLAGS,
    IMailbox,
    IMailboxListener,
    IMessage,
    maybe_deferred,
)

__all__ = [
    "InvalidSequence",
    "MessageSet",
    "SelectedMailbox",
    "UidMap",
    "UpdateWatcher",
    "ranges_text",
    "runs",
]

#: The system flags in the order FLAGS and PERMANENTFLAGS list them.
_SYSTEM_ORDER = (ANSWERED, FLAGGED, DELETED, SEEN, DRAFT)
_log = log.get_logger(__name__)


class InvalidSequence(ValueError):
    """A sequence set names a message number the session does not have
    (RFC 3501 answers it with BAD)."""


class UpdateWatcher(Protocol):
    """Told of the changes a flush announces (RFC 5267 UPDATE contexts,
    :class:`mailsrv.imap.contexts.Contexts`)."""

    def expunging(self, uids: set[int]) -> list[bytes]:
        """Responses to send before the EXPUNGEs of ``uids``."""

    def changed(self, uids: Sequence[int]) -> defer.Deferred[list[bytes]]:
        """Responses to send after EXISTS and FETCH for new or changed ``uids``."""


@implementer(IMailboxListener)
class SelectedMailbox:
    """The selected mailbox as one session sees it.

    Created by SELECT/EXAMINE with the mailbox's UIDs at that moment, it
    listens to the mailbox and queues changes.  ``on_change`` (set by the
    server during IDLE) is called when a change is queued.
    """

    def __init__(
        self,
        mailbox: IMailbox,
        uids: Iterable[int],
        readonly: bool,
        recent: Iterable[int] = (),
    ) -> None:
        self.mailbox = mailbox
        self.readonly = readonly
        self.map = UidMap(uids)
        self.recent: set[int] = set(recent)
        self._added: list[int] = []
        self._expunged: set[int] = set()
        self._flags: dict[int, tuple[frozenset[str], int]] = {}
        self.on_change: Callable[[], None] | None = None
        #: The saved search result, "$" (RFC 5182), as UIDs; empty on SELECT.
        self.saved = UidMap(())
        #: The keywords the session was told about in FLAGS, in that order.
        self.keywords: tuple[str, ...] = ()
        self._known: frozenset[str] = SYSTEM_FLAGS | {RECENT}
        #: Told of what each flush announces (UPDATE contexts), if set.
        self.watcher: UpdateWatcher | None = None
        #: Messages whose flags this session changed and reported itself:
        #: no FETCH is due, but the watcher must still hear of them.
        self._reported: set[int] = set()
        # RFC 7162, set by the session: flag updates carry UID and MODSEQ
        # (CONDSTORE-aware client), expunges are told as VANISHED (QRESYNC),
        # the mailbox keeps no MODSEQs (NOMODSEQ was said at SELECT).
        self.condstore = False
        self.qresync = False
        self.nomodseq = False
        #: IMAP4rev2 rules (RFC 9051, set by the session): no \\Recent is
        #: claimed or shown, no RECENT response, and every unsolicited FETCH
        #: carries the UID (appendix E, items 12 and 21).
        self.rev2 = False
        #: A HIGHESTMODSEQ the client may hold: every change at or below it
        #: has been told (or was already in the view when it was built).
        self.modseq = 0
        #: UIDNEXT when the view was built: a UID below it (or below the
        #: view's last UID) that the view lacks is gone (QRESYNC).
        self.uid_limit = 0

    # -- IMailboxListener --------------------------------------------------

    def messages_added(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        self._added.extend(uids)
        self._changed()

    def flags_changed(self, mailbox: IMailbox, messages: Sequence[IMessage]) -> None:
        for message in messages:
            old = self._flags.get(message.uid)
            if old is None or old[1] <= message.modseq:
                self._flags[message.uid] = (frozenset(message.flags), message.modseq)
        self._changed()

    def messages_expunged(self, mailbox: IMailbox, uids: Sequence[int]) -> None:
        self._expunged.update(uids)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- Used by the server ------------------------------------------------

    @property
    def exists(self) -> int:
        return len(self.map)

    def resolve(self, sequence_set: SequenceSet, uid: bool) -> MessageSet:
        """The messages ``sequence_set`` names (UIDs when ``uid``).

        UIDs that are not in the view simply match nothing (RFC 3501 6.4.8);
        a sequence number above the message count raises
        :class:`InvalidSequence`, as does any sequence number in an empty
        mailbox.
        """
        if sequence_set.saved:
            # RFC 5182: "$" names the same messages in FETCH and UID FETCH;
            # expunged ones simply drop out (they are no longer in the map).
            return MessageSet(self.map, self.saved.ranges(), True)
        if uid:
            return MessageSet(self.map, sequence_set.resolve(self.map.last_uid), True)
        count = self.exists
        if count == 0:
            raise InvalidSequence("No messages in the mailbox (invalid sequence number)")
        ranges = sequence_set.resolve(count)
        if ranges[-1][1] > count:
            raise InvalidSequence(f"Invalid message sequence number (the mailbox has {count})")
        return MessageSet(self.map, ranges, False)

    @defer.inlineCallbacks
    def first_unseen(
        self, unseen: int, batch: int = 500
    ) -> Generator[defer.Deferred[Any], Any, int]:
        """The sequence number of the first message without \\Seen (0: none),
        for SELECT's ``OK [UNSEEN n]``, given the mailbox's unseen count.

        Reads metadata alternately from the front (stopping at the first
        unseen message) and from the back (stopping once ``unseen`` unseen
        messages were found there: the lowest of them is the first).  Both
        common shapes, "new mail at the end" and "nothing read yet", cost a
        batch or two instead of the whole mailbox; the worst case reads each
        message once.  A count that is stale by a concurrent change can only
        make the answer less exact, never wrong in form.
        """
        low, high = 1, self.exists
        if unseen <= 0 or high == 0:
            return 0
        size = min(64, batch)
        found = 0  # unseen messages seen from the back
        lowest = 0
        while low <= high:
            end = min(low + size - 1, high)
            messages = yield self._fetch_range(low, end)
            for message in messages:
                if SEEN not in message.flags:
                    return self.map.seq(message.uid) or 0
            low = end + 1
            if low > high:
                break
            start = max(high - size + 1, low)
            messages = yield self._fetch_range(start, high)
            for message in reversed(messages):
                if SEEN not in message.flags:
                    found += 1
                    lowest = self.map.seq(message.uid) or lowest
            if found >= unseen:
                return lowest
            high = start - 1
            size = min(size * 2, batch)
        return lowest

    def _fetch_range(self, low: int, high: int) -> defer.Deferred[Sequence[IMessage]]:
        uids = [uid for _, uid in self.map.by_seq(low, high)]
        return maybe_deferred(self.mailbox.fetch, uids)

    # -- Keywords (RFC 3501 7.2.6) --------------------------------------------
    #
    # A client learns the flags it may meet from FLAGS and PERMANENTFLAGS, at
    # SELECT and whenever they change: before any response shows a keyword
    # the session has not been told about, FLAGS is sent again.

    def flags_response(self, defined: Sequence[str], met: Iterable[str] = ()) -> bytes:
        """``* FLAGS`` and ``* OK [PERMANENTFLAGS]`` for the mailbox's
        keywords ``defined`` (as :meth:`IMailbox.keywords` lists them),
        keywords ``met`` in messages, and every keyword told before; the
        session now knows them all."""
        self.keywords = tuple(dict.fromkeys((*self.keywords, *defined, *met)))
        self._known = self._known.union(self.keywords)
        flags = " ".join((*_SYSTEM_ORDER, *self.keywords))
        if self.readonly:
            permanent = ""
        else:
            # RFC 3501 7.1: \* only while a new keyword can still be stored.
            limit = self.mailbox.keyword_limit
            permanent = flags if limit is not None and len(defined) >= limit else flags + " \\*"
        return f"* FLAGS ({flags})\r\n* OK [PERMANENTFLAGS ({permanent})] Flags\r\n".encode()

    def unannounced(self, flag_sets: Iterable[Iterable[str]]) -> set[str]:
        """The keywords among ``flag_sets`` the session was not told about."""
        known = self._known
        new: set[str] = set()
        for flags in flag_sets:
            if not known.issuperset(flags):
                new.update(flag for flag in flags if flag not in known)
        return new

    def announce_keywords(self, seen: Iterable[str] = ()) -> defer.Deferred[bytes]:
        """The FLAGS response again if the mailbox defines keywords the
        session was not told about (or ``seen``, met in messages); ``b""``
        when it knows them all."""
        seen = tuple(seen)
        d: defer.Deferred[Sequence[str]] = maybe_deferred(self.mailbox.keywords)

        def unavailable(failure: Failure) -> Sequence[str]:
            # The store cannot list its keywords just now (a database
            # restarting): announce what this session knows plus what it is
            # about to show, which is all RFC 3501 7.2.6 asks.
            failure.trap(TemporaryFailure)
            _log.warn(
                "cannot list the keywords of {name}: {e}", name=self.mailbox.name, e=failure.value
            )
            return self.keywords

        d.addErrback(unavailable)

        def render(defined: Sequence[str]) -> bytes:
            if self._known.issuperset(defined) and self._known.issuperset(seen):
                return b""
            # A keyword met in a message is announced even if the mailbox
            # did not list it (yet): it is about to be shown.
            return self.flags_response(defined, seen)

        return d.addCallback(render)

    def has_pending(self) -> bool:
        return bool(self._added or self._expunged or self._flags or self._reported)

    def forget_flags(self, messages: Iterable[IMessage]) -> None:
        """Drop queued flag updates that this session's own STORE reported."""
        for message in messages:
            if self.watcher is not None:
                self._reported.add(message.uid)
            pending = self._flags.get(message.uid)
            if pending is not None and pending[1] <= message.modseq:
                del self._flags[message.uid]

    def note_expunged(self, uids: Iterable[int]) -> None:
        """Queue expunges this session made (EXPUNGE, MOVE), in case the
        backend did not call the listener."""
        self._expunged.update(uids)

    def flags_with_recent(self, uid: int, flags: Iterable[str]) -> frozenset[str]:
        """The FLAGS a client sees: stored flags plus this session's \\Recent."""
        if uid in self.recent:
            return frozenset(flags) | {RECENT}
        return frozenset(flags)

    def vanishes(self) -> bool:
        """Whether expunges are told as VANISHED (RFC 7162 3.2.10.2)."""
        return self.qresync and not self.nomodseq

    def settle_modseq(self) -> None:
        """Nothing is queued: everything the mailbox's listeners heard has
        been told, so the client may hold the mailbox's announced MODSEQ."""
        if not self.has_pending():
            self.modseq = max(self.modseq, self.mailbox.announced_modseq)

    def _expunge_lines(self) -> list[bytes]:
        """EXPUNGE responses (or one VANISHED) for the queued expunges of
        messages the client was told about, applied to the view."""
        expunged = self._expunged
        shown = [uid for uid in sorted(expunged) if self.map.seq(uid) is not None]
        seqs = self.map.remove(shown)
        for uid in expunged:
            self._flags.pop(uid, None)
        self.recent -= expunged
        self._expunged = set()
        if not seqs:
            return []
        if self.vanishes():
            # Only UIDs the client was told about (RFC 7162 3.2.10.2).
            return [b"* VANISHED %s\r\n" % ranges_text(runs(shown))]
        return [b"* %d EXPUNGE\r\n" % seq for seq in seqs]

    def flush(self, expunges_allowed: bool) -> defer.Deferred[list[bytes]]:
        """The untagged responses for queued changes, applying them to the view.

        Expunges are held back unless ``expunges_allowed``; then the EXISTS
        count still includes them, so sequence numbers stay valid.
        """
        out: list[bytes] = []
        # Everything heard up to here is told below, unless expunges wait.
        heard = self.mailbox.announced_modseq
        if expunges_allowed and self._expunged:
            added = set(self._added)
            # Never announced: just forget them.
            unseen = self._expunged & added
            if unseen:
                self._added = [uid for uid in self._added if uid not in unseen]
            if self.watcher is not None:
                # RFC 5267 4.3.4: REMOVEFROM while the numbers still hold.
                out.extend(self.watcher.expunging(self._expunged))
            out.extend(self._expunge_lines())
        if self._expunged:
            if self.condstore and not self.nomodseq:
                # RFC 7162 3.2: MODSEQs this command shows may be above a
                # held-back expunge's; the client must not go past it.
                out.append(b"* OK [HIGHESTMODSEQ %d] Expunges pending\r\n" % self.modseq)
        else:
            self.modseq = max(self.modseq, heard)
        last = self.map.last_uid
        new = sorted({uid for uid in self._added if uid > last})
        self._added = []
        if new:
            # A new message already expunged (held back) still joins the view
            # and is announced as expunged later: the count stays what the
            # client knows.
            self.map.extend(new)
        elif not self._flags:
            return self._watched(defer.succeed(out), ())
        # What arrives while storage answers waits for the next flush.
        updates, self._flags = self._flags, {}
        # RFC 3501 7.2.6: a FLAGS response names new keywords before any
        # FETCH shows them (new messages may have brought some, too).
        d = self.announce_keywords(self.unannounced(flags for flags, _ in updates.values()))
        d.addCallback(lambda lines: out.append(lines) if lines else None)
        if new and not self.readonly and not self.rev2:
            d.addCallback(
                lambda _: defer.maybeDeferred(self.mailbox.claim_recent).addErrback(
                    self._claim_failed
                )
            )
        else:
            d.addCallback(lambda _: frozenset())
        d.addCallback(lambda claimed: self._announce(out, bool(new), frozenset(claimed), updates))
        return self._watched(cast("defer.Deferred[list[bytes]]", d), (*new, *updates))

    def _watched(
        self, d: defer.Deferred[list[bytes]], touched: Iterable[int]
    ) -> defer.Deferred[list[bytes]]:
        """``d``'s responses, then the watcher's for the messages touched
        (RFC 5267 4.3.3: ADDTO after the EXISTS that numbers them)."""
        reported, self._reported = self._reported, set()
        watcher = self.watcher
        if watcher is None:
            return d
        uids = sorted({*touched, *reported} - self._expunged)
        if not uids:
            return d

        def more(lines: list[bytes]) -> defer.Deferred[list[bytes]]:
            return watcher.changed(uids).addCallback(lambda extra: lines + extra)

        return d.addCallback(more)

    @staticmethod
    def _claim_failed(failure: Failure) -> frozenset[int]:
        """The store cannot hand out \\Recent just now (a database
        restarting): announce the new messages anyway, as not \\Recent here
        (RFC 3501 2.3.2 lets another session have them), rather than lose
        the EXISTS and fail a command that succeeded."""
        failure.trap(TemporaryFailure)  # a mailbox that is gone must still end the session
        _log.warn("cannot claim \\Recent messages: {e}", e=failure.value)
        return frozenset()

    def _announce(
        self,
        out: list[bytes],
        added: bool,
        claimed: frozenset[int],
        updates: dict[int, tuple[frozenset[str], int]],
    ) -> list[bytes]:
        if added:
            self.recent.update(claimed)
            out.append(b"* %d EXISTS\r\n" % len(self.map))
            if not self.rev2:
                out.append(b"* %d RECENT\r\n" % len(self.recent))
        changed = []
        for uid, (flags, modseq) in updates.items():
            if uid in self._expunged:
                continue  # its EXPUNGE is coming; the flags no longer matter
            seq = self.map.seq(uid)
            if seq is not None:
                changed.append((seq, uid, flags, modseq))
        changed.sort()
        modseqs = self.condstore and not self.nomodseq
        for seq, uid, flags, modseq in changed:
            shown = response.flag_list(self.flags_with_recent(uid, flags))
            if modseqs:
                # RFC 7162 3.2.4: with UID and MODSEQ once CONDSTORE is on.
                out.append(
                    b"* %d FETCH (UID %d MODSEQ (%d) FLAGS %s)\r\n" % (seq, uid, modseq, shown)
                )
            elif self.rev2:
                # RFC 9051 7.5.2: an unsolicited FETCH always includes UID.
                out.append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, uid, shown))
            else:
                out.append(b"* %d FETCH (FLAGS %s)\r\n" % (seq, shown))
        return out

    def close(self) -> None:
        """Stop listening and drop the queue (CLOSE, UNSELECT, logout)."""
        self.on_change = None
        self.watcher = None
        self._reported = set()
        self.mailbox.remove_listener(self)
        self._added = []
        self._expunged = set()
        self._flags = {}
