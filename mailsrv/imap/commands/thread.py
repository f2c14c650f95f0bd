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
from mailsrv.imap.contexts import check_charset, compile_program, matches
from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done
from mailsrv.imap.registry import SELECTED, Command, CommandSpec
from mailsrv.imap.search_syntax import SearchKey

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Thread"]


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
    found = yield matches(session, program, command.key, None, extra_records=True)
    if found is None:
        return Done("NO", "Connection lost")
    hits, keys = found
    messages = [
        threading_.Message(uid if command.uid else seq, seq, keys.sent(uid), keys.record(uid))
        for seq, uid in hits
    ]
    if command.algorithm == "ORDEREDSUBJECT":
        threads = threading_.ordered_subject(messages)
    else:
        threads = threading_.references(messages, command.algorithm == "REFERENCES")
    data = threading_.render(threads)
    session.output().write(b"* THREAD " + data + b"\r\n" if data else b"* THREAD\r\n")
    return Done(text="THREAD completed")


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
