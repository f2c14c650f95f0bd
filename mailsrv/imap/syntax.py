"""Argument syntax shared by several IMAP commands.

Sequence sets (with ``*`` and RFC 5182's ``$``), flags and flag lists,
dates and date-times, mailbox names and LIST patterns (modified UTF-7,
RFC 3501 5.1.3), parenthesised atom lists and RFC 4466 parameters: each a
function of a :class:`~mailsrv.imap.lexer.Reader`.  Grammar references are
to RFC 3501 section 9 unless noted.
"""

from __future__ import annotations

import datetime
import re
import unicodedata

import attrs

from mailsrv import mutf7
from mailsrv.imap.lexer import ATOM_CHARS, LIST_CHARS, Reader
from mailsrv.interfaces import canonical_flag

__all__ = [
    "SAVED",
    "STAR",
    "NormalizedName",
    "SequenceSet",
    "UndecodedName",
    "date",
    "date_time",
    "decode_mailbox",
    "flag",
    "flag_list",
    "format_date_time",
    "generic_value",
    "mailbox",
    "parameters",
    "paren_atoms",
    "pattern",
    "sequence_set",
]

#: Stands for ``*`` in a :class:`SequenceSet`: the largest number in use.
STAR = 0


@attrs.frozen
class SequenceSet:
    """A sequence-set: ranges ``(low, high)``; :data:`STAR` stands for ``*``.

    Ranges keep their wire order and orientation (``4:2`` is ``2:4``, RFC
    3501 9); :meth:`resolve` gives the normalised, merged form.
    """

    ranges: tuple[tuple[int, int], ...]
    #: ``$``, the saved search result (RFC 5182); ``ranges`` is then empty
    #: and the selected mailbox view says which messages it names.
    saved: bool = False

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Ascending, non-overlapping inclusive ranges with ``*`` = ``largest``.

        Numbers above ``largest`` are kept: the caller decides whether that is
        an error (sequence numbers) or simply matches nothing (UIDs).
        """
        spans = []
        for low, high in self.ranges:
            low = largest if low == STAR else low
            high = largest if high == STAR else high
            if low > high:
                low, high = high, low
            spans.append((low, high))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for low, high in spans:
            if merged and low <= merged[-1][1] + 1:
                if high > merged[-1][1]:
                    merged[-1] = (merged[-1][0], high)
            else:
                merged.append((low, high))
        return merged

    def __str__(self) -> str:
        if self.saved:
            return "$"

        def one(n: int) -> str:
            return "*" if n == STAR else str(n)

        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


class UndecodedName(str):
    """A mailbox name or LIST pattern that is not valid modified UTF-7, as
    sent (octets above ASCII escaped); ``reason`` says what is wrong.

    Such a name is syntactically valid (any astring is; RFC 3501 5.1.3 asks
    servers to preserve names they do not understand), so it is not a parse
    error: the server answers that no mailbox has it (``NO [NONEXISTENT]``),
    that none can be created with it (``NO [CANNOT]``), and as a LIST
    pattern it matches nothing.
    """

    reason: str
    #: What it should have been: "modified UTF-7", or "UTF-8" in a session
    #: that enabled UTF-8.
    encoding: str

    def __new__(cls, raw: bytes, reason: str, encoding: str = "modified UTF-7") -> UndecodedName:
        name = super().__new__(cls, raw.decode("ascii", "backslashreplace"))
        name.reason = reason
        name.encoding = encoding
        return name


class NormalizedName(str):
    """A mailbox name the client sent in another Unicode form than NFC: the
    NFC form, with ``supplied``, the name as the client wrote it (for RFC
    9051's ``OLDNAME``, 6.3.9.7)."""

    supplied: str

    def __new__(cls, normalized: str, supplied: str) -> NormalizedName:
        name = super().__new__(cls, normalized)
        name.supplied = supplied
        return name


def mailbox(reader: Reader, what: str = "a mailbox name") -> str:
    return decode_mailbox(reader.astring(what), utf8=reader.utf8)


def decode_mailbox(raw: bytes, *, utf8: bool = False) -> str:
    """A mailbox name (or pattern) from the wire, in its one canonical form.

    INBOX in any case is INBOX.  The rest is modified UTF-7 (RFC 3501 5.1,
    5.1.3), or UTF-8 once the session enabled it (``utf8``: RFC 6855 3, RFC
    9051 5.1), where ``&`` is just ``&``.  Either way the text is put in
    Unicode NFC (Net-Unicode, RFC 5198 2, which RFC 6855 3 asks of names),
    so a name names the same mailbox whatever encoding or normalization the
    client used, and backends store it once.  An :class:`UndecodedName` if
    it is not valid modified UTF-7 (UTF-8); a :class:`NormalizedName` if
    NFC changed it.
    """
    try:
        text = raw.decode("utf-8") if utf8 else raw.decode("ascii")
        if text.upper() == "INBOX":
            return "INBOX"
        if not utf8:
            text = mutf7.decode(text)
    except (UnicodeDecodeError, ValueError) as exc:
        return UndecodedName(raw, str(exc), "UTF-8" if utf8 else "modified UTF-7")
    normalized = unicodedata.normalize("NFC", text)
    return text if normalized == text else NormalizedName(normalized, text)


def pattern(reader: Reader) -> str:
    """list-mailbox: 1*list-char / string, decoded like a mailbox name."""
    char = reader.peek()
    raw = reader.string() if char in (0x22, 0x7B) else reader.run(LIST_CHARS, "a pattern")
    return decode_mailbox(raw, utf8=reader.utf8)


#: ``$`` as a sequence set: the saved search result (RFC 5182).
SAVED = SequenceSet((), saved=True)


def sequence_set(reader: Reader) -> SequenceSet:
    if reader.accept(b"$"):
        # RFC 5182 3: seq-set = ... / "$"; it is not combined with numbers.
        after = reader.peek()
        if after is not None and after not in (0x20, 0x29):
            raise reader.error("'$' cannot be combined with other message numbers")
        return SAVED
    ranges: list[tuple[int, int]] = []
    while True:
        low = _seq_number(reader)
        high = low
        if reader.accept(b":"):
            high = _seq_number(reader)
        ranges.append((low, high))
        if not reader.accept(b","):
            break
    after = reader.peek()
    if after is not None and after not in (0x20, 0x29):  # SP or ')'
        raise reader.error(f"invalid sequence set near {reader.describe_here()}")
    return SequenceSet(tuple(ranges))


def _seq_number(reader: Reader) -> int:
    if reader.accept(b"*"):
        return STAR
    return reader.number32("a message number or '*'", nonzero=True)


_SYSTEM_FLAGS = frozenset({"\\ANSWERED", "\\FLAGGED", "\\DELETED", "\\SEEN", "\\DRAFT"})


def flag(reader: Reader, allow_recent: bool = False) -> str:
    """A flag: a keyword, or one of RFC 3501's system flags (\\Recent only
    where ``allow_recent``, in SEARCH)."""
    if reader.accept(b"\\"):
        name = reader.atom("a flag name")
        canonical = canonical_flag("\\" + name)
        upper = canonical.upper()
        if upper == "\\RECENT" and not allow_recent:
            raise reader.error("\\Recent cannot be set by the client")
        if upper not in _SYSTEM_FLAGS and upper != "\\RECENT":
            # flag-extension: RFC 3501 reserves these for future standards.
            raise reader.error(f"unknown system flag {canonical}")
        return canonical
    return reader.atom("a flag")


def flag_list(reader: Reader) -> tuple[str, ...]:
    reader.expect(b"(")
    flags: list[str] = []
    if not reader.accept(b")"):
        while True:
            flags.append(flag(reader))
            if reader.accept(b")"):
                break
            reader.space()
    return tuple(dict.fromkeys(flags))


_MONTHS = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

_DATE_TEXT = re.compile(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})\Z")
_DATE_TIME = re.compile(
    rb"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z"
)


