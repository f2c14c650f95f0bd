"""METADATA and METADATA-SERVER (RFC 5464) over real sockets, on the memory
and Maildir backends: the RFC's example dialogues, MAXSIZE and DEPTH, the
limits' response codes, RENAME and DELETE, and annotations surviving a
restart (a new storage over the same Maildir)."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mailsrv.auth.realm import MailRealm
from mailsrv.config import load_config
from mailsrv.errors import ConfigError
from mailsrv.interfaces import IAccount, IStorage
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryAccount, MemoryStorage
from tests.imap_helpers import ServerTestBase

TWO_LINES = b"My new comment across\r\ntwo lines.\r\n"


class MetadataDialogues:
    """Mixed into a :class:`ServerTestBase` over one backend."""

    policy = SessionPolicy(failure_delay=0.0, max_metadata_size=1024, max_metadata_entries=3)

    @defer.inlineCallbacks
    def test_capability(self: Any) -> Any:
        client = yield self.login()
        response = yield client.command("a", "CAPABILITY")
        self.assertIn(b" METADATA METADATA-SERVER", response.split(b"\r\n")[0])

    @defer.inlineCallbacks
    def test_rfc_examples(self: Any) -> Any:
        """RFC 5464 4.2 and 4.3, in the order that makes their answers hold."""
        client = yield self.login()
        # 4.3: a multi-line value in a literal, then read back (4.2).
        response = yield client.command(
            "a",
            b"SETMETADATA INBOX (/private/comment {%d+}\r\n" % len(TWO_LINES) + TWO_LINES + b")",
        )
        self.assertEqual(response, b"a OK SETMETADATA completed\r\n")
        response = yield client.command("b", 'GETMETADATA "INBOX" /private/comment')
        self.assertEqual(
            response,
            b"* METADATA INBOX (/private/comment {%d}\r\n" % len(TWO_LINES)
            + TWO_LINES
            + b")\r\nb OK GETMETADATA completed\r\n",
        )
        response = yield client.command(
            "c",
            'SETMETADATA INBOX (/private/comment "My new comment"'
            ' /shared/comment "This one is for you!")',
        )
        self.assertEqual(response, b"c OK SETMETADATA completed\r\n")
        response = yield client.command(
            "d", 'GETMETADATA "INBOX" (/shared/comment /private/comment)'
        )
        self.assertEqual(
            response,
            b'* METADATA INBOX (/shared/comment "This one is for you!"'
            b' /private/comment "My new comment")\r\nd OK GETMETADATA completed\r\n',
        )
        # 4.4.1's form: entries without parentheses; names are case-insensitive.
        response = yield client.command("e", "GETMETADATA INBOX /PRIVATE/Comment /shared/comment")
        self.assertIn(b'(/private/comment "My new comment" /shared/comment', response)
        # 4.3: NIL removes; an entry without a value answers NIL.
        response = yield client.command("f", "SETMETADATA INBOX (/private/comment NIL)")
        self.assertEqual(response, b"f OK SETMETADATA completed\r\n")
        response = yield client.command("g", "GETMETADATA INBOX /private/comment")
        self.assertEqual(
            response, b"* METADATA INBOX (/private/comment NIL)\r\ng OK GETMETADATA completed\r\n"
        )
        # Server annotations: the user's /private ones; /shared ones are read-only.
        response = yield client.command("h", 'SETMETADATA "" (/private/vendor/example/x "1")')
        self.assertEqual(response, b"h OK SETMETADATA completed\r\n")
        response = yield client.command("i", 'GETMETADATA "" /private/vendor/example/x')
        self.assertEqual(
            response,
            b'* METADATA "" (/private/vendor/example/x "1")\r\ni OK GETMETADATA completed\r\n',
        )
        response = yield client.command("j", 'SETMETADATA "" (/shared/comment "mine")')
        self.assertTrue(response.startswith(b"j NO [NOPERM] "), response)

    @defer.inlineCallbacks
    def test_maxsize_and_depth(self: Any) -> Any:
        client = yield self.login()
        big = b"x" * 1000
        response = yield client.command(
            "a",
            b"SETMETADATA INBOX (/shared/comment {1000+}\r\n"
            + big
            + b' /private/comment "My own comment")',
        )
        self.assertEqual(response, b"a OK SETMETADATA completed\r\n")
        # 4.2.1: the long entry left out, its size in LONGENTRIES.
        response = yield client.command(
            "b", 'GETMETADATA "INBOX" (MAXSIZE 100) (/shared/comment /private/comment)'
        )
        self.assertEqual(
            response,
            b'* METADATA INBOX (/private/comment "My own comment")\r\n'
            b"b OK [METADATA LONGENTRIES 1000] GETMETADATA completed\r\n",
        )
        yield client.command("c", "SETMETADATA INBOX (/shared/comment NIL /private/comment NIL)")
        response = yield client.command(
            "d",
            'SETMETADATA INBOX (/private/filters/values/small "SMALLER 5000"'
            ' /private/filters/values/boss "FROM \\"boss@example.com\\""'
            ' /private/filters/values/boss/deep "3")',
        )
        self.assertEqual(response, b"d OK SETMETADATA completed\r\n")
        # 4.2.2: DEPTH 1 takes children, not grandchildren.
        response = yield client.command(
            "e", 'GETMETADATA "INBOX" (DEPTH 1) (/private/filters/values)'
        )
        self.assertEqual(
            response,
            b'* METADATA INBOX (/private/filters/values/boss "FROM \\"boss@example.com\\""'
            b' /private/filters/values/small "SMALLER 5000")\r\ne OK GETMETADATA completed\r\n',
        )
        response = yield client.command("f", "GETMETADATA INBOX (DEPTH infinity) /private/filters")
        self.assertIn(b"/private/filters/values/boss/deep", response)
        response = yield client.command("g", "GETMETADATA INBOX (DEPTH 2) /private/filters")
        self.assertTrue(response.startswith(b"g BAD "), response)

    @defer.inlineCallbacks
    def test_limits_change_nothing(self: Any) -> Any:
        """[METADATA MAXSIZE n] and [METADATA TOOMANY] (RFC 5464 4.3): the
        other entries of the refused command are not set."""
        client = yield self.login()
        big = b"y" * 1025
        response = yield client.command(
            "a",
            b'SETMETADATA INBOX (/private/a "1" /private/b {1025+}\r\n' + big + b")",
        )
        self.assertEqual(
            response,
            b"a NO [METADATA MAXSIZE 1024] /private/b is larger than 1024 octets\r\n",
        )
        response = yield client.command("b", 'SETMETADATA INBOX (/private/a "1" /private/b "2")')
        self.assertEqual(response, b"b OK SETMETADATA completed\r\n")
        response = yield client.command(
            "c", 'SETMETADATA INBOX (/private/c "3" /private/d "4" /private/a "5")'
        )
        self.assertEqual(
            response, b"c NO [METADATA TOOMANY] a mailbox holds at most 3 annotations\r\n"
        )
        response = yield client.command("d", "GETMETADATA INBOX (/private/a /private/c)")
        self.assertEqual(
            response,
            b'* METADATA INBOX (/private/a "1" /private/c NIL)\r\nd OK GETMETADATA completed\r\n',
        )

    @defer.inlineCallbacks
    def test_bad_entries_and_missing_mailbox(self: Any) -> Any:
        client = yield self.login()
        for tag, entry in (("a", "/private/*"), ("b", "/private//x"), ("c", "/other/x")):
            response = yield client.command(tag, f"GETMETADATA INBOX {entry}")
            self.assertTrue(response.startswith(tag.encode() + b" BAD "), response)
        response = yield client.command("d", 'SETMETADATA INBOX (/shared/vendor/x "v")')
        self.assertTrue(response.startswith(b"d BAD "), response)
        response = yield client.command("e", 'SETMETADATA Nowhere (/private/comment "v")')
        self.assertTrue(response.startswith(b"e NO [NONEXISTENT] "), response)
        response = yield client.command("f", "GETMETADATA Nowhere /private/comment")
        self.assertTrue(response.startswith(b"f NO [NONEXISTENT] "), response)

    @defer.inlineCallbacks
    def test_utf8_session_names_the_mailbox_in_utf8(self: Any) -> Any:
        client = yield self.login()
        yield client.command("a", "CREATE Entw&APw-rfe")
        yield client.command("b", 'SETMETADATA Entw&APw-rfe (/private/comment "x")')
        response = yield client.command("c", "ENABLE UTF8=ACCEPT")
        self.assertIn(b"* ENABLED UTF8=ACCEPT", response)
        response = yield client.command("d", b'GETMETADATA "Entw\xc3\xbcrfe" /private/comment')
        self.assertEqual(
            response,
            b'* METADATA "Entw\xc3\xbcrfe" (/private/comment "x")\r\n'
            b"d OK GETMETADATA completed\r\n",
        )

    @defer.inlineCallbacks
    def test_rename_and_delete(self: Any) -> Any:
        client = yield self.login()
        yield client.command("a", "CREATE Old")
        yield client.command("b", 'SETMETADATA Old (/private/comment "kept")')
        response = yield client.command("c", "RENAME Old New")
        self.assertEqual(response, b"c OK RENAME completed\r\n")
        response = yield client.command("d", "GETMETADATA New /private/comment")
        self.assertIn(b'* METADATA New (/private/comment "kept")', response)
        yield client.command("e", "DELETE New")
        yield client.command("f", "CREATE New")
        response = yield client.command("g", "GETMETADATA New /private/comment")
        self.assertIn(b"* METADATA New (/private/comment NIL)", response)


class MemoryMetadataTests(MetadataDialogues, ServerTestBase):
    pass


class MaildirMetadataTests(MetadataDialogues, ServerTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.root = os.path.abspath(self.mktemp())
        self.use_maildir()

    def use_maildir(self) -> None:
        from mailsrv.storage.maildir import MaildirStorage

        self.storage = MaildirStorage(self.root + "/{user}")  # type: ignore[assignment]
        self.portal.realm = MailRealm(self.storage)

    @defer.inlineCallbacks
    def test_restart_keeps_annotations_on_disk(self) -> Any:
        client = yield self.login()
        yield client.command("a", "CREATE Work")
        response = yield client.command(
            "b", 'SETMETADATA Work (/private/vendor/example/colour "red" /shared/comment "c")'
        )
        self.assertEqual(response, b"b OK SETMETADATA completed\r\n")
        path = os.path.join(self.root, "joe", ".Work", "mailsrv-metadata")
        with open(path, "rb") as handle:
            self.assertEqual(
                json.loads(handle.read()),
                {"/private/vendor/example/colour": "red", "/shared/comment": "c"},
            )
        yield client.command("c", "LOGOUT")
        self.use_maildir()  # a new storage over the same files: a restart
        again = yield self.login()
        response = yield again.command("d", "GETMETADATA Work (/shared/comment)")
        self.assertEqual(
            response, b'* METADATA Work (/shared/comment "c")\r\nd OK GETMETADATA completed\r\n'
        )


class PostgresMetadataTests(MetadataDialogues, ServerTestBase):
    """The same dialogues on PostgreSQL (tests/pgcluster.py's private server)."""

    def setUp(self) -> None:
        super().setUp()
        from tests import pgcluster

        self.dsn = pgcluster.new_dsn()
        self.use_postgres()

    def use_postgres(self) -> None:
        from tests import pgcluster

        self.storage = pgcluster.new_storage(self, self.dsn)
        self.portal.realm = MailRealm(self.storage)

    @defer.inlineCallbacks
    def test_restart_keeps_annotations(self) -> Any:
        client = yield self.login()
        response = yield client.command("a", 'SETMETADATA INBOX (/private/comment "kept")')
        self.assertEqual(response, b"a OK SETMETADATA completed\r\n")
        yield client.command("b", "LOGOUT")
        self.use_postgres()  # a new storage on the same database: a restart
        again = yield self.login()
        response = yield again.command("c", "GETMETADATA INBOX /private/comment")
        self.assertEqual(
            response,
            b'* METADATA INBOX (/private/comment "kept")\r\nc OK GETMETADATA completed\r\n',
        )


@implementer(IAccount)
class _PlainAccount:
    """An account that declares IAccount only, as a backend without annotations."""

    def __init__(self, account: MemoryAccount) -> None:
        self._account = account

    def __getattr__(self, name: str) -> Any:
        return getattr(self._account, name)


@implementer(IStorage)
class _PlainStorage:
    def __init__(self, storage: MemoryStorage) -> None:
        self._storage = storage

    def account(self, username: str, home: str | None = None) -> _PlainAccount:
        return _PlainAccount(self._storage.account(username))


class NoStoreTests(ServerTestBase):
    """A backend without IMetadataStore: neither capability, and NO."""

    def setUp(self) -> None:
        super().setUp()
        self.portal.realm = MailRealm(_PlainStorage(self.storage))

    @defer.inlineCallbacks
    def test_not_advertised(self) -> Any:
        client = yield self.login()
        response = yield client.command("a", "CAPABILITY")
        self.assertNotIn(b"METADATA", response)
        response = yield client.command("b", "GETMETADATA INBOX /private/comment")
        self.assertEqual(response, b"b NO [CANNOT] This server's storage keeps no annotations\r\n")


class ConfigTests(SynchronousTestCase):
    def test_limits_from_config_and_errors(self) -> None:
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write("[limits]\nmax_metadata_size = 2048\nmax_metadata_entries = 7\n")
        policy = SessionPolicy.from_config(
            load_config(path, check_files=False, require_listeners=False)
        )
        self.assertEqual((policy.max_metadata_size, policy.max_metadata_entries), (2048, 7))
        with open(path, "w") as handle:
            handle.write("[limits]\nmax_metadata_entries = 0\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path, check_files=False, require_listeners=False)
        self.assertIn(path, str(caught.exception))
        self.assertIn("limits.max_metadata_entries", str(caught.exception))
