"""LIST options on the wire, over both backends.

LIST-EXTENDED's RECURSIVEMATCH needs a selection option other than REMOTE
(RFC 5258 3).
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from mailsrv.interfaces import IStorage
from mailsrv.storage.memory import MemoryStorage
from tests.test_imap_backends import MESSAGE, _BackendBase


class _NameScenarios(_BackendBase):
    @defer.inlineCallbacks
    def test_recursivematch_needs_a_real_selection_option(self) -> Any:
        t: Any = self
        client = yield self.session(None)
        for options in ("RECURSIVEMATCH REMOTE", "REMOTE RECURSIVEMATCH", "RECURSIVEMATCH"):
            response = yield client.command("l", f'LIST ({options}) "" ""')
            t.assertEqual(
                response, b"l BAD RECURSIVEMATCH needs a selection option other than REMOTE\r\n"
            )
        response = yield client.command("l", 'LIST (REMOTE SUBSCRIBED RECURSIVEMATCH) "" %')
        t.assertEqual(response, b"l OK LIST completed\r\n")


class MemoryNameTests(_NameScenarios, TestCase):
    def make_storage(self) -> IStorage:
        return MemoryStorage()

    def deliver(self, number: int) -> None:
        storage: Any = self.storage
        storage.deliver("joe", MESSAGE % (number, number))


class MaildirNameTests(_NameScenarios, TestCase):
    def make_storage(self) -> IStorage:
        from mailsrv.storage.maildir import MaildirStorage

        return MaildirStorage(self.mktemp() + "/{user}")

    def deliver(self, number: int) -> None:
        from mailsrv.storage.deliver import deliver

        storage: Any = self.storage
        deliver(storage.account("joe"), io.BytesIO(MESSAGE % (number, number)))
