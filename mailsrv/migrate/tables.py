"""The SQL a Maildir to PostgreSQL run writes with: rows inserted under
their own UIDs, the counters and the notification the backend keeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailsrv.migrate.report import MigrationError

__all__ = [
    "ensure_user",
    "finish_mailbox",
    "insert_batch",
    "last_uidvalidity",
    "stored_uids",
    "subscribe",
    "target_mailbox",
]


def target_mailbox(conn: Any, user: str, box: Any, uses: frozenset[str]) -> int:
    """The database mailbox a Maildir folder goes to, made with the folder's
    UIDVALIDITY if it is not there; an empty one the database made itself
    (default folders) takes the folder's UIDVALIDITY."""
    conn.execute("SELECT 1 FROM users WHERE user_name = %s FOR UPDATE", (user,))
    row = conn.execute(
        "SELECT mailbox_id, uidvalidity, (SELECT count(*) FROM messages m "
        "WHERE m.user_name = b.user_name AND m.mailbox_id = b.mailbox_id), uidnext "
        "FROM mailboxes b WHERE user_name = %s AND name = %s FOR UPDATE",
        (user, box.name),
    ).fetchone()
    highest = max(int(box.highest_modseq), 1)
    # The folder's MAILBOXID goes with its UIDVALIDITY (RFC 8474 4).
    guid = box.status().mailbox_id
    if row is not None:
        mailbox_id, uidvalidity, count, uidnext = row
        if uidvalidity == box.uidvalidity:
            return int(mailbox_id)
        if count or uidnext > 1:
            raise MigrationError(
                f"mailbox {box.name!r} is in the database already with other messages "
                f"(UIDVALIDITY {uidvalidity}, the Maildir has {box.uidvalidity}); "
                "delete it there or rename the folder, then run again"
            )
        conn.execute(
            "UPDATE mailboxes SET uidvalidity = %s, uidnext = %s, recent_from = %s, "
            "highest_modseq = GREATEST(highest_modseq, %s), special_use = %s, guid = %s "
            "WHERE user_name = %s AND mailbox_id = %s",
            (
                box.uidvalidity,
                box.uidnext,
                box.uidnext,
                highest,
                sorted(uses),
                guid,
                user,
                mailbox_id,
            ),
        )
        return int(mailbox_id)
    mailbox_id = conn.execute(
        "UPDATE users SET last_mailbox_id = last_mailbox_id + 1 WHERE user_name = %s "
        "RETURNING last_mailbox_id",
        (user,),
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO mailboxes (user_name, mailbox_id, name, special_use, uidvalidity, uidnext, "
        "highest_modseq, recent_from, guid) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            user,
            mailbox_id,
            box.name,
            sorted(uses),
            box.uidvalidity,
            box.uidnext,
            highest,
            box.uidnext,
            guid,
        ),
    )
    return int(mailbox_id)


def insert_batch(
    conn: Any, blobs: Any, user: str, mailbox_id: int, rows: list[tuple[Any, ...]]
) -> int:
    """Insert (uid, modseq, bits, keywords, date, spool, uidl) rows not there yet;
    the count inserted.  The mailbox's counters follow in the same transaction."""
    from mailsrv.storage.postgres.queries import _counts

    inserted = size = unseen = deleted = 0
    top = 0
    for uid, modseq, bits, keywords, date, spool, uidl, saved in rows:
        digest = blobs.put(conn, spool)
        done = conn.execute(
            "INSERT INTO messages (user_name, mailbox_id, uid, modseq, flags, keywords, "
            "internal_date, size, digest, pop3_uidl, saved_at) VALUES (%s, %s, %s, %s, %s, "
            "%s, %s, %s, %s, %s, coalesce(%s, now())) ON CONFLICT DO NOTHING RETURNING 1",
            (user, mailbox_id, uid, modseq, bits, keywords, date, spool.size, digest, uidl, saved),
        ).fetchone()
        if done is None:  # there already (a run racing this one): undo the reference
            blobs.drop_references(conn, {digest: 1})
            continue
        inserted += 1
        size += spool.size
        message_unseen, message_deleted = _counts(bits)
        unseen += message_unseen
        deleted += message_deleted
        top = max(top, modseq)
    conn.execute(
        "UPDATE mailboxes SET messages = messages + %s, unseen = unseen + %s, "
        "deleted = deleted + %s, size = size + %s, highest_modseq = GREATEST(highest_modseq, %s) "
        "WHERE user_name = %s AND mailbox_id = %s",
        (inserted, unseen, deleted, size, top, user, mailbox_id),
    )
    return inserted


def finish_mailbox(
    conn: Any, user: str, mailbox_id: int, box: Any, keywords: Sequence[str], uses: frozenset[str]
) -> None:
    """Keywords in the folder's order, special use, UIDNEXT, and a NOTIFY so
    running nodes see the messages."""
    from mailsrv.storage.postgres.queries import notify

    row = conn.execute(
        "UPDATE mailboxes SET keywords = ARRAY(SELECT k FROM unnest(%s::text[] || keywords) "
        "WITH ORDINALITY AS t(k, n) GROUP BY k ORDER BY min(n)), special_use = %s, "
        "uidnext = GREATEST(uidnext, %s), recent_from = GREATEST(recent_from, %s) "
        "WHERE user_name = %s AND mailbox_id = %s RETURNING highest_modseq",
        (list(keywords), sorted(uses), box.uidnext, box.uidnext, user, mailbox_id),
    ).fetchone()
    notify(conn, user, mailbox_id, row[0])


def last_uidvalidity(conn: Any, user: str, uidvalidity: int) -> None:
    """Mailboxes the database makes later get a higher UIDVALIDITY than any adopted."""
    conn.execute(
        "UPDATE users SET last_uidvalidity = GREATEST(last_uidvalidity, %s) WHERE user_name = %s",
        (uidvalidity, user),
    )


def ensure_user(conn: Any, user: str) -> None:
    conn.execute(
        "INSERT INTO users (user_name, last_mailbox_id) VALUES (%s, 0) ON CONFLICT DO NOTHING",
        (user,),
    )


def stored_uids(conn: Any, user: str, mailbox_id: int) -> list[int]:
    rows = conn.execute(
        "SELECT uid FROM messages WHERE user_name = %s AND mailbox_id = %s", (user, mailbox_id)
    )
    return [row[0] for row in rows]


def subscribe(conn: Any, user: str, subscribed: list[str]) -> None:
    conn.execute(
        "INSERT INTO subscriptions (user_name, name) SELECT %s, unnest(%s::text[]) "
        "ON CONFLICT DO NOTHING",
        (user, subscribed),
    )
