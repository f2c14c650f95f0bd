"""Reading an account as a client would see it, on either backend, and
comparing two readings (``mailsrv migrate --verify``)."""

from __future__ import annotations

import datetime
from typing import IO, Any

import attrs

from mailsrv.interfaces import SPECIAL_USES

__all__ = ["at_once", "compare", "read_account"]


@attrs.frozen
class _Message:
    uid: int
    flags: frozenset[str]
    internal_date: datetime.datetime
    size: int
    digest: bytes
    pop3_uidl: str | None


@attrs.frozen
class _Mailbox:
    name: str
    special_use: frozenset[str]
    uidvalidity: int
    uidnext: int
    messages: dict[int, _Message]
    mailbox_id: str = ""


def _wire_digest(handle: IO[bytes]) -> tuple[bytes, int]:
    """SHA-256 and size of a message in wire form (CRLF), as the PostgreSQL
    blob store names bodies."""
    from mailsrv.storage.postgres.blobs import Spool

    spool = Spool(handle)
    try:
        return spool.digest, spool.size
    finally:
        spool.close()


def at_once(value: Any) -> Any:
    """The value of a storage call made without a reactor (never a Deferred)."""
    from twisted.internet.defer import Deferred

    if isinstance(value, Deferred):  # pragma: no cover - storages here have no reactor
        raise AssertionError("a storage without a reactor answered with a Deferred")
    return value


def read_account(account: Any, with_bodies: bool = True) -> tuple[list[_Mailbox], list[str]]:
    """Every selectable mailbox of an account (any backend, no reactor) and
    its subscriptions, as a client would see them."""
    mailboxes = []
    for entry in at_once(account.list_mailboxes()):
        if "\\Noselect" in entry.attributes or "\\NonExistent" in entry.attributes:
            continue
        box = at_once(account.get_mailbox(entry.name))
        uids = list(at_once(box.uids()))
        uidls = dict(at_once(box.pop3_uidls())) if hasattr(box, "pop3_uidls") else {}
        messages = {}
        for info in at_once(box.fetch(uids)) if uids else []:
            digest, size = b"", info.size
            if with_bodies:
                handle = at_once(box.open(info.uid))
                try:
                    digest, size = _wire_digest(handle)
                finally:
                    handle.close()
            messages[info.uid] = _Message(
                info.uid,
                frozenset(info.flags) - {"\\Recent"},
                info.internal_date,
                size,
                digest,
                uidls.get(info.uid),
            )
        mailboxes.append(
            _Mailbox(
                entry.name,
                frozenset(entry.attributes) & SPECIAL_USES,
                box.uidvalidity,
                box.uidnext,
                messages,
                at_once(box.status()).mailbox_id,
            )
        )
    return mailboxes, sorted(at_once(account.subscriptions()))


def compare(maildir: Any, database: Any) -> list[str]:
    """What differs between the Maildir side and the database side of an
    account, as lines for the operator (values are Maildir's first)."""
    found: list[str] = []
    boxes_a, subs_a = read_account(maildir)
    boxes_b, subs_b = read_account(database)
    by_name = {box.name: box for box in boxes_b}
    for a in boxes_a:
        b = by_name.pop(a.name, None)
        if b is None:
            found.append(f"{a.name}: in the Maildir, not in the database")
        else:
            found += _compare_mailboxes(a, b)
    for name in sorted(by_name):
        found.append(f"{name}: in the database, not in the Maildir")
    if subs_a != subs_b:
        found.append(f"subscriptions {subs_a} != {subs_b}")
    return found


def _compare_mailboxes(a: _Mailbox, b: _Mailbox) -> list[str]:
    """How mailbox ``b`` differs from ``a`` of the same name."""
    where = a.name
    if a.uidvalidity != b.uidvalidity:
        return [f"{where}: UIDVALIDITY {a.uidvalidity} != {b.uidvalidity}"]
    if a.mailbox_id != b.mailbox_id:
        return [f"{where}: MAILBOXID {a.mailbox_id} != {b.mailbox_id}"]
    found: list[str] = []
    if a.uidnext != b.uidnext:
        found.append(f"{where}: UIDNEXT {a.uidnext} != {b.uidnext}")
    if a.special_use != b.special_use:
        found.append(f"{where}: special use {sorted(a.special_use)} != {sorted(b.special_use)}")
    only_a = sorted(set(a.messages) - set(b.messages))
    only_b = sorted(set(b.messages) - set(a.messages))
    if only_a:
        found.append(f"{where}: {len(only_a)} messages only in the Maildir (UIDs {only_a[:10]})")
    if only_b:
        found.append(f"{where}: {len(only_b)} messages only in the database (UIDs {only_b[:10]})")
    for uid in sorted(set(a.messages) & set(b.messages)):
        x, y = a.messages[uid], b.messages[uid]
        for what, left, right in (
            ("flags", sorted(x.flags), sorted(y.flags)),
            ("internal date", x.internal_date, y.internal_date),
            ("size", x.size, y.size),
            ("body", x.digest.hex(), y.digest.hex()),
            ("POP3 UIDL", x.pop3_uidl, y.pop3_uidl),
        ):
            if left != right:
                found.append(f"{where} UID {uid}: {what} {left} != {right}")
    return found
