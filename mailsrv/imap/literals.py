"""How an IMAP session takes an announced literal: into memory, spooled
to a file (the messages of APPEND, MULTIAPPEND, CATENATE and REPLACE), or
refused, and what the client is told."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from mailsrv.imap import response
from mailsrv.imap.framer import LiteralNeeded
from mailsrv.imap.hooking import withdrawn
from mailsrv.imap.registry import State
from mailsrv.observe import UNKNOWN

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = [
    "APPENDING",
    "APPEND_TOTAL_FACTOR",
    "SPOOL_THRESHOLD",
    "LiteralAnswer",
    "answer_literal",
]

#: APPEND literals above this size are spooled to a temporary file as they
#: arrive; smaller literals stay in memory.
SPOOL_THRESHOLD = 64 * 1024

#: The commands whose literals are messages (spooled, up to the message
#: size limit each), and the states they take them in.
APPENDING = {
    "APPEND": frozenset({State.AUTHENTICATED, State.SELECTED}),
    "REPLACE": frozenset({State.SELECTED}),
    "UID REPLACE": frozenset({State.SELECTED}),
}
#: One APPEND (MULTIAPPEND, CATENATE) spools at most this many times the
#: message size limit in all, so a client cannot fill the disk with one
#: command that is never finished.
APPEND_TOTAL_FACTOR = 10


class LiteralAnswer(enum.Enum):
    """How the session takes an announced literal."""

    IN_MEMORY = "in memory"
    SPOOLED = "spooled to a file"
    REFUSED = "refused"


def answer_literal(session: Session, event: LiteralNeeded) -> LiteralAnswer:
    """Take a literal into memory, spool it (APPEND), or refuse it, and
    tell the client (``+`` for a synchronizing literal, or the refusal)."""
    tag = event.tag or "*"
    appending = event.command in APPENDING and session.state in APPENDING[event.command]
    size = event.size
    in_memory = event.command_size + size <= session.policy.max_line_length
    spool = appending and (size > SPOOL_THRESHOLD or not in_memory)
    refusal: bytes | None = None
    # A refused synchronizing literal is NO (RFC 3502: the whole
    # MULTIAPPEND is cancelled, nothing stored); a LITERAL+ one comes
    # anyway and is dropped with its command, so BAD (RFC 7888 4).
    status = "NO" if event.synchronizing else "BAD"
    limit = session.policy.max_message_size
    if appending and size > limit:
        refusal = response.tagged(
            tag, status, f"Message too large (at most {limit} octets)", "TOOBIG"
        )
    elif appending and event.spooled_size + size > APPEND_TOTAL_FACTOR * limit:
        refusal = response.tagged(
            tag,
            status,
            f"Too much in one APPEND (at most {APPEND_TOTAL_FACTOR * limit} octets)",
            "TOOBIG",
        )
    elif event.binary and not appending:
        refusal = response.tagged(tag, "BAD", "literal8 is only allowed in APPEND")
    elif not spool and not in_memory:
        refusal = response.tagged(tag, "BAD", "Command too long", "TOOBIG")
    elif not event.synchronizing and withdrawn(session, "LITERAL+"):
        # RFC 7888 3: without LITERAL+ a server knows no "{n+}" literal.
        refusal = response.tagged(tag, "BAD", "Non-synchronizing literal without LITERAL+")
    if refusal is not None:
        session.send(refusal)
        # Reported as the client saw it: "tag NO ..." or "tag BAD ...".
        session.probe.command_refused(event.command or UNKNOWN, refusal.split(b" ", 2)[1].decode())
        return LiteralAnswer.REFUSED
    if event.synchronizing:
        session.send(b"+ Ready for literal data\r\n")
    return LiteralAnswer.SPOOLED if spool else LiteralAnswer.IN_MEMORY
