"""Housekeeping of the database: ``mailsrv db prune``.

The expunge log (``expunged``) and deleted mailboxes' tombstones would grow
for ever.  Pruning keeps them for a bounded time (``storage.retention_days``,
30 days by default) and records, per mailbox, the highest MODSEQ it dropped
from the log (``mailboxes.expunged_floor``), the "single mod-sequence" RFC
7162 section 5.3 suggests keeping for expired records.  Above its floor a
mailbox's log is complete; a question about expunges since a MODSEQ at or
below it is answered with every UID the mailbox no longer has
(:func:`~mailsrv.storage.postgres.queries.expunged_since`), so answers stay
correct, only larger.

Work is done in batches of :data:`BATCH` rows, each its own short
transaction, so pruning a large log never holds locks for long and can be
interrupted and run again at any point.
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs

__all__ = ["BATCH", "Pruned", "prune"]

#: Rows deleted per transaction.
BATCH = 5000


@attrs.define
class Pruned:
    """What one prune removed."""

    expunged: int = 0
    mailboxes: int = 0


def prune(conn: Any, retention: datetime.timedelta) -> Pruned:
    """Drop expunge-log rows and tombstones older than ``retention``.

    ``conn`` is an autocommit psycopg connection; each batch commits on its
    own.  The floor is raised in the same transaction that deletes the
    rows below it, so no reader ever sees a log with a hole above its floor.
    """
    cutoff = conn.execute("SELECT now() - %s::interval", (retention,)).fetchone()[0]
    done = Pruned()
    while True:
        with conn.transaction():
            # The rows go first, then the floor of each mailbox they came
            # from rises to the highest MODSEQ among them.  Rows of a
            # mailbox are logged in MODSEQ order, but their times are not
            # strictly ordered with it (a transaction's now() is when it
            # began); the floor is the maximum either way, so every row
            # above it is still there.
            row = conn.execute(
                "WITH batch AS (SELECT user_name, mailbox_id, uid FROM expunged "
                "WHERE expunged_at < %s LIMIT %s), "
                "gone AS (DELETE FROM expunged e USING batch b WHERE e.user_name = b.user_name "
                "AND e.mailbox_id = b.mailbox_id AND e.uid = b.uid "
                "RETURNING e.user_name, e.mailbox_id, e.modseq), "
                "floors AS (UPDATE mailboxes m "
                "SET expunged_floor = GREATEST(m.expunged_floor, g.top) "
                "FROM (SELECT user_name, mailbox_id, max(modseq) AS top FROM gone "
                "GROUP BY user_name, mailbox_id) g "
                "WHERE m.user_name = g.user_name AND m.mailbox_id = g.mailbox_id RETURNING 1) "
                "SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM floors)",
                (cutoff, BATCH),
            ).fetchone()
        done.expunged += row[0]
        if row[0] < BATCH:
            break
    while True:
        with conn.transaction():
            # A tombstone tells sessions that still have the mailbox
            # selected that it is gone; after the retention period none
            # can (IMAP sessions time out after 30 minutes idle).  Its
            # expunge log goes with it (ON DELETE CASCADE).
            count = conn.execute(
                "WITH batch AS (SELECT user_name, mailbox_id FROM mailboxes "
                "WHERE name IS NULL AND deleted_at < %s LIMIT %s) "
                "DELETE FROM mailboxes m USING batch b WHERE m.user_name = b.user_name "
                "AND m.mailbox_id = b.mailbox_id AND m.name IS NULL",
                (cutoff, BATCH),
            ).rowcount
        done.mailboxes += count
        if count < BATCH:
            break
    return done
