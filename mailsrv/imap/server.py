"""The import path docs/embedding.md promises for embedding the IMAP server.

``from mailsrv.imap.server import IMAP4ServerFactory`` keeps working; the
protocol itself is :mod:`mailsrv.imap.protocol` (the Twisted adapter) over
:mod:`mailsrv.imap.session` and the commands in :mod:`mailsrv.imap.commands`.
"""

from mailsrv.imap.protocol import IMAP4Server, IMAP4ServerFactory

__all__ = ["IMAP4Server", "IMAP4ServerFactory"]
