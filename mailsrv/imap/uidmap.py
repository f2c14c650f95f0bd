"""A session's sequence number <-> UID map, and the message sets it resolves.

The map is stored as runs of consecutive UIDs in two ``array('I')`` (run
start UIDs and cumulative message counts), so a 10,000-message mailbox with
few holes costs a few hundred bytes per session, and at worst 8 bytes per
message.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence

__all__ = ["MessageSet", "UidMap", "ranges_text", "runs"]

#: UID tuples and their runs, by the tuple's id (see :meth:`UidMap.of`);
#: each entry holds its tuple, so the id stays that tuple's.
_RUNS: dict[int, tuple[tuple[int, ...], array[int], array[int]]] = {}
_RUNS_KEPT = 8


class UidMap:
    """Ascending UIDs addressed by 1-based sequence number, stored as runs."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, uids: Iterable[int] = ()) -> None:
        self._starts = array("I")
        self._ends = array("I")  # cumulative message count at the end of each run
        self.extend(uids)

    @classmethod
    def of(cls, uids: Sequence[int]) -> UidMap:
        """A map of ``uids``; a tuple seen lately is not walked again.

        Storage that caches its UID list (Maildir, memory) hands every
        SELECT the same tuple until a message comes or goes, so a
        reconnecting client's SELECT of a 100,000-message mailbox copies
        the runs (two small arrays) instead of finding them again.
        """
        if not isinstance(uids, tuple):
            return cls(uids)
        found = _RUNS.get(id(uids))
        if found is None or found[0] is not uids:
            made = cls(uids)
            _RUNS[id(uids)] = found = (uids, made._starts, made._ends)
            while len(_RUNS) > _RUNS_KEPT:
                del _RUNS[next(iter(_RUNS))]
        copy = cls()
        copy._starts, copy._ends = array("I", found[1]), array("I", found[2])
        return copy

    @classmethod
    def from_runs(cls, uid_runs: Iterable[tuple[int, int]]) -> UidMap:
        """A map of the UIDs in ascending, disjoint inclusive runs (storage's
        :meth:`~mailsrv.interfaces.IMessageRows.uid_runs`): one step per run,
        none per message."""
        made = cls()
        starts, ends = made._starts, made._ends
        count = 0
        last = 0
        for first, end in uid_runs:
            if first <= last or end < first:
                raise ValueError(f"run {first}:{end} is not ascending after UID {last}")
            count += end - first + 1
            if ends and first == last + 1:
                ends[-1] = count
            else:
                starts.append(first)
                ends.append(count)
            last = end
        return made

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @property
    def last_uid(self) -> int:
        """The highest UID, 0 when empty."""
        if not self._ends:
            return 0
        first = self._ends[-2] if len(self._ends) > 1 else 0
        return self._starts[-1] + (self._ends[-1] - first) - 1

    def extend(self, uids: Iterable[int]) -> None:
        """Add ascending UIDs above every present one.

        One pass that finds the runs: SELECT of a 100,000-message mailbox
        builds its view with it.
        """
        starts, ends = self._starts, self._ends
        count = len(self)
        last = self.last_uid
        for uid in uids:
            if uid <= last:
                raise ValueError(f"UID {uid} is not above the last UID {last}")
            count += 1
            if ends and uid == last + 1:
                ends[-1] = count
            else:
                starts.append(uid)
                ends.append(count)
            last = uid

    def uid(self, seq: int) -> int:
        """The UID at sequence number ``seq`` (1-based); IndexError if none."""
        if not 1 <= seq <= len(self):
            raise IndexError(seq)
        run = bisect_left(self._ends, seq)
        before = self._ends[run - 1] if run else 0
        return self._starts[run] + (seq - before - 1)

    def seq(self, uid: int) -> int | None:
        """The sequence number of ``uid``, or None if it is not in the view."""
        run = bisect_right(self._starts, uid) - 1
        if run < 0:
            return None
        before = self._ends[run - 1] if run else 0
        offset = uid - self._starts[run]
        if offset < self._ends[run] - before:
            return before + offset + 1
        return None

    def __iter__(self) -> Iterator[int]:
        before = 0
        for start, end in zip(self._starts, self._ends, strict=True):
            yield from range(start, start + end - before)
            before = end

    def ranges(self) -> list[tuple[int, int]]:
        """The UIDs as inclusive ``(first, last)`` runs, ascending."""
        out = []
        before = 0
        for start, end in zip(self._starts, self._ends, strict=True):
            out.append((start, start + end - before - 1))
            before = end
        return out

    def copy(self) -> UidMap:
        copy = UidMap()
        copy._starts, copy._ends = array("I", self._starts), array("I", self._ends)
        return copy

    def fingerprint(self) -> bytes:
        """The UIDs as bytes: two maps give equal bytes exactly when they
        hold the same UIDs (an answer remembered for one fits the other)."""
        return self._starts.tobytes() + self._ends.tobytes()

    def by_seq(self, low: int, high: int) -> Iterator[tuple[int, int]]:
        """``(seq, uid)`` for sequence numbers ``low..high`` inside the view."""
        high = min(high, len(self))
        if low > high:
            return
        run = bisect_left(self._ends, max(low, 1))
        seq = max(low, 1)
        while seq <= high:
            before = self._ends[run - 1] if run else 0
            end = min(self._ends[run], high)
            start_uid = self._starts[run] + (seq - before - 1)
            for offset in range(end - seq + 1):
                yield seq + offset, start_uid + offset
            seq = end + 1
            run += 1

    def by_uid(self, low: int, high: int) -> Iterator[tuple[int, int]]:
        """``(seq, uid)`` for the UIDs in ``low..high`` that are in the view."""
        run = max(bisect_right(self._starts, low) - 1, 0)
        while run < len(self._starts) and self._starts[run] <= high:
            before = self._ends[run - 1] if run else 0
            length = self._ends[run] - before
            first = max(low, self._starts[run])
            last = min(high, self._starts[run] + length - 1)
            for uid in range(first, last + 1):
                yield before + (uid - self._starts[run]) + 1, uid
            run += 1

    def seq_segments(self, low: int, high: int) -> Iterator[tuple[int, int, int]]:
        """:meth:`by_seq` as ``(first seq, first uid, count)`` segments in
        which both numbers step by one: a whole run in one step."""
        high = min(high, len(self))
        seq = max(low, 1)
        if seq > high:
            return
        run = bisect_left(self._ends, seq)
        while seq <= high:
            before = self._ends[run - 1] if run else 0
            end = min(self._ends[run], high)
            yield seq, self._starts[run] + (seq - before - 1), end - seq + 1
            seq = end + 1
            run += 1

    def uid_segments(self, low: int, high: int) -> Iterator[tuple[int, int, int]]:
        """:meth:`by_uid` as ``(first seq, first uid, count)`` segments."""
        run = max(bisect_right(self._starts, low) - 1, 0)
        while run < len(self._starts) and self._starts[run] <= high:
            before = self._ends[run - 1] if run else 0
            start = self._starts[run]
            first = max(low, start)
            last = min(high, start + (self._ends[run] - before) - 1)
            if first <= last:
                yield before + (first - start) + 1, first, last - first + 1
            run += 1

    def remove(self, uids: Iterable[int]) -> list[int]:
        """Remove UIDs; return the sequence numbers they had, descending
        (the order in which EXPUNGE responses need no renumbering).

        Costs O(k log n) to find the k UIDs plus one pass over the runs
        (not the messages), so expunging from a big mailbox stays cheap.
        """
        gone = sorted(set(uids))
        starts, ends = self._starts, self._ends
        new_starts, new_ends = array("I"), array("I")
        seqs: list[int] = []
        removed = 0  # UIDs removed so far: shifts every later count
        copied = 0  # runs before this index are already in the new arrays
        i = 0
        while i < len(gone):
            run = bisect_right(starts, gone[i], copied) - 1
            if run < copied:  # below every remaining run: not in the view
                i += 1
                continue
            before = ends[run - 1] if run else 0
            start = starts[run]
            last = start + (ends[run] - before) - 1
            if gone[i] > last:  # in the gap after this run
                i += 1
                continue
            new_starts.extend(starts[copied:run])
            new_ends.extend(end - removed for end in ends[copied:run])
            j = bisect_right(gone, last, i)
            piece = start
            for uid in gone[i:j]:
                seqs.append(before + (uid - start) + 1)
                if uid > piece:
                    new_starts.append(piece)
                    new_ends.append(before + (uid - start) - removed)
                removed += 1
                piece = uid + 1
            if piece <= last:
                new_starts.append(piece)
                new_ends.append(ends[run] - removed)
            copied = run + 1
            i = j
        if not seqs:
            return []
        new_starts.extend(starts[copied:])
        new_ends.extend(end - removed for end in ends[copied:])
        self._starts, self._ends = new_starts, new_ends
        seqs.reverse()
        return seqs

    def memory(self) -> int:
        """Bytes held by the two arrays (for tests and benchmarks)."""
        return (len(self._starts) + len(self._ends)) * self._starts.itemsize


