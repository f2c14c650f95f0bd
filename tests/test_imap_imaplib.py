"""Python's imaplib against the server (the client runs in a thread).

Every public method of ``imaplib.IMAP4`` (Python 3.11) is driven here:
each either works, with its result asserted, or (for extensions the server
does not advertise: ACL, ANNOTATE, PROXYAUTH and the obsolete
PARTIAL) gets a tagged BAD that imaplib raises as
``imaplib.IMAP4.error``.  :class:`ImaplibTLSTests` covers ``starttls`` and
``IMAP4_SSL``.  FETCH of body items is asserted only as far as it works
today (issue 5 implements them).
"""

from __future__ import annotations

import contextlib
import imaplib
import io
from typing import Any

from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase

from mailsrv import __version__
from mailsrv.auth.realm import MailRealm
from mailsrv.policy import SessionPolicy
from mailsrv.storage.memory import MemoryStorage
from mailsrv.testing.trial import MailServerMixin
from tests.imap_helpers import RecordingFactory

MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nHello there\r\n"


class ImaplibBase(TestCase):
    """A server over the memory backend, and imaplib clients in threads."""

    def setUp(self) -> None:
        # xatom() adds unknown names to imaplib's global command table.
        self.addCleanup(imaplib.Commands.pop, "FROB", None)
        self.addCleanup(imaplib.Commands.pop, "ID", None)
        self.storage = MemoryStorage()
        checker = InMemoryUsernamePasswordDatabaseDontUse(joe=b"secret")
        portal = Portal(MailRealm(self.storage), [checker])
        self.factory = RecordingFactory(portal, SessionPolicy(failure_delay=0.0))
        self.port: Any = reactor.listenTCP(0, self.factory, interface="127.0.0.1")

    def tearDown(self) -> Any:
        # A Deferred, which trial waits for (typed Any: unittest's is None).
        return self._tear_down()

    @defer.inlineCallbacks
    def _tear_down(self) -> Any:
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


class ImaplibTests(ImaplibBase):
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


#: imaplib.IMAP4's public methods (Python 3.11) and where each is tested.
#: Attributes that are exception classes (abort, error, readonly) are not
#: methods and are listed under ``EXCEPTIONS``.
METHODS = {
    "append": "test_every_method",
    "authenticate": "test_authenticate_and_failures",
    "capability": "test_every_method",
    "check": "test_everyday_methods",
    "close": "test_everyday_methods",
    "copy": "test_everyday_methods",
    "create": "test_everyday_methods",
    "delete": "test_everyday_methods",
    "deleteacl": "test_every_method",
    "enable": "test_everyday_methods",
    "expunge": "test_everyday_methods",
    "fetch": "test_every_method",
    "getacl": "test_every_method",
    "getannotation": "test_every_method",
    "getquota": "test_every_method",
    "getquotaroot": "test_every_method",
    "list": "test_every_method",
    "login": "test_everyday_methods",
    "login_cram_md5": "ImaplibTLSTests.test_imap4_ssl_and_cram_md5",
    "logout": "test_every_method",
    "lsub": "test_everyday_methods",
    "myrights": "test_every_method",
    "namespace": "test_everyday_methods",
    "noop": "test_every_method",
    "open": "test_every_method",
    "partial": "test_every_method",
    "print_log": "test_every_method",
    "proxyauth": "test_every_method",
    "read": "test_every_method",
    "readline": "test_every_method",
    "recent": "test_every_method",
    "rename": "test_everyday_methods",
    "response": "test_every_method",
    "search": "test_every_method",
    "select": "test_every_method",
    "send": "test_every_method",
    "setacl": "test_every_method",
    "setannotation": "test_every_method",
    "setquota": "test_every_method",
    "shutdown": "test_shutdown_without_logout",
    "socket": "test_every_method",
    "sort": "test_every_method",
    "starttls": "ImaplibTLSTests.test_starttls_then_login",
    "status": "test_every_method",
    "store": "test_every_method",
    "subscribe": "test_every_method",
    "thread": "test_every_method",
    "uid": "test_every_method",
    "unselect": "test_everyday_methods",
    "unsubscribe": "test_every_method",
    "xatom": "test_every_method",
}
EXCEPTIONS = {"abort", "error", "readonly"}


