"""The SQL of a user's mailbox tree: creating users, LIST, CREATE, DELETE,
RENAME and subscriptions (messages are :mod:`.queries`').

Tree changes lock the user's row first, so two sessions creating,
deleting or renaming mailboxes of one user at once see each other's
result; the rules are the memory backend's (parents are created as
mailboxes, a deleted parent with children becomes \\Noselect).
"""

from __future__ import annotations

from typing import Any

from mailsrv.errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxNotEmpty,
    NoSuchMailbox,
    StorageError,
)
from mailsrv.interfaces import DEFAULT_FOLDERS
from mailsrv.storage import names
from mailsrv.storage.postgres.blobs import IBlobStore
from mailsrv.storage.postgres.metadata import copy_metadata, drop_metadata
from mailsrv.storage.postgres.queries import copy, find_mailbox, notify, remove_messages


def ensure_user(conn: Any, user: str) -> None:
    """Create the user with INBOX and the default folders on first sight.

    "First sight" is a user who never had a mailbox: ``mailsrv user add``
    with users in the database creates the row before any mail exists.
    The conditional update locks that row, so of two first sessions only
    one creates the mailboxes.
    """
    created = conn.execute(
        "INSERT INTO users (user_name) VALUES (%s) ON CONFLICT (user_name) DO UPDATE "
        "SET last_mailbox_id = users.last_mailbox_id WHERE users.last_mailbox_id = 0 "
        "RETURNING 1",
        (user,),
    ).fetchone()
    if created is None:
        return
    _new_mailbox(conn, user, names.INBOX, frozenset())
    for name, use in DEFAULT_FOLDERS:
        _new_mailbox(conn, user, name, frozenset({use}))


def _new_mailbox(conn: Any, user: str, name: str, special_use: frozenset[str]) -> None:
    """A new mailbox with a UIDVALIDITY no earlier mailbox of the user had:
    the time in seconds, or one above the last (RFC 3501 2.3.1.1)."""
    mailbox_id, uidvalidity = conn.execute(
        "UPDATE users SET last_mailbox_id = last_mailbox_id + 1, last_uidvalidity = "
        "GREATEST(last_uidvalidity + 1, extract(epoch FROM clock_timestamp())::bigint) "
        "WHERE user_name = %s RETURNING last_mailbox_id, last_uidvalidity",
        (user,),
    ).fetchone()
    if uidvalidity >= 2**32:
        raise StorageError("no UIDVALIDITY left for this user", code="SERVERBUG")
    conn.execute(
        "INSERT INTO mailboxes (user_name, mailbox_id, name, special_use, uidvalidity) "
        "VALUES (%s, %s, %s, %s, %s)",
        (user, mailbox_id, name, sorted(special_use), uidvalidity),
    )


def _lock_user(conn: Any, user: str) -> None:
    if conn.execute("SELECT 1 FROM users WHERE user_name = %s FOR UPDATE", (user,)).fetchone():
        return
    ensure_user(conn, user)


def _names(conn: Any, user: str) -> set[str]:
    rows = conn.execute(
        "SELECT name FROM mailboxes WHERE user_name = %s AND name IS NOT NULL", (user,)
    ).fetchall()
    return {row[0] for row in rows}


def _has_children(existing: set[str], name: str) -> bool:
    prefix = name + names.DELIMITER
    return any(other.startswith(prefix) for other in existing)


def list_mailboxes(conn: Any, user: str) -> list[tuple[str, frozenset[str]]]:
    rows = conn.execute(
        "SELECT name, special_use FROM mailboxes WHERE user_name = %s AND name IS NOT NULL",
        (user,),
    ).fetchall()
    return [(row[0], frozenset(row[1])) for row in rows]


def usage(conn: Any, user: str) -> tuple[int, int]:
    """(octets, messages) of the user's mailboxes, from the counters each
    ``mailboxes`` row keeps (one row per mailbox, no message read)."""
    row = conn.execute(
        "SELECT coalesce(sum(size), 0), coalesce(sum(messages), 0) FROM mailboxes"
        " WHERE user_name = %s AND name IS NOT NULL",
        (user,),
    ).fetchone()
    return int(row[0]), int(row[1])


def create_mailbox(conn: Any, user: str, name: str, special_use: frozenset[str]) -> None:
    _lock_user(conn, user)
    existing = _names(conn, user)
    if name in existing:
        raise MailboxExists(f"mailbox {name!r} already exists")
    for parent in names.parents(name):
        if parent not in existing:
            _new_mailbox(conn, user, parent, frozenset())
    _new_mailbox(conn, user, name, special_use)


