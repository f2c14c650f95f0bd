"""The first-sync FETCH: index items and cached header fields from rows.

A client's first sync asks every message of a mailbox for the same few
things: ``FETCH 1:* (FLAGS)``, ``UID FETCH 1:* (UID FLAGS RFC822.SIZE
INTERNALDATE)``, ``FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT
DATE)])``.  When the storage gives its metadata as tuples
(:class:`~mailsrv.interfaces.IMessageRows`), such a FETCH is answered here
without any object per message: per batch, one call for the rows, one cache
read per header-field item (:func:`mailsrv.imap.content.header_fields`,
which works out and caches what is missing), and the responses joined into
a few writes.  Each item's text is made per distinct value where values
repeat (flag sets, days of INTERNALDATE), so most of a response is a dict
lookup.

The bytes are those the general path (:mod:`mailsrv.imap.fetching`) writes;
anything this path does not cover goes there: other items, a header item
that sets ``\\Seen`` or asks for a partial range, a storage without rows,
and each message whose header values carry 8-bit octets (which a session
without UTF8=ACCEPT may need converted: that belongs to the general path).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, cast

from twisted.internet import defer, task

from mailsrv.imap import content
from mailsrv.imap.fetch_items import FetchRequest, flags_item, is_root_fields
from mailsrv.imap.fetch_syntax import FetchAttribute
from mailsrv.imap.output import write_lines
from mailsrv.imap.pacing import Pacer
from mailsrv.imap.uidmap import MessageSet
from mailsrv.interfaces import RECENT, IMessageRows, MessageRow

__all__ = ["LARGEST", "Batches", "covers", "fetch_rows", "internal_date_item"]

#: The most messages one batch reads (the pacer keeps a batch near 10 ms).
LARGEST = 2000

_INDEX_NAMES = frozenset({"FLAGS", "UID", "RFC822.SIZE", "INTERNALDATE", "MODSEQ"})
_MONTHS = b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_EPOCH = datetime.date(1970, 1, 1)

#: The general path, for what this one leaves to it.
General = Callable[[FetchRequest, Iterable[tuple[int, int]]], "defer.Deferred[Any]"]
_Render = Callable[[MessageRow], bytes]


def _fast_header(attribute: FetchAttribute, readonly: bool) -> bool:
    """A whole message's HEADER.FIELDS(.NOT) that leaves \\Seen alone
    (RFC 3501 6.4.5: only the .PEEK form, or a read-only view) and has no
    partial range."""
    return is_root_fields(attribute) and attribute.partial is None and (attribute.peek or readonly)


def covers(request: FetchRequest) -> bool:
    """Whether this path answers the whole FETCH."""
    if not IMessageRows.providedBy(request.mailbox):
        return False
    readonly = request.view.readonly
    return all(a.name in _INDEX_NAMES or _fast_header(a, readonly) for a in request.attributes)


def internal_date_item(
    seconds: int, minutes: int, days: dict[tuple[int, int], tuple[bytes, bytes]]
) -> bytes:
    """``INTERNALDATE "dd-Mon-yyyy hh:mm:ss +zzzz"`` (RFC 3501 date-time,
    as :func:`mailsrv.imap.syntax.format_date_time` writes it) of a time in
    UTC seconds shown in a zone ``minutes`` east of UTC.  ``days`` keeps
    the date and zone parts per day, so a batch formats each day once."""
    day, rest = divmod(seconds + minutes * 60, 86400)
    parts = days.get((day, minutes))
    if parts is None:
        date = _EPOCH + datetime.timedelta(days=day)
        sign = b"-" if minutes < 0 else b"+"
        zone = abs(minutes)
        parts = days[(day, minutes)] = (
            b'INTERNALDATE "%02d-%s-%04d ' % (date.day, _MONTHS[date.month - 1], date.year),
            b' %s%02d%02d"' % (sign, zone // 60, zone % 60),
        )
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    return b"%s%02d:%02d:%02d%s" % (parts[0], hour, minute, second, parts[1])


def _renderers(request: FetchRequest, headers: dict[int, Mapping[int, bytes]]) -> list[_Render]:
    """One function per item, in the order asked, each making the item's text
    from a row (header values from ``headers``, filled per batch)."""
    view = request.view
    renderers: list[_Render] = []
    for position, attribute in enumerate(request.attributes):
        name = attribute.name
        if name == "FLAGS":
            renderers.append(_flags_renderer(view.recent))
        elif name == "UID":
            renderers.append(lambda row: b"UID %d" % row[0])
        elif name == "RFC822.SIZE":
            renderers.append(lambda row: b"RFC822.SIZE %d" % row[4])
        elif name == "MODSEQ":
            renderers.append(lambda row: b"MODSEQ (%d)" % row[5])
        elif name == "INTERNALDATE":
            renderers.append(_date_renderer())
        else:
            renderers.append(_header_renderer(attribute, headers, position))
    return renderers


def _date_renderer() -> _Render:
    """INTERNALDATE, with the parts of each day made once per FETCH."""
    days: dict[tuple[int, int], tuple[bytes, bytes]] = {}

    def render(row: MessageRow) -> bytes:
        return internal_date_item(row[2], row[3], days)

    return render


def _flags_renderer(recent: set[int]) -> _Render:
    """``FLAGS (...)`` with this session's \\Recent, made once per flag set."""
    items: dict[frozenset[str], bytes] = {}

    def render(row: MessageRow) -> bytes:
        flags = row[1]
        if recent and row[0] in recent:
            flags = flags | {RECENT}
        item = items.get(flags)
        if item is None:
            item = items[flags] = flags_item(flags)
        return item

    return render


