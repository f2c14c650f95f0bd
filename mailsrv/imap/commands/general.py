"""CAPABILITY, NOOP, LOGOUT (RFC 3501 6.1), ID (RFC 2971), ENABLE (RFC 5161)
and NAMESPACE (RFC 2342)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.internet import defer

from mailsrv.imap import response
from mailsrv.imap.condstore import CONDSTORE, QRESYNC, enable_condstore
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done
from mailsrv.imap.registry import (
    ANY,
    AUTHENTICATED,
    Command,
    CommandSpec,
    Result,
    Simple,
    State,
    no_arguments,
)
from mailsrv.imap.session import IMAP4REV2, UTF8_ACCEPT

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "ENABLES", "Enable", "Id"]


@attrs.frozen
class Enable(Command):
    capabilities: tuple[str, ...]


@attrs.frozen
class Id(Command):
    """ID (RFC 2971): field/value pairs, or None for NIL."""

    fields: tuple[tuple[str, str | None], ...] | None


def parse_enable(reader: Reader, tag: str, name: str, uid: bool) -> Enable:
    capabilities: list[str] = []
    while reader.peek() == 0x20:
        reader.space()
        capabilities.append(reader.atom("a capability name").upper())
    if not capabilities:
        raise reader.error("ENABLE needs at least one capability")
    reader.end()
    return Enable(tag, name, tuple(capabilities))


#: RFC 2971 3.3: at most 30 pairs, field names of at most 30 octets and
#: values of at most 1024.
MAX_ID_FIELDS = 30
MAX_ID_FIELD_NAME = 30
MAX_ID_VALUE = 1024


def parse_id(reader: Reader, tag: str, name: str, uid: bool) -> Id:
    """``ID NIL`` or ``ID (field value ...)``, within RFC 2971 3.3's bounds
    (BAD beyond them, naming the bound)."""
    reader.space()
    if reader.keyword_ahead(b"NIL"):
        reader.pos += 3
        reader.end()
        return Id(tag, name, None)
    reader.expect(b"(")
    fields: list[tuple[str, str | None]] = []
    if not reader.accept(b")"):  # tolerate "()" though RFC 2971 wants NIL
        while True:
            fields.append(_id_pair(reader, fields))
            if reader.accept(b")"):
                break
            reader.space()
    reader.end()
    return Id(tag, name, tuple(fields))


def _id_pair(reader: Reader, fields: list[tuple[str, str | None]]) -> tuple[str, str | None]:
    if len(fields) >= MAX_ID_FIELDS:
        raise reader.error(f"too many ID fields ({MAX_ID_FIELDS} at most, RFC 2971 3.3)")
    raw_key = reader.string("an ID field name")
    if len(raw_key) > MAX_ID_FIELD_NAME:
        raise reader.error(f"ID field name longer than {MAX_ID_FIELD_NAME} octets (RFC 2971 3.3)")
    key = raw_key.decode("utf-8", "replace")
    if any(key.lower() == seen.lower() for seen, _ in fields):
        raise reader.error(f"ID field {key!r} given twice (RFC 2971 3.3)")
    reader.space()
    value = reader.nstring("an ID field value")
    if value is not None and len(value) > MAX_ID_VALUE:
        raise reader.error(f"ID value of {key!r} longer than {MAX_ID_VALUE} octets (RFC 2971 3.3)")
    return key, None if value is None else value.decode("utf-8", "replace")


def handle_capability(session: Session, command: Simple) -> Done:
    session.send(response.untagged("CAPABILITY", " ".join(session.capabilities())))
    return Done(text="CAPABILITY completed")


def handle_noop(session: Session, command: Simple) -> Result:
    if session.selected is not None:
        # The check finds outside changes, which the session then announces
        # (RFC 3501 6.1.2); most checks are done at once (no Deferred).
        checked = session.selected.mailbox.check()
        if isinstance(checked, defer.Deferred):
            return checked.addCallback(lambda _: Done(text="NOOP completed"))
    return Done(text="NOOP completed")


def handle_logout(session: Session, command: Simple) -> Done:
    session.send(response.untagged_status("BYE", "mailsrv logging out"))
    session.state = State.LOGOUT
    session.deselect()
    return Done(text="LOGOUT completed", after=session.close)


def handle_id(session: Session, command: Id) -> Done:
    # The client's fields are checked and otherwise unused: they are the
    # client's word only, so nothing is decided by them.
    pairs = [item for pair in session.policy.id_fields for item in pair]
    session.send(response.untagged("ID", response.serialize(pairs)))
    return Done(text="ID completed")


#: What ENABLE turns on, and what that implies (RFC 7162 3.2.3: QRESYNC
#: is CONDSTORE too).  Names not here are left out of ``* ENABLED``.
ENABLES = {
    CONDSTORE: (CONDSTORE,),
    QRESYNC: (CONDSTORE, QRESYNC),
    IMAP4REV2: (IMAP4REV2,),
    UTF8_ACCEPT: (UTF8_ACCEPT,),
}
#: How ``* ENABLED`` spells a name (the client's case does not matter).
_SPELLING = {IMAP4REV2: "IMAP4rev2"}


def handle_enable(session: Session, command: Enable) -> Done:
    named = [name for name in dict.fromkeys(command.capabilities) if name in ENABLES]
    for name in named:
        for extension in ENABLES[name]:
            if extension == CONDSTORE:
                enable_condstore(session)
            session.enabled.add(extension)
    spelt = (b" " + _SPELLING.get(n, n).encode() for n in named)
    session.send(b"".join([b"* ENABLED", *spelt, b"\r\n"]))
    return Done(text="ENABLE completed")


def handle_namespace(session: Session, command: Simple) -> Done:
    delimiter = session.logged_in_account().delimiter
    personal = response.serialize([["", delimiter]])
    session.send(response.untagged("NAMESPACE", personal, "NIL", "NIL"))
    return Done(text="NAMESPACE completed")


COMMANDS = (
    CommandSpec("CAPABILITY", no_arguments, handle_capability, ANY),
    CommandSpec("NOOP", no_arguments, handle_noop, ANY),
    CommandSpec("LOGOUT", no_arguments, handle_logout, ANY),
    CommandSpec("ID", parse_id, handle_id, ANY, capability="ID"),
    # RFC 5161 3.1: ENABLE is valid in the authenticated state only.
    CommandSpec(
        "ENABLE",
        parse_enable,
        handle_enable,
        frozenset({State.AUTHENTICATED}),
        capability="ENABLE",
    ),
    CommandSpec("NAMESPACE", no_arguments, handle_namespace, AUTHENTICATED, capability="NAMESPACE"),
)
