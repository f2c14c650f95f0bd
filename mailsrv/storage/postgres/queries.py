"""The SQL of every storage operation: plain functions run in worker threads.

Each function takes a psycopg connection inside an open transaction (see
:meth:`Database.call <mailsrv.storage.postgres.db.Database.call>`) and
may be run more than once, so it reads its inputs afresh each time.

Concurrency rules, relied on throughout:

* Every change to a mailbox's messages first locks the mailbox's row (the
  UPDATE that allocates UIDs and MODSEQs, or ``FOR UPDATE``), so changes to
  one mailbox commit in MODSEQ order: whoever sees MODSEQ *n* committed
  also sees everything below it.  That is what lets a node that missed
  notifications catch up from "everything above the MODSEQ I last saw".
* Two mailboxes are locked in (user, mailbox id) order; tree changes
  (create, delete, rename) lock the user's row first.
* Every change sends ``NOTIFY mailsrv`` with the mailbox and its new MODSEQ
  inside the transaction, so it is delivered exactly when it commits.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

import attrs

from mailsrv.errors import NoSuchMailbox, NoSuchMessage
from mailsrv.interfaces import DELETED, SEEN, MessageInfo, StoreMode
from mailsrv.storage.postgres.blobs import IBlobStore, Spool
from mailsrv.storage.postgres.schema import FLAG_BITS

__all__ = ["CHANNEL", "Changes", "MailboxRow"]

#: The NOTIFY channel every node LISTENs on.
CHANNEL = "mailsrv"

SEEN_BIT = FLAG_BITS[SEEN]
DELETED_BIT = FLAG_BITS[DELETED]
_BIT_FLAGS = tuple((bit, flag) for flag, bit in FLAG_BITS.items())


def encode_flags(flags: Iterable[str]) -> tuple[int, list[str]]:
    """Stored form of checked flags: system flag bits, keywords sorted by code point."""
    bits = 0
    keywords = []
    for flag in flags:
        bit = FLAG_BITS.get(flag)
        if bit is None:
            keywords.append(flag)
        else:
            bits |= bit
    return bits, sorted(keywords)


def decode_flags(bits: int, keywords: Sequence[str]) -> frozenset[str]:
    found = [flag for bit, flag in _BIT_FLAGS if bits & bit]
    return frozenset((*found, *keywords))


def _counts(bits: int) -> tuple[int, int]:
    """(unseen, deleted) contribution of one message's flag bits."""
    return (0 if bits & SEEN_BIT else 1), (1 if bits & DELETED_BIT else 0)


@attrs.frozen
class MailboxRow:
    user: str
    mailbox_id: int
    name: str
    special_use: frozenset[str]
    uidvalidity: int
    uidnext: int
    highest_modseq: int


@attrs.frozen
class Changes:
    """What changed in a mailbox above MODSEQ ``base``, as of one snapshot."""

    base: int
    name: str | None  # None: the mailbox was deleted
    highest_modseq: int
    uidnext: int
    messages: Sequence[MessageInfo]  # MODSEQ above base, ascending UID
    expunged: Sequence[tuple[int, int]]  # (uid, modseq), MODSEQ above base


@attrs.frozen
class Written:
    """The outcome of a change: its value, the mailbox's new counters, and
    the changes to announce (None when nobody in this process listens)."""

    value: Any
    highest_modseq: int
    uidnext: int
    changes: Changes | None


_MAILBOX_COLUMNS = "mailbox_id, name, special_use, uidvalidity, uidnext, highest_modseq"
_MESSAGE_COLUMNS = "uid, flags, keywords, internal_date, size, modseq, saved_at"


def _mailbox_row(user: str, row: Sequence[Any]) -> MailboxRow:
    return MailboxRow(user, row[0], row[1], frozenset(row[2]), row[3], row[4], row[5])


def _info(row: Sequence[Any]) -> MessageInfo:
    return MessageInfo(
        uid=row[0],
        flags=decode_flags(row[1], row[2]),
        internal_date=row[3],
        size=row[4],
        modseq=row[5],
        # RFC 8514: set to now() by the INSERT of every arrival (APPEND,
        # delivery, COPY, MOVE), never copied from a source row.
        save_date=row[6].replace(microsecond=0),
    )


