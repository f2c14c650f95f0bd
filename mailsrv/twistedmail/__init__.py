"""Serve realms and mailboxes written for twisted.mail with mailsrv's servers.

Change the server, keep the realm::

    from mailsrv.twistedmail import IMAP4ServerFactory, POP3Factory

    portal = Portal(MyTwistedMailRealm(), [checker])   # unchanged
    reactor.listenTCP(143, IMAP4ServerFactory(portal))
    reactor.listenTCP(110, POP3Factory(portal))

The realm keeps returning ``twisted.mail.imap4.IAccount`` avatars (with
their ``IMailbox``, ``IMessage``, ``IMessageCopier``,
``ICloseableMailbox``) and ``twisted.mail.pop3.IMailbox`` ones;
:class:`TwistedMailRealm` adapts them to mailsrv's storage contract.  What
degrades, and the mapping of names, is in docs/twisted-mail.md.
"""

from mailsrv.twistedmail.account import TwistedAccount
from mailsrv.twistedmail.mailbox import TwistedMailbox
from mailsrv.twistedmail.maildrop import TwistedMaildrop
from mailsrv.twistedmail.realm import (
    IMAP4ServerFactory,
    POP3Factory,
    TwistedMailRealm,
    WithoutModseq,
    bridge_portal,
)

__all__ = [
    "IMAP4ServerFactory",
    "POP3Factory",
    "TwistedAccount",
    "TwistedMailRealm",
    "TwistedMailbox",
    "TwistedMaildrop",
    "WithoutModseq",
    "bridge_portal",
]