def _header_renderer(
    attribute: FetchAttribute, headers: dict[int, Mapping[int, bytes]], position: int
) -> _Render:
    """A header item's text from the values loaded for it (``headers`` by
    the item's position: hashing the attribute per message costs more)."""
    # The response names the section without .PEEK (RFC 3501 7.4.2).
    name = b"BODY[%s] " % str(attribute.section).encode("ascii")

    def render(row: MessageRow) -> bytes:
        value = headers[position][row[0]]
        return b"%s{%d}\r\n%s" % (name, len(value), value)

    return render


@defer.inlineCallbacks
def fetch_rows(
    request: FetchRequest, messages: Iterable[tuple[int, int]], general: General
) -> Generator[defer.Deferred[Any], Any, Any]:
    """Answer ``(seq, uid)`` pairs (see :func:`covers`); fire with how many
    were found expunged (left out, as the general path leaves them)."""
    missing = 0
    headers: dict[int, Mapping[int, bytes]] = {}
    header_items = [
        (position, a) for position, a in enumerate(request.attributes) if a.name not in _INDEX_NAMES
    ]
    needs_rows = len(header_items) < len(request.attributes)
    renderers = _renderers(request, headers)
    batches = Batches(messages)
    pacer = Pacer(LARGEST)
    first = True
    while True:
        if not first and batches.more():
            # A long FETCH gives other sessions a turn between batches.
            yield task.deferLater(request.clock, 0, lambda: None)
        first = False
        seq_of = batches.take(pacer.next_size())
        if not seq_of or request.writer.closed:
            return missing
        rows = yield _rows(request, list(seq_of), needs_rows)
        rows, eight_bit = yield _load_headers(request, header_items, rows, headers)
        missing += len(seq_of) - len(rows)
        more = yield _write_batch(request, rows, seq_of, renderers, eight_bit, general)
        if more is None:
            return missing
        missing += more
        pacer.done(len(seq_of))


@defer.inlineCallbacks
def _rows(
    request: FetchRequest, uids: list[int], needs_rows: bool
) -> Generator[defer.Deferred[Any], Any, Sequence[MessageRow]]:
    """The batch's rows from storage (FLAGS told first if need be), or
    stand-ins carrying the UID when only header items are asked."""
    if not needs_rows:
        # Header items need the UID alone: one-element rows, made in bulk.
        return cast(list[MessageRow], list(zip(uids)))
    source: Any = request.mailbox  # provides IMessageRows (covers())
    rows: Sequence[MessageRow] = yield defer.maybeDeferred(source.message_rows, uids)
    telling = request.tell_keywords(row[1] for row in rows) if request.shows_flags else None
    if telling is not None:
        yield telling
    return rows