def uid_condition(uids: Iterable[int], column: str = "uid") -> tuple[str, tuple[Any, ...]]:
    """SQL selecting ``column`` among ``uids``: a range stays a range (``1:*``)."""
    if isinstance(uids, range) and uids.step == 1:
        low, high = max(uids.start, 0), min(uids.stop, 2**63 - 1)
        return f"{column} >= %s AND {column} < %s", (low, high)
    wanted = sorted({uid for uid in uids if isinstance(uid, int) and 0 < uid < 2**63})
    return f"{column} = ANY(%s)", (wanted,)


def _named(condition: str, params: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
    """A positional condition with named placeholders, for queries that use names."""
    values = {f"c{i}": value for i, value in enumerate(params)}
    return condition.replace("%s", "{}").format(*(f"%({k})s" for k in values)), values


def notify(conn: Any, user: str, mailbox_id: int, modseq: int) -> None:
    """Tell every node the mailbox changed (delivered at commit)."""
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{mailbox_id} {modseq} {user}"))


# -- reading ------------------------------------------------------------------------


def find_mailbox(conn: Any, user: str, name: str) -> MailboxRow:
    row = conn.execute(
        f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE user_name = %s AND name = %s",
        (user, name),
    ).fetchone()
    if row is None:
        raise NoSuchMailbox(f"no mailbox named {name!r}")
    return _mailbox_row(user, row)


def status(conn: Any, user: str, mailbox_id: int) -> tuple[Any, ...]:
    """messages, recent, unseen, deleted, size, uidnext, uidvalidity, highest_modseq,
    guid (the MAILBOXID)."""
    row = conn.execute(
        "SELECT messages, (SELECT count(*) FROM messages m WHERE m.user_name = b.user_name "
        "AND m.mailbox_id = b.mailbox_id AND m.uid >= b.recent_from), unseen, deleted, size, "
        "uidnext, uidvalidity, highest_modseq, guid FROM mailboxes b "
        "WHERE user_name = %s AND mailbox_id = %s AND name IS NOT NULL",
        (user, mailbox_id),
    ).fetchone()
    if row is None:
        raise NoSuchMailbox("the mailbox was deleted")
    return tuple(row)


def uids(conn: Any, user: str, mailbox_id: int) -> list[int]:
    with conn.cursor(binary=True) as cursor:
        cursor.execute(
            "SELECT uid FROM messages WHERE user_name = %s AND mailbox_id = %s ORDER BY uid",
            (user, mailbox_id),
        )
        return [row[0] for row in cursor]


def pop3_uidls(conn: Any, user: str, mailbox_id: int) -> dict[int, str]:
    rows = conn.execute(
        "SELECT uid, pop3_uidl FROM messages WHERE user_name = %s AND mailbox_id = %s "
        "AND pop3_uidl IS NOT NULL",
        (user, mailbox_id),
    ).fetchall()
    return {row[0]: row[1] for row in rows}


def pop3_listing(conn: Any, user: str, mailbox_id: int) -> list[tuple[int, int, bool]]:
    """``(uid, size, seen)`` of every message, by UID (IPop3Listing)."""
    with conn.cursor(binary=True) as cursor:
        cursor.execute(
            "SELECT uid, size, flags & %s <> 0 FROM messages "
            "WHERE user_name = %s AND mailbox_id = %s ORDER BY uid",
            (SEEN_BIT, user, mailbox_id),
        )
        return [(row[0], row[1], row[2]) for row in cursor]


def keywords(conn: Any, user: str, mailbox_id: int) -> list[str]:
    """The mailbox's defined keywords, oldest first (one row read)."""
    row = conn.execute(
        "SELECT keywords FROM mailboxes WHERE user_name = %s AND mailbox_id = %s "
        "AND name IS NOT NULL",
        (user, mailbox_id),
    ).fetchone()
    if row is None:
        raise NoSuchMailbox("the mailbox was deleted")
    return list(row[0])


def _define_keywords(conn: Any, user: str, mailbox_id: int, new: Sequence[str]) -> None:
    """Add keywords the mailbox has not defined yet, after the ones it has
    (the mailbox row is locked or written in the same transaction)."""
    if new:
        conn.execute(
            "UPDATE mailboxes SET keywords = keywords || ARRAY("
            "SELECT k FROM unnest(%s::text[]) WITH ORDINALITY AS t(k, n) "
            "WHERE k <> ALL(keywords) ORDER BY n) "
            "WHERE user_name = %s AND mailbox_id = %s AND NOT keywords @> %s::text[]",
            (list(new), user, mailbox_id, list(new)),
        )


def fetch(conn: Any, user: str, mailbox_id: int, wanted: Iterable[int]) -> list[MessageInfo]:
    condition, params = uid_condition(wanted)
    with conn.cursor(binary=True) as cursor:
        cursor.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE user_name = %s AND mailbox_id = %s "
            f"AND {condition} ORDER BY uid",
            (user, mailbox_id, *params),
        )
        return [_info(row) for row in cursor]