def date(reader: Reader) -> datetime.date:
    """date = date-text / DQUOTE date-text DQUOTE (SEARCH)."""
    raw = reader.quoted() if reader.peek() == 0x22 else reader.run(ATOM_CHARS, "a date")
    match = _DATE_TEXT.match(raw)
    if match is None:
        raise reader.error("invalid date (expected d-Mon-yyyy)")
    month = _MONTHS.get(match.group(2).upper().decode("ascii"))
    if month is None:
        raise reader.error("invalid month name in date")
    try:
        return datetime.date(int(match.group(3)), month, int(match.group(1)))
    except ValueError:
        raise reader.error("invalid date") from None


def date_time(reader: Reader) -> datetime.datetime:
    """date-time = DQUOTE dd-Mon-yyyy SP hh:mm:ss SP zone DQUOTE (APPEND)."""
    raw = reader.quoted()
    match = _DATE_TIME.match(raw)
    if match is None:
        raise reader.error('invalid date-time (expected "dd-Mon-yyyy hh:mm:ss +zzzz")')
    day, mon, year, hour, minute, sec, sign, zh, zm = match.groups()
    month = _MONTHS.get(mon.upper().decode("ascii"))
    if month is None:
        raise reader.error("invalid month name in date-time")
    offset = datetime.timedelta(hours=int(zh), minutes=int(zm))
    if offset >= datetime.timedelta(hours=24) or int(zm) >= 60:
        raise reader.error("invalid time zone in date-time")
    try:
        return datetime.datetime(
            int(year),
            month,
            int(day.strip()),
            int(hour),
            int(minute),
            int(sec),
            tzinfo=datetime.timezone(-offset if sign == b"-" else offset),
        )
    except ValueError:
        raise reader.error("invalid date-time") from None


