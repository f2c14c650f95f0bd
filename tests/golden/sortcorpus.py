"""Messages made to show SORT's and THREAD's edges (RFC 5256), for the
recorded Dovecot answers: reply chains and their breakages (missing and
duplicate Message-IDs, loops, quoted ids, In-Reply-To with text around the
id), base subjects (Re:/Fwd:/[blob] prefixes, "(fwd)" trailers, "[fwd: ...]"
wrappers, encoded words), sent dates (time zones, missing and broken Date
headers), addresses (groups, quoted local parts, encoded display names) and
non-ASCII subjects that the i;unicode-casemap collation orders.

:func:`messages` gives ``(message, internal date)`` pairs; the corpus of
tests/corpus/ is appended before them, internal dates from
:func:`internal_date` so ARRIVAL differs from mailbox order.  Used by
tests/golden/make_golden.py and tests/test_imap_sort_golden.py alike.
"""

from __future__ import annotations

import datetime

__all__ = ["internal_date", "messages"]

_BASE = datetime.datetime(2021, 3, 1, 12, 0, tzinfo=datetime.UTC)


def internal_date(index: int, count: int) -> datetime.datetime:
    """A permutation of minutes, so arrival order is not mailbox order."""
    return _BASE + datetime.timedelta(minutes=(index * 37) % max(count, 1))


def _message(
    subject: str | None,
    date: str | None = "Mon, 1 Mar 2021 10:00:00 +0000",
    sender: str | None = "Alice <alice@example.org>",
    to: str | None = "bob@example.net",
    cc: str | None = None,
    message_id: str | None = None,
    references: str | None = None,
    in_reply_to: str | None = None,
) -> bytes:
    lines = []
    if sender is not None:
        lines.append(f"From: {sender}")
    if to is not None:
        lines.append(f"To: {to}")
    if cc is not None:
        lines.append(f"Cc: {cc}")
    if subject is not None:
        lines.append(f"Subject: {subject}")
    if date is not None:
        lines.append(f"Date: {date}")
    if message_id is not None:
        lines.append(f"Message-ID: {message_id}")
    if references is not None:
        lines.append(f"References: {references}")
    if in_reply_to is not None:
        lines.append(f"In-Reply-To: {in_reply_to}")
    return ("\r\n".join(lines) + "\r\n\r\nText.\r\n").encode("utf-8")


def _day(day: int, hour: int = 10, zone: str = "+0000") -> str:
    return f"{day} Mar 2021 {hour:02d}:00:00 {zone}"


def messages() -> list[bytes]:
    """The messages, in mailbox order."""
    m = _message
    return [
        # A chain, and replies that arrive before their parents.
        m("Plan", _day(2), message_id="<a1@x>"),
        m("Re: Plan", _day(4), message_id="<a3@x>", references="<a1@x> <a2@x>"),
        m("Re: Plan", _day(3), message_id="<a2@x>", references="<a1@x>"),
        m("Re: Re: Plan", _day(5), message_id="<a4@x>", in_reply_to="<a2@x>"),
        # Siblings of a parent that is not in the mailbox.
        m("Lost", _day(6), message_id="<b2@x>", references="<b1@x>"),
        m("Re: Lost", _day(7), message_id="<b3@x>", references="<b1@x>"),
        # A duplicate Message-ID and a reply to it.
        m("Twice", _day(8), message_id="<dup@x>"),
        m("Twice", _day(9), message_id="<dup@x>"),
        m("Re: Twice", _day(10), message_id="<c3@x>", references="<dup@x>"),
        # A loop.
        m("Loop", _day(11), message_id="<d1@x>", references="<d2@x>"),
        m("Loop", _day(12), message_id="<d2@x>", references="<d1@x>"),
        # Subjects alone: a reply, a forward and two plain ones.
        m("Meeting", _day(13), message_id="<e1@x>"),
        m("Re: Meeting", _day(14), message_id="<e2@x>"),
        m("Meeting", _day(15), message_id="<e3@x>"),
        m("Fwd: Meeting", _day(16), message_id="<e4@x>"),
        m("[fwd: Meeting]", _day(12), message_id="<e5@x>"),
        m("Meeting (fwd)", _day(17), message_id="<e6@x>"),
        # Quoted ids and In-Reply-To with text around the id.
        m("Quoted", _day(18), message_id='<"f1"@x>'),
        m("Re: Quoted", _day(19), message_id="<f2@x>", references="<f1@x>"),
        m("Re: Quoted", _day(20), message_id="<f3@x>", in_reply_to='"Alice" <f2@x> (her)'),
        m("Re: Quoted", _day(21), message_id="<f4@x>", references="junk <nothing> <f3@x>"),
        # Base subjects.
        m("[PATCH] Fix the build", _day(22, 1)),
        m("Re: [PATCH] Fix the build", _day(22, 2)),
        m("RE:   re:[list] fix THE build (fwd) (FWD)", _day(22, 3)),
        m("=?UTF-8?Q?Re=3A_Fix_the_build?=", _day(22, 4)),
        m("Fw: [blob]", _day(22, 5)),
        m("[blob]", _day(22, 6)),
        m("[a] [b] Fw[c]: x\ty  z", _day(22, 7)),
        m("", _day(22, 8)),
        m(None, _day(22, 9)),
        # Sent dates: zones, none, unreadable, impossible times.
        m("Zone west", "Mon, 1 Mar 2021 23:30:00 -0800"),
        m("Zone east", "Tue, 2 Mar 2021 06:00:00 +0100"),
        m("Zone name", "Tue, 2 Mar 2021 01:00:00 EST"),
        m("No date", None),
        m("Bad date", "garbage"),
        m("Bad time", "1 Mar 2021 25:61:00 +0000"),
        m("Bad zone", "1 Mar 2021 10:00:00 +9999"),
        m("Two-digit year", "Mon, 1 Mar 21 09:00:00 +0000"),
        # Addresses and display names.
        m("Addr 1", sender='"Zed Quoted" <"z.q"@example.org>', to="team: x@y, z@w;"),
        m("Addr 2", sender="=?UTF-8?Q?=C3=89milie?= <emilie@example.org>", to="undisclosed:;"),
        m("Addr 3", sender="<bob@example.org>", to="<@route.example:carol@example.org>"),
        m("Addr 4", sender="BOB@example.org (Bob)", to=None, cc="Dave <dave@example.org>"),
        m("Addr 5", sender=None, to="alice@example.org", cc="(nobody)"),
        m("Addr 6", sender="Bob <bob@example.org>", cc="aaron@example.org, zed@example.org"),
        # Subjects the collation orders.
        m("Ärger"),
        m("ärger"),
        m("Zebra"),
        m("école"),
        m("Écoles"),
        m("straße"),
    ]