def read_message(
    conn: Any, blobs: IBlobStore, user: str, mailbox_id: int, uid: int, target: IO[bytes]
) -> None:
    """Write a message's bytes to ``target`` (run in a REPEATABLE READ
    transaction, so an expunge cannot delete the body half-way)."""
    row = conn.execute(
        "SELECT digest FROM messages WHERE user_name = %s AND mailbox_id = %s AND uid = %s",
        (user, mailbox_id, uid),
    ).fetchone()
    if row is None:
        raise NoSuchMessage(f"message UID {uid} no longer exists")
    blobs.read_into(conn, row[0], target)


def changed_since(conn: Any, user: str, mailbox_id: int, modseq: int) -> list[MessageInfo]:
    with conn.cursor(binary=True) as cursor:
        cursor.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE user_name = %s AND mailbox_id = %s "
            "AND modseq > %s ORDER BY uid",
            (user, mailbox_id, modseq),
        )
        return [_info(row) for row in cursor]


def changed_uids(conn: Any, user: str, mailbox_id: int, modseq: int) -> list[int]:
    """UIDs whose MODSEQ is above ``modseq``, through the MODSEQ index."""
    rows = conn.execute(
        "SELECT uid FROM messages WHERE user_name = %s AND mailbox_id = %s "
        "AND modseq > %s ORDER BY uid",
        (user, mailbox_id, modseq),
    ).fetchall()
    return [row[0] for row in rows]


def vanished_since(conn: Any, user: str, mailbox_id: int, modseq: int) -> list[int] | None:
    """UIDs expunged above ``modseq``, or None when ``modseq`` is below the
    mailbox's ``expunged_floor`` (the log no longer reaches back to it).
    Run it in a REPEATABLE READ transaction."""
    row = conn.execute(
        "SELECT expunged_floor FROM mailboxes WHERE user_name = %s AND mailbox_id = %s",
        (user, mailbox_id),
    ).fetchone()
    if row is not None and modseq < row[0]:
        return None
    rows = conn.execute(
        "SELECT uid FROM expunged WHERE user_name = %s AND mailbox_id = %s "
        "AND modseq > %s ORDER BY uid",
        (user, mailbox_id, modseq),
    ).fetchall()
    return [row[0] for row in rows]


def expunged_since(conn: Any, user: str, mailbox_id: int, modseq: int) -> list[tuple[int, int]]:
    """(UID, MODSEQ) of the messages expunged above ``modseq``.

    The expunge log is kept for a bounded time (``mailsrv db prune``); the
    mailbox's ``expunged_floor`` is the highest MODSEQ of what was pruned.
    Above the floor the log is complete.  At or below it, the answer is
    every UID below UIDNEXT that no message has, each with the mailbox's
    highest MODSEQ: a superset of what was expunged, which is what RFC 7162
    3.2.6 asks for ("behave as if it was requested to report all expunged
    messages") and what a session needs to drop what it still shows.
    Run it in a REPEATABLE READ transaction, or with the mailbox row
    locked, so the floor, the log and the messages agree.
    """
    row = conn.execute(
        "SELECT expunged_floor, uidnext, highest_modseq FROM mailboxes "
        "WHERE user_name = %s AND mailbox_id = %s",
        (user, mailbox_id),
    ).fetchone()
    if row is not None and modseq < row[0]:
        return [(uid, row[2]) for uid in _missing_uids(conn, user, mailbox_id, row[1])]
    rows = conn.execute(
        "SELECT uid, modseq FROM expunged WHERE user_name = %s AND mailbox_id = %s "
        "AND modseq > %s ORDER BY uid",
        (user, mailbox_id, modseq),
    ).fetchall()
    return [(row[0], row[1]) for row in rows]


