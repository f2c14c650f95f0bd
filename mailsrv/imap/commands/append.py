"""APPEND (RFC 3501 6.3.11), with APPENDUID (RFC 4315), literal8 (RFC 3516),
APPENDLIMIT (RFC 7889), MULTIAPPEND (RFC 3502) and CATENATE (RFC 4469).

The message literals arrive before the command is parsed: the session
(:meth:`mailsrv.imap.session.Session.literal_needed`) refuses one over
``limits.max_message_size`` and spools a big one to a temporary file, which
reaches the handler as a :class:`~mailsrv.imap.lexer.LiteralFile`.

Several messages in one APPEND are stored all or none
(:meth:`~mailsrv.interfaces.IMailbox.append_many`): RFC 3502 6.3.11 says a
failed APPEND leaves the mailbox as it was.  A CATENATE message is
assembled from its literals and URLs (:mod:`mailsrv.imap.catenate`) only
after every URL of every message was checked, so a bad URL writes nothing.
"""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

import attrs
from twisted.internet import defer

from mailsrv.errors import NoSuchMailbox
from mailsrv.imap import syntax
from mailsrv.imap.catenate import Text, Url, assemble
from mailsrv.imap.lexer import LiteralFile, Reader
from mailsrv.imap.output import Done, bad, no
from mailsrv.imap.registry import AUTHENTICATED, Command, CommandSpec
from mailsrv.imap.selected import ranges_text, runs
from mailsrv.imap.session import existing
from mailsrv.interfaces import IMailbox, NewMessage, maybe_deferred

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = [
    "COMMANDS",
    "Append",
    "AppendMessage",
    "append_message",
    "close_messages",
    "new_messages",
    "target_mailbox",
]


@attrs.frozen
class AppendMessage:
    """One message of an APPEND: flags, date, and its parts (one literal,
    or CATENATE's TEXT and URL parts)."""

    flags: tuple[str, ...]
    date: datetime.datetime | None
    parts: tuple[Text | Url, ...]
    catenate: bool = False
    binary: bool = False


@attrs.frozen
class Append(Command):
    """APPEND of one or more messages (MULTIAPPEND)."""

    mailbox: str
    messages: tuple[AppendMessage, ...]


def append_message(reader: Reader) -> AppendMessage:
    """append-message (RFC 4466 2.3, RFC 4469 5): [flag-list SP]
    [date-time SP] (literal / literal8 / "CATENATE" SP "(" cat-part ... ")")."""
    flags: tuple[str, ...] = ()
    date: datetime.datetime | None = None
    if reader.peek() == 0x28:
        flags = syntax.flag_list(reader)
        reader.space()
    if reader.peek() == 0x22:
        date = syntax.date_time(reader)
        reader.space()
    if reader.keyword_ahead(b"CATENATE"):
        reader.pos += len(b"CATENATE")
        reader.space()
        return AppendMessage(flags, date, _cat_parts(reader), catenate=True)
    char = reader.peek()
    if char not in (0x7B, 0x7E):
        raise reader.error(f"expected the message as a literal, found {reader.describe_here()}")
    binary = char == 0x7E
    return AppendMessage(flags, date, (Text(reader.literal()),), binary=binary)


def _cat_parts(reader: Reader) -> tuple[Text | Url, ...]:
    """ "(" cat-part *(SP cat-part) ")"; cat-part = "TEXT" SP literal /
    "URL" SP astring (RFC 4469 5)."""
    reader.expect(b"(")
    parts: list[Text | Url] = []
    while True:
        word = reader.atom("TEXT or URL").upper()
        reader.space()
        if word == "TEXT":
            if reader.peek() not in (0x7B, 0x7E):
                raise reader.error("TEXT needs a literal")
            parts.append(Text(reader.literal()))
        elif word == "URL":
            raw = reader.astring("a URL")
            try:
                parts.append(Url(raw.decode("ascii")))
            except UnicodeDecodeError:
                raise reader.error("a URL is ASCII (RFC 3986)") from None
        else:
            raise reader.error(f"expected TEXT or URL, found {word}")
        if reader.accept(b")"):
            return tuple(parts)
        reader.space()


