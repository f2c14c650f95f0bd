"""The declared IMAP commands: one :class:`CommandSpec` per command.

Each module of :mod:`mailsrv.imap.commands` declares its commands in a
``COMMANDS`` tuple: the name, whether it is the ``UID`` form, the parser,
the states it is valid in, the capability that offers it, whether EXPUNGE
responses may be sent while it runs (RFC 3501 7.4.1), whether it names
messages (so new mail is announced before its set is resolved), and the
handler.  :class:`Registry` is built from those declarations: it reads a
command's tag and name, finds the declaration and lets its parser read the
rest, and it lists the capabilities for CAPABILITY.

Pure code except for the types: parsing needs no session, the handlers are
called by :mod:`mailsrv.imap.session`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs
from twisted.internet import defer

from mailsrv import log
from mailsrv.imap.lexer import TAG_CHARS, ParseError, Reader, Segment
from mailsrv.imap.output import Done

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = [
    "ANY",
    "AUTHENTICATED",
    "NOT_AUTHENTICATED",
    "NOT_OFFERED",
    "SELECTED",
    "Command",
    "CommandSpec",
    "Registry",
    "Result",
    "Simple",
    "State",
    "no_arguments",
]

_log = log.get_logger(__name__)


class State(enum.Enum):
    """The session states of RFC 3501 3."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


#: The states a command may be valid in, as commands declare them.
ANY = frozenset(State) - {State.LOGOUT}
NOT_AUTHENTICATED = frozenset({State.NOT_AUTHENTICATED})
AUTHENTICATED = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})


@attrs.frozen
class Command:
    """Every parsed command: its ``tag`` and upper-cased ``name``."""

    tag: str
    name: str


@attrs.frozen
class Simple(Command):
    """A command without arguments (CAPABILITY, NOOP, LOGOUT, IDLE...)."""


#: What a handler returns: the tagged completion, now or later.
Result: TypeAlias = "Done | defer.Deferred[Done]"
#: ``parse(reader, tag, name, uid)``: the arguments after the command name,
#: up to and including the end of the command.
Parser: TypeAlias = Callable[[Reader, str, str, bool], Command]
#: ``handle(session, command)``; ``command`` is what the parser returned.
Handler: TypeAlias = "Callable[[Session, Any], Result]"
#: A capability name, or a function of the session giving what to list
#: now (STARTTLS, LOGINDISABLED and AUTH= depend on the connection).
Capability: TypeAlias = "str | Callable[[Session], Sequence[str]] | None"


def no_arguments(reader: Reader, tag: str, name: str, uid: bool) -> Simple:
    """The parser of commands that take no arguments."""
    reader.end()
    return Simple(tag, name)


@attrs.frozen
class CommandSpec:
    """One command as declared by its module."""

    name: str
    parse: Parser
    handler: Handler
    states: frozenset[State]
    #: The ``UID`` form (UID FETCH, UID EXPUNGE...).
    uid: bool = False
    #: The capability that offers the command (None: IMAP4rev1's own).
    capability: Capability = None
    #: RFC 3501 7.4.1: False for FETCH, STORE and SEARCH, during which
    #: EXPUNGE responses would change the sequence numbers in use.
    expunges_allowed: bool = True
    #: The command names messages: what arrived is announced (EXISTS, flag
    #: changes, never EXPUNGE) before its set is resolved, so ``*`` and the
    #: numbers the client may use include it (RFC 3501 5.2).
    names_messages: bool = False

    @property
    def key(self) -> str:
        """The name as the client sends it (``UID FETCH``)."""
        return f"UID {self.name}" if self.uid else self.name


def _not_offered(names: str, capability: str) -> dict[str, str]:
    return {
        name: f"{name} is not supported (the {capability} extension is not offered)"
        for name in names.split()
    }


#: Commands of extensions mailsrv does not offer (none is advertised): a
#: clearer BAD than "unknown command" for clients that send them anyway.
NOT_OFFERED: dict[str, str] = {
    **_not_offered("GETACL SETACL DELETEACL MYRIGHTS LISTRIGHTS", "ACL (RFC 4314)"),
    **_not_offered("GETANNOTATION SETANNOTATION", "ANNOTATE-EXPERIMENT-1 (RFC 5257)"),
    **_not_offered("NOTIFY", "NOTIFY (RFC 5465)"),
    **_not_offered("GETJMAPACCESS", "JMAPACCESS (RFC 9698)"),
    "PROXYAUTH": "PROXYAUTH is not supported (log in as the user instead)",
    "PARTIAL": "PARTIAL is obsolete (IMAP2bis); use FETCH BODY[]<origin.length>",
    "XLIST": "XLIST is not supported; use LIST with SPECIAL-USE (RFC 6154)",
}
#: Of those, the ones with a UID form.
_UID_NOT_OFFERED: frozenset[str] = frozenset()


def _appendlimit(session: Session) -> str:
    return f"APPENDLIMIT={session.policy.max_message_size}"


