"""IMAP4rev1 wire grammar: client commands in, server responses out.

Pure code: no I/O, no reactor.  The framing layer (:mod:`mailsrv.imap.server`)
splits the byte stream into a command's *segments* — the text of each line
(without CRLF, still ending in its ``{n}`` marker when a literal follows) and
each literal's payload — and :func:`parse_command` turns them into one of the
frozen command objects below.  Anything malformed raises :class:`ParseError`
and nothing else, with a message fit for ``tag BAD <message>``.

The second half is the response writer: :func:`serialize` chooses the atom,
quoted or literal form of strings, writes NIL, numbers and parenthesised
lists, and :func:`tagged` / :func:`untagged` build complete response lines.

Grammar references are to RFC 3501 section 9 unless noted; RFC 4466 gives
the extended LIST/SELECT/FETCH/STORE syntax, RFC 7888 LITERAL+.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator, Sequence
from typing import IO, TypeAlias

import attrs

from mailsrv import mutf7
from mailsrv.interfaces import canonical_flag

__all__ = [
    "SAVED",
    "STAR",
    "Append",
    "Atom",
    "Authenticate",
    "Command",
    "Copy",
    "Create",
    "Enable",
    "Expunge",
    "Fetch",
    "FetchAttribute",
    "Id",
    "List",
    "LiteralFile",
    "Login",
    "MailboxCommand",
    "ParseError",
    "Raw",
    "Rename",
    "Search",
    "SearchKey",
    "Section",
    "Select",
    "SequenceSet",
    "Simple",
    "Status",
    "Store",
    "UndecodedName",
    "astring",
    "decode_mailbox",
    "flag_list",
    "format_date_time",
    "literal_marker",
    "mailbox",
    "parse_command",
    "peek_command",
    "serialize",
    "string",
    "tagged",
    "untagged",
    "untagged_status",
]

# ---------------------------------------------------------------------------
# Errors and input
# ---------------------------------------------------------------------------


class ParseError(Exception):
    """The command is malformed; the server answers ``tag BAD <message>``.

    ``tag`` is the command's tag when it could be read (None: answer ``*``);
    ``code`` an optional response code such as ``TOOBIG``.
    """

    def __init__(self, message: str, tag: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.tag = tag
        self.code = code


@attrs.frozen
class LiteralFile:
    """A literal the framing layer spooled to a file instead of memory.

    Only APPEND's message literal may be one; the file is positioned at 0.
    """

    file: IO[bytes]
    size: int


#: A command as framed: line texts and literal payloads, in wire order.
Segment: TypeAlias = "bytes | LiteralFile"

#: Stands for ``*`` in a :class:`SequenceSet`: the largest number in use.
STAR = 0

_LITERAL_MARKER = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\Z")

# RFC 3501 atom-specials: ( ) { SP CTL % * " \ ]  (CTL includes DEL and <0x20).
_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
_ATOM_CHARS = frozenset(range(0x21, 0x7F)) - _ATOM_SPECIALS
_ASTRING_CHARS = _ATOM_CHARS | {ord("]")}
_LIST_CHARS = _ATOM_CHARS | {ord("%"), ord("*"), ord("]")}
_TAG_CHARS = _ASTRING_CHARS - {ord("+")}

#: The longest quoted string or small literal we will turn into a value;
#: bigger strings outside APPEND are a client error, not a memory cost.
MAX_STRING = 1 << 20
#: Sequence numbers and UIDs are 32-bit (RFC 3501 nz-number, uniqueid).
MAX_NUMBER = 0xFFFFFFFF


def literal_marker(line: bytes) -> tuple[int, bool, bool] | None:
    """The literal announced at the end of ``line``: ``(size, non_sync, binary)``.

    ``{n}`` is synchronizing, ``{n+}`` is LITERAL+ (RFC 7888), ``~{n}`` a
    literal8 (RFC 3516).  None when the line ends the command.
    """
    match = _LITERAL_MARKER.search(line)
    if match is None:
        return None
    return int(match.group(2)), bool(match.group(3)), bool(match.group(1))


def peek_command(line: bytes) -> tuple[str, str] | None:
    """Tag and upper-cased command name of a command's first line, cheaply.

    A ``UID`` prefix is folded in (``"UID FETCH"``).  The framing layer uses
    this to pick limits for literals before the command is complete.
    """
    parts = line.split(b" ", 3)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    try:
        tag = parts[0].decode("ascii")
        name = parts[1].decode("ascii").upper()
        if name == "UID" and len(parts) > 2:
            name = "UID " + parts[2].decode("ascii").upper()
    except UnicodeDecodeError:
        return None
    return tag, name


# ---------------------------------------------------------------------------
# Value objects
# ---------------------------------------------------------------------------


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


@attrs.frozen
class Section:
    """A BODY/BINARY section: ``part`` numbers, then an optional ``text``.

    ``text`` is one of HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    (upper case) or None; ``fields`` the upper-cased HEADER.FIELDS names.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        out = ".".join(str(p) for p in self.part)
        if self.text is not None:
            out = f"{out}.{self.text}" if out else self.text
        if self.fields:
            out += " (" + " ".join(self.fields) + ")"
        return out


