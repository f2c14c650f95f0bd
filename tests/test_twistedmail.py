"""A realm written for twisted.mail, served by mailsrv to imaplib and poplib.

The account is twisted.mail's own in-memory ``imap4.MemoryAccount``; its
mailboxes are what a twisted.mail user writes (twisted.mail ships no
complete in-memory IMAP mailbox: the ones in its test suite answer FETCH
with None), implementing ``IMailbox``, ``IMessage``, ``IMessageCopier``
and ``ICloseableMailbox`` the twisted.mail way (sequence numbers, modes
-1/0/1, RFC 822 date strings).  The POP3 mailbox is twisted.mail's own
``maildir.StringListMailbox``.  Each test also checks the twisted.mail
objects themselves: what the client did must be there.
"""

from __future__ import annotations

import base64
import imaplib
import io
import poplib
import socket
from email.utils import formatdate
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import CramMD5Credentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, reactor, threads
from twisted.mail import imap4, pop3
from twisted.mail._cred import PLAINCredentials
from twisted.mail.maildir import StringListMailbox
from twisted.trial import unittest
from zope.interface import implementer

from mailsrv.imap.server import IMAP4ServerFactory as NativeIMAP4ServerFactory
from mailsrv.policy import SessionPolicy
from mailsrv.twistedmail import IMAP4ServerFactory, POP3Factory

HOST = "127.0.0.1"

MESSAGE_1 = (
    b"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: first\r\n\r\nHello alice\r\n"
)
MESSAGE_2 = b"From: carol@example.org\r\nSubject: second\r\n\r\nQuarterly numbers\r\n"


@implementer(imap4.IMessage, imap4.IMessageFile)
class Message:
    """A message the twisted.mail way: headers, body, flags, a date string."""

    def __init__(self, data: bytes, flags: list[str], date: str, uid: int) -> None:
        self.data, self.flags, self.date, self.uid = data, flags, date, uid

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.data)

    def getHeaders(self, negate: bool, *names: str) -> dict[str, str]:
        head = self.data.split(b"\r\n\r\n", 1)[0].decode()
        pairs = [line.split(": ", 1) for line in head.split("\r\n")]
        wanted = {n.lower() for n in names}
        return {k: v for k, v in pairs if (k.lower() in wanted) != negate}

    def getBodyFile(self) -> io.BytesIO:
        return io.BytesIO(self.data.split(b"\r\n\r\n", 1)[1])

    def getSize(self) -> int:
        return len(self.data)

    def getUID(self) -> int:
        return self.uid

    def getFlags(self) -> list[str]:
        return self.flags

    def getInternalDate(self) -> str:
        return self.date

    def isMultipart(self) -> bool:
        return False

    def getSubPart(self, part: int) -> Any:
        raise TypeError("not multipart")


