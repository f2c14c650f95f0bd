"""The storage contract under names no twisted.mail interface has.

mailsrv's :mod:`mailsrv.interfaces` reuses three names twisted.mail also
uses for other things: ``IAccount``, ``IMailbox`` and ``IMessage``
(``twisted.mail.imap4`` has all three, ``twisted.mail.pop3`` an
``IMailbox``).  Code that imports from both, such as a migration or
:mod:`mailsrv.twistedmail`, can import these instead; they are the same
objects, so ``providedBy`` and ``@implementer`` work with either name.
The table in docs/twisted-mail.md maps one family onto the other.
"""

from mailsrv.interfaces import IAccount as IStorageAccount
from mailsrv.interfaces import IMailbox as IStorageMailbox
from mailsrv.interfaces import IMailboxListener as IStorageMailboxListener
from mailsrv.interfaces import IMaildrop as IPop3Maildrop
from mailsrv.interfaces import IMessage as IMessageInfo
from mailsrv.interfaces import IStorage

__all__ = [
    "IMessageInfo",
    "IPop3Maildrop",
    "IStorage",
    "IStorageAccount",
    "IStorageMailbox",
    "IStorageMailboxListener",
]
