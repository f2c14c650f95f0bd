"""APPEND (RFC 3501 6.3.11), with APPENDUID (RFC 4315), literal8 (RFC 3516),
APPENDLIMIT (RFC 7889) and UTF8=ACCEPT's ``UTF8 (~{n})`` (RFC 6855 4).

The message literal arrives before the command is parsed: the session
(:meth:`mailsrv.imap.session.Session.literal_needed`) refuses one over
``limits.max_message_size`` and spools a big one to a temporary file, which
reaches the handler as a :class:`~mailsrv.imap.lexer.LiteralFile`.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Generator
from typing import IO, TYPE_CHECKING, Any

import attrs
from twisted.internet import defer

from mailsrv.errors import NoSuchMailbox
from mailsrv.imap import syntax
from mailsrv.imap.lexer import LiteralFile, Reader
from mailsrv.imap.output import Done, no
from mailsrv.imap.registry import AUTHENTICATED, Command, CommandSpec
from mailsrv.imap.session import existing
from mailsrv.interfaces import IMailbox

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Append"]


@attrs.frozen
class Append(Command):
    """APPEND of one message; ``message`` is the literal's payload."""

    mailbox: str
    flags: tuple[str, ...]
    date: datetime.datetime | None
    message: bytes | LiteralFile
    binary: bool = False
    #: Sent as ``UTF8 (literal8)``: the header may hold UTF-8 (RFC 6855 4).
    utf8: bool = False


def parse_append(reader: Reader, tag: str, name: str, uid: bool) -> Append:
    reader.space()
    mailbox = syntax.mailbox(reader)
    reader.space()
    flags: tuple[str, ...] = ()
    date: datetime.datetime | None = None
    if reader.peek() == 0x28:
        flags = syntax.flag_list(reader)
        reader.space()
    if reader.peek() == 0x22:
        date = syntax.date_time(reader)
        reader.space()
    utf8 = reader.keyword_ahead(b"UTF8")
    if utf8:
        # RFC 6855 4: utf8-literal = "UTF8" SP "(" literal8 ")"
        reader.pos += 4
        reader.space()
        reader.expect(b"(")
        if reader.peek() != 0x7E:
            raise reader.error("UTF8 takes the message as a literal8 (~{n})")
    char = reader.peek()
    if char not in (0x7B, 0x7E):
        raise reader.error(f"expected the message as a literal, found {reader.describe_here()}")
    binary = char == 0x7E
    message = reader.literal()
    if utf8:
        reader.expect(b")")
    reader.end()
    return Append(tag, name, mailbox, flags, date, message, binary, utf8)


#: How much of a message is read looking for the end of its header.
_HEADER_CHUNK = 64 * 1024


def _header_has_8bit(source: IO[bytes]) -> bool:
    """Whether the message's header (up to the first empty line) holds an
    octet above 127; ``source`` is left at its start."""
    tail = b""  # the last octets read, so an end split between chunks counts
    try:
        while True:
            chunk = source.read(_HEADER_CHUNK)
            if not chunk:
                return False
            data = tail + chunk
            ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
            if not (data[: min(ends)] if ends else data).isascii():
                return True
            if ends:
                return False
            tail = data[-3:]
    finally:
        source.seek(0)


@defer.inlineCallbacks
def handle_append(session: Session, command: Append) -> Generator[defer.Deferred[Any], Any, Done]:
    message = command.message
    source: IO[bytes] = io.BytesIO(message) if isinstance(message, bytes) else message.file
    try:
        # RFC 3516 4.4: literal8 content is stored octet for octet (a
        # Maildir file holds NULs as well as anything), so nothing is lost.
        size = len(message) if isinstance(message, bytes) else message.size
        if size == 0:
            raise no("Empty messages are not accepted", "CANNOT")
        if not session.utf8 and _header_has_8bit(source):
            # RFC 6855 4: UTF8=ACCEPT is offered, so 8-bit header octets
            # from a client that did not enable it MUST get NO.
            raise no(
                "8-bit octets in the message header: send ENABLE UTF8=ACCEPT first (RFC 6855)",
                "CANNOT",
            )
        name = existing(command.mailbox)
        try:
            mailbox: IMailbox = yield defer.maybeDeferred(
                session.logged_in_account().get_mailbox, name
            )
        except NoSuchMailbox:
            raise no(f"Mailbox {command.mailbox} does not exist", "TRYCREATE") from None
        uid = yield defer.maybeDeferred(mailbox.append, source, command.flags, command.date)
    finally:
        source.close()
    return Done(text="APPEND completed", code=f"APPENDUID {mailbox.uidvalidity} {uid}")


COMMANDS = (CommandSpec("APPEND", parse_append, handle_append, AUTHENTICATED),)