@implementer(imap4.IMailbox, imap4.IMessageCopier, imap4.ICloseableMailbox)
class Mailbox:
    """An in-memory twisted.mail IMAP mailbox."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.listeners: list[Any] = []
        self.next_uid = 1
        self.closed = 0

    def getFlags(self) -> list[str]:
        return ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]

    def getHierarchicalDelimiter(self) -> str:
        return "/"

    def getUIDValidity(self) -> int:
        return 42

    def getUIDNext(self) -> int:
        return self.next_uid

    def getUID(self, message: int) -> int:
        return self.messages[message - 1].uid

    def getMessageCount(self) -> int:
        return len(self.messages)

    def getRecentCount(self) -> int:
        return 0

    def getUnseenCount(self) -> int:
        return sum("\\Seen" not in m.flags for m in self.messages)

    def isWriteable(self) -> bool:
        return True

    def destroy(self) -> None:
        self.messages = []

    def requestStatus(self, names: Any) -> dict[str, int]:
        status: dict[str, int] = imap4.statusRequestHelper(self, names)
        return status

    def addListener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def removeListener(self, listener: Any) -> None:
        self.listeners.remove(listener)

    def addMessage(self, message: Any, flags: Any = (), date: Any = None) -> defer.Deferred[int]:
        uid = self.next_uid
        self.next_uid += 1
        self.messages.append(Message(message.read(), list(flags), date or formatdate(), uid))
        return defer.succeed(uid)

    def copy(self, message: Message) -> int:
        uid = self.next_uid
        self.next_uid += 1
        self.messages.append(Message(message.data, list(message.flags), message.date, uid))
        return uid

    def expunge(self) -> list[int]:
        gone = [n for n, m in enumerate(self.messages, 1) if "\\Deleted" in m.flags]
        self.messages = [m for m in self.messages if "\\Deleted" not in m.flags]
        return gone

    def _numbers(self, messages: Any, uid: bool) -> list[int]:
        if uid:
            messages.last = self.next_uid
            wanted = set(messages)
            return [n for n, m in enumerate(self.messages, 1) if m.uid in wanted]
        messages.last = len(self.messages)
        return [n for n in messages if 1 <= n <= len(self.messages)]

    def fetch(self, messages: Any, uid: bool) -> list[tuple[int, Message]]:
        return [(n, self.messages[n - 1]) for n in self._numbers(messages, uid)]

    def store(self, messages: Any, flags: list[str], mode: int, uid: bool) -> dict[int, list[str]]:
        result = {}
        for n in self._numbers(messages, uid):
            message = self.messages[n - 1]
            if mode == 0:
                message.flags = list(flags)
            elif mode == 1:
                message.flags += [f for f in flags if f not in message.flags]
            else:
                message.flags = [f for f in message.flags if f not in flags]
            result[n] = message.flags
        return result

    def close(self) -> None:
        self.closed += 1


class Account(imap4.MemoryAccount):
    def _emptyMailbox(self, name: str, id: int) -> Mailbox:
        return Mailbox()


@implementer(IRealm)
class TwistedRealm:
    """A realm as a twisted.mail application writes it."""

    def __init__(self) -> None:
        self.account = Account("alice")
        self.account.addMailbox("INBOX")
        self.account.addMailbox("Archive")
        self.pop3_mailbox = StringListMailbox([MESSAGE_1, MESSAGE_2])

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if imap4.IAccount in interfaces:
            return imap4.IAccount, self.account, lambda: None
        if pop3.IMailbox in interfaces:
            return pop3.IMailbox, self.pop3_mailbox, lambda: None
        raise NotImplementedError(interfaces)


class BridgeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.realm = TwistedRealm()
        self.inbox: Mailbox = self.realm.account.select("INBOX")
        self.archive: Mailbox = self.realm.account.select("Archive")
        date = "Mon, 07 Feb 1994 21:52:25 -0800"
        self.inbox.addMessage(io.BytesIO(MESSAGE_1), [], date)
        self.inbox.addMessage(io.BytesIO(MESSAGE_2), ["\\Flagged"], date)
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        self.portal = Portal(self.realm, [checker])
        self.policy = SessionPolicy(failure_delay=0.0)

    def listen(self, factory: Any) -> int:
        port = reactor.listenTCP(0, factory, interface=HOST)
        self.addCleanup(port.stopListening)
        address: Any = port.getHost()
        return int(address.port)

    async def test_imap_session(self) -> None:
        port = self.listen(IMAP4ServerFactory(self.portal, self.policy))

        def session() -> dict[str, Any]:
            out: dict[str, Any] = {}
            client = imaplib.IMAP4(HOST, port)
            out["caps"] = client.capabilities
            out["login"] = client.login("alice", "secret")
            out["list"] = client.list()
            out["select"] = client.select("INBOX")
            out["fetch"] = client.fetch("1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
            out["envelope"] = client.fetch("1", "(ENVELOPE)")
            out["search_from"] = client.search(None, "FROM", "carol")
            out["search_text"] = client.search(None, "BODY", "numbers")
            out["search_flagged"] = client.uid("SEARCH", "FLAGGED")
            out["store"] = client.store("1", "+FLAGS", "(\\Seen $Done)")
            out["copy"] = client.copy("1:2", "Archive")
            out["delete"] = client.store("2", "+FLAGS", "(\\Deleted)")
            out["expunge"] = client.expunge()
            out["after"] = client.fetch("1:*", "(UID FLAGS)")
            out["status"] = client.status("Archive", "(MESSAGES UIDNEXT UNSEEN)")
            client.logout()
            return out

        out = await threads.deferToThread(session)
        self.assertNotIn("CONDSTORE", out["caps"])
        self.assertEqual(out["login"][0], "OK")
        self.assertIn(b'(\\HasNoChildren) "/" INBOX', out["list"][1])
        self.assertIn(b'(\\HasNoChildren) "/" ARCHIVE', out["list"][1])  # MemoryAccount upper-cases
        self.assertEqual(out["select"], ("OK", [b"2"]))
        typ, data = out["fetch"]
        self.assertEqual(typ, "OK")
        self.assertRegex(
            data[0][0], rb"UID 1 FLAGS \(\) INTERNALDATE \"07-Feb-1994 21:52:25 -0800\""
        )
        self.assertEqual(data[0][1], MESSAGE_1)
        self.assertIn(b"RFC822.SIZE %d" % len(MESSAGE_2), data[2][0])
        self.assertEqual(data[2][1], MESSAGE_2)
        self.assertIn(b'"first"', out["envelope"][1][0])
        self.assertEqual(out["search_from"], ("OK", [b"2"]))
        self.assertEqual(out["search_text"], ("OK", [b"2"]))
        self.assertEqual(out["search_flagged"], ("OK", [b"2"]))
        self.assertEqual(out["store"][0], "OK")
        self.assertEqual(out["copy"][0], "OK")
        self.assertEqual(out["expunge"], ("OK", [b"2"]))
        self.assertEqual(out["after"], ("OK", [b"1 (UID 1 FLAGS (\\Seen $Done))"]))
        self.assertEqual(out["status"], ("OK", [b"Archive (MESSAGES 2 UIDNEXT 3 UNSEEN 1)"]))
        # What the twisted.mail objects hold now.
        self.assertEqual([m.uid for m in self.inbox.messages], [1])
        self.assertEqual(self.inbox.messages[0].flags, ["\\Seen", "$Done"])
        self.assertEqual([m.data for m in self.archive.messages], [MESSAGE_1, MESSAGE_2])
        self.assertEqual(self.archive.messages[1].flags, ["\\Flagged"])
        self.assertGreaterEqual(self.inbox.closed, 1)  # ICloseableMailbox at logout

    async def test_uid_expunge_leaves_other_deleted_messages(self) -> None:
        """twisted.mail's expunge() takes every \\Deleted message; UID
        EXPUNGE must take only those named (RFC 4315 2.1)."""
        port = self.listen(IMAP4ServerFactory(self.portal, self.policy))
        for message in self.inbox.messages:
            message.flags.append("\\Deleted")

        def session() -> Any:
            client = imaplib.IMAP4(HOST, port)
            client.login("alice", "secret")
            client.select("INBOX")
            result = client.uid("EXPUNGE", "2")
            client.logout()
            return result

        self.assertEqual((await threads.deferToThread(session))[0], "OK")
        self.assertEqual([(m.uid, m.flags) for m in self.inbox.messages], [(1, ["\\Deleted"])])

    async def test_multiappend_and_replace_are_not_offered(self) -> None:
        """twisted.mail cannot add several messages, or add one and expunge
        another, as one change: MULTIAPPEND and REPLACE are withdrawn and
        refused; CATENATE (one message) works."""
        port = self.listen(IMAP4ServerFactory(self.portal, self.policy))

        def session() -> dict[str, Any]:
            out: dict[str, Any] = {}
            client = imaplib.IMAP4(HOST, port)
            out["caps"] = client.capabilities
            client.login("alice", "secret")
            client.select("INBOX")
            for key, command in (
                ("multi", b"m APPEND INBOX {1+}\r\na {1+}\r\nb\r\n"),
                ("replace", b"r REPLACE 1 INBOX {1+}\r\nc\r\n"),
                ("catenate", b'c APPEND Archive CATENATE (URL "/INBOX/;UID=1/;SECTION=TEXT")\r\n'),
            ):
                client.send(command)
                out[key] = client.readline()
            client.logout()
            return out

        out = await threads.deferToThread(session)
        for name in ("MULTIAPPEND", "REPLACE"):
            self.assertNotIn(name, out["caps"])
        self.assertIn("CATENATE", out["caps"])
        self.assertEqual(
            out["multi"], b"m BAD One message per APPEND (MULTIAPPEND is not offered)\r\n"
        )
        self.assertEqual(out["replace"], b"r BAD unknown command REPLACE\r\n")
        self.assertRegex(out["catenate"], rb"^c OK \[APPENDUID \d+ 1\] APPEND completed\r\n$")
        self.assertEqual([m.uid for m in self.inbox.messages], [1, 2])
        self.assertEqual(self.archive.messages[0].data, MESSAGE_1.split(b"\r\n\r\n", 1)[1])

    async def test_without_the_bridge_the_realm_is_refused(self) -> None:
        """mailsrv's own factory asks for mailsrv's IAccount, which a
        twisted.mail realm does not serve: the reason for the bridge."""
        port = self.listen(NativeIMAP4ServerFactory(self.portal, self.policy))

        def session() -> Any:
            client = imaplib.IMAP4(HOST, port)
            try:
                return client.login("alice", "secret")
            except imaplib.IMAP4.error as e:
                return str(e)
            finally:
                client.shutdown()

        self.assertIn("UNAVAILABLE", await threads.deferToThread(session))
        self.flushLoggedErrors(NotImplementedError)

    async def test_pop3_session(self) -> None:
        port = self.listen(POP3Factory(self.portal, self.policy))
        uidls = [self.realm.pop3_mailbox.getUidl(i).encode() for i in (0, 1)]

        def session() -> dict[str, Any]:
            client = poplib.POP3(HOST, port)
            out: dict[str, Any] = {"user": client.user("alice"), "pass": client.pass_("secret")}
            out["stat"] = client.stat()
            out["list"] = client.list()
            out["uidl"] = client.uidl()
            out["retr"] = client.retr(2)
            out["dele"] = client.dele(1)
            out["quit"] = client.quit()
            return out

        out = await threads.deferToThread(session)
        self.assertEqual(out["stat"], (2, len(MESSAGE_1) + len(MESSAGE_2)))
        self.assertEqual(out["list"][1], [b"1 %d" % len(MESSAGE_1), b"2 %d" % len(MESSAGE_2)])
        self.assertEqual(out["uidl"][1], [b"1 " + uidls[0], b"2 " + uidls[1]])
        self.assertEqual(b"\r\n".join(out["retr"][1]) + b"\r\n", MESSAGE_2)
        self.assertTrue(out["quit"].startswith(b"+OK"))
        # StringListMailbox.sync() empties deleted messages.
        self.assertEqual(self.realm.pop3_mailbox.msgs, ["", MESSAGE_2])


class ChallengerTests(unittest.TestCase):
    """``challengers``: twisted.mail's mapping of extra SASL mechanisms."""

    def setUp(self) -> None:
        self.realm = TwistedRealm()
        self.realm.account.select("INBOX")
        checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
        self.portal = Portal(self.realm, [checker])
        # No CRAM-MD5 of mailsrv's own (the checker holds no secrets it knows of).
        self.policy = SessionPolicy(failure_delay=0.0, plaintext="never")

    def listen(self, factory: Any) -> int:
        port = reactor.listenTCP(0, factory, interface=HOST)
        self.addCleanup(port.stopListening)
        address: Any = port.getHost()
        return int(address.port)

    async def test_imap_authenticate_with_twisted_cram_md5(self) -> None:
        factory = IMAP4ServerFactory(
            self.portal, self.policy, challengers={b"CRAM-MD5": CramMD5Credentials}
        )
        plain_factory = IMAP4ServerFactory(self.portal, self.policy)
        port, plain_port = self.listen(factory), self.listen(plain_factory)

        def session(port: int) -> Any:
            client = imaplib.IMAP4(HOST, port)
            try:
                return client.capabilities, client.login_cram_md5("alice", "secret")
            except imaplib.IMAP4.error as e:
                return client.capabilities, str(e)
            finally:
                client.shutdown()

        caps, result = await threads.deferToThread(session, port)
        self.assertIn("AUTH=CRAM-MD5", caps)
        self.assertEqual(result[0], "OK")
        caps, result = await threads.deferToThread(session, plain_port)
        self.assertNotIn("AUTH=CRAM-MD5", caps)
        self.assertIn("CRAM-MD5 is not available", result)

    async def test_pop3_auth_with_an_application_mechanism(self) -> None:
        port = self.listen(
            POP3Factory(self.portal, self.policy, challengers={"X-PLAIN": PLAINCredentials})
        )

        def session() -> list[bytes]:
            with socket.create_connection((HOST, port), timeout=10) as sock:
                reader = sock.makefile("rb")
                lines = [reader.readline()]
                sock.sendall(b"CAPA\r\n")
                while not lines[-1].startswith(b"."):
                    lines.append(reader.readline())
                sock.sendall(b"AUTH X-PLAIN\r\n")
                lines.append(reader.readline())
                sock.sendall(base64.b64encode(b"\0alice\0secret") + b"\r\n")
                lines.append(reader.readline())
                return lines

        lines = await threads.deferToThread(session)
        self.assertIn(b"SASL X-PLAIN\r\n", lines)
        self.assertEqual(lines[-2], b"+ \r\n")
        self.assertTrue(lines[-1].startswith(b"+OK Logged in: 2 messages"), lines[-1])
