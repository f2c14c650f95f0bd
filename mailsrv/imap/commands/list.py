"""LIST and LSUB (RFC 3501 6.3.8, 6.3.9), with LIST-EXTENDED (RFC 5258),
CHILDREN (RFC 3348), SPECIAL-USE (RFC 6154) and LIST-STATUS (RFC 5819)."""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer

from mailsrv.errors import StorageError
from mailsrv.imap import response, syntax
from mailsrv.imap.commands.status import check_items, mailbox_status_line, status_items
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done
from mailsrv.imap.registry import AUTHENTICATED, Command, CommandSpec
from mailsrv.imap.syntax import NormalizedName, UndecodedName
from mailsrv.interfaces import SPECIAL_USES, MailboxEntry

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "List", "list_line"]

_LIST_SELECTION = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


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


# -- parsing ------------------------------------------------------------------------


def parse_list(reader: Reader, tag: str, name: str, uid: bool) -> List:
    reader.space()
    extended = False
    selection: tuple[str, ...] = ()
    if name == "LIST" and reader.peek() == 0x28:
        extended = True
        selection = _selection(reader)
        reader.space()
    reference = syntax.mailbox(reader, "a reference name")
    reader.space()
    if name == "LIST" and reader.peek() == 0x28:
        extended = True
        patterns = _patterns(reader)
    else:
        patterns = [syntax.pattern(reader)]
    return_options: list[str] = []
    items: tuple[str, ...] = ()
    if name == "LIST" and reader.peek() == 0x20:
        extended = True
        return_options, items = _return_options(reader)
    reader.end()
    return List(
        tag, name, reference, tuple(patterns), selection, tuple(return_options), items, extended
    )


def _selection(reader: Reader) -> tuple[str, ...]:
    selection = syntax.paren_atoms(reader, "a LIST selection option")
    for option in selection:
        if option not in _LIST_SELECTION:
            raise reader.error(f"unknown LIST selection option {option}")
    if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH", "REMOTE"}:
        # RFC 5258 3: alone or only with REMOTE it MUST be answered BAD.
        raise reader.error("RECURSIVEMATCH needs a selection option other than REMOTE")
    return selection


def _patterns(reader: Reader) -> list[str]:
    """RFC 5258's ``"(" list-mailbox *(SP list-mailbox) ")"``."""
    reader.pos += 1
    patterns: list[str] = []
    while True:
        patterns.append(syntax.pattern(reader))
        if reader.accept(b")"):
            return patterns
        reader.space()


def _return_options(reader: Reader) -> tuple[list[str], tuple[str, ...]]:
    """``SP RETURN (options)``: the options and the STATUS items."""
    reader.space()
    if not reader.keyword_ahead(b"RETURN"):
        raise reader.error(f"expected RETURN, found {reader.describe_here()}")
    reader.pos += len(b"RETURN")
    reader.space()
    reader.expect(b"(")
    options: list[str] = []
    items: tuple[str, ...] = ()
    if reader.accept(b")"):
        return options, items
    while True:
        option = reader.atom("a LIST return option").upper()
        if option not in _LIST_RETURN:
            raise reader.error(f"unknown LIST return option {option}")
        if option == "STATUS":
            reader.space()
            items = status_items(reader)
        options.append(option)
        if reader.accept(b")"):
            return options, items
        reader.space()


# -- answering ----------------------------------------------------------------------


@attrs.define
class _Tree:
    """The account's mailboxes as LIST sees them."""

    existing: dict[str, frozenset[str]]
    order: list[str]
    parents: set[str]
    subscribed: set[str]
    delimiter: str
    matches: Callable[[str], bool]

    def attributes(self, name: str, show_subscribed: bool) -> list[str]:
        attributes: list[str] = []
        if name not in self.existing:
            attributes.append("\\NonExistent")
        else:
            stored = self.existing[name]
            if "\\Noselect" in stored:
                attributes.append("\\Noselect")
            attributes.append("\\HasChildren" if name in self.parents else "\\HasNoChildren")
            attributes.extend(
                sorted(
                    a for a in stored if a not in ("\\Noselect", "\\HasChildren", "\\HasNoChildren")
                )
            )
        if show_subscribed and name in self.subscribed:
            attributes.append("\\Subscribed")
        return attributes


#: A LIST answer line: name, attributes, and extended data (CHILDINFO).
_Row = tuple[str, list[str], bytes]


@defer.inlineCallbacks
def handle_list(session: Session, command: List) -> Generator[defer.Deferred[Any], Any, Done]:
    account = session.logged_in_account()
    delimiter = account.delimiter
    check_items(session, command.status_items)
    if len(command.patterns) == 1 and command.patterns[0] == "" and not command.selection:
        # RFC 3501 6.3.8: the delimiter and root of the reference.
        session.send(
            response.untagged(command.name, "(\\Noselect)", response.serialize(delimiter), '""')
        )
        return Done(text=f"{command.name} completed")
    entries: Sequence[MailboxEntry] = yield defer.maybeDeferred(account.list_mailboxes)
    subscribed: set[str] = set()
    if (
        command.name == "LSUB"
        or "SUBSCRIBED" in command.selection
        or "SUBSCRIBED" in command.return_options
    ):
        subscribed = set((yield defer.maybeDeferred(account.subscriptions)))
    existing = {entry.name: entry.attributes for entry in entries}
    tree = _Tree(
        existing,
        [entry.name for entry in entries],
        _parents(existing, delimiter),
        subscribed,
        delimiter,
        _matcher(command, delimiter),
    )
    if command.name == "LSUB" or "SUBSCRIBED" in command.selection:
        rows = _subscribed_rows(command, tree)
    else:
        rows = _rows(command, tree)
    quoted_delimiter = response.serialize(delimiter)
    for name, attributes, extended in rows:
        flags = b"(" + b" ".join(a.encode("ascii") for a in attributes) + b")"
        line = b"* %s %s %s %s%s\r\n" % (
            command.name.encode(),
            flags,
            quoted_delimiter,
            response.mailbox(name, utf8=session.utf8),
            extended,
        )
        session.send(line)
        if command.status_items and name in existing and "\\Noselect" not in attributes:
            try:
                line = yield mailbox_status_line(session, name, command.status_items)
            except StorageError:
                continue
            session.send(line)
    return Done(text=f"{command.name} completed")


