"""What a session that did not enable UTF8=ACCEPT reads: synthetic messages.

RFC 6855 3 forbids sending UTF-8 to such a session, and 7 has a server that
serves it anyway use RFC 6857's or RFC 6858's downgrade.  mailsrv uses RFC
6858's (:mod:`mailsrv.mime.downgrade`): a message whose header holds 8-bit
octets is shown as a synthetic message with its header written in ASCII,
and *everything* FETCH says of the message is said of that synthetic
message, so the client sees one consistent message: ENVELOPE, BODY,
BODYSTRUCTURE, every ``BODY[section]`` and ``BINARY[...]``, ``RFC822*``,
and the sizes (``RFC822.SIZE``, the octets of ``BODY[]``, partial
offsets) are those of the octets it is actually sent (RFC 3501 2.3.4).

The hook is one object: FETCH reads through a :class:`DowngradedMailbox`
instead of the selected mailbox (:func:`fetch_mailbox`).  It gives the
synthetic file from ``open``, the synthetic size from ``fetch`` and
``store``, and keeps what FETCH caches of a synthetic message under kinds
of its own (``downgraded1:`` and the kind), so an answer worked out for an
enabled session (raw UTF-8) is never served to this one, nor the other way
round; whatever reads the cache or the files for FETCH (the batched loads
of :mod:`mailsrv.imap.content`, a fast path) sees the synthetic message as
long as it reads through ``request.mailbox``.  Whether a message needs it,
and its synthetic size, are kept in the cache too (kind ``downgrade1``), so
a warm ``FETCH 1:* (RFC822.SIZE)`` opens no file.

SEARCH, SORT and THREAD read the stored message (they match decoded text,
so a search finds the same messages in both kinds of session); EMAILID and
THREADID are those of the stored message.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import IO, Any, cast

import attrs
from twisted.internet import defer
from zope.interface import alsoProvides

from mailsrv.imap import content
from mailsrv.imap.fetch_syntax import FetchAttribute
from mailsrv.interfaces import (
    IMailbox,
    IMessage,
    IMessageCache,
    IMessageColumns,
    IMessageRows,
    MaybeDeferred,
    MessageColumns,
    MessageInfo,
    MessageRow,
    StoreResult,
    maybe_deferred,
)
from mailsrv.mime.downgrade import serve

__all__ = ["SIZE_KIND", "SYNTHETIC_PREFIX", "DowngradedMailbox", "fetch_mailbox"]

#: Cache kind: ``=`` for a message served as stored, else the decimal size
#: of its synthetic message.  The digit is the downgrade's version: bump it
#: (and :data:`SYNTHETIC_PREFIX`) whenever the synthetic header changes.
SIZE_KIND = "downgrade1"
#: Prefix of the cache kinds of values worked out from synthetic messages.
SYNTHETIC_PREFIX = "downgraded1:"

#: FETCH items that show nothing of a message's header: a FETCH of only
#: these needs no synthetic message (PREVIEW is body text, the same in both).
_NEUTRAL = frozenset(
    {"FLAGS", "UID", "INTERNALDATE", "MODSEQ", "SAVEDATE", "EMAILID", "THREADID", "PREVIEW"}
)


def fetch_mailbox(mailbox: IMailbox, utf8: bool, attributes: Sequence[FetchAttribute]) -> IMailbox:
    """The mailbox a FETCH reads through: ``mailbox`` itself for a session
    that enabled UTF8=ACCEPT (or a FETCH of flags and the like), else its
    downgraded view."""
    if utf8 or all(a.name in _NEUTRAL for a in attributes):
        return mailbox
    return cast(IMailbox, DowngradedMailbox(mailbox, any(map(_needs_size, attributes))))


def _needs_size(attribute: FetchAttribute) -> bool:
    """Whether an item's answer depends on the message's size (which
    storage gives as the stored one): RFC822.SIZE, and the whole message
    (BODY[], RFC822, BINARY[] and BINARY.SIZE[])."""
    if attribute.name in ("RFC822.SIZE", "RFC822"):
        return True
    section = attribute.section
    return (
        attribute.name in ("BODY", "BINARY", "BINARY.SIZE")
        and section is not None
        and not section.part
        and section.text is None
    )


def _synthetic_size(source: IO[bytes]) -> int | None:
    served = serve(source)
    size = None if served.delta is None else served.file.size
    served.file.give_back()  # the caller closes it
    return size


def _marker(size: int | None) -> bytes:
    return b"=" if size is None else b"%d" % size


#: What :func:`_unmarked` gives for a cached value it does not understand.
_NOT_UNDERSTOOD = -1


def _unmarked(value: bytes) -> int | None:
    """The size :func:`_marker` cached: None (served as stored), a size, or
    :data:`_NOT_UNDERSTOOD` (the message is measured again)."""
    if value == b"=":
        return None
    return int(value) if value.isdigit() else _NOT_UNDERSTOOD


def _resized(message: IMessage, size: int | None) -> IMessage:
    if size is None:
        return message
    return MessageInfo(
        uid=message.uid,
        flags=message.flags,
        internal_date=message.internal_date,
        size=size,
        modseq=message.modseq,
        save_date=message.save_date,
    )


class DowngradedMailbox:
    """A mailbox as a session without UTF8=ACCEPT reads it (one FETCH's
    worth: what it learns of sizes is kept for its life).  Everything but
    the message octets, their sizes and the cache is the mailbox's own."""

    def __init__(self, mailbox: IMailbox, sizes: bool = True) -> None:
        self._mailbox = mailbox
        #: Whether fetch() and store() give synthetic sizes (which may take
        #: a look at files): only when an item of the FETCH needs them.
        self._resizing = sizes
        self._cache: Any = IMessageCache(mailbox, None)
        #: uid -> synthetic size, None for a message served as stored.
        self._sizes: dict[int, int | None] = {}
        #: What open() learnt of that, for the cache with the next values.
        self._learnt: dict[int, bytes] = {}
        alsoProvides(self, IMailbox)
        if self._cache is not None:
            alsoProvides(self, IMessageCache)
        if IMessageRows.providedBy(mailbox):
            # FETCH's rows path (fetch_rows.py) then serves this session
            # too: its rows carry the synthetic sizes, and its header values
            # come through this object's cache and files.
            alsoProvides(self, IMessageRows)
        if IMessageColumns.providedBy(mailbox):
            alsoProvides(self, IMessageColumns)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mailbox, name)

    @defer.inlineCallbacks
    def synthetic_sizes(
        self, uids: Iterable[int], read: bool = True
    ) -> Generator[defer.Deferred[Any], Any, dict[int, int | None]]:
        """``{uid: synthetic size or None}`` for the messages that exist,
        from what is known, the cache, and (``read``) the files; without
        ``read``, messages not known yet are left out."""
        wanted = list(uids)
        unknown = [uid for uid in wanted if uid not in self._sizes]
        if unknown:
            cached: Mapping[int, bytes] = yield content.get_many(self._cache, unknown, SIZE_KIND)
            for uid, value in cached.items():
                size = _unmarked(value)
                if size != _NOT_UNDERSTOOD:
                    self._sizes[uid] = size
            missing = [uid for uid in unknown if uid not in self._sizes]
            if read and missing:
                found: dict[int, int | None] = yield content.each_file(
                    self._mailbox, missing, lambda uid, source: _synthetic_size(source)
                )
                self._sizes.update(found)
                values = {uid: _marker(size) for uid, size in found.items()}
                yield content.set_many(self._cache, SIZE_KIND, values)
        return {uid: self._sizes[uid] for uid in wanted if uid in self._sizes}

    # -- what FETCH reads ------------------------------------------------------------------

    def fetch(self, uids: Iterable[int]) -> defer.Deferred[Sequence[IMessage]]:
        """The messages' metadata, with the synthetic sizes."""
        d = maybe_deferred(self._mailbox.fetch, list(uids))
        if not self._resizing:
            return d
        return d.addCallback(self._resize)

    def message_rows(self, uids: Iterable[int]) -> defer.Deferred[Sequence[MessageRow]]:
        """:class:`IMessageRows` rows with the synthetic sizes."""
        d = maybe_deferred(IMessageRows(self._mailbox).message_rows, list(uids))
        if not self._resizing:
            return d

        def resize(rows: Sequence[MessageRow]) -> defer.Deferred[Sequence[MessageRow]]:
            def apply(sizes: dict[int, int | None]) -> Sequence[MessageRow]:
                out: list[MessageRow] = []
                for row in rows:
                    size = sizes.get(row[0])
                    out.append(row if size is None else (*row[:4], size, row[5]))
                return out

            found: defer.Deferred[dict[int, int | None]] = self.synthetic_sizes(r[0] for r in rows)
            return found.addCallback(apply)

        return d.addCallback(resize)

    def message_columns(
        self, first: int, last: int, names: frozenset[str]
    ) -> defer.Deferred[MessageColumns | None]:
        """:class:`IMessageColumns` with the synthetic sizes."""
        source = IMessageColumns(self._mailbox)
        d = maybe_deferred(source.message_columns, first, last, names)
        if not self._resizing or "sizes" not in names:
            return d

        def resize(columns: MessageColumns | None) -> Any:
            if columns is None:
                return None

            def apply(synthetic: dict[int, int]) -> MessageColumns:
                if not synthetic:
                    return columns
                resized = list(columns.sizes)
                for uid, size in synthetic.items():
                    resized[uid - first] = size
                return attrs.evolve(columns, sizes=resized)

            return self._synthetic_only(range(first, last + 1)).addCallback(apply)

        return d.addCallback(resize)

    @defer.inlineCallbacks
    def _synthetic_only(self, uids: range) -> Generator[defer.Deferred[Any], Any, dict[int, int]]:
        """The synthetic sizes among a run's messages (those served as stored
        left out): one cache read and one pass over it when the cache knows
        them all, the usual case of an index-only FETCH over a whole
        mailbox; :meth:`synthetic_sizes` for the others."""
        cached: Mapping[int, bytes] = yield content.get_many(self._cache, list(uids), SIZE_KIND)
        synthetic = {
            uid: size for uid, value in cached.items() if (size := _unmarked(value)) is not None
        }
        unknown = [uid for uid, size in synthetic.items() if size == _NOT_UNDERSTOOD]
        if len(cached) < len(uids):
            unknown += [uid for uid in uids if uid not in cached]
        if unknown:
            found: dict[int, int | None] = yield self.synthetic_sizes(unknown)
            for uid, size in found.items():
                if size is None:
                    synthetic.pop(uid, None)
                else:
                    synthetic[uid] = size
        return synthetic

    def uid_runs(self) -> MaybeDeferred[Sequence[tuple[int, int]]]:
        return IMessageRows(self._mailbox).uid_runs()

    def store(self, *args: Any, **kwargs: Any) -> defer.Deferred[StoreResult]:
        """A flag change (FETCH setting \\Seen), its new metadata resized."""

        def resized(result: StoreResult) -> defer.Deferred[StoreResult]:
            def build(updated: Sequence[IMessage]) -> StoreResult:
                return StoreResult(tuple(updated), result.conflicts)

            return self._resize(result.updated).addCallback(build)

        d = maybe_deferred(self._mailbox.store, *args, **kwargs)
        return d.addCallback(resized) if self._resizing else d

    def _resize(self, found: Sequence[IMessage]) -> defer.Deferred[Sequence[IMessage]]:
        def apply(sizes: dict[int, int | None]) -> Sequence[IMessage]:
            return [_resized(m, sizes.get(m.uid)) for m in found]

        d: defer.Deferred[dict[int, int | None]] = self.synthetic_sizes(m.uid for m in found)
        return d.addCallback(apply)

    def open(self, uid: int) -> defer.Deferred[IO[bytes]]:
        """The message's file, or its synthetic message over it."""

        def wrap(source: IO[bytes]) -> IO[bytes]:
            served = serve(source)
            size = None if served.delta is None else served.file.size
            if uid not in self._sizes:
                self._learnt[uid] = _marker(size)
            self._sizes[uid] = size
            if size is None:
                return served.file.give_back()  # as stored: read it directly
            return cast(IO[bytes], served.file)

        return maybe_deferred(self._mailbox.open, uid).addCallback(wrap)

    # -- IMessageCache: synthetic messages' values apart -----------------------------------

    def get_cached_many(
        self, uids: Iterable[int], kind: str
    ) -> defer.Deferred[Mapping[int, bytes]]:
        wanted = list(uids)

        @defer.inlineCallbacks
        def split(
            sizes: dict[int, int | None],
        ) -> Generator[defer.Deferred[Any], Any, Mapping[int, bytes]]:
            out: dict[int, bytes] = {}
            plain = [uid for uid in wanted if uid in sizes and sizes[uid] is None]
            synthetic = [uid for uid in wanted if sizes.get(uid) is not None]
            if plain:
                out.update((yield content.get_many(self._cache, plain, kind)))
            if synthetic:
                apart = SYNTHETIC_PREFIX + kind
                out.update((yield content.get_many(self._cache, synthetic, apart)))
            return out

        # Messages not known yet are a miss: the caller works the value out
        # through open(), which finds out which they are; no file is read
        # here only to find that out.
        d: defer.Deferred[dict[int, int | None]] = self.synthetic_sizes(wanted, read=False)
        return d.addCallback(split)

    @defer.inlineCallbacks
    def set_cached_many(
        self, kind: str, values: Mapping[int, bytes]
    ) -> Generator[defer.Deferred[Any], Any, None]:
        # Only messages whose kind is known by now (every value was worked
        # out from a file this view opened) are cached; others are skipped.
        learnt, self._learnt = self._learnt, {}
        yield content.set_many(self._cache, SIZE_KIND, learnt)
        plain = {u: v for u, v in values.items() if u in self._sizes and self._sizes[u] is None}
        synthetic = {u: v for u, v in values.items() if self._sizes.get(u) is not None}
        yield content.set_many(self._cache, kind, plain)
        yield content.set_many(self._cache, SYNTHETIC_PREFIX + kind, synthetic)

    def get_cached(self, uid: int, kind: str) -> MaybeDeferred[bytes | None]:
        return self.get_cached_many([uid], kind).addCallback(lambda found: found.get(uid))

    def set_cached(self, uid: int, kind: str, value: bytes) -> MaybeDeferred[None]:
        return self.set_cached_many(kind, {uid: value})
