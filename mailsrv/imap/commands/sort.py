"""SORT and UID SORT (RFC 5256), with SORT=DISPLAY's keys (RFC 5957) and
ESORT's and CONTEXT=SORT's RETURN options (RFC 5267).

The search program is SEARCH's (:mod:`mailsrv.imap.search_syntax`); the
engine is :mod:`mailsrv.imap.sorting`, the answer and UPDATE contexts
:mod:`mailsrv.imap.contexts`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from mailsrv.imap.contexts import Query, answer
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import CommandError, Done
from mailsrv.imap.registry import SELECTED, Command, CommandSpec
from mailsrv.imap.search_syntax import SearchKey, parse_return_options, search_key
from mailsrv.imap.selected import UidMap
from mailsrv.imap.sorting import KEYS, Criterion

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Sort", "parse_charset", "search_criteria"]

#: What CAPABILITY lists for SORT: RFC 5256, RFC 5957, RFC 5267.
CAPABILITIES = ("SORT", "SORT=DISPLAY", "ESORT", "CONTEXT=SORT")


@attrs.frozen
class Sort(Command):
    """SORT; ``return_options`` None for the plain form (``* SORT``)."""

    uid: bool
    criteria: tuple[Criterion, ...]
    charset: str
    key: SearchKey
    return_options: tuple[str, ...] | None = None


def sort_criteria(reader: Reader) -> tuple[Criterion, ...]:
    """ "(" sort-criterion *(SP sort-criterion) ")" (RFC 5256 5)."""
    reader.expect(b"(")
    criteria: list[Criterion] = []
    while True:
        word = reader.atom("a sort key").upper()
        reverse = word == "REVERSE"
        if reverse:
            reader.space()
            word = reader.atom("a sort key").upper()
        if word not in KEYS:
            raise reader.error(f"unknown sort key {word}")
        criteria.append(Criterion(word, reverse))
        if reader.accept(b")"):
            return tuple(criteria)
        reader.space()


def parse_charset(reader: Reader) -> str:
    """The mandatory charset of SORT and THREAD (atom or quoted)."""
    try:
        return reader.astring("a charset name").decode("ascii").upper()
    except UnicodeDecodeError:
        raise reader.error("invalid charset name") from None


def search_criteria(reader: Reader) -> SearchKey:
    """One or more search keys, ANDed, up to the end of the command."""
    keys = [search_key(reader, 1)]
    while reader.peek() == 0x20:
        reader.space()
        keys.append(search_key(reader, 1))
    reader.end()
    return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))


def parse_sort(reader: Reader, tag: str, name: str, uid: bool) -> Sort:
    reader.space()
    options: tuple[str, ...] | None = None
    if reader.keyword_ahead(b"RETURN"):
        reader.pos += len(b"RETURN")
        reader.space()
        options = parse_return_options(reader)
        reader.space()
    criteria = sort_criteria(reader)
    reader.space()
    charset = parse_charset(reader)
    reader.space()
    return Sort(tag, name, uid, criteria, charset, search_criteria(reader), options)


def handle_sort(session: Session, command: Sort) -> defer.Deferred[Done]:
    """A RETURN (SAVE) that fails with NO empties ``$`` (RFC 5182 2.1)."""
    view = session.view()
    query = Query(
        command.tag,
        command.uid,
        command.key,
        command.charset,
        command.criteria,
        command.return_options,
    )
    d = defer.maybeDeferred(answer, session, query, "SORT")
    if command.return_options is not None and "SAVE" in command.return_options:

        def failed(failure: Failure) -> Failure:
            error = failure.value
            if not (isinstance(error, CommandError) and error.status == "BAD"):
                view.saved = UidMap(())
            return failure

        d.addErrback(failed)
    return d


def _capabilities(session: Session) -> tuple[str, ...]:
    return CAPABILITIES


# RFC 5256 BASE.6.4.SORT: no EXPUNGE during SORT, but during UID SORT.
COMMANDS = (
    CommandSpec(
        "SORT",
        parse_sort,
        handle_sort,
        SELECTED,
        capability=_capabilities,
        expunges_allowed=False,
        names_messages=True,
    ),
    CommandSpec(
        "SORT",
        parse_sort,
        handle_sort,
        SELECTED,
        uid=True,
        capability=_capabilities,
        names_messages=True,
    ),
)
