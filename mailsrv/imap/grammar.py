"""IMAP4rev1 commands: parsing framed segments into command objects.

Pure code: no I/O, no reactor.  :func:`parse_command` turns a command's
segments (see :mod:`mailsrv.imap.lexer`) into one of the frozen command
objects below.  Anything malformed raises :class:`ParseError` and nothing
else, with a message fit for ``tag BAD <message>``.  The shared argument
syntax is in :mod:`mailsrv.imap.syntax`, FETCH's and SEARCH's in
:mod:`mailsrv.imap.fetch_syntax` and :mod:`mailsrv.imap.search_syntax`;
responses are written by :mod:`mailsrv.imap.response`.

Grammar references are to RFC 3501 section 9 unless noted; RFC 4466 gives
the extended LIST/SELECT/FETCH/STORE syntax, RFC 7888 LITERAL+.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import attrs

from mailsrv.imap import syntax
from mailsrv.imap.fetch_syntax import FetchAttribute, fetch_items
from mailsrv.imap.lexer import ATOM_CHARS, TAG_CHARS, LiteralFile, ParseError, Reader, Segment
from mailsrv.imap.search_syntax import SearchKey, search_arguments
from mailsrv.imap.syntax import SequenceSet

__all__ = [
    "Append",
    "Authenticate",
    "Command",
    "Copy",
    "Create",
    "Enable",
    "Expunge",
    "Fetch",
    "Id",
    "List",
    "Login",
    "MailboxCommand",
    "Rename",
    "Search",
    "Select",
    "Simple",
    "Status",
    "Store",
    "parse_command",
]


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


def _fetch(reader: Reader, tag: str, uid: bool) -> Fetch:
    reader.space()
    seqset = syntax.sequence_set(reader)
    reader.space()
    attributes = fetch_items(reader)
    modifiers: tuple[tuple[str, object], ...] = ()
    if reader.peek() == 0x20:
        reader.space()
        modifiers = syntax.parameters(reader)
    reader.end()
    if uid and not any(a.name == "UID" for a in attributes):
        attributes.append(FetchAttribute("UID"))  # RFC 3501 6.4.8: UID is implied
    return Fetch(tag, "FETCH", uid, seqset, tuple(attributes), modifiers)


def _search(reader: Reader, tag: str, uid: bool) -> Search:
    reader.space()
    return_options, charset, key = search_arguments(reader)
    reader.end()
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


def _status_items(reader: Reader) -> tuple[str, ...]:
    items = syntax.paren_atoms(reader, "a STATUS item")
    if not items:
        raise reader.error("STATUS needs at least one item")
    for item in items:
        if item not in _STATUS_ITEMS:
            raise reader.error(f"unknown STATUS item {item}")
    return items


def _list(reader: Reader, tag: str, name: str) -> List:
    reader.space()
    selection: tuple[str, ...] = ()
    extended = False
    if name == "LIST" and reader.peek() == 0x28:
        extended = True
        selection = syntax.paren_atoms(reader, "a LIST selection option")
        for option in selection:
            if option not in _LIST_SELECTION:
                raise reader.error(f"unknown LIST selection option {option}")
        if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH", "REMOTE"}:
            # RFC 5258 3: alone or only with REMOTE it MUST be answered BAD.
            raise reader.error("RECURSIVEMATCH needs a selection option other than REMOTE")
        reader.space()
    reference = syntax.mailbox(reader, "a reference name")
    reader.space()
    patterns: list[str] = []
    if name == "LIST" and reader.peek() == 0x28:
        extended = True
        reader.pos += 1
        while True:
            patterns.append(syntax.pattern(reader))
            if reader.accept(b")"):
                break
            reader.space()
    else:
        patterns.append(syntax.pattern(reader))
    return_options: list[str] = []
    status_items: tuple[str, ...] = ()
    if name == "LIST" and reader.peek() == 0x20:
        reader.space()
        if not reader.keyword_ahead(b"RETURN"):
            raise reader.error(f"expected RETURN, found {reader.describe_here()}")
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


def _store(reader: Reader, tag: str, uid: bool) -> Store:
    reader.space()
    seqset = syntax.sequence_set(reader)
    reader.space()
    unchanged_since: int | None = None
    if reader.peek() == 0x28:
        for param, value in syntax.parameters(reader):
            if param != "UNCHANGEDSINCE" or not isinstance(value, int):
                raise reader.error(f"unknown or malformed STORE modifier {param}")
            unchanged_since = value
        reader.space()
    word = reader.run(ATOM_CHARS | {ord("+")}, "FLAGS, +FLAGS or -FLAGS").decode().upper()
    mode = {"": "replace", "+": "add", "-": "remove"}
    sign = word[0] if word[:1] in ("+", "-") else ""
    rest = word[len(sign) :]
    if rest not in ("FLAGS", "FLAGS.SILENT"):
        raise reader.error(f"expected FLAGS, +FLAGS or -FLAGS, found {word!r}")
    reader.space()
    if reader.peek() == 0x28:
        flags = syntax.flag_list(reader)
    else:
        items = [syntax.flag(reader)]
        while reader.peek() == 0x20:
            reader.space()
            items.append(syntax.flag(reader))
        flags = tuple(dict.fromkeys(items))
    reader.end()
    return Store(
        tag, "STORE", uid, seqset, mode[sign], rest.endswith(".SILENT"), flags, unchanged_since
    )


def _append(reader: Reader, tag: str) -> Append:
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
    return Append(tag, "APPEND", mailbox, flags, date, message, binary)


def _id(reader: Reader, tag: str) -> Id:
    reader.space()
    if reader.keyword_ahead(b"NIL"):
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


def _create(reader: Reader, tag: str) -> Create:
    reader.space()
    mailbox = syntax.mailbox(reader)
    uses: list[str] = []
    if reader.peek() == 0x20:
        reader.space()
        for param, value in syntax.parameters(reader):
            if param != "USE" or not isinstance(value, tuple):
                raise reader.error(f"unknown CREATE parameter {param}")
            for use in value:
                if not isinstance(use, str) or not use.startswith("\\"):
                    raise reader.error("USE takes a list of special-use attributes")
                uses.append(use)
    reader.end()
    return Create(tag, "CREATE", mailbox, tuple(uses))


def _generic_atom_list(reader: Reader) -> tuple[str, ...]:
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


def _command(reader: Reader) -> Command:
    tag = reader.run(TAG_CHARS, "a tag").decode("ascii")
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
                initial = reader.run(ATOM_CHARS, "a base64 initial response")
        reader.end()
        return Authenticate(tag, name, mechanism, initial)
    if name in ("SELECT", "EXAMINE"):
        reader.space()
        mailbox = syntax.mailbox(reader)
        params: tuple[tuple[str, object], ...] = ()
        if reader.peek() == 0x20:
            reader.space()
            params = syntax.parameters(reader)
        reader.end()
        return Select(tag, name, mailbox, name == "EXAMINE", params)
    if name in ("DELETE", "SUBSCRIBE", "UNSUBSCRIBE"):
        reader.space()
        mailbox = syntax.mailbox(reader)
        reader.end()
        return MailboxCommand(tag, name, mailbox)
    if name == "CREATE":
        return _create(reader, tag)
    if name == "RENAME":
        reader.space()
        old = syntax.mailbox(reader)
        reader.space()
        new = syntax.mailbox(reader)
        reader.end()
        return Rename(tag, name, old, new)
    if name in ("LIST", "LSUB"):
        return _list(reader, tag, name)
    if name == "STATUS":
        reader.space()
        mailbox = syntax.mailbox(reader)
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
        seqset = syntax.sequence_set(reader)
        reader.space()
        mailbox = syntax.mailbox(reader)
        reader.end()
        return Copy(tag, name, uid, seqset, mailbox)
    if name == "SEARCH":
        return _search(reader, tag, uid)
    if name == "EXPUNGE":
        if uid:
            reader.space()
            seqset = syntax.sequence_set(reader)
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
    reader = Reader(segments, max_depth)
    try:
        return _command(reader)
    except ParseError:
        raise
    except (ValueError, IndexError, UnicodeDecodeError, RecursionError) as exc:
        # Defence in depth: a grammar bug must not become a crash.
        raise ParseError(f"malformed command ({type(exc).__name__})", reader.tag) from None