class MethodCoverageTests(TestCase):
    def test_every_public_method_is_listed(self) -> None:
        public = {name for name in dir(imaplib.IMAP4) if not name.startswith("_")}
        self.assertEqual(public - EXCEPTIONS, set(METHODS))
        self.assertEqual(set(dir(imaplib.IMAP4_SSL)) - set(dir(imaplib.IMAP4)), set())


def _every_method(c: imaplib.IMAP4, r: dict[str, Any]) -> None:
    """Call each of imaplib's IMAP4 methods once; their answers (or
    imaplib's error) go into ``r`` by name."""

    def refused(name: str, call: Any) -> None:
        try:
            call()
        except imaplib.IMAP4.error as e:
            r[name] = str(e)
        else:
            r[name] = "accepted?!"

    r["socket_port"] = c.socket().getpeername()[1]
    r["capability"] = c.capability()
    r["noop_before_login"] = c.noop()
    refused("proxyauth_early", lambda: c.proxyauth("ann"))
    c.login("joe", "secret")
    # Authenticated state: the extensions we do not offer.
    refused("proxyauth", lambda: c.proxyauth("ann"))
    refused("getacl", lambda: c.getacl("INBOX"))
    refused("setacl", lambda: c.setacl("INBOX", "ann", "lr"))
    refused("deleteacl", lambda: c.deleteacl("INBOX", "ann"))
    refused("myrights", lambda: c.myrights("INBOX"))
    r["getquota"] = c.getquota('""')
    r["getquotaroot"] = c.getquotaroot("INBOX")
    r["setquota"] = c.setquota('""', "(STORAGE 512)")  # NO: imaplib raises on BAD only
    refused("getannotation", lambda: c.getannotation("INBOX", '"/comment"', '"value"'))
    refused(
        "setannotation",
        lambda: c.setannotation("INBOX", '"/comment" ("value.priv" "x")'),
    )
    r["subscribe"] = c.subscribe("INBOX")
    r["list"] = c.list()
    r["list_pattern"] = c.list('""', "IN%")
    r["unsubscribe"] = c.unsubscribe("INBOX")
    r["status"] = c.status("INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)")
    r["append"] = c.append(
        "INBOX",
        "(\\Seen $Work)",
        imaplib.Time2Internaldate((2024, 3, 1, 12, 0, 0, 4, 61, -1)),
        MESSAGE,
    )
    r["append_missing"] = c.append("Nowhere", None, None, MESSAGE)
    typ, data = c.select("INBOX")
    r["select"] = (typ, list(data))
    r["select_flags"] = c.response("FLAGS")
    r["select_uidvalidity"] = c.response("UIDVALIDITY")
    r["recent"] = c.recent()
    r["fetch"] = c.fetch("1:2", "(UID FLAGS RFC822.SIZE INTERNALDATE)")
    r["fetch_body"] = c.fetch("1", "(BODY.PEEK[])")
    refused("fetch_bad_seq", lambda: c.fetch("9", "(FLAGS)"))
    r["store"] = c.store("1", "+FLAGS", "(\\Flagged)")
    r["store_silent"] = c.store("2", "-FLAGS.SILENT", "($Work)")
    r["search"] = c.search(None, "FLAGGED")
    r["search_charset"] = c.search("UTF-8", "ALL")
    r["search_text"] = c.search(None, "SUBJECT", "hello")
    r["uid_fetch"] = c.uid("FETCH", "1:*", "(FLAGS)")
    r["uid_search"] = c.uid("SEARCH", "SEEN")
    r["uid_store"] = c.uid("STORE", "2", "+FLAGS", "(\\Deleted)")
    r["uid_copy"] = c.uid("COPY", "1", "Archive")
    r["uid_expunge"] = c.uid("EXPUNGE", "2")
    r["expunge_response"] = c.response("EXPUNGE")
    r["all"] = c.search(None, "ALL")
    r["sort"] = c.sort("(REVERSE ARRIVAL)", "UTF-8", "ALL")
    r["thread"] = c.thread("REFERENCES", "UTF-8", "ALL")
    r["uid_all"] = c.uid("SEARCH", "ALL")
    r["uid_sort"] = c.uid("SORT", "(REVERSE ARRIVAL)", "UTF-8", "ALL")
    refused("partial", lambda: c.partial("1", "BODY[]", "0", "10"))
    r["xatom_id"] = c.xatom("ID", '("name" "imaplib")')
    r["id_response"] = c.response("ID")
    refused("xatom", lambda: c.xatom("FROB"))
    # Raw I/O: send() and readline()/read() at a quiet moment.
    c.send(b"raw1 NOOP\r\n")
    r["readline"] = c.readline()
    c.send(b"raw2 NOOP\r\n")
    r["read"] = c.read(len(b"raw2 OK NOOP completed\r\n"))
    r["noop"] = c.noop()
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        c.print_log()
    r["print_log"] = log.getvalue()
    r["logout"] = c.logout()


