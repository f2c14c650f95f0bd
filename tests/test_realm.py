"""The realm: one login, the IMAP account or the POP3 maildrop of one store."""

from __future__ import annotations

import os
from typing import Any

from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.trial import unittest
from zope.interface import Interface, implementer

from mailsrv.auth.checker import PasswdFileChecker
from mailsrv.auth.passwdfile import PasswdFile, create_empty
from mailsrv.auth.passwords import hash_password
from mailsrv.auth.realm import MailRealm
from mailsrv.errors import MailboxInUse
from mailsrv.interfaces import IAccount, IMaildrop, IStorage
from mailsrv.storage.memory import MemoryStorage


@implementer(IStorage)
class RecordingStorage:
    """Remembers which home directory the realm passed for each user."""

    def __init__(self) -> None:
        self.inner = MemoryStorage()
        self.homes: dict[str, str | None] = {}

    def account(self, username: str, home: str | None = None) -> Any:
        self.homes[username] = home
        return self.inner.account(username, home)


class RealmTests(unittest.TestCase):
    def setUp(self) -> None:
        path = os.path.join(os.path.abspath(self.mktemp()), "passwd")
        create_empty(path)
        self.passwd = PasswdFile(path)
        self.passwd.add("alice", hash_password("pw", "PLAIN"), home="/home/alice")
        self.passwd.add("bob", hash_password("pw", "PLAIN"))
        self.storage = RecordingStorage()
        self.storage.inner.deliver("alice", b"Subject: one\r\n\r\nbody\r\n")

        def home_of(name: str) -> str | None:
            record = self.passwd.get(name)
            return record.home if record else None

        self.portal = Portal(
            MailRealm(self.storage, home_of),
            [PasswdFileChecker(self.passwd, run_in_thread=False)],
        )

    def login(self, name: str, password: str, interface: Any) -> Any:
        return self.portal.login(
            UsernamePassword(name.encode(), password.encode()), None, interface
        )

    def test_imap_avatar_is_the_account(self) -> None:
        interface, account, logout = self.successResultOf(self.login("alice", "pw", IAccount))
        self.assertIs(interface, IAccount)
        self.assertTrue(IAccount.providedBy(account))
        self.assertEqual(account.username, "alice")
        inbox = account.get_mailbox("INBOX")
        self.assertEqual(inbox.status().messages, 1)
        self.assertEqual(self.storage.homes, {"alice": "/home/alice"})
        logout()

    def test_pop3_avatar_shares_the_store(self) -> None:
        interface, maildrop, logout = self.successResultOf(self.login("alice", "pw", IMaildrop))
        self.assertIs(interface, IMaildrop)
        listing = self.successResultOf(maildrop.open())
        self.assertEqual(len(listing), 1)
        # Same UID as IMAP sees.
        _, account, imap_logout = self.successResultOf(self.login("alice", "pw", IAccount))
        self.assertEqual(list(account.get_mailbox("INBOX").uids()), [listing[0].uid])
        imap_logout()

        # The maildrop is locked until logout releases it.
        _, second, second_logout = self.successResultOf(self.login("alice", "pw", IMaildrop))
        self.failureResultOf(second.open(), MailboxInUse)
        second_logout()
        logout()
        _, third, third_logout = self.successResultOf(self.login("alice", "pw", IMaildrop))
        self.assertEqual(len(self.successResultOf(third.open())), 1)
        third_logout()

    def test_user_without_home(self) -> None:
        self.successResultOf(self.login("bob", "pw", IAccount))[2]()
        self.assertEqual(self.storage.homes, {"bob": None})

    def test_wrong_password_reaches_no_storage(self) -> None:
        self.failureResultOf(self.login("alice", "nope", IAccount), UnauthorizedLogin)
        self.assertEqual(self.storage.homes, {})

    def test_other_interfaces_are_refused(self) -> None:
        class IOther(Interface):
            pass

        self.failureResultOf(self.login("alice", "pw", IOther), NotImplementedError)

    def test_bytes_and_str_avatar_ids(self) -> None:
        realm = MailRealm(self.storage)
        for avatar_id in (b"carol", "carol"):
            _, account, logout = self.successResultOf(
                realm.requestAvatar(avatar_id, None, IAccount)
            )
            self.assertEqual(account.username, "carol")
            logout()
