"""APPEND (RFC 3501 6.3.11), with APPENDUID (RFC 4315), literal8 (RFC 3516),
APPENDLIMIT (RFC 7889), MULTIAPPEND (RFC 3502), CATENATE (RFC 4469),
UTF8=ACCEPT's ``UTF8 (~{n})`` (RFC 6855 4) and the quota (RFC 9208).

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

from mailsrv import quota
from mailsrv.errors import NoSuchMailbox
from mailsrv.imap import syntax
from mailsrv.imap.catenate import Pieces, Text, Url, assemble
from mailsrv.imap.commands.quota import limits_of
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
    #: Sent as ``UTF8 (literal8)``: the header may hold UTF-8 (RFC 6855 4).
    utf8: bool = False


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
    return AppendMessage(flags, date, (Text(message),), binary=binary, utf8=utf8)


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
                if not session.utf8 and _header_has_8bit(source):
                    # RFC 6855 4: UTF8=ACCEPT is offered, so 8-bit header
                    # octets from a client that did not enable it MUST get NO.
                    raise no(
                        "8-bit octets in the message header: "
                        "send ENABLE UTF8=ACCEPT first (RFC 6855)",
                        "CANNOT",
                    )
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


def batch_octets(batch: Sequence[NewMessage]) -> int:
    """The octets the messages of ``batch`` will take."""
    total = 0
    for new in batch:
        source = new.source
        if isinstance(source, io.BufferedReader) and isinstance(source.raw, Pieces):
            total += source.raw.size  # CATENATE: the sum of its parts
        else:
            here = source.tell()
            total += source.seek(0, io.SEEK_END) - here
            source.seek(here)
    return total


async def _append(session: Session, command: Append) -> Done:
    try:
        check_offered(session, command.messages)
        check_not_empty(command.messages)
        mailbox = await target_mailbox(session, command.mailbox)
        batch = await new_messages(session, command.messages)
        try:
            # RFC 9208 4.3.1: NO [OVERQUOTA] when the messages would not fit.
            account = session.logged_in_account()
            await quota.check(account, limits_of(session), batch_octets(batch), len(batch))
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
