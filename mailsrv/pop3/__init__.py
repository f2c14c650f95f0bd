"""The POP3 server (RFC 1939, 2449, 2595, 5034): see :mod:`mailsrv.pop3.server`."""

from mailsrv.pop3.server import POP3, POP3Factory, State

__all__ = ["POP3", "POP3Factory", "State"]