class MessageSet:
    """The messages a sequence set names in one view: ``(seq, uid)`` pairs,
    ascending, produced lazily (``1:*`` over 100,000 messages holds two
    numbers, not a list).  Iterate it again for a second pass."""

    __slots__ = ("_by_uid", "_map", "_ranges")

    def __init__(self, uid_map: UidMap, ranges: Sequence[tuple[int, int]], by_uid: bool) -> None:
        self._map = uid_map
        self._ranges = tuple(ranges)
        self._by_uid = by_uid

    def __iter__(self) -> Iterator[tuple[int, int]]:
        walk = self._map.by_uid if self._by_uid else self._map.by_seq
        for low, high in self._ranges:
            yield from walk(low, high)

    def segments(self) -> Iterator[tuple[int, int, int]]:
        """The set as ``(first seq, first uid, count)`` segments, ascending
        (see :meth:`UidMap.seq_segments`): ``1:*`` over 100,000 messages
        with few holes is a few segments, not 100,000 pairs."""
        walk = self._map.uid_segments if self._by_uid else self._map.seq_segments
        for low, high in self._ranges:
            yield from walk(low, high)

    def uids(self) -> list[int]:
        return [uid for _, uid in self]

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The set's ranges: UIDs or sequence numbers, ascending."""
        return self._ranges

    def among(self, uids: Iterable[int]) -> list[tuple[int, int]]:
        """``(seq, uid)`` of the set's messages whose UID is among ``uids``
        (ascending): a lookup per UID, not a walk over the set, so ten
        changed messages of ``1:*`` over 100,000 cost ten lookups."""
        starts = [low for low, _ in self._ranges]
        found: list[tuple[int, int]] = []
        for uid in uids:
            seq = self._map.seq(uid)
            if seq is None:
                continue
            number = uid if self._by_uid else seq
            i = bisect_right(starts, number) - 1
            if i >= 0 and number <= self._ranges[i][1]:
                found.append((seq, uid))
        return found


def runs(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """Ascending numbers as inclusive ``(first, last)`` runs."""
    found: list[tuple[int, int]] = []
    for n in numbers:
        if found and n == found[-1][1] + 1:
            found[-1] = (found[-1][0], n)
        else:
            found.append((n, n))
    return found


def ranges_text(ranges: Iterable[tuple[int, int]]) -> bytes:
    """Ascending inclusive ranges as a sequence set (``2,10:15,21``)."""
    return b",".join(b"%d" % low if low == high else b"%d:%d" % (low, high) for low, high in ranges)
