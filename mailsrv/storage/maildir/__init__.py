"""Maildir++ storage (see docs/maildir.md, and docs/architecture.md for a
table of these modules).

From the bottom up: :mod:`.faults` (the tests' fault points),
:mod:`.layout` (file names, durable writes, wire-form reading),
:mod:`.keywords` (flag letters and ``dovecot-keywords``),
:mod:`.uidlist` (``mailsrv-uidlist``), :mod:`.index` (the SQLite index),
:mod:`.recovery` (damage and crashes), :mod:`.indexed` and :mod:`.scan` (a
folder's files and index kept in step), :mod:`.folder` and :mod:`.transfer`
(the IMailbox, COPY and MOVE), :mod:`.account` (a user's tree: the
IAccount), :mod:`.registry` (the shared mailbox objects), :mod:`.watch`
(outside changes told to idle sessions) and :mod:`.storage` (the IStorage).
"""

from mailsrv.storage.maildir.account import MaildirAccount, reindex
from mailsrv.storage.maildir.folder import MaildirMailbox
from mailsrv.storage.maildir.storage import MaildirStorage

__all__ = ["MaildirAccount", "MaildirMailbox", "MaildirStorage", "reindex"]
