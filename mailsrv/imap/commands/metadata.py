"""GETMETADATA and SETMETADATA (RFC 5464 METADATA and METADATA-SERVER).

Annotations live in the account's :class:`~mailsrv.interfaces.IMetadataStore`
(beside each mailbox; ``""`` is the server); both capabilities are offered
only where the storage declares it.  Each account has one user, so
``/private`` and ``/shared`` entries of a mailbox are kept in the same store
under their full names (RFC 5464 3.3 without ACL: only that user can reach
them).  Server ``/shared`` entries would have to be shared between users,
which a per-user store cannot do, so setting them is refused (3.3: "Servers
MAY restrict the creation of ... shared server annotations"); server
``/private`` entries are the user's own.  Private annotations being
supported, ``[METADATA NOPRIVATE]`` is never sent.

Limits are ``[limits] max_metadata_size`` (``[METADATA MAXSIZE n]``) and
``max_metadata_entries`` per mailbox (``[METADATA TOOMANY]``), from the
session policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from mailsrv.imap import response, syntax
from mailsrv.imap.lexer import LiteralFile, Reader
from mailsrv.imap.output import Done, no
from mailsrv.imap.registry import AUTHENTICATED, Command, CommandSpec, Result, State
from mailsrv.imap.session import existing
from mailsrv.interfaces import IMetadataStore, maybe_deferred

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "GetMetadata", "SetMetadata"]

#: DEPTH infinity (RFC 5464 4.2.2).
INFINITY = -1

_SCOPES = ("/private", "/shared")


@attrs.frozen
class GetMetadata(Command):
    mailbox: str
    entries: tuple[str, ...]
    max_size: int | None = None
    depth: int = 0


@attrs.frozen
class SetMetadata(Command):
    mailbox: str
    changes: tuple[tuple[str, bytes | None], ...]


def _entry(reader: Reader, setting: bool) -> str:
    """An entry name, lower-cased; BAD when RFC 5464 3.2 forbids it."""
    raw = reader.astring("an entry name")
    if any(c < 0x20 or c > 0x7E or c in b"*%" for c in raw):
        raise reader.error("entry names are printable ASCII without '*' or '%' (RFC 5464 3.2)")
    name = raw.decode("ascii").lower()
    if "//" in name or name.endswith("/"):
        raise reader.error("an entry name has no empty component (RFC 5464 3.2)")
    parts = name.split("/")[1:]
    if not name.startswith("/") or "/" + parts[0] not in _SCOPES:
        raise reader.error('entry names start with "/private" or "/shared" (RFC 5464 6)')
    if setting and (len(parts) < 2 or (parts[1] == "vendor" and len(parts) < 4)):
        raise reader.error(
            "an entry has a scope and a name; a vendor entry at least four components"
            " (RFC 5464 3.2)"
        )
    return name


def _options(reader: Reader) -> tuple[int | None, int]:
    # RFC 5464 5: getmetadata-options = "(" getmetadata-option *(SP ...) ")"
    max_size: int | None = None
    depth = 0
    while True:
        option = reader.atom("an option").upper()
        reader.space()
        if option == "MAXSIZE":
            max_size = reader.number32("MAXSIZE")
        elif option == "DEPTH":
            value = reader.atom("a depth").lower()
            if value not in ("0", "1", "infinity"):
                raise reader.error('DEPTH is 0, 1 or "infinity" (RFC 5464 4.2.2)')
            depth = INFINITY if value == "infinity" else int(value)
        else:
            raise reader.error(f"unknown GETMETADATA option {option}")
        if reader.accept(b")"):
            return max_size, depth
        reader.space()


def _options_ahead(reader: Reader) -> bool:
    """An option list rather than an entry list: entries start with "/"
    (or are strings), options with a letter."""
    following = reader.line[reader.pos + 1 : reader.pos + 2]
    return reader.peek() == 0x28 and following.isalpha()


def parse_getmetadata(reader: Reader, tag: str, name: str, uid: bool) -> GetMetadata:
    reader.space()
    max_size: int | None = None
    depth = 0
    options = reader.accept(b"(")
    if options:
        max_size, depth = _options(reader)
        reader.space()
    mailbox = syntax.mailbox(reader)
    reader.space()
    if not options and _options_ahead(reader):
        # RFC 5464 4.2.1 and 4.2.2's examples put the options after the
        # mailbox, against the grammar of section 5; clients do both.
        reader.expect(b"(")
        max_size, depth = _options(reader)
        reader.space()
    entries: list[str] = []
    if reader.accept(b"("):
        entries.append(_entry(reader, False))
        while not reader.accept(b")"):
            reader.space()
            entries.append(_entry(reader, False))
    else:
        # The grammar takes one bare entry; RFC 5464 4.4.1's example sends
        # several, as some clients do, so a space-separated run is accepted.
        entries.append(_entry(reader, False))
        while not reader.at_end():
            reader.space()
            entries.append(_entry(reader, False))
    reader.end()
    return GetMetadata(tag, name, mailbox, tuple(dict.fromkeys(entries)), max_size, depth)


def _value(reader: Reader) -> bytes | None:
    """value = nstring / literal8 (RFC 5464 5)."""
    if reader.keyword_ahead(b"NIL"):
        reader.pos += 3
        return None
    if reader.peek() in (0x7B, 0x7E):  # { or ~
        payload = reader.literal()
        if isinstance(payload, LiteralFile):
            payload.file.seek(0)
            return payload.file.read()
        return payload
    return reader.quoted()


def parse_setmetadata(reader: Reader, tag: str, name: str, uid: bool) -> SetMetadata:
    reader.space()
    mailbox = syntax.mailbox(reader)
    reader.space()
    reader.expect(b"(")
    changes: dict[str, bytes | None] = {}
    while True:
        entry = _entry(reader, True)
        reader.space()
        changes[entry] = _value(reader)
        if reader.accept(b")"):
            break
        reader.space()
    reader.end()
    return SetMetadata(tag, name, mailbox, tuple(changes.items()))


def _store(session: Session, mailbox: str) -> IMetadataStore:
    account = session.logged_in_account()
    if not IMetadataStore.providedBy(account):
        raise no("This server's storage keeps no annotations", "CANNOT")
    if mailbox:
        existing(mailbox)
    store: IMetadataStore = account
    return store


def _wanted(entries: Mapping[str, bytes], asked: str, depth: int) -> list[str]:
    """``asked`` (if set) and its descendants down to ``depth`` (4.2.2)."""
    found = [asked] if asked in entries else []
    if depth != 0:
        prefix = asked + "/"
        for name in sorted(entries):
            if name.startswith(prefix) and (depth == INFINITY or "/" not in name[len(prefix) :]):
                found.append(name)
    return found


def _value_out(value: bytes | None) -> bytes:
    if value is None:
        return b"NIL"
    if b"\0" in value:  # only literal8 carries NUL (RFC 3516, RFC 5464 5)
        return b"~{%d}\r\n" % len(value) + value
    return response.string(value)


def handle_getmetadata(session: Session, command: GetMetadata) -> Result:
    store = _store(session, command.mailbox)

    def answer(entries: Mapping[str, bytes]) -> Done:
        pairs: list[bytes] = []
        longest = 0
        for asked in command.entries:
            names = _wanted(entries, asked, command.depth)
            if not names and command.depth == 0:
                pairs.append(response.astring(asked) + b" NIL")
            for name in dict.fromkeys(names):
                value = entries[name]
                if command.max_size is not None and len(value) > command.max_size:
                    longest = max(longest, len(value))  # 4.2.1: the biggest left out
                    continue
                pairs.append(response.astring(name) + b" " + _value_out(value))
        if pairs:
            session.send(
                response.untagged(
                    "METADATA",
                    response.mailbox(command.mailbox, utf8=session.utf8),
                    b"(" + b" ".join(pairs) + b")",
                )
            )
        code = f"METADATA LONGENTRIES {longest}" if longest else None
        return Done(text="GETMETADATA completed", code=code)

    return maybe_deferred(store.get_metadata, command.mailbox).addCallback(answer)


def handle_setmetadata(session: Session, command: SetMetadata) -> Result:
    store = _store(session, command.mailbox)
    policy = session.policy
    for entry, value in command.changes:
        if command.mailbox == "" and entry.startswith("/shared/"):
            raise no(
                "Shared server annotations are the administrator's; set /private ones",
                "NOPERM",
            )
        if value is not None and len(value) > policy.max_metadata_size:
            # RFC 5464 4.3: nothing is changed when one entry fails.
            raise no(
                f"{entry} is larger than {policy.max_metadata_size} octets",
                f"METADATA MAXSIZE {policy.max_metadata_size}",
            )

    def done(_: object) -> Done:
        return Done(text="SETMETADATA completed")

    return maybe_deferred(
        store.set_metadata,
        command.mailbox,
        dict(command.changes),
        policy.max_metadata_entries,
    ).addCallback(done)


def _metadata_capability(session: Session) -> Sequence[str]:
    offered = session.state in (State.AUTHENTICATED, State.SELECTED) and (
        IMetadataStore.providedBy(session.account)
    )
    return ["METADATA", "METADATA-SERVER"] if offered else []


COMMANDS = (
    CommandSpec(
        "GETMETADATA",
        parse_getmetadata,
        handle_getmetadata,
        AUTHENTICATED,
        capability=_metadata_capability,
    ),
    CommandSpec(
        "SETMETADATA",
        parse_setmetadata,
        handle_setmetadata,
        AUTHENTICATED,
        capability=_metadata_capability,
    ),
)
