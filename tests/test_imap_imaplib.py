"""Python's imaplib against the server (the client runs in a thread).

A first slice of the imaplib interop issue 4 asks for: the everyday
methods over the memory backend.  STARTTLS/IMAP4_SSL and CRAM-MD5 through
imaplib are not covered here yet.
"""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from mailsrv.auth.realm import MailRealm
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryStorage
from tests.test_imap_server import RecordingFactory

MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nHello there\r\n"


class ImaplibTests(TestCase):
    def setUp(self) -> None:
        self.storage = MemoryStorage()
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        portal = Portal(MailRealm(self.storage), [checker])
        self.factory = RecordingFactory(portal, SessionPolicy(failure_delay=0.0))
        self.port: Any = reactor.listenTCP(0, self.factory, interface="127.0.0.1")

    @defer.inlineCallbacks
    def tearDown(self) -> Any:
        yield defer.gatherResults(self.factory.lost)
        yield self.port.stopListening()

    def run_client(self, script: Any) -> defer.Deferred[Any]:
        port = self.port.getHost().port

        def session() -> Any:
            client = imaplib.IMAP4("127.0.0.1", port)
            try:
                return script(client)
            finally:
                try:
                    client.logout()
                except Exception:
                    client.shutdown()

        return threads.deferToThread(session)

    @defer.inlineCallbacks
    def test_everyday_methods(self) -> Any:
        self.storage.deliver("joe", MESSAGE)
        results: dict[str, Any] = {}

        def script(c: imaplib.IMAP4) -> None:
            results["caps"] = c.capabilities
            results["login"] = c.login("joe", "secret")
            results["noop"] = c.noop()
            results["namespace"] = c.namespace()
            results["create"] = c.create("Projects/2024")
            results["list"] = c.list()
            results["subscribe"] = c.subscribe("Projects/2024")
            results["lsub"] = c.lsub()
            results["unsubscribe"] = c.unsubscribe("Projects/2024")
            results["status"] = c.status("INBOX", "(MESSAGES UIDNEXT UNSEEN)")
            # imaplib hands out its live response lists: copy them.
            typ, data = c.select("INBOX")
            results["select"] = (typ, list(data))
            typ, data = c.recent()
            results["recent"] = (typ, list(data))
            results["append"] = c.append("INBOX", "(\\Flagged)", None, MESSAGE)
            results["fetch"] = c.fetch("1:*", "(FLAGS RFC822.SIZE)")
            results["store"] = c.store("1", "+FLAGS", "(\\Seen)")
            results["search"] = c.search(None, "UNSEEN")
            results["uid_search"] = c.uid("SEARCH", "FLAGGED")
            results["uid_fetch"] = c.uid("FETCH", "2", "(FLAGS)")
            results["copy"] = c.copy("1", "Projects/2024")
            results["move"] = c.uid("MOVE", "2", "Projects/2024")
            results["store2"] = c.store("1", "+FLAGS", "(\\Deleted)")
            results["expunge"] = c.expunge()
            results["check"] = c.check()
            results["unselect"] = c.unselect()
            typ, data = c.select("Projects/2024", readonly=True)
            results["examine"] = (typ, list(data))
            results["close"] = c.close()
            results["rename"] = c.rename("Projects/2024", "Old")
            results["delete"] = c.delete("Old")
            results["enable"] = c.enable("CONDSTORE")
            try:
                c.xatom("FROB")
            except imaplib.IMAP4.error as e:
                results["xatom"] = str(e)
            results["select_missing"] = c.select("Nowhere")  # imaplib returns NO here
            results["response"] = c.response("FLAGS")

        yield self.run_client(script)
        self.assertIn("IDLE", results["caps"])
        self.assertIn("UIDPLUS", results["caps"])
        self.assertEqual(results["login"][0], "OK")
        self.assertEqual(results["namespace"], ("OK", [b'(("" "/")) NIL NIL']))
        self.assertEqual(results["create"], ("OK", [b"CREATE completed"]))
        self.assertIn(b'(\\HasChildren) "/" Projects', results["list"][1])
        self.assertIn(b'(\\HasNoChildren) "/" Projects/2024', results["list"][1])
        self.assertEqual(results["lsub"], ("OK", [b'() "/" Projects/2024']))
        self.assertEqual(results["status"], ("OK", [b"INBOX (MESSAGES 1 UIDNEXT 2 UNSEEN 1)"]))
        self.assertEqual(results["select"], ("OK", [b"1"]))
        self.assertEqual(results["recent"], ("OK", [b"1"]))
        self.assertEqual(results["append"][0], "OK")
        self.assertEqual(
            results["fetch"],
            (
                "OK",
                [
                    b"1 (FLAGS (\\Recent) RFC822.SIZE %d)" % len(MESSAGE),
                    b"2 (FLAGS (\\Flagged \\Recent) RFC822.SIZE %d)" % len(MESSAGE),
                ],
            ),
        )
        self.assertEqual(results["store"], ("OK", [b"1 (FLAGS (\\Recent \\Seen))"]))
        self.assertEqual(results["search"], ("OK", [b"2"]))
        self.assertEqual(results["uid_search"], ("OK", [b"2"]))
        self.assertEqual(results["uid_fetch"], ("OK", [b"2 (FLAGS (\\Flagged \\Recent) UID 2)"]))
        self.assertEqual(results["copy"][0], "OK")
        self.assertEqual(results["move"][0], "OK")
        # imaplib collects every EXPUNGE since the last read: MOVE's, then EXPUNGE's.
        self.assertEqual(results["expunge"], ("OK", [b"2", b"1"]))
        for name in ("check", "unselect", "close", "rename", "delete", "enable", "noop"):
            self.assertEqual(results[name][0], "OK", name)
        self.assertEqual(results["examine"], ("OK", [b"2"]))
        self.assertIn("unknown command FROB", results["xatom"])
        self.assertEqual(
            results["select_missing"],
            ("NO", [b"[NONEXISTENT] no mailbox named 'Nowhere'"]),
        )
        self.assertEqual(results["response"][0], "FLAGS")

    @defer.inlineCallbacks
    def test_authenticate_and_failures(self) -> Any:
        results: dict[str, Any] = {}

        def script(c: imaplib.IMAP4) -> None:
            try:
                c.login_cram_md5("joe", "secret")
            except imaplib.IMAP4.error as e:
                results["cram"] = str(e)
            try:
                c.login("joe", "wrong")
            except imaplib.IMAP4.error as e:
                results["wrong"] = str(e)
            results["plain"] = c.authenticate("PLAIN", lambda _: b"\0joe\0secret")
            results["selected"] = c.select()

        yield self.run_client(script)
        self.assertIn("CRAM-MD5 is not available", results["cram"])
        self.assertIn("AUTHENTICATIONFAILED", results["wrong"])
        self.assertEqual(results["plain"][0], "OK")
        self.assertEqual(results["selected"], ("OK", [b"0"]))