def _missing_uids(conn: Any, user: str, mailbox_id: int, uidnext: int) -> list[int]:
    """Every UID below ``uidnext`` that no message of the mailbox has."""
    missing: list[int] = []
    expected = 1
    for uid in uids(conn, user, mailbox_id):
        missing.extend(range(expected, uid))
        expected = uid + 1
    missing.extend(range(expected, uidnext))
    return missing


def changes(conn: Any, user: str, mailbox_id: int, base: int) -> Changes:
    """Everything above MODSEQ ``base``.  Inside a change's transaction (the
    mailbox row locked) or a REPEATABLE READ one, the three reads agree."""
    row = conn.execute(
        "SELECT name, highest_modseq, uidnext FROM mailboxes "
        "WHERE user_name = %s AND mailbox_id = %s",
        (user, mailbox_id),
    ).fetchone()
    if row is None:  # purged long ago
        return Changes(base, None, base, 0, (), ())
    name, highest, uidnext = row
    if highest <= base:
        return Changes(base, name, highest, uidnext, (), ())
    return Changes(
        base,
        name,
        highest,
        uidnext,
        changed_since(conn, user, mailbox_id, base),
        expunged_since(conn, user, mailbox_id, base),
    )


def get_cached_many(
    conn: Any, user: str, mailbox_id: int, wanted: Iterable[int], kind: str
) -> dict[int, bytes]:
    condition, params = uid_condition(wanted)
    with conn.cursor(binary=True) as cursor:
        cursor.execute(
            "SELECT uid, value FROM message_cache WHERE user_name = %s AND mailbox_id = %s "
            f"AND kind = %s AND {condition}",
            (user, mailbox_id, kind, *params),
        )
        return {row[0]: bytes(row[1]) for row in cursor}


def set_cached_many(
    conn: Any, user: str, mailbox_id: int, kind: str, values: Mapping[int, bytes]
) -> None:
    keys = sorted(values)
    conn.execute(
        "INSERT INTO message_cache (user_name, mailbox_id, uid, kind, value) "
        "SELECT m.user_name, m.mailbox_id, m.uid, %s, v.value "
        "FROM unnest(%s::bigint[], %s::bytea[]) AS v(uid, value) "
        "JOIN messages m ON m.user_name = %s AND m.mailbox_id = %s AND m.uid = v.uid "
        "ON CONFLICT (user_name, mailbox_id, uid, kind) DO UPDATE SET value = EXCLUDED.value",
        (kind, keys, [bytes(values[k]) for k in keys], user, mailbox_id),
    )


# -- changing messages -----------------------------------------------------------------


def _lock_mailbox(conn: Any, user: str, mailbox_id: int) -> int | None:
    """Lock a live mailbox's row; its highest MODSEQ, or None if it was deleted."""
    row = conn.execute(
        "SELECT highest_modseq FROM mailboxes WHERE user_name = %s AND mailbox_id = %s "
        "AND name IS NOT NULL FOR UPDATE",
        (user, mailbox_id),
    ).fetchone()
    return None if row is None else int(row[0])


def _written(
    conn: Any, user: str, mailbox_id: int, value: Any, base: int | None, notify_modseq: int | None
) -> Written:
    if notify_modseq is not None:
        notify(conn, user, mailbox_id, notify_modseq)
    row = conn.execute(
        "SELECT highest_modseq, uidnext FROM mailboxes WHERE user_name = %s AND mailbox_id = %s",
        (user, mailbox_id),
    ).fetchone()
    found = None if base is None else changes(conn, user, mailbox_id, base)
    return Written(value, row[0], row[1], found)