@attrs.frozen
class FetchAttribute:
    """One FETCH item.

    ``name`` is the upper-cased item without ``.PEEK`` (``BODY``, ``BINARY``,
    ``BINARY.SIZE``, ``FLAGS``, ``RFC822.HEADER``...); ``section`` is given
    for ``BODY[...]``/``BINARY[...]`` forms (``BODY`` alone is the structure
    item); ``partial`` is ``(origin, octets)``.
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    def response_name(self) -> str:
        """How the item is named in the FETCH response (RFC 3501 7.4.2)."""
        if self.section is None:
            return self.name
        out = f"{self.name}[{self.section}]"
        if self.partial is not None:
            out += f"<{self.partial[0]}>"
        return out


@attrs.frozen
class SearchKey:
    """One node of a SEARCH program.

    ``op`` names the test and ``args`` its operands:

    * ``AND`` (keys...), ``OR`` (left, right), ``NOT`` (key,), ``ALL`` ()
    * ``FLAG`` (flag, present) for ANSWERED/UNSEEN/KEYWORD x/...; NEW and
      OLD are spelt with AND/NOT over ``\\Recent`` and ``\\Seen``
    * ``SEQ`` (SequenceSet,) and ``UID`` (SequenceSet,)
    * ``BEFORE``/``ON``/``SINCE`` and ``SENTBEFORE``/``SENTON``/``SENTSINCE``
      (datetime.date,)
    * ``LARGER``/``SMALLER`` (int,)
    * ``HEADER`` (field name upper-cased, bytes value); SUBJECT becomes
      HEADER
    * ``ADDRESS`` (FROM, TO, CC or BCC, bytes value): matched against the
      addresses, not the field's text (RFC 3501 6.4.4)
    * ``BODY``/``TEXT`` (bytes,)
    * ``MODSEQ`` (int,) (RFC 7162)
    """

    op: str
    args: tuple[object, ...] = ()


@attrs.frozen
class Command:
    """Every command: its ``tag`` and upper-cased ``name``."""

    tag: str
    name: str


@attrs.frozen
class Simple(Command):
    """A command without arguments (CAPABILITY, NOOP, LOGOUT, IDLE...)."""


@attrs.frozen
class Login(Command):
    username: bytes
    password: bytes


@attrs.frozen
class Authenticate(Command):
    """``mechanism`` upper-cased; ``initial_response`` is the SASL-IR
    argument as sent (base64 text, ``=`` for empty), or None."""

    mechanism: str
    initial_response: bytes | None = None


@attrs.frozen
class Select(Command):
    """SELECT and EXAMINE (``readonly``); ``params`` are RFC 4466
    select-params such as ``(("CONDSTORE", None),)``."""

    mailbox: str
    readonly: bool = False
    params: tuple[tuple[str, object], ...] = ()


@attrs.frozen
class MailboxCommand(Command):
    """DELETE, SUBSCRIBE, UNSUBSCRIBE: one mailbox argument."""

    mailbox: str


@attrs.frozen
class Create(Command):
    """CREATE, with RFC 6154 ``(USE (\\Drafts ...))`` special uses."""

    mailbox: str
    special_use: tuple[str, ...] = ()


@attrs.frozen
class Rename(Command):
    old: str
    new: str


@attrs.frozen
class List(Command):
    """LIST and LSUB (``name == "LSUB"``), with RFC 5258 options.

    ``patterns`` are decoded mailbox patterns; ``selection`` and
    ``return_options`` upper-cased option names, ``status_items`` the
    RFC 5819 ``RETURN (STATUS (...))`` items.  ``extended`` is True when the
    client used any LIST-EXTENDED syntax (the answer format changes).
    """

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()
    return_options: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()
    extended: bool = False


@attrs.frozen
class Status(Command):
    mailbox: str
    items: tuple[str, ...]


@attrs.frozen
class Append(Command):
    """APPEND of one message; ``message`` is the literal's payload."""

    mailbox: str
    flags: tuple[str, ...]
    date: datetime.datetime | None
    message: bytes | LiteralFile
    binary: bool = False


@attrs.frozen
class Fetch(Command):
    uid: bool
    sequence_set: SequenceSet
    attributes: tuple[FetchAttribute, ...]
    modifiers: tuple[tuple[str, object], ...] = ()


@attrs.frozen
class Store(Command):
    """STORE; ``mode`` is a :class:`mailsrv.interfaces.StoreMode` value."""

    uid: bool
    sequence_set: SequenceSet
    mode: str
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None


@attrs.frozen
class Copy(Command):
    """COPY and MOVE (``name == "MOVE"``)."""

    uid: bool
    sequence_set: SequenceSet
    mailbox: str


@attrs.frozen
class Search(Command):
    """SEARCH; ``key`` is the AND of the top-level keys.

    ``return_options`` are RFC 4731 ESEARCH options (None: plain SEARCH).
    """

    uid: bool
    charset: str | None
    key: SearchKey
    return_options: tuple[str, ...] | None = None