def parse_append(reader: Reader, tag: str, name: str, uid: bool) -> Append:
    reader.space()
    mailbox = syntax.mailbox(reader)
    messages: list[AppendMessage] = []
    while True:
        reader.space()
        messages.append(append_message(reader))
        if reader.at_end():
            break
    reader.end()
    return Append(tag, name, mailbox, tuple(messages))


def close_messages(messages: Sequence[AppendMessage]) -> None:
    """Close the spooled literals of ``messages``."""
    for message in messages:
        for part in message.parts:
            if isinstance(part, Text) and isinstance(part.data, LiteralFile):
                part.data.file.close()


def check_not_empty(messages: Sequence[AppendMessage]) -> None:
    """RFC 3501 6.3.11: a zero-length message literal MUST get a NO (it is
    how a client cancels an APPEND, a MULTIAPPEND included)."""
    for message in messages:
        if not message.catenate:
            (part,) = message.parts
            assert isinstance(part, Text)
            data = part.data
            if (len(data) if isinstance(data, bytes) else data.size) == 0:
                raise no("Empty messages are not accepted; APPEND cancelled", "CANNOT")


async def target_mailbox(session: Session, name: str) -> IMailbox:
    """The mailbox to append to; NO [TRYCREATE] if it does not exist."""
    try:
        mailbox: IMailbox = await maybe_deferred(
            session.logged_in_account().get_mailbox, existing(name)
        )
    except NoSuchMailbox:
        raise no(f"Mailbox {name} does not exist", "TRYCREATE") from None
    return mailbox


async def new_messages(session: Session, messages: Sequence[AppendMessage]) -> list[NewMessage]:
    """The messages as storage takes them; CATENATE ones assembled (every
    URL checked) before any is stored.  The caller closes the sources."""
    out: list[NewMessage] = []
    try:
        for message in messages:
            source: IO[bytes]
            if message.catenate:
                limit = session.policy.max_message_size
                account = session.logged_in_account()
                pieces = await assemble(account, session.user, message.parts, limit)
                source = io.BufferedReader(pieces)
            else:
                (part,) = message.parts
                assert isinstance(part, Text)
                # RFC 3516 4.4: literal8 content is stored octet for octet.
                data = part.data
                source = io.BytesIO(data) if isinstance(data, bytes) else data.file
            out.append(NewMessage(source, message.flags, message.date))
    except BaseException:
        for new in out:
            new.source.close()
        raise
    return out


def check_offered(session: Session, messages: Sequence[AppendMessage]) -> None:
    """BAD for MULTIAPPEND or CATENATE where the policy's hooks withdrew them
    (:mod:`mailsrv.hooks`: an embedding application, the twisted.mail
    bridge), as a server without them would answer."""
    if session.policy.hooks is None:
        return
    offered = session.capabilities()
    if len(messages) > 1 and "MULTIAPPEND" not in offered:
        raise bad("One message per APPEND (MULTIAPPEND is not offered)")
    if any(m.catenate for m in messages) and "CATENATE" not in offered:
        raise bad("CATENATE is not offered")


async def _append(session: Session, command: Append) -> Done:
    try:
        check_offered(session, command.messages)
        check_not_empty(command.messages)
        mailbox = await target_mailbox(session, command.mailbox)
        batch = await new_messages(session, command.messages)
        try:
            uids: Sequence[int] = await maybe_deferred(mailbox.append_many, batch)
        finally:
            for new in batch:
                new.source.close()
    finally:
        close_messages(command.messages)
    code = f"APPENDUID {mailbox.uidvalidity} {ranges_text(runs(uids)).decode('ascii')}"
    return Done(text="APPEND completed", code=code)


def handle_append(session: Session, command: Append) -> defer.Deferred[Done]:
    return defer.Deferred.fromCoroutine(_append(session, command))


COMMANDS = (CommandSpec("APPEND", parse_append, handle_append, AUTHENTICATED),)