def format_date_time(when: datetime.datetime) -> str:
    """An INTERNALDATE value as RFC 3501 date-time (without the quotes)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    offset = when.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (
        f"{when.day:02d}-{_MONTH_NAMES[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} "
        f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    )


def paren_atoms(reader: Reader, what: str) -> tuple[str, ...]:
    """ "(" [atom *(SP atom)] ")", upper-cased."""
    reader.expect(b"(")
    items: list[str] = []
    if not reader.accept(b")"):
        while True:
            items.append(reader.atom(what).upper())
            if reader.accept(b")"):
                break
            reader.space()
    return tuple(items)


def generic_value(reader: Reader, depth: int) -> object:
    """RFC 4466 tagged-ext-val: a number/sequence set, astring or list."""
    if depth > reader.max_depth:
        raise reader.error("parentheses nested too deeply", "LIMIT")
    if reader.accept(b"("):
        items: list[object] = []
        if not reader.accept(b")"):
            while True:
                items.append(generic_value(reader, depth + 1))
                if reader.accept(b")"):
                    break
                reader.space()
        return tuple(items)
    char = reader.peek()
    if char is not None and (0x30 <= char <= 0x39 or char == 0x2A):
        return _number_or_set(reader)
    if reader.accept(b"\\"):  # a flag-like value such as USE (\\Drafts)
        return "\\" + reader.atom("an attribute")
    return reader.astring("a parameter value").decode("utf-8", "replace")


def _number_or_set(reader: Reader) -> int | SequenceSet:
    """A tagged-ext-val that starts with a digit or ``*``: a number when it
    is one alone, else a sequence set."""
    start = reader.pos
    while reader.pos < len(reader.line) and 0x30 <= reader.line[reader.pos] <= 0x39:
        reader.pos += 1
    after = reader.peek()
    if reader.pos > start and (after is None or after in (0x20, 0x29)):
        digits = reader.line[start : reader.pos]
        if len(digits) > 19 or int(digits) > 0x7FFFFFFFFFFFFFFF:  # mod-sequence range
            raise reader.error("number too large")
        return int(digits)
    reader.pos = start
    return sequence_set(reader)


def parameters(reader: Reader) -> tuple[tuple[str, object], ...]:
    """RFC 4466 parameters: "(" name [SP value] *(SP name [SP value]) ")"."""
    reader.expect(b"(")
    params: list[tuple[str, object]] = []
    while True:
        name = reader.atom("a parameter name").upper()
        value: object = None
        if reader.peek() == 0x20 and reader.line[reader.pos + 1 : reader.pos + 2] not in (b")",):
            # A value follows unless the next token is another name: values
            # start with a digit, '*', '(', a quote or a literal.
            nxt = reader.line[reader.pos + 1 : reader.pos + 2]
            if nxt and (nxt.isdigit() or nxt in (b"(", b'"', b"{", b"*", b"\\")):
                reader.space()
                value = generic_value(reader, 2)
        params.append((name, value))
        if reader.accept(b")"):
            return tuple(params)
        reader.space()