@attrs.frozen
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE (RFC 4315) with its ``sequence_set``."""

    uid: bool = False
    sequence_set: SequenceSet | None = None


@attrs.frozen
class Enable(Command):
    capabilities: tuple[str, ...]


@attrs.frozen
class Id(Command):
    """ID (RFC 2971): field/value pairs, or None for NIL."""

    fields: tuple[tuple[str, str | None], ...] | None


# ---------------------------------------------------------------------------
# The reader: a cursor over a command's segments
# ---------------------------------------------------------------------------


class _Reader:
    """Reads tokens across the segments of one framed command."""

    def __init__(self, segments: Sequence[Segment], max_depth: int) -> None:
        if not segments or not isinstance(segments[0], bytes):
            raise ParseError("empty command")
        self.segments = segments
        self.index = 0
        self.line: bytes = segments[0]
        self.pos = 0
        self.max_depth = max_depth
        self.tag: str | None = None

    # -- low level -------------------------------------------------------

    def error(self, message: str, code: str | None = None) -> ParseError:
        return ParseError(message, self.tag, code)

    def peek(self) -> int | None:
        """The next byte of the current line, None at its end."""
        if self.pos < len(self.line):
            return self.line[self.pos]
        return None

    def at_end(self) -> bool:
        return self.pos >= len(self.line) and self.index == len(self.segments) - 1

    def expect(self, char: bytes) -> None:
        if self.line[self.pos : self.pos + 1] != char:
            found = self._describe_here()
            raise self.error(f"expected {char.decode()!r}, found {found}")
        self.pos += 1

    def accept(self, char: bytes) -> bool:
        if self.line[self.pos : self.pos + 1] == char:
            self.pos += 1
            return True
        return False

    def space(self) -> None:
        if self.peek() != 0x20:
            raise self.error(f"expected a space, found {self._describe_here()}")
        self.pos += 1

    def end(self) -> None:
        if not self.at_end():
            raise self.error(f"unexpected {self._describe_here()} after the arguments")

    def _describe_here(self) -> str:
        if self.pos >= len(self.line):
            if self.index < len(self.segments) - 1:
                return "a literal"
            return "end of line"
        chunk = self.line[self.pos : self.pos + 12]
        return repr(chunk.decode("ascii", "replace"))

    def run(self, allowed: frozenset[int], what: str) -> bytes:
        start = self.pos
        line = self.line
        end = len(line)
        pos = start
        while pos < end and line[pos] in allowed:
            pos += 1
        if pos == start:
            raise self.error(f"expected {what}, found {self._describe_here()}")
        self.pos = pos
        return line[start:pos]

    def atom(self, what: str = "an atom") -> str:
        return self.run(_ATOM_CHARS, what).decode("ascii")

    def number(self, what: str = "a number", nonzero: bool = False) -> int:
        start = self.pos
        while self.pos < len(self.line) and 0x30 <= self.line[self.pos] <= 0x39:
            self.pos += 1
        digits = self.line[start : self.pos]
        if not digits:
            raise self.error(f"expected {what}, found {self._describe_here()}")
        if len(digits) > 20:
            raise self.error(f"{what} is too large")
        value = int(digits)
        if nonzero and value == 0:
            raise self.error(f"{what} must not be zero")
        return value

    def number32(self, what: str, nonzero: bool = False) -> int:
        value = self.number(what, nonzero)
        if value > MAX_NUMBER:
            raise self.error(f"{what} is larger than 4294967295")
        return value

    # -- strings -----------------------------------------------------------

    def _literal(self) -> bytes | LiteralFile:
        """A literal: the marker must end the line; its payload is the next
        segment, and reading continues in the line after it."""
        match = _LITERAL_MARKER.match(self.line, self.pos)
        if match is None or match.end() != len(self.line):
            raise self.error("malformed literal (expected {n} at the end of the line)")
        if self.index + 2 >= len(self.segments):
            raise self.error("literal data missing")
        payload = self.segments[self.index + 1]
        size = int(match.group(2))
        if isinstance(payload, bytes):
            if len(payload) != size:
                raise self.error("literal length does not match its data")
        elif payload.size != size:
            raise self.error("literal length does not match its data")
        nxt = self.segments[self.index + 2]
        if not isinstance(nxt, bytes):
            raise self.error("two literals in a row")
        self.index += 2
        self.line = nxt
        self.pos = 0
        return payload

    def _small(self, payload: bytes | LiteralFile) -> bytes:
        if isinstance(payload, LiteralFile):
            raise self.error("string literal too long", "TOOBIG")
        return payload

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        line = self.line
        pos = self.pos
        end = len(line)
        while True:
            if pos >= end:
                raise self.error("unterminated quoted string")
            char = line[pos]
            if char == 0x22:  # closing quote
                self.pos = pos + 1
                return bytes(out)
            if char == 0x5C:  # backslash escapes only \ and "
                if pos + 1 >= end or line[pos + 1] not in (0x22, 0x5C):
                    raise self.error('invalid escape in quoted string (only \\\\ and \\")')
                out.append(line[pos + 1])
                pos += 2
            elif char in (0x0D, 0x0A, 0x00):
                raise self.error("CR, LF or NUL in quoted string")
            else:
                out.append(char)
                pos += 1
            if len(out) > MAX_STRING:
                raise self.error("quoted string too long", "TOOBIG")

    def string(self, what: str = "a string") -> bytes:
        char = self.peek()
        if char == 0x22:
            return self.quoted()
        if char == 0x7B:  # {
            return self._small(self._literal())
        raise self.error(f"expected {what}, found {self._describe_here()}")

    def astring(self, what: str = "a string") -> bytes:
        char = self.peek()
        if char in (0x22, 0x7B):
            return self.string(what)
        return self.run(_ASTRING_CHARS, what)

    def nstring(self, what: str = "a string") -> bytes | None:
        if self._keyword_ahead(b"NIL"):
            self.pos += 3
            return None
        return self.string(what)

    def _keyword_ahead(self, word: bytes) -> bool:
        chunk = self.line[self.pos : self.pos + len(word)]
        if chunk.upper() != word:
            return False
        after = self.line[self.pos + len(word) : self.pos + len(word) + 1]
        return not after or after[0] not in _ASTRING_CHARS

    def text_astring(self, what: str) -> str:
        """An astring that must be UTF-8 text (user names, ID fields)."""
        raw = self.astring(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what} is not valid UTF-8") from None


# ---------------------------------------------------------------------------
# Shared productions
# ---------------------------------------------------------------------------


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

    def __new__(cls, raw: bytes, reason: str) -> UndecodedName:
        name = super().__new__(cls, raw.decode("ascii", "backslashreplace"))
        name.reason = reason
        return name


def _mailbox(reader: _Reader, what: str = "a mailbox name") -> str:
    return decode_mailbox(reader.astring(what))


def decode_mailbox(raw: bytes) -> str:
    """A mailbox name (or pattern) from the wire: INBOX in any case is INBOX,
    and the rest is modified UTF-7 decoded (RFC 3501 5.1, 5.1.3); an
    :class:`UndecodedName` if it is not valid modified UTF-7."""
    try:
        text = raw.decode("ascii")
        if text.upper() == "INBOX":
            return "INBOX"
        return mutf7.decode(text)
    except (UnicodeDecodeError, ValueError) as exc:
        return UndecodedName(raw, str(exc))


def _pattern(reader: _Reader) -> str:
    """list-mailbox: 1*list-char / string, decoded like a mailbox name."""
    char = reader.peek()
    raw = reader.string() if char in (0x22, 0x7B) else reader.run(_LIST_CHARS, "a pattern")
    return decode_mailbox(raw)


#: ``$`` as a sequence set: the saved search result (RFC 5182).
SAVED = SequenceSet((), saved=True)


def _sequence_set(reader: _Reader) -> SequenceSet:
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
        raise reader.error(f"invalid sequence set near {reader._describe_here()}")
    return SequenceSet(tuple(ranges))


def _seq_number(reader: _Reader) -> int:
    if reader.accept(b"*"):
        return STAR
    return reader.number32("a message number or '*'", nonzero=True)


_SYSTEM_FLAGS = frozenset({"\\ANSWERED", "\\FLAGGED", "\\DELETED", "\\SEEN", "\\DRAFT"})


def _flag(reader: _Reader, allow_recent: bool = False, allow_wildcard: bool = False) -> str:
    if reader.accept(b"\\"):
        if allow_wildcard and reader.accept(b"*"):
            return "\\*"
        name = reader.atom("a flag name")
        flag = canonical_flag("\\" + name)
        upper = flag.upper()
        if upper == "\\RECENT" and not allow_recent:
            raise reader.error("\\Recent cannot be set by the client")
        if upper not in _SYSTEM_FLAGS and upper != "\\RECENT":
            # flag-extension: RFC 3501 reserves these for future standards.
            raise reader.error(f"unknown system flag {flag}")
        return flag
    return reader.atom("a flag")


def _flag_list(reader: _Reader) -> tuple[str, ...]:
    reader.expect(b"(")
    flags: list[str] = []
    if not reader.accept(b")"):
        while True:
            flags.append(_flag(reader))
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


def _date(reader: _Reader) -> datetime.date:
    """date = date-text / DQUOTE date-text DQUOTE (SEARCH)."""
    raw = reader.quoted() if reader.peek() == 0x22 else reader.run(_ATOM_CHARS, "a date")
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


def _date_time(reader: _Reader) -> datetime.datetime:
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


def _paren_atoms(reader: _Reader, what: str) -> tuple[str, ...]:
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


def _generic_value(reader: _Reader, depth: int) -> object:
    """RFC 4466 tagged-ext-val: a number/sequence set, astring or list."""
    if depth > reader.max_depth:
        raise reader.error("parentheses nested too deeply", "LIMIT")
    if reader.accept(b"("):
        items: list[object] = []
        if not reader.accept(b")"):
            while True:
                items.append(_generic_value(reader, depth + 1))
                if reader.accept(b")"):
                    break
                reader.space()
        return tuple(items)
    char = reader.peek()
    if char is not None and (0x30 <= char <= 0x39 or char == 0x2A):
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
        return _sequence_set(reader)
    if reader.accept(b"\\"):  # a flag-like value such as USE (\\Drafts)
        return "\\" + reader.atom("an attribute")
    return reader.astring("a parameter value").decode("utf-8", "replace")


def _parameters(reader: _Reader) -> tuple[tuple[str, object], ...]:
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
                value = _generic_value(reader, 2)
        params.append((name, value))
        if reader.accept(b")"):
            return tuple(params)
        reader.space()


# ---------------------------------------------------------------------------
# FETCH
# ---------------------------------------------------------------------------

_FETCH_SIMPLE = frozenset(
    {
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",
        "BODY",
    }
)
_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")


def _section(reader: _Reader, binary: bool) -> Section:
    reader.expect(b"[")
    if reader.accept(b"]"):
        return Section()
    parts: list[int] = []
    text: str | None = None
    fields: tuple[str, ...] = ()
    while True:
        char = reader.peek()
        if char is not None and 0x30 <= char <= 0x39:
            parts.append(reader.number32("a section part number", nonzero=True))
            if reader.accept(b"."):
                continue
            break
        if binary:
            raise reader.error("BINARY sections are part numbers only")
        word = reader.run(_FETCH_NAME_CHARS, "a section name").decode("ascii").upper()
        allowed = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"}
        if parts:
            allowed.add("MIME")
        if word not in allowed:
            raise reader.error(f"invalid section {word!r}")
        text = word
        if word.startswith("HEADER.FIELDS"):
            reader.space()
            fields = _header_list(reader)
        break
    reader.expect(b"]")
    return Section(tuple(parts), text, fields)


def _header_list(reader: _Reader) -> tuple[str, ...]:
    reader.expect(b"(")
    names: list[str] = []
    while True:
        raw = reader.astring("a header field name")
        # field-name = 1*<printable US-ASCII except ':'> (RFC 5322 3.6.8)
        if not raw or any(c < 0x21 or c > 0x7E or c == 0x3A for c in raw):
            raise reader.error("invalid header field name")
        names.append(raw.decode("ascii").upper())
        if reader.accept(b")"):
            return tuple(names)
        reader.space()


def _partial(reader: _Reader) -> tuple[int, int] | None:
    if not reader.accept(b"<"):
        return None
    origin = reader.number32("a partial origin")
    reader.expect(b".")
    count = reader.number32("a partial length", nonzero=True)
    reader.expect(b">")
    return origin, count


def _fetch_attribute(reader: _Reader) -> FetchAttribute:
    word = reader.run(_FETCH_NAME_CHARS, "a FETCH item").decode("ascii").upper()
    if word in ("BODY", "BODY.PEEK") and reader.peek() == 0x5B:
        section = _section(reader, binary=False)
        return FetchAttribute("BODY", section, _partial(reader), peek=word == "BODY.PEEK")
    if word in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        if reader.peek() != 0x5B:
            raise reader.error(f"{word} needs a section")
        section = _section(reader, binary=True)
        if word == "BINARY.SIZE":
            return FetchAttribute(word, section)
        return FetchAttribute("BINARY", section, _partial(reader), peek=word == "BINARY.PEEK")
    if word in _FETCH_SIMPLE:
        return FetchAttribute(word)
    raise reader.error(f"unknown FETCH item {word!r}")


def _fetch(reader: _Reader, tag: str, uid: bool) -> Fetch:
    reader.space()
    seqset = _sequence_set(reader)
    reader.space()
    attributes: list[FetchAttribute] = []
    if reader.accept(b"("):
        while True:
            attributes.append(_fetch_attribute(reader))
            if reader.accept(b")"):
                break
            reader.space()
    else:
        start = reader.pos
        word = reader.run(_FETCH_NAME_CHARS, "a FETCH item").decode("ascii").upper()
        if word in _FETCH_MACROS:
            attributes.extend(FetchAttribute(name) for name in _FETCH_MACROS[word])
        else:
            reader.pos = start
            attributes.append(_fetch_attribute(reader))
    modifiers: tuple[tuple[str, object], ...] = ()
    if reader.peek() == 0x20:
        reader.space()
        modifiers = _parameters(reader)
    reader.end()
    if uid and not any(a.name == "UID" for a in attributes):
        attributes.append(FetchAttribute("UID"))  # RFC 3501 6.4.8: UID is implied
    return Fetch(tag, "FETCH", uid, seqset, tuple(attributes), modifiers)


# ---------------------------------------------------------------------------
# SEARCH
# ---------------------------------------------------------------------------

_SEARCH_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "RECENT": ("\\Recent", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_SEARCH_ADDRESS_KEYS = frozenset({"BCC", "CC", "FROM", "TO"})
_SEARCH_DATE_KEYS = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
_SEARCH_ESEARCH_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})


def _search_key(reader: _Reader, depth: int) -> SearchKey:
    if depth > reader.max_depth:
        raise reader.error("search keys nested too deeply", "LIMIT")
    char = reader.peek()
    if char == 0x28:  # (
        reader.pos += 1
        keys = [_search_key(reader, depth + 1)]
        while not reader.accept(b")"):
            reader.space()
            keys.append(_search_key(reader, depth + 1))
        return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    if char is not None and (0x30 <= char <= 0x39 or char in (0x2A, 0x24)):  # digit * $
        return SearchKey("SEQ", (_sequence_set(reader),))
    word = reader.atom("a search key").upper()
    if word == "ALL":
        return SearchKey("ALL")
    if word in _SEARCH_FLAG_KEYS:
        flag, present = _SEARCH_FLAG_KEYS[word]
        return SearchKey("FLAG", (flag, present))
    if word == "NEW":
        return SearchKey(
            "AND", (SearchKey("FLAG", ("\\Recent", True)), SearchKey("FLAG", ("\\Seen", False)))
        )
    if word == "OLD":
        return SearchKey("FLAG", ("\\Recent", False))
    if word in ("KEYWORD", "UNKEYWORD"):
        reader.space()
        flag = _flag(reader, allow_recent=True)
        return SearchKey("FLAG", (flag, word == "KEYWORD"))
    if word == "NOT":
        reader.space()
        return SearchKey("NOT", (_search_key(reader, depth + 1),))
    if word == "OR":
        reader.space()
        left = _search_key(reader, depth + 1)
        reader.space()
        right = _search_key(reader, depth + 1)
        return SearchKey("OR", (left, right))
    if word in _SEARCH_ADDRESS_KEYS:
        reader.space()
        return SearchKey("ADDRESS", (word, reader.astring("a search string")))
    if word == "SUBJECT":
        reader.space()
        return SearchKey("HEADER", (word, reader.astring("a search string")))
    if word == "HEADER":
        reader.space()
        field = reader.astring("a header field name")
        if not field or any(c < 0x21 or c > 0x7E or c == 0x3A for c in field):
            raise reader.error("invalid header field name")
        reader.space()
        return SearchKey("HEADER", (field.decode("ascii").upper(), reader.astring()))
    if word in ("BODY", "TEXT"):
        reader.space()
        return SearchKey(word, (reader.astring("a search string"),))
    if word in _SEARCH_DATE_KEYS:
        reader.space()
        return SearchKey(word, (_date(reader),))
    if word in ("LARGER", "SMALLER"):
        reader.space()
        return SearchKey(word, (reader.number32("a size"),))
    if word == "UID":
        reader.space()
        return SearchKey("UID", (_sequence_set(reader),))
    if word == "MODSEQ":
        reader.space()
        if reader.peek() == 0x22:  # entry-name entry-type-req (RFC 7162)
            reader.quoted()
            reader.space()
            reader.atom("an entry type")
            reader.space()
        return SearchKey("MODSEQ", (reader.number("a mod-sequence value"),))
    raise reader.error(f"unknown search key {word!r}")


def _search(reader: _Reader, tag: str, uid: bool) -> Search:
    reader.space()
    return_options: tuple[str, ...] | None = None
    charset: str | None = None
    if reader._keyword_ahead(b"RETURN"):
        reader.pos += len(b"RETURN")
        reader.space()
        return_options = _paren_atoms(reader, "a RETURN option")
        unknown = set(return_options) - _SEARCH_ESEARCH_OPTIONS
        if unknown:
            raise reader.error(f"unknown SEARCH RETURN option {sorted(unknown)[0]}")
        reader.space()
    if reader._keyword_ahead(b"CHARSET"):
        reader.pos += len(b"CHARSET")
        reader.space()
        try:
            charset = reader.astring("a charset name").decode("ascii").upper()
        except UnicodeDecodeError:
            raise reader.error("invalid charset name") from None
        reader.space()
    keys = [_search_key(reader, 1)]
    while reader.peek() == 0x20:
        reader.space()
        keys.append(_search_key(reader, 1))
    reader.end()
    key = keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    return Search(tag, "SEARCH", uid, charset, key, return_options)


# ---------------------------------------------------------------------------
# Other commands
# ---------------------------------------------------------------------------

_STATUS_ITEMS = frozenset(
    {
        "MESSAGES",
        "RECENT",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "SIZE",  # RFC 8438
        "DELETED",  # RFC 9051
        "HIGHESTMODSEQ",  # RFC 7162
        "APPENDLIMIT",  # RFC 7889
    }
)
_LIST_SELECTION = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})

_NO_ARGUMENTS = frozenset(
    {
        "CAPABILITY",
        "NOOP",
        "LOGOUT",
        "STARTTLS",
        "CHECK",
        "CLOSE",
        "UNSELECT",
        "IDLE",
        "NAMESPACE",
    }
)


def _status_items(reader: _Reader) -> tuple[str, ...]:
    items = _paren_atoms(reader, "a STATUS item")
    if not items:
        raise reader.error("STATUS needs at least one item")
    for item in items:
        if item not in _STATUS_ITEMS:
            raise reader.error(f"unknown STATUS item {item}")
    return items


def _list(reader: _Reader, tag: str, name: str) -> List:
    reader.space()
    selection: tuple[str, ...] = ()
    extended = False
    if name == "LIST" and reader.peek() == 0x28:
        extended = True
        selection = _paren_atoms(reader, "a LIST selection option")
        for option in selection:
            if option not in _LIST_SELECTION:
                raise reader.error(f"unknown LIST selection option {option}")
        if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH", "REMOTE"}:
            # RFC 5258 3: alone or only with REMOTE it MUST be answered BAD.
            raise reader.error("RECURSIVEMATCH needs a selection option other than REMOTE")
        reader.space()
    reference = _mailbox(reader, "a reference name")
    reader.space()
    patterns: list[str] = []
    if name == "LIST" and reader.peek() == 0x28:
        extended = True
        reader.pos += 1
        while True:
            patterns.append(_pattern(reader))
            if reader.accept(b")"):
                break
            reader.space()
    else:
        patterns.append(_pattern(reader))
    return_options: list[str] = []
    status_items: tuple[str, ...] = ()
    if name == "LIST" and reader.peek() == 0x20:
        reader.space()
        if not reader._keyword_ahead(b"RETURN"):
            raise reader.error(f"expected RETURN, found {reader._describe_here()}")
        extended = True
        reader.pos += len(b"RETURN")
        reader.space()
        reader.expect(b"(")
        if not reader.accept(b")"):
            while True:
                option = reader.atom("a LIST return option").upper()
                if option not in _LIST_RETURN:
                    raise reader.error(f"unknown LIST return option {option}")
                if option == "STATUS":
                    reader.space()
                    status_items = _status_items(reader)
                return_options.append(option)
                if reader.accept(b")"):
                    break
                reader.space()
    reader.end()
    return List(
        tag,
        name,
        reference,
        tuple(patterns),
        selection,
        tuple(return_options),
        status_items,
        extended,
    )


def _store(reader: _Reader, tag: str, uid: bool) -> Store:
    reader.space()
    seqset = _sequence_set(reader)
    reader.space()
    unchanged_since: int | None = None
    if reader.peek() == 0x28:
        for param, value in _parameters(reader):
            if param != "UNCHANGEDSINCE" or not isinstance(value, int):
                raise reader.error(f"unknown or malformed STORE modifier {param}")
            unchanged_since = value
        reader.space()
    word = reader.run(_ATOM_CHARS | {ord("+")}, "FLAGS, +FLAGS or -FLAGS").decode().upper()
    mode = {"": "replace", "+": "add", "-": "remove"}
    sign = word[0] if word[:1] in ("+", "-") else ""
    rest = word[len(sign) :]
    if rest not in ("FLAGS", "FLAGS.SILENT"):
        raise reader.error(f"expected FLAGS, +FLAGS or -FLAGS, found {word!r}")
    reader.space()
    if reader.peek() == 0x28:
        flags = _flag_list(reader)
    else:
        items = [_flag(reader)]
        while reader.peek() == 0x20:
            reader.space()
            items.append(_flag(reader))
        flags = tuple(dict.fromkeys(items))
    reader.end()
    return Store(
        tag, "STORE", uid, seqset, mode[sign], rest.endswith(".SILENT"), flags, unchanged_since
    )


def _append(reader: _Reader, tag: str) -> Append:
    reader.space()
    mailbox = _mailbox(reader)
    reader.space()
    flags: tuple[str, ...] = ()
    date: datetime.datetime | None = None
    if reader.peek() == 0x28:
        flags = _flag_list(reader)
        reader.space()
    if reader.peek() == 0x22:
        date = _date_time(reader)
        reader.space()
    char = reader.peek()
    if char not in (0x7B, 0x7E):
        raise reader.error(f"expected the message as a literal, found {reader._describe_here()}")
    binary = char == 0x7E
    message = reader._literal()
    reader.end()
    return Append(tag, "APPEND", mailbox, flags, date, message, binary)


def _id(reader: _Reader, tag: str) -> Id:
    reader.space()
    if reader._keyword_ahead(b"NIL"):
        reader.pos += 3
        reader.end()
        return Id(tag, "ID", None)
    reader.expect(b"(")
    fields: list[tuple[str, str | None]] = []
    if not reader.accept(b")"):  # tolerate "()" though RFC 2971 wants NIL
        while True:
            key = reader.string("an ID field name").decode("utf-8", "replace")
            reader.space()
            value = reader.nstring("an ID field value")
            fields.append((key, None if value is None else value.decode("utf-8", "replace")))
            if len(fields) > 30:
                raise reader.error("too many ID fields (30 at most)")
            if reader.accept(b")"):
                break
            reader.space()
    reader.end()
    return Id(tag, "ID", tuple(fields))


def _create(reader: _Reader, tag: str) -> Create:
    reader.space()
    mailbox = _mailbox(reader)
    uses: list[str] = []
    if reader.peek() == 0x20:
        reader.space()
        for param, value in _parameters(reader):
            if param != "USE" or not isinstance(value, tuple):
                raise reader.error(f"unknown CREATE parameter {param}")
            for use in value:
                if not isinstance(use, str) or not use.startswith("\\"):
                    raise reader.error("USE takes a list of special-use attributes")
                uses.append(use)
    reader.end()
    return Create(tag, "CREATE", mailbox, tuple(uses))


def _generic_atom_list(reader: _Reader) -> tuple[str, ...]:
    items: list[str] = []
    while reader.peek() == 0x20:
        reader.space()
        items.append(reader.atom("a capability name").upper())
    return tuple(items)


def _not_offered(names: str, capability: str) -> dict[str, str]:
    return {
        name: f"{name} is not supported (the {capability} extension is not offered)"
        for name in names.split()
    }


#: Commands of extensions mailsrv does not offer (none is advertised): a
#: clearer BAD than "unknown command" for clients that send them anyway.
_NOT_OFFERED: dict[str, str] = {
    **_not_offered("GETACL SETACL DELETEACL MYRIGHTS LISTRIGHTS", "ACL (RFC 4314)"),
    **_not_offered("GETQUOTA GETQUOTAROOT SETQUOTA", "QUOTA (RFC 9208)"),
    **_not_offered("GETANNOTATION SETANNOTATION", "ANNOTATE-EXPERIMENT-1 (RFC 5257)"),
    **_not_offered("GETMETADATA SETMETADATA", "METADATA (RFC 5464)"),
    **_not_offered("SORT", "SORT (RFC 5256)"),
    **_not_offered("THREAD", "THREAD (RFC 5256)"),
    **_not_offered("COMPRESS", "COMPRESS (RFC 4978)"),
    **_not_offered("NOTIFY", "NOTIFY (RFC 5465)"),
    **_not_offered("UNAUTHENTICATE", "UNAUTHENTICATE (RFC 8437)"),
    **_not_offered("GETJMAPACCESS", "JMAPACCESS (RFC 9698)"),
    "PROXYAUTH": "PROXYAUTH is not supported (log in as the user instead)",
    "PARTIAL": "PARTIAL is obsolete (IMAP2bis); use FETCH BODY[]<origin.length>",
    "XLIST": "XLIST is not supported; use LIST with SPECIAL-USE (RFC 6154)",
}


def _command(reader: _Reader) -> Command:
    tag = reader.run(_TAG_CHARS, "a tag").decode("ascii")
    reader.space()
    reader.tag = tag
    name = reader.atom("a command name").upper()
    uid = False
    if name == "UID":
        reader.space()
        uid = True
        name = reader.atom("a command after UID").upper()
        if name not in ("FETCH", "SEARCH", "STORE", "COPY", "MOVE", "EXPUNGE"):
            if name in ("SORT", "THREAD"):
                raise reader.error(f"UID {name} is not supported ({name} is not offered)")
            raise reader.error(f"UID {name} is not a command")
    if name in _NO_ARGUMENTS:
        reader.end()
        return Simple(tag, name)
    if name == "LOGIN":
        reader.space()
        user = reader.astring("a user name")
        reader.space()
        password = reader.astring("a password")
        reader.end()
        return Login(tag, name, user, password)
    if name == "AUTHENTICATE":
        reader.space()
        mechanism = reader.atom("a SASL mechanism").upper()
        initial: bytes | None = None
        if reader.peek() == 0x20:
            reader.space()
            # A space and nothing after it (mutt's "AUTHENTICATE CRAM-MD5 ")
            # is no initial response, as Dovecot reads it; "=" is an empty one.
            if reader.peek() is not None:
                initial = reader.run(_ATOM_CHARS, "a base64 initial response")
        reader.end()
        return Authenticate(tag, name, mechanism, initial)
    if name in ("SELECT", "EXAMINE"):
        reader.space()
        mailbox = _mailbox(reader)
        params: tuple[tuple[str, object], ...] = ()
        if reader.peek() == 0x20:
            reader.space()
            params = _parameters(reader)
        reader.end()
        return Select(tag, name, mailbox, name == "EXAMINE", params)
    if name in ("DELETE", "SUBSCRIBE", "UNSUBSCRIBE"):
        reader.space()
        mailbox = _mailbox(reader)
        reader.end()
        return MailboxCommand(tag, name, mailbox)
    if name == "CREATE":
        return _create(reader, tag)
    if name == "RENAME":
        reader.space()
        old = _mailbox(reader)
        reader.space()
        new = _mailbox(reader)
        reader.end()
        return Rename(tag, name, old, new)
    if name in ("LIST", "LSUB"):
        return _list(reader, tag, name)
    if name == "STATUS":
        reader.space()
        mailbox = _mailbox(reader)
        reader.space()
        items = _status_items(reader)
        reader.end()
        return Status(tag, name, mailbox, items)
    if name == "APPEND":
        return _append(reader, tag)
    if name == "FETCH":
        return _fetch(reader, tag, uid)
    if name == "STORE":
        return _store(reader, tag, uid)
    if name in ("COPY", "MOVE"):
        reader.space()
        seqset = _sequence_set(reader)
        reader.space()
        mailbox = _mailbox(reader)
        reader.end()
        return Copy(tag, name, uid, seqset, mailbox)
    if name == "SEARCH":
        return _search(reader, tag, uid)
    if name == "EXPUNGE":
        if uid:
            reader.space()
            seqset = _sequence_set(reader)
            reader.end()
            return Expunge(tag, name, True, seqset)
        reader.end()
        return Expunge(tag, name)
    if name == "ENABLE":
        capabilities = _generic_atom_list(reader)
        if not capabilities:
            raise reader.error("ENABLE needs at least one capability")
        reader.end()
        return Enable(tag, name, capabilities)
    if name == "ID":
        return _id(reader, tag)
    if name in _NOT_OFFERED:
        raise reader.error(_NOT_OFFERED[name])
    raise reader.error(f"unknown command {name}")


def parse_command(segments: Sequence[Segment], max_depth: int = 32) -> Command:
    """Parse one framed command.

    ``segments`` alternate line text and literal payload, starting and
    ending with text; ``max_depth`` bounds parenthesis nesting.  Raises
    :class:`ParseError` (only) for anything malformed.
    """
    reader = _Reader(segments, max_depth)
    try:
        return _command(reader)
    except ParseError:
        raise
    except (ValueError, IndexError, UnicodeDecodeError, RecursionError) as exc:
        # Defence in depth: a grammar bug must not become a crash.
        raise ParseError(f"malformed command ({type(exc).__name__})", reader.tag) from None


# ---------------------------------------------------------------------------
# Response writer
# ---------------------------------------------------------------------------


@attrs.frozen
class Atom:
    """A value written as itself (flags, keywords, status names)."""

    text: str


@attrs.frozen
class Raw:
    """Bytes already in wire syntax, written unchanged."""

    data: bytes


Value: TypeAlias = "int | str | bytes | Atom | Raw | Sequence[Value] | None"

#: Strings longer than this go out as literals: easier on clients' parsers.
MAX_QUOTED = 1024

#: Octets :func:`string` quotes (as ``translate`` deletions): printable
#: ASCII, the quoted-specials escaped.
_PRINTABLE = bytes(range(0x20, 0x7F))
#: Octets :func:`string` quotes ``verbatim``: every TEXT-CHAR (RFC 3501 9:
#: any CHAR but CR and LF, so tab and other controls too) except the
#: quoted-specials ``"`` and ``\\``, which make it a literal instead.
_VERBATIM = bytes(c for c in range(0x01, 0x80) if c not in b'\r\n"\\')


def string(value: str | bytes, *, verbatim: bool = False) -> bytes:
    """A string in quoted form when safe, else as a literal: the one rule
    for every string the server writes.

    The server's own strings (mailbox names, ID values...) are quoted when
    printable ASCII of at most :data:`MAX_QUOTED` octets, ``"`` and ``\\``
    escaped.  ``verbatim`` is for text taken from a message (ENVELOPE,
    BODYSTRUCTURE), which goes out as the same octets, never escaped: quoted
    when it is TEXT-CHARs without a quoted-special and shorter than
    :data:`MAX_QUOTED`, else a literal.  A literal for ``"`` and ``\\`` is
    what Dovecot sends too, and it spares clients whose quoted-string
    parsers mishandle escapes.
    """
    data = value.encode("utf-8") if isinstance(value, str) else value
    if verbatim:
        if len(data) < MAX_QUOTED and not data.translate(None, _VERBATIM):
            return b'"' + data + b'"'
    elif len(data) <= MAX_QUOTED and not data.translate(None, _PRINTABLE):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def astring(value: str | bytes) -> bytes:
    """An astring: bare when every byte is an ASTRING-CHAR (and not NIL)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    if data and data.upper() != b"NIL" and all(c in _ASTRING_CHARS for c in data):
        return data
    return string(data)


