"""Test helpers shipped with mailsrv, for code that builds on it.

As Twisted ships :mod:`twisted.internet.testing`, mailsrv ships what its
own tests use and other projects need too:

* :mod:`mailsrv.testing.server`: a real IMAP, POP3 and LMTP server for a
  mail client's tests (:class:`MailServer`, ``with running() as srv:``),
  with a pytest plugin (:mod:`mailsrv.testing.pytest_plugin`, the
  ``imap_server``/``pop3_server`` fixtures) and a trial mixin
  (:mod:`mailsrv.testing.trial`); see docs/testing-clients.md;
* :mod:`mailsrv.testing.storage`: the storage contract as a suite of tests
  any backend can run.

Nothing here depends on mailsrv's source checkout or its ``tests``
directory.  The names below are imported on first use, so loading the
pytest plugin (which pytest does in every run once mailsrv is installed)
costs nothing until a test asks for a server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailsrv.testing.seeding import StoredMessage
    from mailsrv.testing.server import MailServer, running
    from mailsrv.testing.transcript import Transcript

__all__ = ["MailServer", "StoredMessage", "Transcript", "running"]

_WHERE = {
    "MailServer": "mailsrv.testing.server",
    "running": "mailsrv.testing.server",
    "StoredMessage": "mailsrv.testing.seeding",
    "Transcript": "mailsrv.testing.transcript",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
