"""SEARCH and UID SEARCH (RFC 3501 6.4.4), with ESEARCH's RETURN (RFC 4731),
SEARCHRES's SAVE and ``$`` (RFC 5182) and CONDSTORE's MODSEQ (RFC 7162).

The keys' syntax is :mod:`mailsrv.imap.search_syntax`'s; the program is
compiled and run by :mod:`mailsrv.imap.searching`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from mailsrv.imap.budget import CommandBudget, check_content_keys
from mailsrv.imap.condstore import modseq_view
from mailsrv.imap.contexts import Query, answer
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import CommandError, Done, bad, no
from mailsrv.imap.registry import SELECTED, Command, CommandSpec
from mailsrv.imap.search_syntax import SearchKey, search_arguments
from mailsrv.imap.searching import CHARSETS, NotImplementedKey, compile_key, run_extended, run_plain
from mailsrv.imap.selected import UidMap
from mailsrv.imap.session import UTF8_ACCEPT

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Search"]


@attrs.frozen
class Search(Command):
    """SEARCH; ``key`` is the AND of the top-level keys.

    ``return_options`` are RFC 4731 ESEARCH options (None: plain SEARCH).
    """

    uid: bool
    charset: str | None
    key: SearchKey
    return_options: tuple[str, ...] | None = None


def parse_search(reader: Reader, tag: str, name: str, uid: bool) -> Search:
    reader.space()
    return_options, charset, key = search_arguments(reader)
    reader.end()
    return Search(tag, name, uid, charset, key, return_options)


def handle_search(session: Session, command: Search) -> defer.Deferred[Done]:
    """Fails with NO for unsupported charsets and keys.  A SEARCH RETURN
    (SAVE) that fails with NO empties ``$`` (RFC 5182 2.1); a BAD leaves it
    alone."""
    view = session.view()
    if command.charset is not None and UTF8_ACCEPT in session.enabled:
        # RFC 6855 3: a UTF-8 session's strings are UTF-8 already.
        raise bad("SEARCH CHARSET is not allowed after ENABLE UTF8=ACCEPT (RFC 6855 3)")
    if command.return_options is None and session.rev2:
        # RFC 9051 6.4.4: SEARCH without RETURN is RETURN (ALL), answered
        # with ESEARCH (appendix E item 4).
        command = attrs.evolve(command, return_options=())
    options = command.return_options
    if options is not None and _CONTEXT_OPTIONS.intersection(o.split(" ")[0] for o in options):
        # RFC 5267 (CONTEXT=SEARCH): results kept whole, in mailbox order.
        query = Query(command.tag, command.uid, command.key, command.charset, None, options)
        d = defer.maybeDeferred(answer, session, query, "SEARCH")
    else:
        d = defer.maybeDeferred(_run, session, command)
    if command.return_options is not None and "SAVE" in command.return_options:

        def failed(failure: Failure) -> Failure:
            error = failure.value
            if not (isinstance(error, CommandError) and error.status == "BAD"):
                view.saved = UidMap(())
            return failure

        d.addErrback(failed)
    return d


#: RETURN options of RFC 5267 contexts.
_CONTEXT_OPTIONS = frozenset({"CONTEXT", "UPDATE", "PARTIAL"})


def _run(session: Session, command: Search) -> defer.Deferred[Done]:
    if command.charset not in (None, *CHARSETS):
        raise no(
            f"Charset {command.charset} is not supported", f"BADCHARSET ({' '.join(CHARSETS)})"
        )
    view = session.view()
    check_content_keys(command.key, session.policy.max_search_content_keys)
    try:
        program = compile_key(command.key, view, command.charset)
    except NotImplementedKey as e:
        raise no(f"SEARCH {e} is not supported", "CANNOT") from None
    program.budget = CommandBudget(session.policy.command_cpu_seconds)
    if program.modseqs is not None:
        modseq_view(session, "SEARCH MODSEQ")  # RFC 7162 3.1: enables CONDSTORE
    writer, clock = session.output(), session.clock
    if command.return_options is None:
        return run_plain(view, view.mailbox, program, command.uid, writer, clock)
    return run_extended(
        view,
        view.mailbox,
        program,
        command.tag,
        command.uid,
        command.return_options,
        writer,
        clock,
    )


# RFC 3501 7.4.1: no EXPUNGE response while SEARCH runs.
COMMANDS = (
    CommandSpec(
        "SEARCH",
        parse_search,
        handle_search,
        SELECTED,
        expunges_allowed=False,
        names_messages=True,
    ),
    CommandSpec(
        "SEARCH",
        parse_search,
        handle_search,
        SELECTED,
        uid=True,
        expunges_allowed=False,
        names_messages=True,
    ),
)