def append(
    conn: Any,
    blobs: IBlobStore,
    user: str,
    mailbox_id: int,
    messages: Sequence[tuple[Spool, frozenset[str], datetime.datetime]],
    base: int | None,
) -> Written:
    """Store spooled messages as new arrivals, in one transaction (all or
    none: RFC 3502); the value is their UIDs, in order.

    The bodies go in first, before the mailbox row is locked, so a large
    message does not hold up other writers of the mailbox while it streams.
    """
    digests = [blobs.put(conn, spool) for spool, _flags, _date in messages]
    uids: list[int] = []
    modseq = None
    for (spool, flags, internal_date), digest in zip(messages, digests, strict=True):
        bits, keywords = encode_flags(flags)
        unseen, deleted = _counts(bits)
        row = conn.execute(
            "UPDATE mailboxes SET uidnext = uidnext + 1, highest_modseq = highest_modseq + 1, "
            "messages = messages + 1, unseen = unseen + %s, deleted = deleted + %s, "
            "size = size + %s WHERE user_name = %s AND mailbox_id = %s AND name IS NOT NULL "
            "RETURNING uidnext - 1, highest_modseq",
            (unseen, deleted, spool.size, user, mailbox_id),
        ).fetchone()
        if row is None:
            raise NoSuchMailbox("the mailbox was deleted")
        uid, modseq = row
        _define_keywords(conn, user, mailbox_id, keywords)
        conn.execute(
            "INSERT INTO messages (user_name, mailbox_id, uid, modseq, flags, keywords, "
            "internal_date, size, digest) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (user, mailbox_id, uid, modseq, bits, keywords, internal_date, spool.size, digest),
        )
        uids.append(uid)
    return _written(conn, user, mailbox_id, uids, base, modseq)


_STORE_SQL = {
    StoreMode.ADD: (
        "m.flags | %(bits)s::smallint",
        'ARRAY(SELECT DISTINCT k COLLATE "C" FROM unnest(m.keywords || %(keywords)s::text[]) '
        "AS k ORDER BY 1)",
        "(m.flags & %(bits)s::smallint) <> %(bits)s::smallint "
        "OR NOT m.keywords @> %(keywords)s::text[]",
    ),
    StoreMode.REMOVE: (
        "m.flags & ~%(bits)s::smallint",
        "ARRAY(SELECT k FROM unnest(m.keywords) AS k WHERE k <> ALL(%(keywords)s::text[]) "
        'ORDER BY k COLLATE "C")',
        "(m.flags & %(bits)s::smallint) <> 0 OR m.keywords && %(keywords)s::text[]",
    ),
    StoreMode.REPLACE: (
        "%(bits)s::smallint",
        "%(keywords)s::text[]",
        "m.flags <> %(bits)s::smallint OR m.keywords <> %(keywords)s::text[]",
    ),
}


def store(
    conn: Any,
    user: str,
    mailbox_id: int,
    wanted: Iterable[int],
    flags: frozenset[str],
    mode: str,
    unchanged_since: int | None,
    base: int | None,
) -> Written:
    """Change flags; the value is ``(updated MessageInfos, conflict UIDs)``."""
    highest = _lock_mailbox(conn, user, mailbox_id)
    if highest is None:
        raise NoSuchMailbox("the mailbox was deleted")
    condition, named = _named(*uid_condition(wanted))
    m_condition, _ = _named(*uid_condition(wanted, "m.uid"))
    conflicts: list[int] = []
    guard = ""
    if unchanged_since is not None:
        rows = conn.execute(
            f"SELECT uid FROM messages WHERE user_name = %(user)s AND mailbox_id = %(mb)s "
            f"AND {condition} AND modseq > %(since)s ORDER BY uid",
            {"user": user, "mb": mailbox_id, "since": unchanged_since, **named},
        ).fetchall()
        conflicts = [row[0] for row in rows]
        guard = "AND m.modseq <= %(since)s"
    bits, keywords = encode_flags(flags)
    if mode != StoreMode.REMOVE:
        _define_keywords(conn, user, mailbox_id, keywords)
    new_flags, new_keywords, differs = _STORE_SQL[mode]
    modseq = highest + 1
    rows = conn.execute(
        f"UPDATE messages m SET flags = {new_flags}, keywords = {new_keywords}, "
        "modseq = %(modseq)s FROM messages o "
        "WHERE o.user_name = m.user_name AND o.mailbox_id = m.mailbox_id AND o.uid = m.uid "
        f"AND m.user_name = %(user)s AND m.mailbox_id = %(mb)s AND {m_condition} "
        f"AND ({differs}) {guard} "
        "RETURNING m.uid, m.flags, m.keywords, m.internal_date, m.size, m.modseq, m.saved_at, "
        "o.flags",
        {
            "bits": bits,
            "keywords": keywords,
            "modseq": modseq,
            "user": user,
            "mb": mailbox_id,
            "since": unchanged_since,
            **named,
        },
    ).fetchall()
    if not rows:
        return _written(conn, user, mailbox_id, ((), tuple(conflicts)), base, None)
    unseen = deleted = 0
    for row in rows:
        new_unseen, new_deleted = _counts(row[1])
        old_unseen, old_deleted = _counts(row[7])
        unseen += new_unseen - old_unseen
        deleted += new_deleted - old_deleted
    conn.execute(
        "UPDATE mailboxes SET highest_modseq = %s, unseen = unseen + %s, "
        "deleted = deleted + %s WHERE user_name = %s AND mailbox_id = %s",
        (modseq, unseen, deleted, user, mailbox_id),
    )
    updated = tuple(sorted((_info(row) for row in rows), key=lambda info: info.uid))
    return _written(conn, user, mailbox_id, (updated, tuple(conflicts)), base, modseq)