@defer.inlineCallbacks
def _load_headers(
    request: FetchRequest,
    header_items: list[tuple[int, FetchAttribute]],
    rows: Sequence[MessageRow],
    headers: dict[int, Mapping[int, bytes]],
) -> Generator[defer.Deferred[Any], Any, tuple[Sequence[MessageRow], set[int]]]:
    """Each header item's values for the batch into ``headers``; the rows
    of the messages still there, and the UIDs with 8-bit values."""
    eight_bit: set[int] = set()
    for position, attribute in header_items:
        assert attribute.section is not None
        values: Mapping[int, bytes] = yield content.header_fields(
            request.mailbox,
            [row[0] for row in rows],
            attribute.section.fields,
            attribute.section.text == "HEADER.FIELDS.NOT",
        )
        headers[position] = values
        if not all(v.isascii() for v in values.values()):
            eight_bit.update(uid for uid, v in values.items() if not v.isascii())
        rows = [row for row in rows if row[0] in values]  # the rest were expunged
    return rows, eight_bit


@defer.inlineCallbacks
def _write_batch(
    request: FetchRequest,
    rows: Sequence[MessageRow],
    seq_of: dict[int, int],
    renderers: list[_Render],
    eight_bit: set[int],
    general: General,
) -> Generator[defer.Deferred[Any], Any, int | None]:
    """Write a batch's responses.  Messages with 8-bit header values are
    answered by the general path, in their place; how many of those were
    gone meanwhile, None once the connection is gone."""
    if not eight_bit and len(renderers) == 1:
        (render,) = renderers  # FETCH 1:* (FLAGS): no join per message
        lines = [b"* %d FETCH (%s)\r\n" % (seq_of[row[0]], render(row)) for row in rows]
    elif not eight_bit:
        lines = [
            b"* %d FETCH (%s)\r\n" % (seq_of[row[0]], b" ".join([r(row) for r in renderers]))
            for row in rows
        ]
    if not eight_bit:
        going_on = yield write_lines(request.writer, lines)
        return 0 if going_on else None
    missing = 0
    pending: list[bytes] = []
    for row in rows:
        uid = row[0]
        if uid not in eight_bit:
            pending.append(
                b"* %d FETCH (%s)\r\n" % (seq_of[uid], b" ".join([r(row) for r in renderers]))
            )
            continue
        going_on = yield write_lines(request.writer, pending)
        pending = []
        if not going_on:
            return None
        outcome = yield general(request, [(seq_of[uid], uid)])
        missing += outcome.missing
    going_on = yield write_lines(request.writer, pending)
    return missing if going_on else None


class Batches:
    """The messages to answer, taken a batch at a time as ``{uid: seq}``;
    a :class:`MessageSet` is walked by segments, so a batch of a whole-mailbox
    FETCH is made with two ranges rather than a pair per message."""

    def __init__(self, messages: Iterable[tuple[int, int]]) -> None:
        segments: Iterable[tuple[int, int, int]]
        if isinstance(messages, MessageSet):
            segments = messages.segments()
        else:
            segments = ((seq, uid, 1) for seq, uid in messages)
        self._segments = iter(segments)
        self._left: tuple[int, int, int] | None = None

    def more(self) -> bool:
        """Whether any message is left to take: a FETCH whose last batch is
        written answers at once, not after a reactor turn spent on nothing."""
        if self._left is None:
            self._left = next(self._segments, None)
        return self._left is not None

    def take(self, size: int) -> dict[int, int]:
        batch: dict[int, int] = {}
        for seq, uid, count in self.take_segments(size):
            batch.update(zip(range(uid, uid + count), range(seq, seq + count), strict=True))
        return batch

    def take_segments(self, size: int) -> list[tuple[int, int, int]]:
        """The next batch of at most ``size`` messages as ``(seq, uid,
        count)`` runs: ``count`` messages of consecutive sequence numbers
        and UIDs."""
        batch: list[tuple[int, int, int]] = []
        taken = 0
        while taken < size:
            segment = self._left or next(self._segments, None)
            self._left = None
            if segment is None:
                break
            seq, uid, count = segment
            room = size - taken
            if count > room:
                self._left = (seq + room, uid + room, count - room)
                count = room
            batch.append((seq, uid, count))
            taken += count
        return batch
