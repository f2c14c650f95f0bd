"""The kill soak's record of what the server acknowledged, and the check
of a restarted server against it.

:mod:`tests.stress.killsoak` drives a real daemon and kills it; this module
holds no I/O.  :class:`Model` is told each acknowledgement as it arrives
(an APPENDUID, a COPYUID, the FLAGS a STORE answered, a CREATE's OK, a
delivery's exit status 0 or LMTP 250) and, after a kill, which operations
were in flight (:class:`Pending`).  :meth:`Model.reconcile` then compares
what the restarted server shows (:class:`Seen`, one per mailbox) with the
record: every acknowledged message still there under its UID with its
flags, nothing duplicated, no UID reused for another message, UIDVALIDITY
kept, UIDNEXT never back, mailboxes as acknowledged; an operation in flight
may have happened or not, but never half of one message (a MOVE leaves each
message in exactly one of its two mailboxes).  A batch in flight (MULTIAPPEND,
COPY of several messages) may land in part: the Maildir backend documents
that (docs/maildir.md), so it is counted (:attr:`Model.partial_batches`), not
a violation.  Whatever the server shows then becomes the record, so the next
kill starts from a known state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import attrs

__all__ = ["Box", "Model", "Pending", "Seen", "canonical", "flag_text", "uid_text"]

#: Operations in flight that may have taken messages out of their mailbox.
_REMOVING = frozenset({"expunge", "move"})
SYSTEM = {f.upper(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")}


def canonical(flags: Iterable[str]) -> frozenset[str]:
    """Flags as compared: \\Recent dropped (never stored), system flags in
    their usual case; keywords as given."""
    out = set()
    for flag in flags:
        upper = flag.upper()
        if upper == "\\RECENT":
            continue
        out.add(SYSTEM.get(upper, flag))
    return frozenset(out)


def uid_text(uids: Iterable[int]) -> str:
    """``1:3,7``: UIDs as a sequence set of runs."""
    runs: list[str] = []
    ordered = sorted(uids)
    start = prev = ordered[0]
    for uid in [*ordered[1:], -1]:
        if uid == prev + 1:
            prev = uid
            continue
        runs.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = uid
    return ",".join(runs)


def flag_text(flags: Iterable[str]) -> str:
    return "(" + " ".join(sorted(flags)) + ")"


@attrs.define
class Box:
    """One mailbox as acknowledged: its UIDVALIDITY once known, the UIDNEXT
    it may never go below, its messages by UID (label, flags), and the
    labels acknowledged into it whose UID is not known yet (a delivery)."""

    uidvalidity: int | None = None
    uidnext: int = 1
    #: UIDNEXT as the last check showed it: every UID given since is above.
    floor: int = 1
    messages: dict[int, tuple[str, frozenset[str]]] = attrs.Factory(dict)
    unlocated: Counter[str] = attrs.Factory(Counter)


@attrs.frozen
class Seen:
    """One mailbox as the restarted server shows it."""

    uidvalidity: int
    uidnext: int
    messages: Mapping[int, tuple[str, frozenset[str]]]


@attrs.frozen
class Pending:
    """An operation in flight at the kill (sent, never answered).

    ``kind`` is ``append`` (``labels`` with ``flags``), ``deliver``
    (``labels``), ``copy``/``move`` (``uids`` of ``box`` to ``target``),
    ``store`` (``uids`` of ``box``: their flags before and after, in
    ``alternatives``), ``expunge`` (``uids`` of ``box`` that may go),
    ``create``/``delete`` (``box``), ``rename`` (``box`` to ``target``),
    ``reindex``.
    """

    kind: str
    box: str = ""
    target: str = ""
    labels: tuple[str, ...] = ()
    flags: frozenset[str] = frozenset()
    uids: tuple[int, ...] = ()
    alternatives: Mapping[int, tuple[frozenset[str], frozenset[str]]] = attrs.Factory(dict)

    def describe(self) -> str:
        """``move INBOX -> Archive UIDs 3:5``, ``append Churn 40 messages (k7...)``."""
        text = self.kind + (f" {self.box}" if self.box else "")
        text += f" -> {self.target}" if self.target else ""
        if self.uids:
            text += " UIDs " + uid_text(self.uids)
        if self.labels:
            text += f" {len(self.labels)} message(s) ({self.labels[0]}...)"
        return text


@attrs.define
class _Arrival:
    """A message that may appear at a new UID: from an operation in flight,
    or acknowledged without a UID (``op`` None)."""

    label: str
    flags: frozenset[str] | None
    op: int | None
    source_uid: int | None = None
    taken: bool = False


@attrs.define
class Model:
    """Everything acknowledged so far, and what checking it found."""

    boxes: dict[str, Box] = attrs.Factory(dict)
    #: (mailbox, UIDVALIDITY) -> UID -> label: every UID ever given.
    history: dict[tuple[str, int], dict[int, str]] = attrs.Factory(dict)
    #: label -> digest of the body sent.
    bodies: dict[str, str] = attrs.Factory(dict)
    #: Labels of messages whose storing was answered NO: never to appear.
    refused: set[str] = attrs.Factory(set)
    #: Names of mailboxes deleted or renamed away: a new one by that name
    #: must not give an old UID to another message (RFC 3501 2.3.1.1).
    gone: set[str] = attrs.Factory(set)
    violations: list[str] = attrs.Factory(list)
    acknowledged: int = 0
    partial_batches: int = 0
    #: Operations in flight at kills that turned out done / not done.
    happened: int = 0
    not_happened: int = 0

    # -- acknowledgements --------------------------------------------------------------

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def _give(self, name: str, uidvalidity: int | None, uid: int, label: str) -> None:
        box = self.boxes[name]
        if uidvalidity is not None:
            if box.uidvalidity is None:
                box.uidvalidity = uidvalidity
            elif box.uidvalidity != uidvalidity:
                self.violation(
                    f"{name}: UIDVALIDITY {uidvalidity} in an answer, {box.uidvalidity} before"
                )
                box.uidvalidity = uidvalidity
        if uid < box.floor:
            self.violation(f"{name}: new UID {uid} is below UIDNEXT {box.floor} shown before")
        if box.uidvalidity is not None:
            given = self.history.setdefault((name, box.uidvalidity), {})
            if given.get(uid, label) != label:
                self.violation(f"{name}: UID {uid} given to {label}, was {given[uid]}'s")
            given[uid] = label
        box.uidnext = max(box.uidnext, uid + 1)

    def appended(
        self,
        name: str,
        uidvalidity: int | None,
        uids: Sequence[int],
        labels: Sequence[str],
        flags: Sequence[frozenset[str]],
    ) -> None:
        """APPEND answered OK; ``uids`` from APPENDUID (empty: unknown)."""
        self.acknowledged += 1
        if not uids:
            self.boxes[name].unlocated.update(labels)
            return
        if len(uids) != len(labels):
            self.violation(f"{name}: APPENDUID gave {len(uids)} UIDs for {len(labels)} messages")
            return
        for uid, label, given in zip(uids, labels, flags, strict=True):
            self._give(name, uidvalidity, uid, label)
            self.boxes[name].messages[uid] = (label, given)

    def delivered(self, name: str, label: str, uid: int | None = None) -> None:
        """A delivery acknowledged (exit 0, LMTP 250), its UID if told."""
        self.acknowledged += 1
        if uid is None:
            self.boxes[name].unlocated[label] += 1
        else:
            self._give(name, None, uid, label)
            self.boxes[name].messages[uid] = (label, frozenset())

    def copied(
        self, source: str, target: str, uidvalidity: int | None, pairs: Sequence[tuple[int, int]]
    ) -> None:
        """COPY answered OK with COPYUID (source UID, new UID pairs)."""
        self.acknowledged += 1
        for old, new in pairs:
            label, flags = self.boxes[source].messages[old]
            self._give(target, uidvalidity, new, label)
            self.boxes[target].messages[new] = (label, flags)

    def moved(
        self, source: str, target: str, uidvalidity: int | None, pairs: Sequence[tuple[int, int]]
    ) -> None:
        self.copied(source, target, uidvalidity, pairs)
        for old, _ in pairs:
            self.boxes[source].messages.pop(old, None)

    def stored(self, name: str, flags: Mapping[int, frozenset[str]]) -> None:
        self.acknowledged += 1
        box = self.boxes[name]
        for uid, new in flags.items():
            label, _ = box.messages[uid]
            box.messages[uid] = (label, new)

    def expunged(self, name: str, uids: Iterable[int]) -> None:
        self.acknowledged += 1
        for uid in uids:
            self.boxes[name].messages.pop(uid, None)

    def created(self, name: str) -> None:
        self.acknowledged += 1
        self.boxes[name] = Box()
        self.gone.discard(name)

    def deleted(self, name: str) -> None:
        self.acknowledged += 1
        self.boxes.pop(name, None)
        self.gone.add(name)

    def renamed(self, old: str, new: str) -> None:
        self.acknowledged += 1
        box = self.boxes.pop(old)
        self.boxes[new] = box
        self.gone.add(old)
        self.gone.discard(new)
        if box.uidvalidity is not None:
            # The UIDs go along (RFC 3501 6.3.5 lets a server keep them,
            # and a Maildir rename does): the new name's history is the old's.
            given = self.history.get((old, box.uidvalidity), {})
            self.history.setdefault((new, box.uidvalidity), {}).update(given)

    # -- the check after a restart -----------------------------------------------------

    def reconcile(self, seen: Mapping[str, Seen], pending: Sequence[Pending]) -> None:
        """Compare the restarted server with the record; adopt what it shows."""
        pending = list(pending)
        structural = {"create", "delete", "rename"}
        for op in pending:
            if op.kind in structural:
                self._resolve_structure(op, seen)
        for name in sorted(set(seen) - set(self.boxes)):
            self.violation(f"mailbox {name} exists, never acknowledged as created")
            self.boxes[name] = Box()
        for name in sorted(set(self.boxes) - set(seen)):
            self.violation(f"acknowledged mailbox {name} is gone")
            del self.boxes[name]
        arrivals = self._arrivals(pending)
        for name in sorted(seen):
            self._reconcile_box(name, seen[name], pending, arrivals.get(name, []))
        self._check_moves(pending, arrivals, seen)
        for op_index, op in enumerate(pending):
            if op.kind in ("append", "copy", "deliver"):
                got = sum(1 for a in _all(arrivals) if a.op == op_index and a.taken)
                wanted = len(op.labels) if op.kind != "copy" else len(op.uids)
                if got == wanted:
                    self.happened += 1
                elif got == 0:
                    self.not_happened += 1
                else:
                    self.partial_batches += 1

    def _resolve_structure(self, op: Pending, seen: Mapping[str, Seen]) -> None:
        if op.kind == "create":
            if op.box in seen:
                self.happened += 1
                self.boxes[op.box] = Box()
                self.gone.discard(op.box)
            else:
                self.not_happened += 1
        elif op.kind == "delete":
            if op.box not in seen:
                self.happened += 1
                self.boxes.pop(op.box, None)
                self.gone.add(op.box)
            else:
                self.not_happened += 1
        elif op.kind == "rename":
            old, new = op.box in seen, op.target in seen
            if old and not new:
                self.not_happened += 1
            elif new and not old:
                self.happened += 1
                self.renamed(op.box, op.target)
                self.acknowledged -= 1
            else:
                self.violation(
                    f"RENAME {op.box} {op.target} in flight: "
                    + ("both names exist" if old else "neither name exists")
                )

    def _arrivals(self, pending: Sequence[Pending]) -> dict[str, list[_Arrival]]:
        """By mailbox: what may appear there at a UID the record lacks."""
        out: dict[str, list[_Arrival]] = {}
        for name, box in self.boxes.items():
            for label, count in box.unlocated.items():
                out.setdefault(name, []).extend(_Arrival(label, None, None) for _ in range(count))
        for index, op in enumerate(pending):
            if op.kind in ("append", "deliver"):
                flags = op.flags if op.kind == "append" else frozenset()
                out.setdefault(op.box, []).extend(_Arrival(lb, flags, index) for lb in op.labels)
            elif op.kind in ("copy", "move") and op.box in self.boxes:
                source = self.boxes[op.box].messages
                for uid in op.uids:
                    if uid in source:
                        label, flags = source[uid]
                        out.setdefault(op.target, []).append(_Arrival(label, flags, index, uid))
        return out

    def _reconcile_box(
        self, name: str, seen: Seen, pending: Sequence[Pending], arrivals: list[_Arrival]
    ) -> None:
        box = self.boxes[name]
        same = box.uidvalidity in (None, seen.uidvalidity)
        if not same:
            self.violation(f"{name}: UIDVALIDITY {box.uidvalidity} became {seen.uidvalidity}")
        elif seen.uidnext < box.uidnext:
            self.violation(f"{name}: UIDNEXT went back from {box.uidnext} to {seen.uidnext}")
        box.uidvalidity = seen.uidvalidity
        may_go = {u for op in pending if op.box == name and op.kind in _REMOVING for u in op.uids}
        alternatives: dict[int, tuple[frozenset[str], ...]] = {}
        for op in pending:
            if op.box == name and op.kind == "store":
                alternatives.update(op.alternatives)
        for uid, (label, flags) in sorted(seen.messages.items()):
            self._seen_message(name, seen, uid, label, flags, alternatives, arrivals)
        for uid in sorted(set(box.messages) - set(seen.messages)):
            label = box.messages.pop(uid)[0]
            if uid not in may_go:
                self.violation(f"{name}: acknowledged UID {uid} ({label}) is lost")
        box.unlocated.clear()
        for arrival in arrivals:
            if arrival.op is None and not arrival.taken:
                self.violation(f"{name}: acknowledged delivery of {arrival.label} is lost")
        box.uidnext = max(seen.uidnext, box.uidnext) if same else seen.uidnext
        box.floor = seen.uidnext

    def _seen_message(
        self,
        name: str,
        seen: Seen,
        uid: int,
        label: str,
        flags: frozenset[str],
        alternatives: Mapping[int, tuple[frozenset[str], ...]],
        arrivals: list[_Arrival],
    ) -> None:
        """One message the restarted server shows, against the record."""
        box = self.boxes[name]
        given = self.history.setdefault((name, seen.uidvalidity), {})
        if uid >= seen.uidnext:
            self.violation(f"{name}: UID {uid} at or above UIDNEXT {seen.uidnext}")
        if label in self.refused:
            self.violation(f"{name}: UID {uid} holds {label}, whose storing was answered NO")
        if given.get(uid, label) != label:
            self.violation(f"{name}: UID {uid} reused: holds {label}, was {given[uid]}'s")
        known = box.messages.get(uid)
        if known is not None:
            if known[0] != label:
                self.violation(f"{name}: UID {uid} holds {label}, acknowledged {known[0]}")
            allowed = alternatives.get(uid, (known[1],))
            if flags not in allowed:
                self.violation(
                    f"{name}: UID {uid} ({label}) has flags {flag_text(flags)}, "
                    f"acknowledged {' or '.join(flag_text(a) for a in allowed)}"
                )
        elif uid in given:
            self.violation(f"{name}: UID {uid} ({label}) is back after being expunged")
        else:
            if uid < box.floor:
                self.violation(f"{name}: new UID {uid} is below UIDNEXT {box.floor} shown before")
            self._arrived(name, uid, label, flags, arrivals)
        given[uid] = label
        box.messages[uid] = (label, flags)

    def _arrived(
        self, name: str, uid: int, label: str, flags: frozenset[str], arrivals: list[_Arrival]
    ) -> None:
        # Acknowledged ones first: they must be somewhere.
        for arrival in sorted(arrivals, key=lambda a: a.op is not None):
            if arrival.taken or arrival.label != label:
                continue
            arrival.taken = True
            if arrival.flags is not None and flags != arrival.flags:
                self.violation(
                    f"{name}: new UID {uid} ({label}) has flags {flag_text(flags)}, "
                    f"expected {flag_text(arrival.flags)}"
                )
            return
        self.violation(f"{name}: UID {uid} holds {label}, which nothing put there (a duplicate?)")

    def _check_moves(
        self,
        pending: Sequence[Pending],
        arrivals: Mapping[str, list[_Arrival]],
        seen: Mapping[str, Seen],
    ) -> None:
        """A MOVE in flight leaves each message in exactly one mailbox."""
        for index, op in enumerate(pending):
            if op.kind != "move" or op.box not in seen:
                continue
            landed = {
                a.source_uid for a in arrivals.get(op.target, []) if a.op == index and a.taken
            }
            for uid in op.uids:
                stayed = uid in seen[op.box].messages
                if stayed and uid in landed:
                    self.violation(f"MOVE {op.box} UID {uid} to {op.target}: in both mailboxes")
                elif not stayed and uid not in landed:
                    self.violation(f"MOVE {op.box} UID {uid} to {op.target}: in neither mailbox")
            if landed:
                self.happened += 1
            else:
                self.not_happened += 1


def _all(arrivals: Mapping[str, list[_Arrival]]) -> Iterable[_Arrival]:
    for group in arrivals.values():
        yield from group
