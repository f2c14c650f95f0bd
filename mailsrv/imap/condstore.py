"""CONDSTORE and QRESYNC (RFC 7162): what several commands share.

A session becomes *CONDSTORE-aware* by ENABLE CONDSTORE or QRESYNC, by
``SELECT/EXAMINE (CONDSTORE)``, or by using a MODSEQ feature (STATUS
HIGHESTMODSEQ, the FETCH item MODSEQ, CHANGEDSINCE, UNCHANGEDSINCE, SEARCH
MODSEQ): from then on its FETCH responses about flags carry ``UID`` and
``MODSEQ`` (RFC 7162 3.1, 3.2.4).  :func:`enable_condstore` is the one place
that turns it on.  QRESYNC is only ever turned on by ENABLE (3.2.3); with it
expunges are told as ``VANISHED`` (the view's business,
:mod:`mailsrv.imap.selected`).

The rest is QRESYNC's resynchronisation: the ``QRESYNC`` select parameter
(:func:`parse_qresync`), and :func:`vanished_earlier`, which works out a
``VANISHED (EARLIER)`` answer for SELECT and UID FETCH from the storage's
expunge log when it reaches back far enough, and otherwise from the UIDs
the view holds, in ranges, narrowed by the client's sequence match data.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer

from mailsrv.imap.output import Done, bad
from mailsrv.imap.selected import SelectedMailbox, ranges_text, runs
from mailsrv.imap.syntax import STAR, SequenceSet
from mailsrv.interfaces import maybe_deferred

if TYPE_CHECKING:
    from mailsrv.imap.session import Session

__all__ = [
    "CONDSTORE",
    "MAX_MODSEQ",
    "QRESYNC",
    "Qresync",
    "done_with_modseq",
    "enable_condstore",
    "known_or_all",
    "modseq_value",
    "modseq_view",
    "parse_qresync",
    "ranges_text",
    "vanished_earlier",
]

CONDSTORE = "CONDSTORE"
QRESYNC = "QRESYNC"
#: mod-sequence-value is a positive 63-bit number (RFC 7162 7).
MAX_MODSEQ = 2**63 - 1


def enable_condstore(session: Session) -> None:
    """A CONDSTORE enabling command ran (RFC 7162 3.1).

    The first one with a mailbox selected tells the client the mailbox's
    HIGHESTMODSEQ, unless it keeps none (NOMODSEQ was said at SELECT).  The
    value is the view's, which never runs ahead of what the session has
    told its client.
    """
    if CONDSTORE in session.enabled:
        return
    session.enabled.add(CONDSTORE)
    view = session.selected
    if view is not None:
        view.condstore = True
        if not view.nomodseq:
            session.send(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % view.modseq)


def modseq_view(session: Session, what: str) -> SelectedMailbox:
    """The selected view, for a command using a MODSEQ feature: BAD in a
    mailbox that keeps no MODSEQs (RFC 7162 3.1.2.2); else CONDSTORE is on."""
    view = session.view()
    if view.nomodseq:
        raise bad(f"{what} cannot be used: this mailbox keeps no MODSEQs (NOMODSEQ)")
    enable_condstore(session)
    return view


def done_with_modseq(session: Session, text: str) -> defer.Deferred[Done]:
    """Expunges this command made are told now (as VANISHED), then it
    completes with the HIGHESTMODSEQ the client may now hold (RFC 7162
    3.2.7 and 3.2.9, RFC 6851 4.4)."""
    view = session.view()

    def told(lines: list[bytes]) -> Done:
        session.write_lines(lines)
        view.settle_modseq()
        return Done(text=text, code=f"HIGHESTMODSEQ {view.modseq}")

    return view.flush(True).addCallback(told)


def modseq_value(value: object, what: str, zero: bool = True) -> int:
    """A mod-sequence value given as a command parameter, or BAD."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad(f"{what} needs a mod-sequence value")
    if value > MAX_MODSEQ or (value == 0 and not zero):
        raise bad(f"{what} {value} is not a valid mod-sequence value")
    return value


# -- the QRESYNC select parameter ---------------------------------------------------


@attrs.frozen
class Qresync:
    """``QRESYNC (uidvalidity modseq [known-uids [seq-match]])`` (RFC 7162
    3.2.5): ``known_uids`` as ascending inclusive ranges (None: every UID
    below UIDNEXT), ``seq_match`` the two ascending sets of sequence
    numbers and UIDs."""

    uidvalidity: int
    modseq: int
    known_uids: tuple[tuple[int, int], ...] | None = None
    seq_match: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] | None = None