def remove_messages(
    conn: Any, user: str, mailbox_id: int, highest: int, condition: str, params: tuple[Any, ...]
) -> tuple[list[int], dict[bytes, int], int]:
    """Delete the messages matching ``condition`` under one new MODSEQ and
    log them; return (UIDs, digest reference counts, new MODSEQ)."""
    rows = conn.execute(
        f"DELETE FROM messages WHERE user_name = %s AND mailbox_id = %s AND {condition} "
        "RETURNING uid, digest, size, flags",
        (user, mailbox_id, *params),
    ).fetchall()
    if not rows:
        return [], {}, highest
    modseq = highest + 1
    removed = sorted(row[0] for row in rows)
    counts: dict[bytes, int] = {}
    size = unseen = deleted = 0
    for _uid, digest, octets, bits in rows:
        counts[digest] = counts.get(digest, 0) + 1
        size += octets
        message_unseen, message_deleted = _counts(bits)
        unseen += message_unseen
        deleted += message_deleted
    conn.execute(
        "INSERT INTO expunged (user_name, mailbox_id, uid, modseq) "
        "SELECT %s, %s, uid, %s FROM unnest(%s::bigint[]) AS uid",
        (user, mailbox_id, modseq, removed),
    )
    conn.execute(
        "UPDATE mailboxes SET highest_modseq = %s, messages = messages - %s, "
        "unseen = unseen - %s, deleted = deleted - %s, size = size - %s "
        "WHERE user_name = %s AND mailbox_id = %s",
        (modseq, len(rows), unseen, deleted, size, user, mailbox_id),
    )
    return removed, counts, modseq


def expunge(
    conn: Any,
    blobs: IBlobStore,
    user: str,
    mailbox_id: int,
    wanted: Iterable[int] | None,
    base: int | None,
    only_deleted: bool = True,
) -> Written:
    """Remove the \\Deleted messages (among ``wanted``), or (not
    ``only_deleted``) exactly ``wanted``; the value is their UIDs."""
    highest = _lock_mailbox(conn, user, mailbox_id)
    if highest is None:
        return Written([], 0, 0, None)
    condition = f"flags & {DELETED_BIT} <> 0" if only_deleted else "TRUE"
    params: tuple[Any, ...] = ()
    if wanted is not None:
        extra, params = uid_condition(wanted)
        condition = f"{condition} AND {extra}"
    removed, counts, modseq = remove_messages(conn, user, mailbox_id, highest, condition, params)
    blobs.drop_references(conn, counts)
    return _written(conn, user, mailbox_id, removed, base, modseq if removed else None)


