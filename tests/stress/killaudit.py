"""The kill soak's reading of a restarted daemon: every mailbox whole.

LIST, then for each mailbox STATUS, EXAMINE and a UID FETCH of UIDs, flags
and Message-IDs (which must agree with one another), and every body not
checked before, against the digest of what was sent under its label: a torn
or mixed-up file shows there.
"""

from __future__ import annotations

from tests.stress.killactors import MESSAGE_ID, ImapActor, digest
from tests.stress.killmodel import Model, Seen, canonical, uid_text
from tests.stress.wire import find

__all__ = ["read_all", "read_box"]

#: Seconds for one answer: a deadline.
DEADLINE = 60.0


def read_all(
    actor: ImapActor, model: Model, verified: set[tuple[str, int, int]]
) -> dict[str, Seen]:
    """Every selectable mailbox whole, as the server shows it; bodies not
    checked before are checked (``verified`` grows)."""
    _, untagged = actor.command(b'LIST "" "*"', DEADLINE)
    names = []
    for u in untagged:
        if u.name == "LIST" and len(u.values) == 3 and isinstance(u.values[0], list):
            attributes = [str(a).upper() for a in u.values[0]]
            name = u.values[2]
            if "\\NOSELECT" not in attributes:
                names.append(name.decode() if isinstance(name, bytes) else str(name))
    return {name: read_box(actor, model, verified, name) for name in names}


def read_box(
    actor: ImapActor, model: Model, verified: set[tuple[str, int, int]], name: str
) -> Seen:
    """One mailbox whole; STATUS, EXAMINE and FETCH must agree."""
    status = _status(actor, name)
    exists, codes = _examine(actor, name)
    for key, value in (("MESSAGES", exists), *codes.items()):
        if status.get(key) != value:
            model.violation(f"{name}: STATUS {key} {status.get(key)!r}, EXAMINE says {value}")
    messages = _labels(actor, name) if exists else {}
    if len(messages) != exists:
        model.violation(f"{name}: FETCH 1:* gave {len(messages)} messages, EXISTS {exists}")
    validity = codes.get("UIDVALIDITY", 0)
    fresh = [uid for uid in messages if (name, validity, uid) not in verified]
    if fresh:
        check_bodies(actor, model, verified, name, validity, fresh, messages)
    return Seen(validity, codes.get("UIDNEXT", 0), messages)


def _status(actor: ImapActor, name: str) -> dict[str, object]:
    _, untagged = actor.command(f"STATUS {name} (MESSAGES UIDNEXT UIDVALIDITY)".encode(), DEADLINE)
    for u in untagged:
        if u.name == "STATUS" and len(u.values) == 2 and isinstance(u.values[1], list):
            items = u.values[1]
            return {str(items[i]).upper(): items[i + 1] for i in range(0, len(items) - 1, 2)}
    return {}


def _examine(actor: ImapActor, name: str) -> tuple[int, dict[str, int]]:
    """EXISTS, and UIDVALIDITY and UIDNEXT by name."""
    answer, untagged = actor.command(f"EXAMINE {name}".encode(), DEADLINE)
    if answer.status != "OK":
        raise RuntimeError(f"EXAMINE {name}: {answer.raw!r}")
    exists, codes = 0, {}
    for u in untagged:
        if u.name == "EXISTS" and u.number is not None:
            exists = u.number
        if u.status == "OK" and u.code_name in ("UIDVALIDITY", "UIDNEXT") and u.code:
            codes[str(u.code_name)] = int(str(u.code[1]))
    return exists, codes


def _labels(actor: ImapActor, name: str) -> dict[int, tuple[str, frozenset[str]]]:
    """UID -> (label from the Message-ID, flags) of every message."""
    _, untagged = actor.command(
        b"UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])", DEADLINE
    )
    messages: dict[int, tuple[str, frozenset[str]]] = {}
    for u in untagged:
        if u.name != "FETCH" or not u.values or not isinstance(u.values[0], list):
            continue
        items = u.values[0]
        uid, flags = find(items, "UID"), find(items, "FLAGS")
        header = next(
            (items[i + 1] for i in range(0, len(items), 2) if "HEADER" in str(items[i])),
            b"",
        )
        match = MESSAGE_ID.search(header if isinstance(header, bytes) else b"")
        label = match.group(1).decode() if match else "(no Message-ID)"
        assert isinstance(uid, int) and isinstance(flags, list)
        messages[uid] = (label, canonical(str(f) for f in flags))
    return messages


def check_bodies(
    actor: ImapActor,
    model: Model,
    verified: set[tuple[str, int, int]],
    name: str,
    validity: int,
    uids: list[int],
    messages: dict[int, tuple[str, frozenset[str]]],
) -> None:
    """Every new body whole: the digest of what was sent under its label."""
    _, untagged = actor.command(f"UID FETCH {uid_text(uids)} (UID BODY.PEEK[])".encode(), DEADLINE)
    for u in untagged:
        if u.name != "FETCH" or not u.values or not isinstance(u.values[0], list):
            continue
        items = u.values[0]
        uid, body = find(items, "UID"), find(items, "BODY[]")
        if not isinstance(uid, int) or not isinstance(body, bytes):
            continue
        label = messages.get(uid, ("", frozenset()))[0]
        if model.bodies.get(label) != digest(body):
            model.violation(
                f"{name}: UID {uid} ({label}): body of {len(body)} octets is not the one sent"
            )
        verified.add((name, validity, uid))
