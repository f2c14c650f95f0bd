"""Behaving like other servers: the test fixture's :class:`~mailsrv.hooks.SessionHooks`.

A client meets servers that offer less than mailsrv, refuse things, hang
up, stall and shout ``[ALERT]``.  :class:`Emulation` holds the rules a test
sets (through :class:`~mailsrv.testing.server.MailServer`'s methods) and
answers the sessions' two questions from them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import attrs

from mailsrv.hooks import CommandHook, Drop

__all__ = ["Emulation", "Rule"]

PROTOCOLS = ("IMAP", "POP3")


def _protocols(protocol: str | None) -> frozenset[str]:
    if protocol is None:
        return frozenset(PROTOCOLS)
    upper = protocol.upper()
    if upper not in PROTOCOLS:
        raise ValueError(f"protocol must be 'imap' or 'pop3', not {protocol!r}")
    return frozenset({upper})


def _command_name(name: str) -> str:
    words = name.upper().split()
    if not words:
        raise ValueError("a command name is needed")
    return " ".join(words)


@attrs.define
class Rule:
    """What to do to a command: ``command`` ``FETCH`` also matches ``UID
    FETCH``; ``UID FETCH`` matches only itself.  ``times``: how many more
    commands it applies to (None: all)."""

    protocols: frozenset[str]
    command: str
    hook: CommandHook
    times: int | None = None

    def matches(self, protocol: str, name: str) -> bool:
        if protocol not in self.protocols:
            return False
        return name == self.command or name == f"UID {self.command}"


class Emulation:
    """The rules in force; thread-safe, as a test sets them from its own
    thread while sessions ask from the reactor's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hidden: dict[str, set[str]] = {p: set() for p in PROTOCOLS}
        self._rules: list[Rule] = []

    # -- what a test sets ---------------------------------------------------------

    def hide(self, names: Sequence[str], protocol: str | None) -> None:
        with self._lock:
            for p in _protocols(protocol):
                self._hidden[p].update(name.upper() for name in names)

    def add(self, protocol: str | None, command: str, hook: CommandHook, times: int | None) -> None:
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None for every time)")
        rule = Rule(_protocols(protocol), _command_name(command), hook, times)
        with self._lock:
            self._rules.append(rule)

    def reset(self) -> None:
        with self._lock:
            for hidden in self._hidden.values():
                hidden.clear()
            self._rules.clear()

    @property
    def active(self) -> bool:
        with self._lock:
            return bool(self._rules) or any(self._hidden.values())

    # -- SessionHooks -------------------------------------------------------------

    def capabilities(self, protocol: str, offered: Sequence[str]) -> list[str]:
        with self._lock:
            hidden = set(self._hidden.get(protocol, ()))
        if not hidden:
            return list(offered)
        # A name hides itself and its "NAME=value" / "NAME args" forms
        # (AUTH=PLAIN by "AUTH=PLAIN" or "AUTH"; POP3 "SASL PLAIN" by "SASL").
        kept = []
        for name in offered:
            upper = name.upper()
            base = upper.split(" ")[0].split("=")[0]
            if upper in hidden or base in hidden or upper.split(" ")[0] in hidden:
                continue
            kept.append(name)
        return kept

    def command(self, protocol: str, name: str) -> CommandHook | None:
        """The combined hook of every rule that matches (the first rule to
        give each part wins), counting down their ``times``."""
        with self._lock:
            matched = [rule for rule in self._rules if rule.matches(protocol, name)]
            for rule in matched:
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times == 0:
                        self._rules.remove(rule)
        if not matched:
            return None
        refuse = next((r.hook.refuse for r in matched if r.hook.refuse is not None), None)
        alert = next((r.hook.alert for r in matched if r.hook.alert is not None), None)
        drop: Drop | None = next((r.hook.drop for r in matched if r.hook.drop is not None), None)
        delay = sum(r.hook.delay for r in matched)
        return CommandHook(refuse=refuse, delay=delay, alert=alert, drop=drop)
