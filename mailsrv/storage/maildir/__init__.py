"""Maildir++ storage (see docs/maildir.md).

The modules, from the bottom up: :mod:`.layout` (file names, durable
writes, wire-form reading), :mod:`.keywords` (flag letters and
``dovecot-keywords``), :mod:`.uidlist` (``mailsrv-uidlist``), :mod:`.index`
(the SQLite index), :mod:`.folder` (one folder: the IMailbox),
:mod:`.account` (a user's tree: the IAccount) and :mod:`.storage` (the
IStorage, and the watcher telling idle sessions about outside changes).
"""

from mailsrv.storage.maildir.account import MaildirAccount, reindex
from mailsrv.storage.maildir.folder import MaildirMailbox
from mailsrv.storage.maildir.storage import MaildirStorage

__all__ = ["MaildirAccount", "MaildirMailbox", "MaildirStorage", "reindex"]
