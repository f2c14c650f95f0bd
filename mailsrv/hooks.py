"""Session hooks: what an embedding application may change in a session.

The daemon sets none.  :mod:`mailsrv.testing` uses them to make the server
behave like other servers a client must cope with (fewer capabilities, a NO
where mailsrv would say OK, a dropped connection, a slow answer, an
``[ALERT]``), and :mod:`mailsrv.twistedmail` to withdraw what a bridged
twisted.mail mailbox cannot back (MODSEQ).  Both protocols ask the same two
questions, in one place each, through :class:`SessionHooks`, set on the
:class:`~mailsrv.policy.SessionPolicy` (``hooks=``).

Protocol names passed to the hooks are ``"IMAP"`` and ``"POP3"``; command
names are upper-case as the client sent them (``UID FETCH``, ``RETR``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

import attrs

__all__ = ["POP3_COMMAND_CAPABILITIES", "CommandHook", "Drop", "SessionHooks"]


class Drop(enum.Enum):
    """When a hooked command's connection is cut (no BYE, no goodbye)."""

    #: The command runs and its answer is written, then the connection is cut.
    AFTER_ANSWER = "after the answer"
    #: The command runs but its answer is never sent (IMAP only; POP3
    #: commands answer as they go, so POP3 treats this as AFTER_ANSWER).
    BEFORE_ANSWER = "before the answer"


@attrs.frozen
class CommandHook:
    """How one command is treated instead of the server's own way.

    ``refuse``: the command does not run; the client gets ``NO``
    (IMAP) or ``-ERR`` (POP3) with this text.  ``delay``: seconds to wait
    before the command runs (or is refused).  ``alert``: IMAP only, an
    untagged ``* OK [ALERT] text`` before the tagged answer.  ``drop``: cut
    the connection after the command (:class:`Drop`).
    """

    refuse: str | None = None
    delay: float = 0.0
    alert: str | None = None
    drop: Drop | None = None


class SessionHooks(Protocol):
    """What a session asks its policy's hooks, if it has any."""

    def capabilities(self, protocol: str, offered: Sequence[str]) -> list[str]:
        """What CAPABILITY (IMAP) or CAPA (POP3) lists, given what the
        server would list now.  A command whose capability is withdrawn is
        refused as a server without it would (BAD / -ERR unknown command),
        and so is a LITERAL+ literal when ``LITERAL+`` is withdrawn."""

    def command(self, protocol: str, name: str) -> CommandHook | None:
        """How to treat the command ``name`` about to run (None: as usual)."""


#: The POP3 commands that exist only with a CAPA capability (RFC 2449 6),
#: by the capability's first word: withdrawing it withdraws them.
POP3_COMMAND_CAPABILITIES: dict[str, str] = {
    "TOP": "TOP",
    "UIDL": "UIDL",
    "USER": "USER",
    "PASS": "USER",
    "AUTH": "SASL",
    "STLS": "STLS",
}
