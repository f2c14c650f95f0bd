"""``FETCH 1:* (FLAGS)`` and the other index-only FETCHes from columns.

The rows path (:mod:`mailsrv.imap.fetch_rows`) still made a tuple per
message in storage and a line per message in Python; on 100,000 messages
that was four times Dovecot's CPU for ``FETCH 1:* (FLAGS)``.  When the
mailbox gives a run of UIDs as columns
(:class:`~mailsrv.interfaces.IMessageColumns`), a batch is one storage call
per run of the session's view (consecutive sequence numbers with
consecutive UIDs), and the run's responses are laid out from the columns by
slice assignments and joined a few at a time: the per-message work is in
C, the Python work is per distinct value (a flag set, a day).

Whatever the columns cannot answer goes through rows in the same batch, in
its place: a short run (a sparse message set), or a run some UID of which
no longer exists (expunged by another session: left out, and counted, as
the general path does).  The bytes are the general path's
(``tests/test_imap_fetch_columns.py`` holds them to it).
"""

from __future__ import annotations

import datetime
from collections.abc import Generator, Iterable, Sequence
from itertools import chain, cycle, islice, repeat
from operator import add, floordiv, mod
from typing import Any

import attrs
from twisted.internet import defer, task

from mailsrv.imap.fetch_items import FetchRequest, flags_item
from mailsrv.imap.fetch_rows import Batches, internal_date_item
from mailsrv.imap.output import LINES_PER_WRITE
from mailsrv.imap.pacing import Pacer
from mailsrv.interfaces import (
    RECENT,
    IMessageColumns,
    IMessageRows,
    MessageColumns,
    MessageRow,
)

__all__ = ["LARGEST", "MIN_RUN", "answer", "covers", "decimals"]

#: The most messages one batch reads: a batch of FLAGS this size costs
#: about the pacer's target (:data:`mailsrv.imap.pacing.TARGET`), which
#: sizes the batches below it, and each batch has a fixed cost (a reactor
#: turn, a query) worth spreading.
LARGEST = 10_000
#: Runs shorter than this are read as rows (one query for the batch's
#: short runs together, rather than one per run).
MIN_RUN = 16

#: Columns each item needs.
_COLUMNS = {
    "FLAGS": "flags",
    "INTERNALDATE": "dates",
    "RFC822.SIZE": "sizes",
    "MODSEQ": "modseqs",
    "UID": None,
}
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
_EPOCH = datetime.date(1970, 1, 1)
#: ``hh:mm:`` of each minute of a day and ``ss`` of each second.
_MINUTES = [f"{minute // 60:02d}:{minute % 60:02d}:" for minute in range(1440)]
_SECONDS = [f"{second:02d}" for second in range(60)]
#: The last two digits of a number of three digits or more.
_HUNDRED = [f"{n:02d}" for n in range(100)]


