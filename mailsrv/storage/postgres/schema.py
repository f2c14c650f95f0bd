"""The PostgreSQL schema and its versioned migrations (``mailsrv db upgrade``).

Every table that holds a user's data has the user name as the first column
of its primary key, so the schema can be distributed by user (Citus: the
user tables are co-located on ``user_name``) without change.  The blob
store's tables are the exception by design: a body is shared between users,
so they are keyed by the body's digest and can be distributed by it.

Migrations are numbered from 1 and only ever appended.  :func:`upgrade` runs
the missing ones in one transaction under an advisory lock, so running it
twice, or on two hosts at once, is safe; it never downgrades, and a database
newer than this code is refused with a message saying what to do.
"""

from __future__ import annotations

from typing import Any

from mailsrv.errors import MailsrvError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SchemaError", "check_version", "upgrade", "version"]

#: Flag bits of ``messages.flags`` (keywords are in ``messages.keywords``).
FLAG_BITS = {"\\Seen": 1, "\\Answered": 2, "\\Flagged": 4, "\\Deleted": 8, "\\Draft": 16}

_V1 = """
CREATE TABLE users (
    user_name text PRIMARY KEY,
    last_mailbox_id bigint NOT NULL DEFAULT 0,
    last_uidvalidity bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A deleted mailbox keeps its row with name NULL (a tombstone), so sessions
-- on other nodes learn that it is gone.
CREATE TABLE mailboxes (
    user_name text NOT NULL,
    mailbox_id bigint NOT NULL,
    name text,
    special_use text[] NOT NULL DEFAULT '{}',
    uidvalidity bigint NOT NULL,
    uidnext bigint NOT NULL DEFAULT 1,
    highest_modseq bigint NOT NULL DEFAULT 1,
    -- UIDs from here up are \\Recent and not yet claimed by a session.
    recent_from bigint NOT NULL DEFAULT 1,
    messages bigint NOT NULL DEFAULT 0,
    unseen bigint NOT NULL DEFAULT 0,
    deleted bigint NOT NULL DEFAULT 0,
    size bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_name, mailbox_id),
    UNIQUE (user_name, name)
);

CREATE TABLE subscriptions (
    user_name text NOT NULL,
    name text NOT NULL,
    PRIMARY KEY (user_name, name)
);

CREATE TABLE messages (
    user_name text NOT NULL,
    mailbox_id bigint NOT NULL,
    uid bigint NOT NULL,
    modseq bigint NOT NULL,
    flags smallint NOT NULL DEFAULT 0,
    keywords text[] NOT NULL DEFAULT '{}',
    internal_date timestamptz NOT NULL,
    size bigint NOT NULL,
    digest bytea NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_name, mailbox_id, uid),
    FOREIGN KEY (user_name, mailbox_id) REFERENCES mailboxes ON DELETE CASCADE
);
CREATE INDEX messages_modseq ON messages (user_name, mailbox_id, modseq);

-- IMessageCache: parsed structure, envelope and header fields.
CREATE TABLE message_cache (
    user_name text NOT NULL,
    mailbox_id bigint NOT NULL,
    uid bigint NOT NULL,
    kind text NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (user_name, mailbox_id, uid, kind),
    FOREIGN KEY (user_name, mailbox_id, uid) REFERENCES messages ON DELETE CASCADE
);

-- Every expunge with its MODSEQ: catch-up after a lost notification now,
-- QRESYNC's VANISHED (RFC 7162) later.
CREATE TABLE expunged (
    user_name text NOT NULL,
    mailbox_id bigint NOT NULL,
    uid bigint NOT NULL,
    modseq bigint NOT NULL,
    PRIMARY KEY (user_name, mailbox_id, uid),
    FOREIGN KEY (user_name, mailbox_id) REFERENCES mailboxes ON DELETE CASCADE
);
CREATE INDEX expunged_modseq ON expunged (user_name, mailbox_id, modseq);

-- The blob store: message bodies by SHA-256 of their wire form, stored once
-- and counted; the last reference to go deletes the body.
CREATE TABLE blobs (
    digest bytea PRIMARY KEY,
    size bigint NOT NULL,
    refcount bigint NOT NULL CHECK (refcount > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE blob_chunks (
    digest bytea NOT NULL REFERENCES blobs ON DELETE CASCADE,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (digest, seq)
);
-- Bodies are mostly compressed or encoded already: skip pglz, keep TOAST.
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
"""

# The keywords defined in each mailbox (IMailbox.keywords), in the order they
# were first used, so FLAGS lists them without reading the messages.
_V2 = """
ALTER TABLE mailboxes ADD COLUMN keywords text[] NOT NULL DEFAULT '{}';
UPDATE mailboxes b SET keywords = coalesce(
    (SELECT array_agg(DISTINCT k ORDER BY k) FROM messages m, unnest(m.keywords) AS k
     WHERE m.user_name = b.user_name AND m.mailbox_id = b.mailbox_id), '{}');
"""