def copy(
    conn: Any,
    blobs: IBlobStore,
    source: tuple[str, int],
    destination: tuple[str, int],
    wanted: Iterable[int],
    move: bool,
    base: int | None,
    source_base: int | None,
) -> tuple[Written, Written | None]:
    """Copy (or move) messages; the destination's value is the UID pairs.

    A move is one transaction: the copies appear and the originals go
    together, and the bodies' reference counts do not change at all.
    """
    (src_user, src_id), (dst_user, dst_id) = source, destination
    locked = {
        (row[0], row[1]): row[2]
        for row in conn.execute(
            "SELECT user_name, mailbox_id, highest_modseq FROM mailboxes "
            "WHERE ((user_name = %s AND mailbox_id = %s) OR (user_name = %s AND mailbox_id = %s)) "
            "AND name IS NOT NULL ORDER BY user_name, mailbox_id FOR UPDATE",
            (src_user, src_id, dst_user, dst_id),
        ).fetchall()
    }
    if destination not in locked:
        raise NoSuchMailbox("the destination mailbox was deleted")
    if source not in locked:
        return Written([], 0, 0, None), None
    condition, params = uid_condition(wanted)
    rows = conn.execute(
        f"SELECT uid, flags, size, digest FROM messages WHERE user_name = %s AND mailbox_id = %s "
        f"AND {condition} ORDER BY uid",
        (src_user, src_id, *params),
    ).fetchall()
    if not rows:
        empty = _written(conn, dst_user, dst_id, [], base, None)
        return empty, None
    count = len(rows)
    size = sum(row[2] for row in rows)
    unseen = sum(_counts(row[1])[0] for row in rows)
    deleted = sum(_counts(row[1])[1] for row in rows)
    first, modseq = conn.execute(
        "UPDATE mailboxes SET uidnext = uidnext + %s, highest_modseq = highest_modseq + 1, "
        "messages = messages + %s, unseen = unseen + %s, deleted = deleted + %s, "
        "size = size + %s WHERE user_name = %s AND mailbox_id = %s "
        "RETURNING uidnext - %s, highest_modseq",
        (count, count, unseen, deleted, size, dst_user, dst_id, count),
    ).fetchone()
    source_uids = [row[0] for row in rows]
    target_uids = list(range(first, first + count))
    used = conn.execute(
        "SELECT array_agg(DISTINCT k ORDER BY k) FROM messages, unnest(keywords) AS k "
        "WHERE user_name = %s AND mailbox_id = %s AND uid = ANY(%s)",
        (src_user, src_id, source_uids),
    ).fetchone()[0]
    _define_keywords(conn, dst_user, dst_id, used or [])
    conn.execute(
        "INSERT INTO messages (user_name, mailbox_id, uid, modseq, flags, keywords, "
        "internal_date, size, digest) "
        "SELECT %s, %s, v.target, %s, m.flags, m.keywords, m.internal_date, m.size, m.digest "
        "FROM unnest(%s::bigint[], %s::bigint[]) AS v(source, target) "
        "JOIN messages m ON m.user_name = %s AND m.mailbox_id = %s AND m.uid = v.source",
        (dst_user, dst_id, modseq, source_uids, target_uids, src_user, src_id),
    )
    # What FETCH parsed for the originals holds for the copies too.
    conn.execute(
        "INSERT INTO message_cache (user_name, mailbox_id, uid, kind, value) "
        "SELECT %s, %s, v.target, c.kind, c.value "
        "FROM unnest(%s::bigint[], %s::bigint[]) AS v(source, target) "
        "JOIN message_cache c ON c.user_name = %s AND c.mailbox_id = %s AND c.uid = v.source",
        (dst_user, dst_id, source_uids, target_uids, src_user, src_id),
    )
    pairs = list(zip(source_uids, target_uids, strict=True))
    moved: Written | None = None
    if move:
        # Within one mailbox the copies took a MODSEQ already: expunge above it.
        highest = modseq if source == destination else locked[source]
        removed, _references, src_modseq = remove_messages(
            conn, src_user, src_id, highest, "uid = ANY(%s)", (source_uids,)
        )
        moved = _written(conn, src_user, src_id, removed, source_base, src_modseq)
    else:
        references: dict[bytes, int] = {}
        for row in rows:
            references[row[3]] = references.get(row[3], 0) + 1
        blobs.add_references(conn, references)
    copied = _written(conn, dst_user, dst_id, pairs, base, modseq)
    return copied, moved


def claim_recent(conn: Any, user: str, mailbox_id: int) -> list[int]:
    """Take the \\Recent messages: move the mailbox's watermark to UIDNEXT.

    The UPDATE waits for appends in flight (they hold the row), so every
    UID below the new watermark is committed when the second query looks.
    """
    row = conn.execute(
        "SELECT recent_from, uidnext FROM mailboxes WHERE user_name = %s AND mailbox_id = %s "
        "FOR UPDATE",
        (user, mailbox_id),
    ).fetchone()
    if row is None or row[0] >= row[1]:
        return []
    conn.execute(
        "UPDATE mailboxes SET recent_from = uidnext WHERE user_name = %s AND mailbox_id = %s",
        (user, mailbox_id),
    )
    rows = conn.execute(
        "SELECT uid FROM messages WHERE user_name = %s AND mailbox_id = %s "
        "AND uid >= %s AND uid < %s ORDER BY uid",
        (user, mailbox_id, row[0], row[1]),
    ).fetchall()
    return [r[0] for r in rows]
