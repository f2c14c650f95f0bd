"""A trial mixin: a :class:`~mailsrv.testing.server.MailServer` per test.

::

    class ClientTests(MailServerMixin, unittest.TestCase):
        mail_server_options = {"tls": True}

        def test_sync(self):
            ...self.mail_server.imap_port...

By default the server runs in the test's own reactor (trial's), so a
Twisted client (or ``deferToThread`` around a blocking one, see
:meth:`MailServerMixin.in_client_thread`) talks to it from the test.  With
``mail_server_thread = True`` it runs in a thread of its own instead, and
the test body may block (imaplib directly in a synchronous test method).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from twisted.internet import defer, threads

from mailsrv.testing.server import MailServer

__all__ = ["MailServerMixin"]

_T = TypeVar("_T")


class MailServerMixin:
    """Starts :attr:`mail_server` in ``setUp`` and stops it at cleanup."""

    #: Options for :class:`MailServer`.
    mail_server_options: ClassVar[dict[str, Any]] = {}
    #: Run the server in a reactor thread of its own (blocking tests).
    mail_server_thread: ClassVar[bool] = False
    mail_server: MailServer

    def setUp(self) -> Any:
        result = super().setUp()  # type: ignore[misc]
        server = MailServer(**self.mail_server_options)
        if self.mail_server_thread:
            server.start_thread()
            self.addCleanup(server.stop_thread)  # type: ignore[attr-defined]
        else:
            server.start()
            self.addCleanup(server.stop)  # type: ignore[attr-defined]
        self.mail_server = server
        return result

    def in_client_thread(self, function: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        """Run a blocking client function in a thread; its result, as a Deferred."""
        return threads.deferToThread(function, *args)