class EveryMethodTests(ImaplibBase):
    @defer.inlineCallbacks
    def test_every_method(self) -> Any:
        self.storage.deliver("joe", MESSAGE)
        r: dict[str, Any] = {}
        port = self.port.getHost().port

        def session() -> None:
            # The constructor is where imaplib calls open(host, port).
            client = imaplib.IMAP4("127.0.0.1", port)
            r["open_host"] = client.host
            try:
                _every_method(client, r)
            finally:
                if client.state != "LOGOUT":
                    client.shutdown()

        yield threads.deferToThread(session)
        self.assertEqual(r["open_host"], "127.0.0.1")
        self.assertEqual(r["socket_port"], self.port.getHost().port)
        typ, caps = r["capability"]
        self.assertEqual(typ, "OK")
        self.assertTrue(caps[0].startswith(b"IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR"), caps)
        for absent in (b"ACL", b"QUOTASET"):
            self.assertNotIn(absent, caps[0].split())
        for present in (b"SORT", b"THREAD=REFERENCES", b"ESORT", b"CONTEXT=SEARCH", b"CONDSTORE"):
            self.assertIn(present, caps[0].split())
        self.assertEqual(r["noop_before_login"], ("OK", [b"NOOP completed"]))
        self.assertIn("PROXYAUTH is not supported", r["proxyauth"])
        self.assertIn("illegal in state", r["proxyauth_early"])  # imaplib's own check
        for name in ("getacl", "setacl", "deleteacl", "myrights"):
            self.assertIn("the ACL (RFC 4314) extension is not offered", r[name])
        # QUOTA (RFC 9208): no limits configured, so an empty resource list.
        self.assertEqual(r["getquota"], ("OK", [b'"" ()']))
        self.assertEqual(r["getquotaroot"], ("OK", [[b'INBOX ""'], [b'"" ()']]))
        self.assertEqual(r["setquota"][0], "NO")
        self.assertIn(b"[NOPERM] Quota limits are set by the administrator", r["setquota"][1][0])
        for name in ("getannotation", "setannotation"):
            self.assertIn("ANNOTATE-EXPERIMENT-1", r[name])
        # SORT (RFC 5256): the same messages, in reverse arrival order here
        # (later messages arrived later or at the same second).
        numbers = [int(n) for n in r["all"][1][0].split()]
        self.assertEqual(r["sort"][0], "OK")
        self.assertEqual(sorted(int(n) for n in r["sort"][1][0].split()), numbers)
        uids = [int(n) for n in r["uid_all"][1][0].split()]
        self.assertEqual(sorted(int(n) for n in r["uid_sort"][1][0].split()), uids)
        self.assertEqual(r["thread"][0], "OK")
        self.assertTrue(r["thread"][1][0].startswith(b"("), r["thread"])
        self.assertIn("PARTIAL is obsolete", r["partial"])
        self.assertIn("unknown command FROB", r["xatom"])
        self.assertEqual(r["subscribe"], ("OK", [b"SUBSCRIBE completed"]))
        self.assertEqual(r["unsubscribe"], ("OK", [b"UNSUBSCRIBE completed"]))
        self.assertEqual(r["list"][0], "OK")
        self.assertEqual(r["list"][1][0], b'(\\HasNoChildren) "/" INBOX')
        self.assertIn(b'(\\HasNoChildren \\Sent) "/" Sent', r["list"][1])
        self.assertEqual(r["list_pattern"], ("OK", [b'(\\HasNoChildren) "/" INBOX']))
        self.assertRegex(
            r["status"][1][0],
            rb"^INBOX \(MESSAGES 1 RECENT 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1\)$",
        )
        self.assertEqual(r["append"][0], "OK")
        self.assertRegex(r["append"][1][0], rb"^\[APPENDUID \d+ 2\] APPEND completed$")
        self.assertEqual(r["append_missing"][0], "NO")
        self.assertIn(b"[TRYCREATE]", r["append_missing"][1][0])
        self.assertEqual(r["select"], ("OK", [b"2"]))
        self.assertEqual(
            r["select_flags"],
            # The appended message's keyword is defined: FLAGS lists it.
            ("FLAGS", [b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)"]),
        )
        self.assertEqual(r["select_uidvalidity"][0], "UIDVALIDITY")
        self.assertEqual(r["recent"], ("OK", [b"2"]))
        self.assertEqual(
            r["fetch"],
            (
                "OK",
                [
                    b'1 (UID 1 FLAGS (\\Recent) RFC822.SIZE %d INTERNALDATE "%s")'
                    % (len(MESSAGE), r["fetch"][1][0].split(b'"')[1]),
                    b"2 (UID 2 FLAGS (\\Recent \\Seen $Work) RFC822.SIZE %d "
                    b'INTERNALDATE "01-Mar-2024 12:00:00 +0000")' % len(MESSAGE),
                ],
            ),
        )
        self.assertEqual(
            r["fetch_body"], ("OK", [(b"1 (BODY[] {%d}" % len(MESSAGE), MESSAGE), b")"])
        )
        self.assertIn("Invalid message sequence number", r["fetch_bad_seq"])
        self.assertEqual(r["store"], ("OK", [b"1 (FLAGS (\\Flagged \\Recent))"]))
        self.assertEqual(r["store_silent"], ("OK", [None]))
        self.assertEqual(r["search"], ("OK", [b"1"]))
        self.assertEqual(r["search_charset"], ("OK", [b"1 2"]))
        self.assertEqual(r["search_text"], ("OK", [b"1 2"]))
        self.assertEqual(
            r["uid_fetch"],
            ("OK", [b"1 (FLAGS (\\Flagged \\Recent) UID 1)", b"2 (FLAGS (\\Recent \\Seen) UID 2)"]),
        )
        self.assertEqual(r["uid_search"], ("OK", [b"2"]))
        self.assertEqual(r["uid_store"], ("OK", [b"2 (UID 2 FLAGS (\\Deleted \\Recent \\Seen))"]))
        # imaplib's uid() returns the untagged responses named after the
        # command: none for COPY; the copy itself is checked below.
        self.assertEqual(r["uid_copy"], ("OK", [None]))
        self.assertEqual(r["uid_expunge"], ("OK", [None]))  # uid() returns FETCH responses
        self.assertEqual(r["expunge_response"], ("EXPUNGE", [b"2"]))
        self.assertEqual(r["xatom_id"], ("OK", [b"ID completed"]))
        self.assertEqual(
            r["id_response"], ("ID", [b'("name" "mailsrv" "version" "%s")' % __version__.encode()])
        )
        self.assertEqual(r["readline"], b"raw1 OK NOOP completed\r\n")
        self.assertEqual(r["read"], b"raw2 OK NOOP completed\r\n")
        self.assertEqual(r["noop"], ("OK", [b"NOOP completed"]))
        self.assertIn("IMAP4 interactions", r["print_log"])
        self.assertEqual(r["logout"], ("BYE", [b"mailsrv logging out"]))
        inbox = self.storage.account("joe").get_mailbox("INBOX")
        self.assertEqual(list(inbox.uids()), [1])
        archive = self.storage.account("joe").get_mailbox("Archive")
        self.assertEqual(list(archive.uids()), [1])

    @defer.inlineCallbacks
    def test_shutdown_without_logout(self) -> Any:
        port = self.port.getHost().port

        def session() -> Any:
            client = imaplib.IMAP4("127.0.0.1", port)
            client.login("joe", "secret")
            client.select("INBOX")
            client.shutdown()
            try:
                client.noop()
            except (OSError, imaplib.IMAP4.abort, ValueError) as e:
                return type(e).__name__
            return "still open?!"

        outcome = yield threads.deferToThread(session)
        self.assertNotEqual(outcome, "still open?!")
        # The server noticed: the session ended and let go of the mailbox.
        yield defer.gatherResults(self.factory.lost)
        server = self.factory.sessions[-1]
        self.assertIsNone(server.session.selected)
        self.assertIsNone(server.session.account)


class ImaplibTLSTests(MailServerMixin, TestCase):
    """imaplib's starttls(), IMAP4_SSL and login_cram_md5() against the
    server, with mailsrv.testing's throwaway certificate (which the client
    verifies, host name included)."""

    mail_server_options = {
        "users": {"joe": "secret"},
        "tls": True,
        "plaintext": "never",
        "protocols": ("imap",),
    }

    def _context(self) -> Any:
        return self.mail_server.ssl_context()

    @defer.inlineCallbacks
    def test_starttls_then_login(self) -> Any:
        port = self.mail_server.imap_port

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
        port = self.mail_server.imaps_port

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


class ImaplibUtf8Tests(ImaplibBase):
    """imaplib (3.11) in its UTF-8 mode: ``enable("UTF8=ACCEPT")`` switches
    it to UTF-8 commands, and names and quoted strings go both ways as
    UTF-8 (RFC 6855)."""

    @defer.inlineCallbacks
    def test_enable_utf8_accept(self) -> Any:
        message = "From: a@example.org\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
        r: dict[str, Any] = {}

        def script(c: imaplib.IMAP4) -> None:
            c.login("joe", "secret")
            r["enable"] = c.enable("UTF8=ACCEPT")
            r["utf8"] = c.utf8_enabled
            r["create"] = c.create('"Entwürfe"')
            r["list"] = c.list('""', '"Entw*"')
            # imaplib's append() in UTF-8 mode puts "UTF8 (" and ")" inside
            # the literal it announces, so the server would store them as
            # part of the message; an enabled session also takes a plain
            # literal, which is what append() sends with the flag off.
            c.utf8_enabled = False
            try:
                r["append"] = c.append('"Entwürfe"', None, None, message)
            finally:
                c.utf8_enabled = True
            r["status"] = c.status('"Entwürfe"', "(MESSAGES)")
            r["select"] = c.select('"Entwürfe"')
            r["search"] = c.search(None, "SUBJECT", '"grüße"')
            r["fetch"] = c.fetch("1", "(BODY.PEEK[])")
            r["rename"] = c.rename('"Entwürfe"', '"Brouillons été"')
            c.close()

        yield self.run_client(script)
        self.assertEqual(r["enable"], ("OK", [b"ENABLE completed"]))
        self.assertTrue(r["utf8"])
        self.assertEqual(r["create"], ("OK", [b"CREATE completed"]))
        self.assertEqual(r["list"], ("OK", ['(\\HasNoChildren) "/" "Entwürfe"'.encode()]))
        self.assertEqual(r["append"][0], "OK")
        self.assertEqual(r["status"], ("OK", ['"Entwürfe" (MESSAGES 1)'.encode()]))
        self.assertEqual(r["select"], ("OK", [b"1"]))
        self.assertEqual(r["search"], ("OK", [b"1"]))
        self.assertEqual(r["fetch"][1][0][1], message)
        self.assertEqual(r["rename"], ("OK", [b"RENAME completed"]))
        # A session that did not enable UTF-8 sees the name in modified UTF-7.
        names = [entry.name for entry in self.storage.account("joe").list_mailboxes()]
        self.assertIn("Brouillons été", names)
        legacy: dict[str, Any] = {}

        def plain(c: imaplib.IMAP4) -> None:
            c.login("joe", "secret")
            legacy["list"] = c.list('""', '"Brouillons*"')

        yield self.run_client(plain)
        self.assertEqual(
            legacy["list"], ("OK", [b'(\\HasNoChildren) "/" "Brouillons &AOk-t&AOk-"'])
        )
