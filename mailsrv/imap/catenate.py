"""CATENATE (RFC 4469): a message built from literals and IMAP URLs.

A URL part names a message, or a part of one, that the session's own user
can read, as a relative IMAP URL (RFC 5092) such as
``/Drafts;UIDVALIDITY=385759045/;UID=20/;SECTION=1.MIME/;PARTIAL=0.1024``
(RFC 4469 3: relative to ``imap://user@server/``), or an absolute one
naming the same user.  Anything else, another user's mailbox included, is
``NO [BADURL url]`` (RFC 4469 4.1).

Every URL is checked and located (:func:`assemble`) before anything is
stored, and the message is then read piece by piece straight from the
referenced messages' files (:class:`Pieces`), so a large referenced
message is never held in memory whole.
"""

from __future__ import annotations

import io
import re
import urllib.parse
from collections.abc import Sequence
from typing import IO, Any

import attrs

from mailsrv.errors import NoSuchMailbox, NoSuchMessage
from mailsrv.imap import content, fetch_syntax
from mailsrv.imap.fetch_syntax import Section
from mailsrv.imap.lexer import LiteralFile, ParseError, Reader
from mailsrv.imap.output import no
from mailsrv.imap.sections import header_fields, section_range
from mailsrv.interfaces import IAccount, IMailbox, IMessage, maybe_deferred

__all__ = [
    "MAX_MESSAGE",
    "BadUrl",
    "Pieces",
    "Text",
    "Url",
    "UrlReference",
    "assemble",
    "parse_url",
]

#: RFC 4469 4.2: no message may reach 4 GB (IMAP sizes are 32-bit).
MAX_MESSAGE = 0xFFFFFFFF


@attrs.frozen
class Text:
    """A ``TEXT`` part: a literal's octets."""

    data: bytes | LiteralFile


@attrs.frozen
class Url:
    """A ``URL`` part, as the client sent it."""

    url: str


@attrs.frozen
class UrlReference:
    """What a URL names: a message (by UID), a section of it, a range."""

    mailbox: str
    uid: int
    uidvalidity: int | None = None
    section: Section | None = None
    partial: tuple[int, int | None] | None = None


class BadUrl(Exception):
    """A URL that cannot be used; the answer is NO [BADURL url]."""


# RFC 5092 imessagepart, the path of a URL: enc-mailbox [uidvalidity] iuid
# [isection] [ipartial]; the keywords are case-insensitive.
_PATH = re.compile(
    r"/(?P<mailbox>[^;]+?)(?:;UIDVALIDITY=(?P<uidvalidity>[1-9][0-9]{0,9}))?"
    r"/;UID=(?P<uid>[1-9][0-9]{0,9})"
    r"(?:/;SECTION=(?P<section>[^;]+?))?"
    r"(?:/;PARTIAL=(?P<offset>[0-9]{1,10})(?:\.(?P<length>[1-9][0-9]{0,9}))?)?\Z",
    re.IGNORECASE,
)
_ABSOLUTE = re.compile(r"imap://(?P<user>[^@/;]+)(?:;[^@/]*)?@[^/]+(?P<path>/.*)\Z", re.IGNORECASE)


def parse_url(url: str, user: str | None) -> UrlReference:
    """The message part ``url`` names; :class:`BadUrl` if it is malformed,
    or absolute and for someone other than ``user``."""
    path = url
    absolute = _ABSOLUTE.match(url)
    if absolute is not None:
        owner = urllib.parse.unquote(absolute.group("user"), errors="strict")
        if user is None or owner != user:
            raise BadUrl("the URL names another user's mailbox")
        path = absolute.group("path")
    match = _PATH.match(path)
    if match is None:
        raise BadUrl("not a URL of a message on this server")
    try:
        # RFC 5092 5: the mailbox name is UTF-8, %-escaped.
        mailbox = urllib.parse.unquote(match.group("mailbox"), errors="strict")
        if mailbox.upper() == "INBOX":
            mailbox = "INBOX"
        section = None
        if match.group("section") is not None:
            section = _section(urllib.parse.unquote(match.group("section"), errors="strict"))
    except (UnicodeDecodeError, ParseError):
        raise BadUrl("invalid mailbox name or section in the URL") from None
    partial = None
    if match.group("offset") is not None:
        length = match.group("length")
        partial = (int(match.group("offset")), None if length is None else int(length))
    uidvalidity = match.group("uidvalidity")
    return UrlReference(
        mailbox,
        int(match.group("uid")),
        None if uidvalidity is None else int(uidvalidity),
        section,
        partial,
    )


def _section(text: str) -> Section:
    """A section spec as FETCH reads it (``1.MIME``, ``HEADER.FIELDS (TO)``)."""
    reader = Reader([b"BODY[" + text.encode("ascii") + b"]"], 4)
    attribute = fetch_syntax.fetch_attribute(reader)
    reader.end()
    assert attribute.section is not None
    return attribute.section


@attrs.frozen
class Piece:
    """``length`` octets of ``source`` from ``offset``."""

    source: IO[bytes] | bytes
    offset: int
    length: int