class ImaplibTLSTests(TestCase):
    """imaplib's starttls(), IMAP4_SSL and login_cram_md5() against the server."""

    def setUp(self) -> None:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from tests.test_imap_server import _tls_options

        self.storage = MemoryStorage()
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        portal = Portal(MailRealm(self.storage), [checker])
        policy = SessionPolicy(
            failure_delay=0.0,
            tls_context=_tls_options(self.mktemp()),
            plaintext="never",
            challenge_auth_available=lambda: True,
        )
        self.plain = RecordingFactory(portal, policy)
        self.implicit = RecordingFactory(portal, policy, implicit_tls=True)
        wrapped = TLSMemoryBIOFactory(policy.tls_context, False, self.implicit)
        self.plain_port: Any = reactor.listenTCP(0, self.plain, interface="127.0.0.1")
        self.tls_port: Any = reactor.listenTCP(0, wrapped, interface="127.0.0.1")

    @defer.inlineCallbacks
    def tearDown(self) -> Any:
        yield defer.gatherResults(self.plain.lost + self.implicit.lost)
        yield self.plain_port.stopListening()
        yield self.tls_port.stopListening()

    @staticmethod
    def _context() -> Any:
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context

    @defer.inlineCallbacks
    def test_starttls_then_login(self) -> Any:
        port = self.plain_port.getHost().port

        def session() -> Any:
            client = imaplib.IMAP4("127.0.0.1", port)
            try:
                before = client.capabilities
                try:
                    client.login("joe", "secret")
                    refused = ""
                except imaplib.IMAP4.error as e:
                    refused = str(e)
                client.starttls(self._context())
                after = client.capabilities
                return before, refused, after, client.login("joe", "secret")
            finally:
                client.logout()

        before, refused, after, login = yield threads.deferToThread(session)
        self.assertIn("STARTTLS", before)
        self.assertIn("LOGINDISABLED", before)
        self.assertIn("PRIVACYREQUIRED", refused)
        self.assertNotIn("STARTTLS", after)
        self.assertNotIn("LOGINDISABLED", after)
        self.assertEqual(login[0], "OK")

    @defer.inlineCallbacks
    def test_imap4_ssl_and_cram_md5(self) -> Any:
        port = self.tls_port.getHost().port

        def session() -> Any:
            client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=self._context())
            try:
                caps = client.capabilities
                return caps, client.login_cram_md5("joe", "secret"), client.select()
            finally:
                client.logout()

        caps, login, selected = yield threads.deferToThread(session)
        self.assertIn("AUTH=CRAM-MD5", caps)
        self.assertNotIn("STARTTLS", caps)
        self.assertEqual(login[0], "OK")
        self.assertEqual(selected[0], "OK")
