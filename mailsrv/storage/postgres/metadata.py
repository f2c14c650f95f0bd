"""The SQL of RFC 5464 annotations (the ``metadata`` table, schema version 6).

Rows are keyed by mailbox id, so a RENAME carries them without a write;
DELETE removes them (:func:`mailsrv.storage.postgres.accounts.delete_mailbox`)
and renaming INBOX copies INBOX's (RFC 5464 3.4).  Mailbox id 0 is the
user's server annotations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mailsrv.storage.metadata import merged
from mailsrv.storage.postgres.queries import find_mailbox

__all__ = ["SERVER", "copy_metadata", "drop_metadata", "get_metadata", "set_metadata"]

#: The mailbox id of the server's annotations.
SERVER = 0


def _mailbox_id(conn: Any, user: str, mailbox: str, lock: bool) -> int:
    if mailbox == "":
        if lock:  # one writer at a time per user's server entries
            conn.execute("SELECT 1 FROM users WHERE user_name = %s FOR UPDATE", (user,))
        return SERVER
    row = find_mailbox(conn, user, mailbox)
    if lock:
        conn.execute(
            "SELECT 1 FROM mailboxes WHERE user_name = %s AND mailbox_id = %s FOR UPDATE",
            (user, row.mailbox_id),
        )
    mailbox_id: int = row.mailbox_id
    return mailbox_id


def _entries(conn: Any, user: str, mailbox_id: int) -> dict[str, bytes]:
    rows = conn.execute(
        "SELECT entry, value FROM metadata WHERE user_name = %s AND mailbox_id = %s",
        (user, mailbox_id),
    ).fetchall()
    return {row[0]: bytes(row[1]) for row in rows}


def get_metadata(conn: Any, user: str, mailbox: str) -> dict[str, bytes]:
    return _entries(conn, user, _mailbox_id(conn, user, mailbox, False))


def set_metadata(
    conn: Any, user: str, mailbox: str, changes: Mapping[str, bytes | None], max_entries: int
) -> None:
    """In one transaction, the mailbox row locked: the limit holds across
    sessions and nodes, and a refused change writes nothing."""
    mailbox_id = _mailbox_id(conn, user, mailbox, True)
    merged(_entries(conn, user, mailbox_id), changes, max_entries)
    for entry, value in changes.items():
        if value is None:
            conn.execute(
                "DELETE FROM metadata WHERE user_name = %s AND mailbox_id = %s AND entry = %s",
                (user, mailbox_id, entry),
            )
        else:
            conn.execute(
                "INSERT INTO metadata (user_name, mailbox_id, entry, value) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (user_name, mailbox_id, entry) "
                "DO UPDATE SET value = excluded.value",
                (user, mailbox_id, entry, value),
            )


def drop_metadata(conn: Any, user: str, mailbox_id: int) -> None:
    conn.execute(
        "DELETE FROM metadata WHERE user_name = %s AND mailbox_id = %s", (user, mailbox_id)
    )


def copy_metadata(conn: Any, user: str, source: int, target: int) -> None:
    conn.execute(
        "INSERT INTO metadata (user_name, mailbox_id, entry, value) "
        "SELECT user_name, %s, entry, value FROM metadata "
        "WHERE user_name = %s AND mailbox_id = %s",
        (target, user, source),
    )