def delete_mailbox(conn: Any, blobs: IBlobStore, user: str, name: str) -> tuple[int, int]:
    """Delete a mailbox and its messages; return (mailbox id, final MODSEQ).

    The row stays as a tombstone (name NULL), so a session that has it
    selected on any node learns that it is gone (``check()`` raises).
    """
    _lock_user(conn, user)
    row = conn.execute(
        "SELECT mailbox_id, highest_modseq FROM mailboxes WHERE user_name = %s AND name = %s "
        "FOR UPDATE",
        (user, name),
    ).fetchone()
    if row is None:
        if _has_children(_names(conn, user), name):
            raise MailboxNotEmpty(
                f"{name!r} has inferior mailboxes and holds no messages of its own"
            )
        raise NoSuchMailbox(f"no mailbox named {name!r}")
    mailbox_id, highest = row
    removed, counts, modseq = remove_messages(conn, user, mailbox_id, highest, "TRUE", ())
    if not removed:
        modseq = highest + 1
    blobs.drop_references(conn, counts)
    drop_metadata(conn, user, mailbox_id)  # RFC 5464 3.4: a new one starts bare
    conn.execute(
        "UPDATE mailboxes SET name = NULL, highest_modseq = %s, deleted_at = now() "
        "WHERE user_name = %s AND mailbox_id = %s",
        (modseq, user, mailbox_id),
    )
    notify(conn, user, mailbox_id, modseq)
    return mailbox_id, modseq


def rename_mailbox(
    conn: Any, blobs: IBlobStore, user: str, old: str, new: str
) -> list[tuple[int, str]]:
    """Rename a mailbox with its children; return (mailbox id, new name) of each.

    Renaming INBOX moves its messages to a new mailbox and leaves INBOX
    empty (RFC 3501 6.3.5); the value is then empty.
    """
    _lock_user(conn, user)
    existing = _names(conn, user)
    if names.is_inbox(new) or new in existing or _has_children(existing, new):
        raise MailboxExists(f"mailbox {new!r} already exists")
    if new == old or new.startswith(old + names.DELIMITER):
        raise InvalidMailboxName("a mailbox cannot be renamed to a name inside itself")
    if old == names.INBOX:
        for parent in names.parents(new):
            if parent not in existing:
                _new_mailbox(conn, user, parent, frozenset())
        _new_mailbox(conn, user, new, frozenset())
        inbox = find_mailbox(conn, user, names.INBOX)
        target = find_mailbox(conn, user, new)
        copy(
            conn,
            blobs,
            (user, inbox.mailbox_id),
            (user, target.mailbox_id),
            range(1, 2**63 - 1),
            True,
            None,
            None,
        )
        copy_metadata(conn, user, inbox.mailbox_id, target.mailbox_id)  # RFC 5464 3.4
        return []
    rows = conn.execute(
        "SELECT mailbox_id, name FROM mailboxes WHERE user_name = %s "
        "AND (name = %s OR left(name, %s) = %s)",
        (user, old, len(old) + 1, old + names.DELIMITER),
    ).fetchall()
    if not rows:
        raise NoSuchMailbox(f"no mailbox named {old!r}")
    for parent in names.parents(new):
        if parent not in existing:
            _new_mailbox(conn, user, parent, frozenset())
    renamed = [(row[0], new + row[1][len(old) :]) for row in rows]
    conn.execute(
        "UPDATE mailboxes b SET name = v.name FROM unnest(%s::bigint[], %s::text[]) "
        "AS v(mailbox_id, name) WHERE b.user_name = %s AND b.mailbox_id = v.mailbox_id",
        ([r[0] for r in renamed], [r[1] for r in renamed], user),
    )
    return renamed


def subscriptions(conn: Any, user: str) -> list[str]:
    rows = conn.execute(
        "SELECT name FROM subscriptions WHERE user_name = %s ORDER BY name", (user,)
    ).fetchall()
    return [row[0] for row in rows]


def subscribe(conn: Any, user: str, name: str) -> None:
    conn.execute(
        "INSERT INTO subscriptions (user_name, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (user, name),
    )


def unsubscribe(conn: Any, user: str, name: str) -> None:
    conn.execute("DELETE FROM subscriptions WHERE user_name = %s AND name = %s", (user, name))