def decimals(start: int, count: int, prefix: str = "") -> list[str]:
    """``prefix`` and the decimal text of each of ``count`` numbers from
    ``start``, made in C: the numbers of a hundred share their leading
    digits, converted once, and take their last two from a table (``str``
    of each number was most of what formatting ``* n FETCH (FLAGS (\\Seen))``
    cost)."""
    end = start + count
    out = [prefix + str(n) for n in range(start, min(end, 100))]
    start = max(start, 100)
    if start >= end:
        return out
    low = start // 100
    leading = map(prefix.__add__, map(str, range(low, (end - 1) // 100 + 1)))
    numbers = map(add, chain.from_iterable(map(repeat, leading, repeat(100))), cycle(_HUNDRED))
    skip = start - low * 100
    out.extend(islice(numbers, skip, skip + end - start))
    return out


def covers(request: FetchRequest) -> bool:
    """Whether this path answers the FETCH: items from the index only."""
    return IMessageColumns.providedBy(request.mailbox) and all(
        a.name in _COLUMNS for a in request.attributes
    )


class _Part:
    """A piece of a batch, in sequence order: a run read as columns, or the
    rows of messages (``seq_of``: their ``{uid: seq}``)."""

    __slots__ = ("columns", "rows", "seq", "seq_of")

    def __init__(
        self,
        seq: int = 0,
        columns: MessageColumns | None = None,
        seq_of: dict[int, int] | None = None,
        rows: Sequence[MessageRow] = (),
    ) -> None:
        self.seq = seq
        self.columns = columns
        self.seq_of = seq_of
        self.rows = rows


def answer(
    request: FetchRequest, messages: Iterable[tuple[int, int]]
) -> Generator[defer.Deferred[Any], Any, int]:
    """Answer ``(seq, uid)`` pairs (see :func:`covers`); return how many were
    found expunged (left out).

    A generator for ``inlineCallbacks`` (``yield from`` it in one): it
    yields only what must be waited for (a storage that answers later, a
    client that does not read, the turn other sessions get between
    batches), so a FETCH of a few messages from the Maildir runs through
    without a Deferred of its own."""
    names = frozenset(n for a in request.attributes if (n := _COLUMNS[a.name]) is not None)
    renderer = _Renderer(request)
    batches = Batches(messages)
    pacer = Pacer(LARGEST, request.budget)
    missing = 0
    first = True
    while True:
        if not first and batches.more():
            # A long FETCH gives other sessions a turn between batches.
            yield task.deferLater(request.clock, 0, lambda: None)
        first = False
        if request.budget is not None:
            # Between batches only: every response written is whole.
            request.budget.check()
        segments = batches.take_segments(pacer.next_size())
        if not segments or request.writer.closed:
            pacer.done(0)
            return missing
        parts: list[_Part] = yield from _read(request, segments, names)
        count = sum(count for _, _, count in segments)
        missing += count - sum(_size(part) for part in parts)
        if "flags" in names:
            telling = request.tell_keywords(_flag_sets(parts))
            if telling is not None:
                yield telling
        pieces = [piece for part in parts for piece in renderer.render(part)]
        pacer.done(count)  # the wait for the client is not this command's cost
        if not (yield from _write(request, pieces)):
            return missing


def _size(part: _Part) -> int:
    return part.columns.count if part.columns is not None else len(part.rows)


def _read(
    request: FetchRequest, segments: list[tuple[int, int, int]], names: frozenset[str]
) -> Generator[defer.Deferred[Any], Any, list[_Part]]:
    """The batch's parts: each long run as columns, the rest as rows (a
    generator for ``yield from``: it yields only a storage's Deferred)."""
    source: Any = request.mailbox
    parts: list[_Part] = []
    rest: dict[int, int] = {}  # {uid: seq} not read yet, to read as rows
    for seq, uid, count in segments:
        columns: MessageColumns | None = None
        if count >= MIN_RUN:
            columns = source.message_columns(uid, uid + count - 1, names)
            if isinstance(columns, defer.Deferred):
                columns = yield columns
        if columns is None:
            rest.update(zip(range(uid, uid + count), range(seq, seq + count), strict=True))
            continue
        if rest:
            parts.append((yield from _rows_part(source, rest)))
            rest = {}
        parts.append(_Part(seq, columns))
    if rest:
        parts.append((yield from _rows_part(source, rest)))
    return parts


def _rows_part(source: Any, seq_of: dict[int, int]) -> Generator[defer.Deferred[Any], Any, _Part]:
    rows = IMessageRows(source).message_rows(list(seq_of))
    if isinstance(rows, defer.Deferred):
        rows = yield rows
    return _Part(seq_of=seq_of, rows=rows)


def _flag_sets(parts: list[_Part]) -> set[frozenset[str]]:
    """The distinct flag sets the parts' responses show."""
    flag_sets: set[frozenset[str]] = set()
    for part in parts:
        if part.columns is not None:
            flag_sets.update(part.columns.flag_sets.values())
        else:
            flag_sets.update(row[1] for row in part.rows)
    return flag_sets


def _write(
    request: FetchRequest, pieces: list[bytes]
) -> Generator[defer.Deferred[None], None, bool]:
    """Write the pieces, waiting while the client does not read (so a
    client that stops leaves a backlog of one piece at most past the
    transport's buffer); False once the connection is gone."""
    writer = request.writer
    for piece in pieces:
        writer.write(piece)
        if writer.paused:
            yield writer.ready()
        if writer.closed:
            return False
    return True


@attrs.frozen
class _Facts:
    """A part's values, one iterable per fact, in sequence order."""

    count: int
    #: Sequence numbers and UIDs as decimal text.
    seqs: Sequence[str]
    uids: Sequence[str]
    flags: Sequence[str]
    dates: Sequence[int]
    zones: Sequence[int] | None
    sizes: Sequence[int]
    modseqs: Sequence[int]


class _Renderer:
    """The responses of one FETCH's parts.  A response is a fixed list of
    slots made from the items asked, in their order (fixed texts, and one
    text per message from a column); a whole part is laid out at once.
    Texts made per distinct value (flag sets, days) are kept for the whole
    FETCH."""

    def __init__(self, request: FetchRequest) -> None:
        self._attributes = [a.name for a in request.attributes]
        self._recent = request.view.recent
        self._flag_texts: dict[frozenset[str], str] = {}
        self._days: dict[int, str] = {}
        #: internal_date_item's per-day cache, for dates with a zone.
        self._zoned_days: dict[tuple[int, int], tuple[bytes, bytes]] = {}

    def render(self, part: _Part) -> list[bytes]:
        """The part's responses, in pieces of a few lines (the writes)."""
        facts = self._facts(part) if part.columns is None else self._column_facts(part)
        count = facts.count
        if not count:
            return []
        # Each response is the same sequence of slots: fixed texts between
        # texts of the message (``* 12``, ``FLAGS (\\Seen)``, ...).
        slots: list[str | Sequence[str]] = [facts.seqs, " FETCH ("]
        for position, name in enumerate(self._attributes):
            if position:
                slots.append(" ")
            if name == "FLAGS":
                slots.append(facts.flags)
            elif name == "UID":
                slots += ["UID ", facts.uids]
            elif name == "RFC822.SIZE":
                slots += ["RFC822.SIZE ", list(map(str, facts.sizes))]
            elif name == "MODSEQ":
                slots += ["MODSEQ (", list(map(str, facts.modseqs)), ")"]
            else:
                slots += self._dates(facts.dates, facts.zones)
        slots.append(")\r\n")
        slots = _merged(slots)
        # Laid out in one list, slot after slot, by slice assignments (C).
        width = len(slots)
        texts: list[str] = [""] * (width * count)
        for position, slot in enumerate(slots):
            texts[position::width] = [slot] * count if isinstance(slot, str) else slot
        step = width * LINES_PER_WRITE
        # Latin-1: every byte of a flag text comes through as is.
        return [
            "".join(texts[start : start + step]).encode("latin-1")
            for start in range(0, len(texts), step)
        ]

    def _column_facts(self, part: _Part) -> _Facts:
        columns = part.columns
        assert columns is not None
        first, count = columns.first, columns.count
        return _Facts(
            count=count,
            seqs=decimals(part.seq, count, "* "),
            uids=decimals(first, count) if "UID" in self._attributes else (),
            flags=self._column_flags(columns) if "FLAGS" in self._attributes else [],
            dates=columns.dates,
            zones=columns.zones,
            sizes=columns.sizes,
            modseqs=columns.modseqs,
        )

    def _facts(self, part: _Part) -> _Facts:
        rows, seq_of, recent = part.rows, part.seq_of, self._recent
        assert seq_of is not None
        uids = [row[0] for row in rows]
        return _Facts(
            count=len(rows),
            seqs=[f"* {seq_of[uid]}" for uid in uids],
            uids=list(map(str, uids)),
            flags=[
                self._flag_text(row[1] | {RECENT} if row[0] in recent else row[1]) for row in rows
            ],
            dates=[row[2] for row in rows],
            zones=[row[3] for row in rows],
            sizes=[row[4] for row in rows],
            modseqs=[row[5] for row in rows],
        )

    def _flag_text(self, flags: frozenset[str]) -> str:
        text = self._flag_texts.get(flags)
        if text is None:
            text = self._flag_texts[flags] = flags_item(flags).decode("latin-1")
        return text

    def _column_flags(self, columns: MessageColumns) -> list[str]:
        """``FLAGS (...)`` of each message of a run, \\Recent included
        (this session's, RFC 3501 2.3.2)."""
        flag_sets = columns.flag_sets
        texts = {key: self._flag_text(flag_sets[key]) for key in flag_sets}
        keys = columns.flags
        out = list(map(texts.__getitem__, keys))
        recent = self._recent
        if recent:
            first, last = columns.first, columns.first + columns.count - 1
            if len(recent) < columns.count:
                mine: Iterable[int] = [uid for uid in recent if first <= uid <= last]
            else:
                mine = recent.intersection(range(first, last + 1))
            for uid in mine:
                position = uid - first
                out[position] = self._flag_text(flag_sets[keys[position]] | {RECENT})
        return out

    def _dates(
        self, dates: Sequence[int], zones: Sequence[int] | None
    ) -> list[str | Sequence[str]]:
        """INTERNALDATE's slots (RFC 3501 date-time, as
        :func:`mailsrv.imap.syntax.format_date_time` writes it).  In UTC
        (Maildir's case) the day part comes from a dict made per distinct
        day, and the time from tables of minutes and seconds, each looked
        up by ``map``; with zones, a text per message."""
        if zones is not None and any(zones):
            zoned = self._zoned_days
            return [
                [
                    internal_date_item(seconds, minutes, zoned).decode("latin-1")
                    for seconds, minutes in zip(dates, zones, strict=True)
                ]
            ]
        days = list(map(floordiv, dates, repeat(86400)))
        known = self._days
        for day in set(days).difference(known):
            date = _EPOCH + datetime.timedelta(days=day)
            known[day] = f'INTERNALDATE "{date.day:02d}-{_MONTHS[date.month - 1]}-{date.year:04d} '
        times = list(map(mod, dates, repeat(86400)))
        return [
            list(map(known.__getitem__, days)),
            list(map(_MINUTES.__getitem__, map(floordiv, times, repeat(60)))),
            list(map(_SECONDS.__getitem__, map(mod, times, repeat(60)))),
            ' +0000"',
        ]


def _merged(slots: list[str | Sequence[str]]) -> list[str | Sequence[str]]:
    """Adjacent fixed texts as one."""
    out: list[str | Sequence[str]] = []
    for slot in slots:
        if isinstance(slot, str) and out and isinstance(out[-1], str):
            out[-1] += slot
        else:
            out.append(slot)
    return out