def parse_qresync(value: object) -> Qresync:
    """The parameter's value as :func:`mailsrv.imap.syntax.parameters`
    read it, checked (BAD for anything RFC 7162 7 does not allow)."""
    if not isinstance(value, tuple) or not 2 <= len(value) <= 4:
        raise bad("QRESYNC needs (uidvalidity modseq [known-uids [seq-match]])")
    uidvalidity = value[0]
    if not isinstance(uidvalidity, int) or not 0 < uidvalidity <= 0xFFFFFFFF:
        raise bad("QRESYNC: invalid UIDVALIDITY")
    modseq = modseq_value(value[1], "QRESYNC")
    known = None
    match = None
    if len(value) >= 3:
        known = _ascending(value[2], "known-uids")
    if len(value) == 4:
        pair = value[3]
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise bad("QRESYNC: seq-match data is (known-sequence-set known-uid-set)")
        seqs = _ascending(pair[0], "known-sequence-set")
        uids = _ascending(pair[1], "known-uid-set")
        if _count(seqs) != _count(uids):
            raise bad("QRESYNC: the sets of seq-match data differ in size")
        match = (seqs, uids)
    return Qresync(uidvalidity, modseq, known, match)


def _ascending(value: object, what: str) -> tuple[tuple[int, int], ...]:
    """A set without ``*`` whose ranges ascend (RFC 7162 7), as ranges."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 0xFFFFFFFF:
        return ((value, value),)
    if not isinstance(value, SequenceSet) or value.saved:
        raise bad(f"QRESYNC: {what} must be a set of numbers")
    previous = 0
    for low, high in value.ranges:
        if STAR in (low, high):
            raise bad(f"QRESYNC: {what} must not contain '*'")
        if low > high or low <= previous:
            raise bad(f"QRESYNC: {what} must be in ascending order")
        previous = high
    return value.ranges


def _count(ranges: Sequence[tuple[int, int]]) -> int:
    return sum(high - low + 1 for low, high in ranges)


def _each(ranges: Sequence[tuple[int, int]]) -> Iterator[int]:
    for low, high in ranges:
        yield from range(low, high + 1)


# -- VANISHED (EARLIER) ---------------------------------------------------------------


@defer.inlineCallbacks
def vanished_earlier(
    view: SelectedMailbox,
    modseq: int,
    known: Sequence[tuple[int, int]],
    params: Qresync | None = None,
) -> Generator[defer.Deferred[Any], Any, list[tuple[int, int]]]:
    """The UIDs among ``known`` expunged since ``modseq``, as ranges.

    From the expunge log when it reaches back to ``modseq`` (then the
    sequence match data is not needed, RFC 7162 5.3).  Otherwise RFC 7162
    3.2.6: every UID of ``known`` that no message has, up to the highest
    UID the view can vouch for, less those at or below the last pair of the
    client's sequence match data that still matches (3.2.5.2).  UIDs the
    view still shows (an expunge not yet told) are left out either way:
    a plain VANISHED tells them later.
    """
    if not known:
        return []
    found = yield maybe_deferred(view.mailbox.vanished_since, modseq)
    if found is not None:
        in_known = _member(known)
        gone = (uid for uid in found if in_known(uid) and view.map.seq(uid) is None)
        return runs(gone)
    floor = 0
    if params is not None and params.seq_match is not None:
        floor = _matched_floor(view, *params.seq_match)
    top = max(view.uid_limit, view.map.last_uid + 1) - 1
    return _gaps(view.map.ranges(), known, floor + 1, top)


def _member(ranges: Sequence[tuple[int, int]]) -> Callable[[int], bool]:
    starts = [low for low, _ in ranges]

    def test(n: int) -> bool:
        i = bisect_right(starts, n) - 1
        return i >= 0 and n <= ranges[i][1]

    return test


def _matched_floor(
    view: SelectedMailbox, seqs: Sequence[tuple[int, int]], uids: Sequence[tuple[int, int]]
) -> int:
    """The UID of the last pair of sequence match data, in order, whose
    message number still has that UID; 0 if the first already differs."""
    floor = 0
    exists = view.exists
    for seq, uid in zip(_each(seqs), _each(uids), strict=True):
        if seq > exists or view.map.uid(seq) != uid:
            break
        floor = uid
    return floor


def _gaps(
    present: Sequence[tuple[int, int]],
    known: Sequence[tuple[int, int]],
    low: int,
    high: int,
) -> list[tuple[int, int]]:
    """The parts of ``known`` within ``low..high`` that no range of
    ``present`` covers; all three ascending inclusive ranges.  Costs one
    pass over both lists, never one step per UID."""
    out: list[tuple[int, int]] = []
    shown = iter(present)
    run = next(shown, None)
    for a, b in known:
        a, b = max(a, low), min(b, high)
        while a <= b:
            while run is not None and run[1] < a:
                run = next(shown, None)
            if run is None or run[0] > b:
                out.append((a, b))
                break
            if run[0] > a:
                out.append((a, run[0] - 1))
            a = run[1] + 1
    return out


def known_or_all(params: Qresync, view: SelectedMailbox) -> tuple[tuple[int, int], ...]:
    """The client's known UIDs; without them, ``1:UIDNEXT-1`` (RFC 7162
    3.2.5.1), empty for a mailbox that never held a message."""
    if params.known_uids is not None:
        return params.known_uids
    top = max(view.uid_limit, view.map.last_uid + 1) - 1
    return ((1, top),) if top >= 1 else ()