#: Capabilities that are no command's: features of the protocol (LITERAL+,
#: SASL-IR) and extensions of the declared commands' syntax and answers.
NON_COMMAND_CAPABILITIES: tuple[str | Callable[[Session], str], ...] = (
    "IMAP4rev1",
    "IMAP4rev2",
    "LITERAL+",
    "SASL-IR",
    "UTF8=ACCEPT",
    "CHILDREN",
    "SPECIAL-USE",
    "CREATE-SPECIAL-USE",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "STATUS=SIZE",
    "BINARY",
    "CONDSTORE",
    "QRESYNC",
    "ESEARCH",
    "SEARCHRES",
    "WITHIN",
    "SAVEDATE",
    "OBJECTID",
    "PREVIEW",
    "MULTIAPPEND",
    "CATENATE",
    _appendlimit,
)

#: The order CAPABILITY lists capabilities in (by name, up to any ``=``), as
#: clients have always seen it.  One a command declares that is not named
#: here comes after these, in the order the commands are declared.
CAPABILITY_ORDER = (
    "IMAP4rev1",
    "IMAP4rev2",
    "LITERAL+",
    "SASL-IR",
    "ID",
    "ENABLE",
    "UTF8",
    "IDLE",
    "NAMESPACE",
    "UNSELECT",
    "UIDPLUS",
    "MOVE",
    "CHILDREN",
    "SPECIAL-USE",
    "CREATE-SPECIAL-USE",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "STATUS",
    "BINARY",
    "CONDSTORE",
    "QRESYNC",
    "ESEARCH",
    "SEARCHRES",
    "SORT",
    "THREAD",
    "ESORT",
    "CONTEXT",
    "WITHIN",
    "SAVEDATE",
    "OBJECTID",
    "PREVIEW",
    "MULTIAPPEND",
    "CATENATE",
    "REPLACE",
    "APPENDLIMIT",
    "UNAUTHENTICATE",
    "COMPRESS",
    "QUOTA",
    "STARTTLS",
    "LOGINDISABLED",
    "AUTH",
)
_RANK = {name: rank for rank, name in enumerate(CAPABILITY_ORDER)}


class Registry:
    """The commands the server offers, by the name the client sends."""

    def __init__(self, specs: Iterable[CommandSpec]) -> None:
        self._specs: dict[str, CommandSpec] = {}
        for spec in specs:
            if spec.key in self._specs:
                raise ValueError(f"{spec.key} is declared twice")
            self._specs[spec.key] = spec

    def __iter__(self) -> Iterator[CommandSpec]:
        return iter(self._specs.values())

    def declares(self, key: str) -> bool:
        """Whether ``key`` (``FETCH``, ``UID FETCH``) is a declared command."""
        return key in self._specs

    def parse(
        self, segments: Sequence[Segment], max_depth: int = 32, *, utf8: bool = False
    ) -> tuple[CommandSpec, Command]:
        """Parse one framed command: its declaration and the command object.

        ``segments`` alternate line text and literal payload, starting and
        ending with text; ``max_depth`` bounds parenthesis nesting; ``utf8``
        says mailbox names and quoted strings are UTF-8 (RFC 6855 3) rather
        than modified UTF-7.  Raises :class:`ParseError` (only) for anything
        malformed.
        """
        reader = Reader(segments, max_depth)
        reader.utf8 = utf8
        try:
            spec = self._command_name(reader)
            assert reader.tag is not None
            return spec, spec.parse(reader, reader.tag, spec.name, spec.uid)
        except ParseError:
            raise
        except (ValueError, IndexError, UnicodeDecodeError, RecursionError) as exc:
            # Defence in depth: a grammar bug must not become a crash.
            raise ParseError(f"malformed command ({type(exc).__name__})", reader.tag) from None
        except Exception as exc:
            # Nor any other bug in a parser: the client gets its BAD, the
            # connection goes on, and the bug is logged.
            _log.failure("IMAP: parsing a command raised {error}", error=type(exc).__name__)
            raise ParseError(f"malformed command ({type(exc).__name__})", reader.tag) from None

    def _command_name(self, reader: Reader) -> CommandSpec:
        """Read ``tag SP name`` (``tag SP UID SP name``): the declaration."""
        tag = reader.run(TAG_CHARS, "a tag").decode("ascii")
        reader.space()
        reader.tag = tag
        name = reader.atom("a command name").upper()
        if name == "UID":
            reader.space()
            name = reader.atom("a command after UID").upper()
            spec = self._specs.get(f"UID {name}")
            if spec is None:
                if name in _UID_NOT_OFFERED:
                    raise reader.error(f"UID {name} is not supported ({name} is not offered)")
                raise reader.error(f"UID {name} is not a command")
            return spec
        spec = self._specs.get(name)
        if spec is None:
            if name in NOT_OFFERED:
                raise reader.error(NOT_OFFERED[name])
            raise reader.error(f"unknown command {name}")
        return spec

    def capabilities(self, session: Session) -> list[str]:
        """What CAPABILITY lists for ``session`` now."""
        names: list[str] = []
        for capability in NON_COMMAND_CAPABILITIES:
            names.append(capability if isinstance(capability, str) else capability(session))
        for spec in self._specs.values():
            if isinstance(spec.capability, str):
                names.append(spec.capability)
            elif spec.capability is not None:
                names.extend(spec.capability(session))
        unique = list(dict.fromkeys(names))
        return sorted(unique, key=lambda name: _RANK.get(name.split("=")[0], len(_RANK)))