# Users in the database ([auth] backend = "postgresql"): a row with a
# password is a user who may log in; a row without one only owns mail (the
# storage creates it at first sight, and ``mailsrv user del`` clears the
# password but keeps the mail, as with the users file).
_V3 = """
ALTER TABLE users ADD COLUMN password text;
ALTER TABLE users ADD COLUMN home text;
ALTER TABLE users ADD COLUMN password_changed_at timestamptz;
CREATE INDEX users_with_password ON users (user_name) WHERE password IS NOT NULL;
"""

# The expunge log's bounded retention (``mailsrv db prune``): rows of the
# log at or below ``expunged_floor`` may be gone, so an answer about
# expunges since a MODSEQ below the floor cannot come from the log alone.
# A deleted mailbox's tombstone records when it was deleted, so it can be
# purged once no session can still have it selected.
_V4 = """
ALTER TABLE expunged ADD COLUMN expunged_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE mailboxes ADD COLUMN expunged_floor bigint NOT NULL DEFAULT 0;
ALTER TABLE mailboxes ADD COLUMN deleted_at timestamptz;
UPDATE mailboxes SET deleted_at = now() WHERE name IS NULL;
"""

# POP3 UIDLs carried over by ``mailsrv migrate`` from a Maildir whose UID
# list had them (``P`` fields of dovecot-uidlist); NULL: the computed UIDL.
_V5 = """
ALTER TABLE messages ADD COLUMN pop3_uidl text;
"""

# Each mailbox's RFC 8474 MAILBOXID: a GUID given at creation (existing
# mailboxes each get their own now), kept by RENAME, which keeps the row.
# Text, so a GUID carried over by ``mailsrv migrate`` (Dovecot's, in
# dovecot-uidlist's G field) is kept as it is.
_V6 = """
ALTER TABLE mailboxes ADD COLUMN guid text NOT NULL
    DEFAULT replace(gen_random_uuid()::text, '-', '');
"""

# IMAP annotations (RFC 5464), keyed by user first like every table, then by
# mailbox id so they follow a RENAME by themselves; mailbox id 0 holds the
# user's server annotations (ids handed out start at 1).
_V7 = """
CREATE TABLE metadata (
    user_name text NOT NULL,
    mailbox_id bigint NOT NULL,
    entry text NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (user_name, mailbox_id, entry)
);
"""

#: The migrations, in order; migration N brings the schema to version N.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4, _V5, _V6, _V7)

#: The schema version this code needs.
SCHEMA_VERSION = len(MIGRATIONS)

#: Serialises concurrent ``mailsrv db upgrade`` runs (pg_advisory_xact_lock).
_UPGRADE_LOCK = 0x6D61696C73727601

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS mailsrv_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class SchemaError(MailsrvError):
    """The database's schema does not match this code; the message says what to do."""


def version(conn: Any) -> int:
    """The schema version of the database (0: none installed)."""
    row = conn.execute("SELECT to_regclass('mailsrv_schema') IS NOT NULL AS present").fetchone()
    if not row[0]:
        return 0
    found = conn.execute("SELECT coalesce(max(version), 0) FROM mailsrv_schema").fetchone()
    return int(found[0])


def _too_new(found: int) -> SchemaError:
    return SchemaError(
        f"the database schema is at version {found}, newer than this mailsrv knows "
        f"(version {SCHEMA_VERSION}); mailsrv never downgrades a database: run a mailsrv "
        f"release that knows schema version {found}, or restore a backup taken before the upgrade"
    )


def check_version(conn: Any) -> None:
    """Refuse to serve from a database whose schema is not this code's."""
    found = version(conn)
    if found > SCHEMA_VERSION:
        raise _too_new(found)
    if found < SCHEMA_VERSION:
        state = "holds no mailsrv schema" if found == 0 else f"is at schema version {found}"
        raise SchemaError(
            f"the database {state}, this mailsrv needs version {SCHEMA_VERSION}: "
            "run `mailsrv db upgrade` first"
        )


def upgrade(conn: Any, target: int = SCHEMA_VERSION) -> tuple[int, int]:
    """Apply the missing migrations; return (version before, version after).

    One transaction: a failure leaves the database as it was.  ``conn`` is a
    psycopg connection in autocommit mode.  ``target`` stops at an older
    version (tests of a migration build the database it starts from).
    """
    target = min(target, SCHEMA_VERSION)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_UPGRADE_LOCK,))
        conn.execute(_VERSION_TABLE)
        before = version(conn)
        if before > SCHEMA_VERSION:
            raise _too_new(before)
        for number in range(before + 1, target + 1):
            conn.execute(MIGRATIONS[number - 1])
            conn.execute("INSERT INTO mailsrv_schema (version) VALUES (%s)", (number,))
    return before, max(before, target)
