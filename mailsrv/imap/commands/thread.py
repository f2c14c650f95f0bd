"""THREAD and UID THREAD (RFC 5256): ORDEREDSUBJECT, REFERENCES and REFS.

The algorithms are :mod:`mailsrv.imap.threading_`'s; the matches come from
the SEARCH engine through :func:`mailsrv.imap.contexts.matches`, with the
cached sort records (:func:`mailsrv.imap.content.sort_records`).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer

from mailsrv.imap import threading_
from mailsrv.imap.commands.sort import parse_charset, search_criteria
from mailsrv.imap.contexts import check_charset, compile_program, matches, write_line
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done
from mailsrv.imap.registry import SELECTED, Command, CommandSpec
from mailsrv.imap.search_syntax import SearchKey
from mailsrv.imap.sortcache import Keys, no_collection, store_of

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Thread"]

#: The key columns THREAD reads (:mod:`mailsrv.imap.sortcache`).
_COLUMNS = frozenset({"sent", "subject", "thread"})


@attrs.frozen
class Thread(Command):
    uid: bool
    algorithm: str
    charset: str
    key: SearchKey


def parse_thread(reader: Reader, tag: str, name: str, uid: bool) -> Thread:
    reader.space()
    algorithm = reader.atom("a threading algorithm").upper()
    if algorithm not in threading_.ALGORITHMS:
        raise reader.error(f"unknown threading algorithm {algorithm}")
    reader.space()
    charset = parse_charset(reader)
    reader.space()
    return Thread(tag, name, uid, algorithm, charset, search_criteria(reader))


@defer.inlineCallbacks
def handle_thread(session: Session, command: Thread) -> Generator[defer.Deferred[Any], Any, Done]:
    check_charset(command.charset)
    view = session.view()
    program = compile_program(command.key, view, command.charset)
    whole = command.key.op == "ALL"
    question = ("THREAD", command.uid, command.algorithm)
    store = store_of(view.mailbox)
    if whole:
        # Asked again with no message come or gone: the same threads.
        data = store.remembered(question, view.map)
        if data is not None:
            yield write_line(session.output(), b"* THREAD", data)
            return Done(text="THREAD completed")
    fingerprint = view.map.fingerprint()
    found = yield matches(session, program, command.key, None, _COLUMNS)
    if found is None:
        return Done("NO", "Connection lost")
    hits, keys = found
    with no_collection():
        data = _threads(command, hits, keys)
    if whole and keys.complete and view.map.fingerprint() == fingerprint:
        store.remember(question, fingerprint, data)
    yield write_line(session.output(), b"* THREAD", data)
    return Done(text="THREAD completed")


def _threads(command: Thread, hits: list[tuple[int, int]], keys: Keys) -> bytes:
    """The THREAD response's data for the matches ``(seq, uid)``."""
    sent, subject, thread = keys.sent, keys.column("subject").get, keys.thread
    messages = [
        threading_.Message(
            uid if command.uid else seq, seq, sent(uid), subject(uid, ""), *thread(uid)
        )
        for seq, uid in hits
    ]
    if command.algorithm == "ORDEREDSUBJECT":
        threads = threading_.ordered_subject(messages)
    else:
        threads = threading_.references(messages, command.algorithm == "REFERENCES")
    return threading_.render(threads)


def _capabilities(session: Session) -> tuple[str, ...]:
    return tuple(f"THREAD={name}" for name in threading_.ALGORITHMS)


# RFC 5256 BASE.6.4.THREAD: no EXPUNGE during THREAD, but during UID THREAD.
COMMANDS = (
    CommandSpec(
        "THREAD",
        parse_thread,
        handle_thread,
        SELECTED,
        capability=_capabilities,
        expunges_allowed=False,
        names_messages=True,
    ),
    CommandSpec(
        "THREAD",
        parse_thread,
        handle_thread,
        SELECTED,
        uid=True,
        capability=_capabilities,
        names_messages=True,
    ),
)
