"""How POP3 commands are declared, and what they may ask of the connection.

A command is a method of one of the groups (:mod:`mailsrv.pop3.authorization`,
:mod:`mailsrv.pop3.transaction`, and the any-state commands in
:mod:`mailsrv.pop3.server`) marked with :func:`command`, which names it and
the session states it is valid in (RFC 1939 3).  :func:`collect` gathers a
group's declarations into the table the server dispatches from; a command
sent in another state is refused with a message saying why.

Adding a command: one decorated method in its group and a test.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import IO, Any, Protocol, TypeVar

import attrs
from twisted.internet import defer

from mailsrv import log
from mailsrv.auth.channel import ChannelBindings
from mailsrv.pop3.wire import MessageEncoder

__all__ = [
    "ANY_STATE",
    "LOG",
    "Command",
    "CommandError",
    "Connection",
    "Handler",
    "Result",
    "State",
    "collect",
    "command",
    "no_arguments",
]


#: The POP3 package's logger, under the namespace its lines have always had
#: (twistd's log file shows it), whichever module logs.
LOG = log.get_logger("mailsrv.pop3.server")


class State(enum.Enum):
    """The session states of RFC 1939 3."""

    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"


#: CAPA, QUIT and RPOP are valid whatever the state.
ANY_STATE = frozenset(State)


class CommandError(Exception):
    """Answer the current command with ``-ERR [code] text``."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


#: What a command returns: None when it has answered, or a Deferred that
#: fires once it has (the next command waits for it).
Result = defer.Deferred[Any] | None

#: A command: the group object, the arguments split at spaces, the whole line.
Handler = Callable[[Any, list[bytes], bytes], Result]

_H = TypeVar("_H", bound=Callable[..., Result])

_MARK = "_pop3_command"


@attrs.frozen
class Command:
    """One command: its name, the states it is valid in, its handler and
    the group class whose object runs it."""

    name: bytes
    states: frozenset[State]
    handler: Handler
    group: type

    def refusal(self) -> str:
        """The -ERR text for this command in a state it is not valid in."""
        name = self.name.decode("ascii")
        if State.AUTHORIZATION in self.states:
            return f"{name} is not valid after login."
        return f"{name} is only valid after login."


def command(name: str, *states: State) -> Callable[[_H], _H]:
    """Declare the decorated method as the command ``name``, valid in ``states``."""

    def mark(handler: _H) -> _H:
        setattr(handler, _MARK, (name.encode("ascii"), frozenset(states)))
        return handler

    return mark


def collect(*groups: type) -> dict[bytes, Command]:
    """The commands declared in ``groups``, by name."""
    table: dict[bytes, Command] = {}
    for group in groups:
        for handler in vars(group).values():
            declared = getattr(handler, _MARK, None)
            if declared is None:
                continue
            name, states = declared
            if name in table:
                raise ValueError(f"POP3 command {name!r} declared twice")
            table[name] = Command(name, states, handler, group)
    return table


def no_arguments(args: list[bytes]) -> None:
    if args:
        raise CommandError("This command takes no arguments.")


class Connection(Protocol):
    """What the command groups may ask of the session's connection."""

    @property
    def lost(self) -> bool:
        """The client is gone: nothing more is written."""

    def ok(self, text: str = "") -> None: ...

    def error(self, text: str, code: str | None = None) -> None: ...

    def send(self, line: bytes) -> None:
        """Write ``line`` and a CRLF."""

    def multiline(self, first: str, lines: Sequence[bytes]) -> None: ...

    def close(self) -> None:
        """Close once what is written has gone; run no further command."""

    def abort(self) -> None:
        """Cut the connection now (half a message is out)."""

    def tls_available(self) -> bool: ...

    def channel_bindings(self) -> ChannelBindings | None:
        """The TLS channel bindings (SCRAM-SHA-256-PLUS); None without TLS."""

    def start_tls(self) -> None:
        """Throw away what the client sent after the command (RFC 2595
        3.1: it arrived in the clear), then start TLS."""

    def send_message(self, text: str, body: bytes) -> None:
        """``+OK text`` and ``body`` (a whole message, byte-stuffed and
        terminated) in one write."""

    def stream(self, source: IO[bytes], encoder: MessageEncoder) -> defer.Deferred[bool]:
        """Send ``source`` through ``encoder`` as the rest of a multi-line
        response, paced by the client's reading; fires with
        ``encoder.complete``."""
