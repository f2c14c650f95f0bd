"""The IMAP4rev1 server: pure grammar, per-session mailbox view, Twisted protocol.

Embed it with ``IMAP4ServerFactory(portal, policy)`` from
:mod:`mailsrv.imap.server`.
"""