def list_line(
    name: str,
    delimiter: str,
    utf8: bool,
    attributes: Sequence[str] = (),
    oldname: str | None = None,
) -> bytes:
    """An untagged LIST line for ``name`` outside a LIST command (SELECT,
    CREATE, DELETE, RENAME in IMAP4rev2), with ``("OLDNAME" (oldname))``
    (RFC 9051 6.3.9.7); ``oldname`` defaults to the name as the client
    wrote it when that was not the NFC form it is known by."""
    if oldname is None and isinstance(name, NormalizedName):
        oldname = name.supplied
    extended = b""
    if oldname is not None:
        extended = b' ("OLDNAME" (%s))' % response.mailbox(oldname, utf8=utf8)
    return b"* LIST (%s) %s %s%s\r\n" % (
        " ".join(attributes).encode("ascii"),
        response.serialize(delimiter),
        response.mailbox(str(name), utf8=utf8),
        extended,
    )


def _matcher(command: List, delimiter: str) -> Callable[[str], bool]:
    # A reference or pattern that is not valid modified UTF-7 names no
    # mailbox: it matches nothing (as in Dovecot), and is no error.
    matchers = [
        _pattern_regex(command.reference, pattern, delimiter)
        for pattern in command.patterns
        if pattern and not isinstance(pattern, UndecodedName)
    ]
    if isinstance(command.reference, UndecodedName):
        matchers = []

    def matches(name: str) -> bool:
        return any(m.fullmatch(name) for m in matchers)

    return matches


def _subscribed_rows(command: List, tree: _Tree) -> list[_Row]:
    """LSUB, and LIST (SUBSCRIBED): the subscriptions, with the parents that
    match where a subscription below them does not (\\Noselect for LSUB,
    CHILDINFO with RECURSIVEMATCH, RFC 5258 3.5)."""
    lsub = command.name == "LSUB"
    matches = tree.matches
    candidates = [n for n in tree.order if n in tree.subscribed]
    candidates += sorted(n for n in tree.subscribed if n not in tree.existing)
    seen = set(candidates)
    extra: dict[str, bool] = {}
    for name in candidates:
        for parent in _ancestors(name, tree.delimiter):
            if parent not in seen and matches(parent) and not matches(name):
                extra[parent] = True
    rows: list[_Row] = []
    for name in candidates:
        if not matches(name):
            continue
        if lsub:
            attributes = [a for a in tree.existing.get(name, ()) if a == "\\Noselect"]
        else:
            attributes = tree.attributes(name, True)
        rows.append((name, attributes, b""))
    for name in extra:
        if lsub:
            rows.append((name, ["\\Noselect"], b""))
        elif "RECURSIVEMATCH" in command.selection:
            attributes = tree.attributes(name, False)
            rows.append((name, attributes, b' ("CHILDINFO" ("SUBSCRIBED"))'))
    return rows


def _rows(command: List, tree: _Tree) -> list[_Row]:
    """LIST: the mailboxes that match (only special-use ones with
    SPECIAL-USE selected)."""
    show_subscribed = "SUBSCRIBED" in command.return_options
    special_only = "SPECIAL-USE" in command.selection
    rows: list[_Row] = []
    for name in tree.order:
        if not tree.matches(name):
            continue
        attributes = tree.attributes(name, show_subscribed)
        if special_only and not any(a in SPECIAL_USES for a in attributes):
            continue
        rows.append((name, attributes, b""))
    return rows


def _pattern_regex(reference: str, pattern: str, delimiter: str) -> re.Pattern[str]:
    """A LIST pattern (reference + pattern) as a regex; INBOX in any case."""
    full = reference + pattern if not pattern.startswith(delimiter) else pattern
    if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in (delimiter, "*", "%")):
        full = "INBOX" + full[5:]
    out = []
    for char in full:
        if char == "*":
            out.append(".*")
        elif char == "%":
            out.append(f"[^{re.escape(delimiter)}]*")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def _ancestors(name: str, delimiter: str) -> list[str]:
    parts = name.split(delimiter)
    return [delimiter.join(parts[:i]) for i in range(1, len(parts))]


def _parents(existing: Iterable[str], delimiter: str) -> set[str]:
    """Names that have at least one child among ``existing``."""
    out: set[str] = set()
    for name in existing:
        out.update(_ancestors(name, delimiter))
    return out


COMMANDS = (
    CommandSpec("LIST", parse_list, handle_list, AUTHENTICATED),
    CommandSpec("LSUB", parse_list, handle_list, AUTHENTICATED),
)
