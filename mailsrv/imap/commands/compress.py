"""COMPRESS (RFC 4978): DEFLATE on the connection, after TLS or without it.

The command only answers and asks the connection to switch; the
compression itself is the Twisted adapter's and the response writer's
(:mod:`mailsrv.imap.compress`), below the framer, so no other command knows
of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from mailsrv.imap.lexer import Reader
from mailsrv.imap.output import Done, bad, no
from mailsrv.imap.registry import AUTHENTICATED, Command, CommandSpec, State

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = ["COMMANDS", "Compress"]


@attrs.frozen
class Compress(Command):
    mechanism: str


def parse_compress(reader: Reader, tag: str, name: str, uid: bool) -> Compress:
    reader.space()
    mechanism = reader.atom("a compression mechanism").upper()
    reader.end()
    return Compress(tag, name, mechanism)


def handle_compress(session: Session, command: Compress) -> Done:
    if command.mechanism != "DEFLATE":
        # RFC 4978 3: BAD for an unknown argument.
        raise bad(f"Unknown compression mechanism {command.mechanism}; only DEFLATE is offered")
    if session.compressing:
        # RFC 4978 3: NO [COMPRESSIONACTIVE] when the mechanism is active.
        raise no("DEFLATE is already active", "COMPRESSIONACTIVE")
    # The OK goes out uncompressed; everything after its CRLF is compressed.
    return Done(text="DEFLATE active", after=session.start_compression)


def _compress_capability(session: Session) -> Sequence[str]:
    # Offered once logged in, where the command is valid (RFC 4978 5:
    # command-auth), as Dovecot does.
    logged_in = session.state in (State.AUTHENTICATED, State.SELECTED)
    return ["COMPRESS=DEFLATE"] if logged_in else []


COMMANDS = (
    CommandSpec(
        "COMPRESS",
        parse_compress,
        handle_compress,
        AUTHENTICATED,
        capability=_compress_capability,
    ),
)
