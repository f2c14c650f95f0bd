"""Search criteria a storage answers from its index, free of IMAP.

The vocabulary of :class:`mailsrv.interfaces.IIndexSearch`: tests on what
every backend keeps beside each message (flags, wire size, internal date,
UID, MODSEQ) combined with AND, OR and NOT.  SEARCH hands a backend that
declares the interface the part of a program that needs nothing else
(:mod:`mailsrv.imap.search_pushdown`), so a whole-mailbox ``SEARCH UNSEEN``
becomes one query instead of a metadata object per message.

:func:`matches` is the meaning of every node, over the
:class:`~mailsrv.interfaces.IMessage` a backend's ``fetch`` gives: a
backend's answer must be exactly the messages it holds true for.
"""

from __future__ import annotations

import datetime
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import attrs

if TYPE_CHECKING:
    from mailsrv.interfaces import IMessage

__all__ = [
    "And",
    "Criterion",
    "Flag",
    "InternalDay",
    "Larger",
    "ModseqAtLeast",
    "Not",
    "Or",
    "Smaller",
    "UidIn",
    "matches",
]


@attrs.frozen
class Flag:
    """The message has flag ``name`` (compared exactly, as in ``IMessage.flags``)."""

    name: str


@attrs.frozen
class Larger:
    """The wire size is above ``size`` octets."""

    size: int


@attrs.frozen
class Smaller:
    """The wire size is below ``size`` octets."""

    size: int


@attrs.frozen
class InternalDay:
    """The calendar day of the internal date, in the time zone of the
    ``datetime`` the backend's ``fetch`` gives (``internal_date.date()``),
    is before, on, or on or after ``day`` (IMAP's BEFORE, ON, SINCE)."""

    op: Literal["BEFORE", "ON", "SINCE"]
    day: datetime.date


@attrs.frozen
class UidIn:
    """The UID is in one of the inclusive ``(low, high)`` ranges, which
    ascend and do not overlap."""

    ranges: tuple[tuple[int, int], ...]


@attrs.frozen
class ModseqAtLeast:
    """The MODSEQ is at least ``value``."""

    value: int


@attrs.frozen
class And:
    """Every part holds (no parts: every message)."""

    parts: tuple[Criterion, ...]


@attrs.frozen
class Or:
    """Some part holds (no parts: no message)."""

    parts: tuple[Criterion, ...]


@attrs.frozen
class Not:
    part: Criterion


Criterion: TypeAlias = (
    Flag | Larger | Smaller | InternalDay | UidIn | ModseqAtLeast | And | Or | Not
)


def in_ranges(ranges: Sequence[tuple[int, int]], value: int) -> bool:
    """Whether ``value`` is in one of the ascending inclusive ``ranges``."""
    i = bisect_right(ranges, (value, 2**64)) - 1
    return i >= 0 and value <= ranges[i][1]


def _day(criterion: InternalDay, message: IMessage) -> bool:
    day: datetime.date = message.internal_date.date()
    if criterion.op == "BEFORE":
        return day < criterion.day
    if criterion.op == "ON":
        return day == criterion.day
    return day >= criterion.day


#: Node type -> its test (the message typed Any: IMessage declares zope
#: Attributes, which mypy cannot see through).
_TESTS: dict[type, Callable[[Any, Any], bool]] = {
    And: lambda c, m: all(matches(part, m) for part in c.parts),
    Or: lambda c, m: any(matches(part, m) for part in c.parts),
    Not: lambda c, m: not matches(c.part, m),
    Flag: lambda c, m: c.name in m.flags,
    Larger: lambda c, m: bool(m.size > c.size),
    Smaller: lambda c, m: bool(m.size < c.size),
    UidIn: lambda c, m: in_ranges(c.ranges, m.uid),
    ModseqAtLeast: lambda c, m: bool(m.modseq >= c.value),
    InternalDay: _day,
}


def matches(criterion: Criterion, message: IMessage) -> bool:
    """Whether ``criterion`` holds for ``message``: the reference every
    :class:`~mailsrv.interfaces.IIndexSearch` answer is checked against."""
    return _TESTS[type(criterion)](criterion, message)
