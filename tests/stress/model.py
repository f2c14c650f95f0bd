"""What the stress client's sessions have been told, shared by all of
them (:mod:`tests.stress.client`, :mod:`tests.stress.pop3`), and the
violations found."""

from __future__ import annotations

import attrs

__all__ = ["Model"]


@attrs.define
class Model:
    """What every session has been told, and the violations found."""

    #: (mailbox, UID) -> digest of its body, once known.
    bodies: dict[tuple[str, int], str] = attrs.field(factory=dict)
    #: (mailbox, UID) -> the session that saw it \\Recent.
    recent: dict[tuple[str, int], str] = attrs.field(factory=dict)
    #: UIDs given out per mailbox (APPENDUID, COPYUID).
    given: dict[str, set[int]] = attrs.field(factory=dict)
    violations: list[str] = attrs.field(factory=list)
    commands: int = 0
    #: Operations by kind (IMAP commands, POP3 commands, deliveries).
    counts: dict[str, int] = attrs.field(factory=dict)
    #: Per mailbox, the highest MODSEQ anyone saw (FETCH MODSEQ,
    #: HIGHESTMODSEQ), and what it was when the round began: a
    #: HIGHESTMODSEQ below that floor went back (RFC 7162 3.1.2).
    modseq_seen: dict[str, int] = attrs.field(factory=dict)
    modseq_floor: dict[str, int] = attrs.field(factory=dict)
    #: Per mailbox, how many messages were added (APPEND, COPY, MOVE,
    #: delivery): an IDLE session must hear of each (RFC 2177).
    additions: dict[str, int] = attrs.field(factory=dict)
    #: (mailbox, UID) of the messages a POP3 session deleted and QUIT
    #: committed: no IMAP session may keep them once synchronised.
    pop3_deleted: set[tuple[str, int]] = attrs.field(factory=set)
    #: POP3 UIDL -> digest of the message it named (stable: RFC 1939 7).
    uidls: dict[str, str] = attrs.field(factory=dict)
    #: The UIDVALIDITY POP3's UIDLs carry (the same in every visit).
    pop3_uidvalidity: int | None = None

    def count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def added(self, mailbox: str, n: int = 1) -> None:
        self.additions[mailbox] = self.additions.get(mailbox, 0) + n

    def saw_modseq(self, mailbox: str, modseq: int) -> None:
        self.modseq_seen[mailbox] = max(self.modseq_seen.get(mailbox, 0), modseq)

    def new_round(self) -> None:
        self.modseq_floor = dict(self.modseq_seen)

    def violation(self, who: str, what: str, response: bytes = b"") -> None:
        self.violations.append(f"{who}: {what}" + (f" in {response[:300]!r}" if response else ""))

    def give(self, who: str, mailbox: str, uid: int, body: str | None) -> None:
        given = self.given.setdefault(mailbox, set())
        if uid in given:
            self.violation(who, f"UID {uid} of {mailbox} given twice")
        given.add(uid)
        if body is not None:
            self.body(who, mailbox, uid, body)

    def body(self, who: str, mailbox: str, uid: int, body: str) -> None:
        known = self.bodies.setdefault((mailbox, uid), body)
        if known != body:
            self.violation(who, f"body of UID {uid} in {mailbox} changed")
