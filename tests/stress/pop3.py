"""The stress client's POP3 session (RFC 1939) on the INBOX the IMAP
sessions share.

A visit runs between two rounds, so no IMAP command is in flight: it logs
in, lists UIDLs and sizes, retrieves a few messages and perhaps deletes
one, then QUITs.  The model checks that a UIDL names one message for ever
(RFC 1939 7), that RETR gives the same octets as IMAP's BODY[] for the
UID the UIDL stands for (``%08X%08X`` of UID and UIDVALIDITY, as
docs/pop3.md says) and as many as LIST said, that UIDLs are unique and
UIDVALIDITY the same in every visit, and that a message deleted and
committed by QUIT is expunged for the IMAP sessions (checked when they
synchronise at the end, :func:`tests.stress.client.converged`).
"""

from __future__ import annotations

import poplib
import random
from typing import TYPE_CHECKING

from tests.stress.client import DEADLINE, digest

if TYPE_CHECKING:
    from tests.stress.model import Model

__all__ = ["visit"]

WHO = "pop3"


def _uid_of(uidl: str) -> tuple[int, int] | None:
    """(UID, UIDVALIDITY) from a UIDL of the form ``%08X%08X``."""
    if len(uidl) != 16:
        return None
    try:
        return int(uidl[:8], 16), int(uidl[8:], 16)
    except ValueError:
        return None


def _listing(pop: poplib.POP3, model: Model) -> dict[int, tuple[str, int]]:
    """Message number -> (UIDL, size), with the listing's own checks."""
    sizes = {}
    for line in pop.list()[1]:
        number, size = line.split()
        sizes[int(number)] = int(size)
    listing = {}
    for line in pop.uidl()[1]:
        n, uidl = line.decode("ascii").split()
        listing[int(n)] = (uidl, sizes.get(int(n), -1))
    if set(listing) != set(sizes):
        model.violation(WHO, f"LIST numbers {sorted(sizes)} differ from UIDL's")
    names = [uidl for uidl, _ in listing.values()]
    if len(set(names)) != len(names):
        model.violation(WHO, "the same UIDL for two messages")
    return listing


def _retrieve(pop: poplib.POP3, model: Model, number: int, uidl: str, size: int) -> None:
    lines = pop.retr(number)[1]
    # poplib removed the byte-stuffing and the line ends; every message
    # the client stores ends with CRLF, so this is the message as stored.
    data = b"".join(line + b"\r\n" for line in lines)
    model.count("POP3 RETR")
    if len(data) != size:
        model.violation(WHO, f"RETR {number} gave {len(data)} octets, LIST said {size}")
    body = digest(data)
    known = model.uidls.setdefault(uidl, body)
    if known != body:
        model.violation(WHO, f"UIDL {uidl} named another message before")
    parsed = _uid_of(uidl)
    if parsed is None:
        model.violation(WHO, f"UIDL {uidl} is not UID and UIDVALIDITY")
        return
    model.body(WHO, "INBOX", parsed[0], body)


def visit(port: int, model: Model, rng: random.Random) -> None:
    """One POP3 session: log in, list, RETR some, maybe DELE one, QUIT."""
    pop = poplib.POP3("127.0.0.1", port, timeout=DEADLINE)
    try:
        pop.user("stress")
        pop.pass_("pw")
        model.count("POP3 session")
        listing = _listing(pop, model)
        validities = {v[1] for v in map(_uid_of, (u for u, _ in listing.values())) if v}
        if model.pop3_uidvalidity is not None:
            validities.add(model.pop3_uidvalidity)
        if len(validities) > 1:
            model.violation(WHO, f"UIDLs of several UIDVALIDITYs: {sorted(validities)}")
        model.pop3_uidvalidity = min(validities, default=None)
        numbers = sorted(listing)
        for number in rng.sample(numbers, min(3, len(numbers))):
            _retrieve(pop, model, number, *listing[number])
        deleted = None
        # Half the visits delete one message, and the first that can does,
        # so even a short run checks a DELE (four visits could all skip it).
        if numbers and (not model.counts.get("POP3 DELE") or rng.random() < 0.5):
            deleted = rng.choice(numbers)
            pop.dele(deleted)
            model.count("POP3 DELE")
        pop.quit()
    except poplib.error_proto as e:
        model.violation(WHO, f"-ERR: {e}")
        pop.close()
        return
    if deleted is not None:
        parsed = _uid_of(listing[deleted][0])
        if parsed is not None:
            model.pop3_deleted.add(("INBOX", parsed[0]))
