"""APPEND (RFC 3501 6.3.11), with APPENDUID (RFC 4315), literal8 (RFC 3516),
APPENDLIMIT (RFC 7889) and the quota (RFC 9208).

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

from mailsrv import quota
from mailsrv.errors import NoSuchMailbox
from mailsrv.imap import syntax
from mailsrv.imap.commands.quota import limits_of
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
    char = reader.peek()
    if char not in (0x7B, 0x7E):
        raise reader.error(f"expected the message as a literal, found {reader.describe_here()}")
    binary = char == 0x7E
    message = reader.literal()
    reader.end()
    return Append(tag, name, mailbox, flags, date, message, binary)


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
        name = existing(command.mailbox)
        try:
            mailbox: IMailbox = yield defer.maybeDeferred(
                session.logged_in_account().get_mailbox, name
            )
        except NoSuchMailbox:
            raise no(f"Mailbox {command.mailbox} does not exist", "TRYCREATE") from None
        # RFC 9208 4.3.1: NO [OVERQUOTA] when the message would not fit.
        yield quota.check(session.logged_in_account(), limits_of(session), size)
        uid = yield defer.maybeDeferred(mailbox.append, source, command.flags, command.date)
    finally:
        source.close()
    return Done(text="APPEND completed", code=f"APPENDUID {mailbox.uidvalidity} {uid}")


COMMANDS = (CommandSpec("APPEND", parse_append, handle_append, AUTHENTICATED),)
