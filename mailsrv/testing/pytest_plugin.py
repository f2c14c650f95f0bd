"""The pytest plugin: ``imap_server``, ``pop3_server`` and ``mail_server`` fixtures.

Installed with mailsrv (entry point ``pytest11``), so a test only names a
fixture::

    def test_fetch(imap_server):
        imap_server.deliver(imap_server.user, b"Subject: hi\\r\\n\\r\\nHello\\r\\n")
        client = imaplib.IMAP4(imap_server.host, imap_server.imap_port)
        ...

Each test gets a fresh :class:`~mailsrv.testing.server.MailServer` in a
background thread (the three fixtures are the same server, so IMAP and POP3
see the same mail), stopped after the test.  Options come from the
``mailsrv_options`` fixture (override it in a conftest.py for a whole
directory) and, on top, a ``@pytest.mark.mailsrv(**options)`` marker.

This module imports nothing of mailsrv until a fixture is used: pytest
loads it in every run of an environment where mailsrv is installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mailsrv.testing.server import MailServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "mailsrv(**options): options of the mail_server/imap_server/pop3_server fixtures "
        "(see mailsrv.testing.MailServer)",
    )


@pytest.fixture
def mailsrv_options() -> dict[str, Any]:
    """Options for the server fixtures; override it to change the defaults."""
    return {}


@pytest.fixture
def mail_server(
    request: pytest.FixtureRequest, mailsrv_options: dict[str, Any]
) -> Iterator[MailServer]:
    """A running IMAP, POP3 and LMTP server for this test."""
    from mailsrv.testing.server import MailServer

    options = dict(mailsrv_options)
    marker = request.node.get_closest_marker("mailsrv")
    if marker is not None:
        if marker.args:
            raise pytest.UsageError("@pytest.mark.mailsrv takes keyword options only")
        options.update(marker.kwargs)
    with MailServer(**options) as server:
        yield server


@pytest.fixture
def imap_server(mail_server: MailServer) -> MailServer:
    """The test's server, for IMAP (``imap_server.imap_port``)."""
    return mail_server


@pytest.fixture
def pop3_server(mail_server: MailServer) -> MailServer:
    """The test's server, for POP3 (``pop3_server.pop3_port``)."""
    return mail_server