def mailbox(name: str) -> bytes:
    """A mailbox name on the wire: modified UTF-7, then astring form."""
    return astring(mutf7.encode(name))


def serialize(value: Value) -> bytes:
    """Write a response value: None is NIL, int a number, str/bytes a string
    (quoted or literal), :class:`Atom` bare, sequences parenthesised."""
    if value is None:
        return b"NIL"
    if isinstance(value, bool):
        raise TypeError("booleans have no IMAP form")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("IMAP numbers are unsigned")
        return str(value).encode("ascii")
    if isinstance(value, (str, bytes)):
        return string(value)
    if isinstance(value, Atom):
        return value.text.encode("utf-8")
    if isinstance(value, Raw):
        return value.data
    return b"(" + b" ".join(serialize(item) for item in value) + b")"


def _text(text: str) -> bytes:
    """resp-text: 7-bit (RFC 3501 TEXT-CHAR), never CR or LF, never empty."""
    clean = text.replace("\r", " ").replace("\n", " ").strip() or "done"
    return clean.encode("ascii", "replace")


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    """``tag OK|NO|BAD [code] text`` with CRLF."""
    coded = b"[" + code.encode("ascii") + b"] " if code else b""
    return (
        tag.encode("ascii", "replace")
        + b" "
        + status.encode()
        + b" "
        + coded
        + _text(text)
        + b"\r\n"
    )


def untagged(*parts: bytes | str) -> bytes:
    """``* part part...`` with CRLF; str parts are encoded as UTF-8 as-is."""
    encoded = [p.encode("utf-8") if isinstance(p, str) else p for p in parts]
    return b"* " + b" ".join(encoded) + b"\r\n"


def untagged_status(status: str, text: str, code: str | None = None) -> bytes:
    """``* OK|NO|BAD|BYE|PREAUTH [code] text`` with CRLF."""
    return tagged("*", status, text, code)


def iter_flags(flags: Sequence[str] | frozenset[str]) -> Iterator[Atom]:
    """Flags as atoms, system flags first, in a stable order."""
    for flag in sorted(flags, key=lambda f: (not f.startswith("\\"), f.lower())):
        yield Atom(flag)


def flag_list(flags: Sequence[str] | frozenset[str]) -> bytes:
    """A parenthesised flag list for FLAGS responses."""
    return serialize(list(iter_flags(flags)))
