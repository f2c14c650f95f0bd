"""``mailsrv migrate``: move accounts between Maildir and PostgreSQL.

What a client can see is kept both ways: each mailbox's UIDVALIDITY, every
UID, UIDNEXT, flags, keywords, internal dates and bodies (byte for byte),
special-use attributes, subscriptions, and POP3 UIDLs carried over from an
earlier server; MODSEQs too, into PostgreSQL (the Maildir index starts its
own above any earlier one when it adopts a tree, so HIGHESTMODSEQ never goes
back for a CONDSTORE client).

Maildir to PostgreSQL reads through the Maildir backend's API and writes
rows directly (the storage API would hand out new UIDs).  Each batch of
messages is one transaction, and a message is inserted under its UID only
if that UID is not there yet, so an interrupted run (killed, database gone)
is resumed by running the same command again, without duplicates.

PostgreSQL to Maildir writes a Maildir++ tree the way Dovecot would
(``dovecot-uidlist``, ``dovecot-keywords``) and lets the Maildir backend
adopt it on first open, which keeps UIDVALIDITY and UIDs; folders, special
use and subscriptions go through the backend's API.  Message files get
names derived from their UID, so a re-run skips what is there already.  The
UID list is written last, when the folder is complete: the backend must not
open a folder before (mailsrv must not serve the user from Maildir yet).

``--verify`` compares both sides without changing anything.
"""

from __future__ import annotations

from mailsrv.migrate.compare import compare
from mailsrv.migrate.migration import Migration
from mailsrv.migrate.report import MigrationError, Progress, UserOutcome

__all__ = ["Migration", "MigrationError", "Progress", "UserOutcome", "compare"]