class Pieces(io.RawIOBase):
    """The pieces read one after the other, as one message source; it
    closes the files it was given."""

    def __init__(self, pieces: Sequence[Piece]) -> None:
        super().__init__()
        self._pieces = list(pieces)
        self._index = 0
        self._done = 0  # octets of the current piece read

    @property
    def size(self) -> int:
        return sum(piece.length for piece in self._pieces)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while self._index < len(self._pieces):
            piece = self._pieces[self._index]
            want = min(len(view), piece.length - self._done)
            data = b""
            if want > 0:
                if isinstance(piece.source, bytes):
                    start = piece.offset + self._done
                    data = piece.source[start : start + want]
                else:
                    piece.source.seek(piece.offset + self._done)
                    data = piece.source.read(want)
            if not data:
                # The piece is read (or its file ended early: the message is
                # what could be read, and the storage counts its size).
                self._index += 1
                self._done = 0
                continue
            view[: len(data)] = data
            self._done += len(data)
            return len(data)
        return 0

    def close(self) -> None:
        for piece in self._pieces:
            if not isinstance(piece.source, bytes):
                piece.source.close()
        self._pieces = []
        super().close()


def _literal_piece(data: bytes | LiteralFile) -> Piece:
    if isinstance(data, bytes):
        return Piece(data, 0, len(data))
    return Piece(data.file, 0, data.size)


async def assemble(
    account: IAccount, user: str | None, parts: Sequence[Text | Url], limit: int
) -> Pieces:
    """Check every part and locate its octets: the message, ready to read.

    NO [BADURL url] for the first URL that cannot be used, NO [TOOBIG] if
    the message would exceed ``limit`` octets (RFC 4469 4); referenced
    messages are opened, never read whole.
    """
    pieces: list[Piece] = []
    try:
        for part in parts:
            if isinstance(part, Text):
                pieces.append(_literal_piece(part.data))
                continue
            try:
                pieces.append(await _url_piece(account, parse_url(part.url, user)))
            except BadUrl as e:
                raise no(f"Cannot use this URL: {e}", f"BADURL {_code_text(part.url)}") from None
            if sum(piece.length for piece in pieces) > limit:
                break
        total = sum(piece.length for piece in pieces)
        if total > min(limit, MAX_MESSAGE):
            raise no(f"The message would be too large (at most {limit} octets)", "TOOBIG")
        if total == 0:
            raise no("Empty messages are not accepted", "CANNOT")
    except BaseException:
        Pieces(pieces).close()
        raise
    return Pieces(pieces)


def _code_text(url: str) -> str:
    """``url`` as a response code's text: no ``]``, no controls (RFC 4469 5)."""
    return "".join(c for c in url if c != "]" and 0x20 <= ord(c) < 0x7F) or "?"


async def _url_piece(account: IAccount, ref: UrlReference) -> Piece:
    """Where a URL's octets are: an open file and a range, or the bytes of
    filtered header fields."""
    try:
        mailbox: IMailbox = await maybe_deferred(account.get_mailbox, ref.mailbox)
    except NoSuchMailbox:
        raise BadUrl("no such mailbox") from None
    if ref.uidvalidity is not None and ref.uidvalidity != mailbox.uidvalidity:
        raise BadUrl("the UIDVALIDITY has changed")
    found: Sequence[IMessage] = await maybe_deferred(mailbox.fetch, [ref.uid])
    if not found:
        raise BadUrl("no such message")
    try:
        source: IO[bytes] = await maybe_deferred(mailbox.open, ref.uid)
    except NoSuchMessage:
        raise BadUrl("no such message") from None
    try:
        where = await _where(mailbox, ref, found[0].size, source)
    except BaseException:
        source.close()
        raise
    if isinstance(where, bytes):
        source.close()
        return _clipped(Piece(where, 0, len(where)), ref.partial)
    return _clipped(Piece(source, *where), ref.partial)


async def _where(
    mailbox: IMailbox, ref: UrlReference, size: int, source: IO[bytes]
) -> tuple[int, int] | bytes:
    """The range (or filtered bytes) a URL's section names."""
    section = ref.section
    if section is None or (not section.part and section.text is None):
        return (0, size)
    structures = await content.structures(mailbox, [ref.uid])
    structure = structures.get(ref.uid)
    if structure is None:
        raise BadUrl("no such message")
    where: tuple[int, int] | bytes | None
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        negate = section.text == "HEADER.FIELDS.NOT"
        where = header_fields(structure, source, section.fields, negate, section.part)
    else:
        where = section_range(structure, section.part, section.text)
    if where is None:
        raise BadUrl("no such body part")
    return where


def _clipped(piece: Piece, partial: tuple[int, int | None] | None) -> Piece:
    """RFC 5092 ipartial: octets from an offset, optionally this many."""
    if partial is None:
        return piece
    offset, length = partial
    if offset >= piece.length:
        return Piece(piece.source, piece.offset, 0)
    available = piece.length - offset
    count = available if length is None else min(length, available)
    return Piece(piece.source, piece.offset + offset, count)
