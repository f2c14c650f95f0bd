"""mailsrv: a Twisted IMAP4rev1 and POP3 mail access server over Maildir."""

__version__ = "0.1.0"
