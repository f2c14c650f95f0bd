"""The Prometheus endpoint of a running daemon, scraped and parsed with
prometheus_client's own parser after known traffic; the per-command JSON
log lines of the same traffic; ``[metrics]`` in the configuration."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from typing import Any

from twisted.trial import unittest

from mailsrv import cli
from mailsrv.config import load_config
from mailsrv.errors import ConfigError
from mailsrv.storage.maildir.layout import INDEX_NAME
from tests.ops_helpers import Counting, OpsCase, sample

MESSAGE = b"Subject: known traffic\r\n\r\nbody\r\n"


class KnownTraffic(OpsCase):
    """The same traffic for every test: one LMTP delivery and one unknown
    recipient, an IMAP session left open in a mailbox whose index had to be
    rebuilt, an IMAP login that fails, a POP3 session that reads a message."""

    def prepare(self) -> None:
        # A folder with a message but no index: SELECT rebuilds it.
        status = cli.main(
            ["deliver", "alice", "--folder", "Archive", "--config", self.config],
            stdin=io.BytesIO(MESSAGE),
            stdout=io.StringIO(),
            stderr=io.StringIO(),
        )
        self.assertEqual(status, 0)
        os.unlink(os.path.join(self.dir, "mail", "alice", "Maildir", ".Archive", INDEX_NAME))

    def traffic(self) -> dict[str, Any]:
        lmtp = self.lmtp()
        lmtp.send(b"LHLO mta\r\n")
        while not lmtp.line().startswith(b"250 "):
            pass
        for command, reply in (
            (b"MAIL FROM:<>", b"250 "),
            (b"RCPT TO:<nobody@example.org>", b"550 "),
            (b"RCPT TO:<alice@example.org>", b"250 "),
            (b"DATA", b"354 "),
            (MESSAGE + b".", b"250 "),
            (b"QUIT", b"221 "),
        ):
            lmtp.send(command + b"\r\n")
            self.assertTrue(lmtp.line().startswith(reply), command)
        lmtp.until_closed()

        kept = self.imap()
        self.login(kept)
        self.assertIn(b"OK", kept.imap("SELECT INBOX")[-1])
        self.assertIn(b"OK", kept.imap("FETCH 1 (FLAGS RFC822.SIZE)")[-1])
        self.assertIn(b"OK", kept.imap("NOOP")[-1])
        self.assertIn(b"BAD", kept.imap("XYZZY")[-1])
        self.assertIn(b"OK", kept.imap("SELECT Archive")[-1])

        refused = self.imap()
        self.assertIn(b"NO [AUTHENTICATIONFAILED]", refused.imap("LOGIN alice wrong")[-1])
        self.assertIn(b"OK", refused.imap("LOGOUT")[-1])
        refused.until_closed()

        pop = self.pop3()
        self.assertTrue(pop.pop3("USER alice")[0].startswith(b"+OK"))
        self.assertTrue(pop.pop3("PASS pw")[0].startswith(b"+OK"))
        self.assertTrue(pop.pop3("STAT")[0].startswith(b"+OK 1 "))
        self.assertEqual(pop.pop3("RETR 1", multiline=True)[-2], b"body\r\n")
        self.assertTrue(pop.pop3("QUIT")[0].startswith(b"+OK"))
        pop.until_closed()  # the daemon closed it: its connectionLost has run
        return {"kept": kept, "refused": refused, "pop": pop}


class MetricsTests(KnownTraffic):
    def test_known_traffic_is_counted(self) -> None:
        clients = self.traffic()
        m = self.scrape()

        def value(name: str, **labels: str) -> float:
            return sample(m, name, **labels)

        # Sessions by protocol and state: the kept IMAP session only.
        self.assertEqual(value("mailsrv_sessions", protocol="imap", state="selected"), 1)
        for protocol, state in (
            ("imap", "not_authenticated"),
            ("imap", "authenticated"),
            ("imap", "logout"),
            ("pop3", "authorization"),
            ("pop3", "transaction"),
            ("pop3", "update"),
            ("lmtp", "connected"),
        ):
            self.assertEqual(value("mailsrv_sessions", protocol=protocol, state=state), 0, state)
        self.assertEqual(value("mailsrv_connections_total", protocol="imap"), 2)
        self.assertEqual(value("mailsrv_connections_total", protocol="pop3"), 1)
        self.assertEqual(value("mailsrv_connections_total", protocol="lmtp"), 1)

        # Commands by name and result, with their latency.
        commands = {
            ("imap", "LOGIN", "OK"): 1,
            ("imap", "LOGIN", "NO"): 1,
            ("imap", "SELECT", "OK"): 2,
            ("imap", "FETCH", "OK"): 1,
            ("imap", "NOOP", "OK"): 1,
            ("imap", "UNKNOWN", "BAD"): 1,
            ("imap", "LOGOUT", "OK"): 1,
            ("pop3", "USER", "+OK"): 1,
            ("pop3", "PASS", "+OK"): 1,
            ("pop3", "STAT", "+OK"): 1,
            ("pop3", "RETR", "+OK"): 1,
            ("pop3", "QUIT", "+OK"): 1,
            ("lmtp", "LHLO", "250"): 1,
            ("lmtp", "MAIL", "250"): 1,
            ("lmtp", "RCPT", "250"): 1,
            ("lmtp", "RCPT", "550"): 1,
            ("lmtp", "DATA", "354"): 1,
            ("lmtp", "QUIT", "221"): 1,
        }
        counted = {
            (dict(labels)["protocol"], dict(labels)["command"], dict(labels)["result"]): v
            for (name, labels), v in m.items()
            if name == "mailsrv_commands_total" and v
        }
        self.assertEqual(counted, commands)
        self.assertEqual(
            value("mailsrv_command_duration_seconds_count", protocol="imap", command="SELECT"), 2
        )
        self.assertGreater(
            value("mailsrv_command_duration_seconds_sum", protocol="imap", command="SELECT"), 0
        )

        # Logins by mechanism and outcome; the failed one's delay.
        self.assertEqual(
            value("mailsrv_logins_total", protocol="imap", mechanism="LOGIN", outcome="success"), 1
        )
        self.assertEqual(
            value("mailsrv_logins_total", protocol="imap", mechanism="LOGIN", outcome="failure"), 1
        )
        self.assertEqual(
            value("mailsrv_logins_total", protocol="pop3", mechanism="USER", outcome="success"), 1
        )
        self.assertEqual(value("mailsrv_login_failure_delay_seconds_count", protocol="imap"), 1)
        delay = value("mailsrv_login_failure_delay_seconds_sum", protocol="imap")
        self.assertTrue(0 < delay <= 0.05, delay)

        # Octets in and out: what the clients sent and received, exactly
        # (the kept session's last command is answered, so all of it is in).
        imap = [clients["kept"], clients["refused"]]
        self.assertEqual(
            value("mailsrv_received_bytes_total", protocol="imap"), sum(c.sent for c in imap)
        )
        self.assertEqual(
            value("mailsrv_sent_bytes_total", protocol="imap"), sum(c.received for c in imap)
        )
        self.assertEqual(
            value("mailsrv_received_bytes_total", protocol="pop3"), clients["pop"].sent
        )
        self.assertEqual(
            value("mailsrv_sent_bytes_total", protocol="pop3"), clients["pop"].received
        )

        # Deliveries, storage operations, index rebuilds, thread pools.
        self.assertEqual(value("mailsrv_deliveries_total", result="delivered"), 1)
        self.assertEqual(value("mailsrv_deliveries_total", result="deferred"), 0)
        self.assertEqual(value("mailsrv_delivery_duration_seconds_count"), 1)
        self.assertEqual(value("mailsrv_delivered_bytes_total"), len(MESSAGE))
        for operation in ("storage.account", "account.get_mailbox", "mailbox.fetch"):
            self.assertGreater(
                value("mailsrv_storage_operation_duration_seconds_count", operation=operation), 0
            )
        self.assertEqual(
            value("mailsrv_index_rebuilds_total", backend="maildir", reason="missing"), 1
        )
        self.assertGreaterEqual(value("mailsrv_threadpool_threads", pool="reactor"), 1)
        self.assertEqual(value("mailsrv_build_info", version="0.1.0"), 1)

    def test_unknown_commands_share_one_label(self) -> None:
        # However many made-up names a client sends, each protocol's
        # commands metric gains one series for them: UNKNOWN.
        self.traffic()
        before = self.scrape()
        names = [f"X{i}Y{i * 7919}" for i in range(25)]
        imap, pop, lmtp = self.imap(), self.pop3(), self.lmtp()
        for name in names:
            self.assertIn(b"BAD", imap.imap(name)[-1])
            self.assertIn(b"BAD", imap.imap(f"UID {name} 1")[-1])
            self.assertTrue(pop.pop3(name)[0].startswith(b"-ERR"))
            lmtp.send(name.encode() + b"\r\n")
            self.assertTrue(lmtp.line().startswith(b"500 "))
        after = self.scrape()

        def commands(m: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> set[str]:
            return {
                dict(labels)["command"]
                for (name, labels), _ in m.items()
                if name == "mailsrv_commands_total"
            }

        self.assertEqual(commands(after), commands(before))
        for name in names:
            self.assertNotIn(name, str(after))
        for protocol, result, count in (
            ("imap", "BAD", 2 * len(names)),
            ("pop3", "-ERR", len(names)),
            ("lmtp", "500", len(names)),
        ):
            labels = {"protocol": protocol, "command": "UNKNOWN", "result": result}
            grew = sample(after, "mailsrv_commands_total", **labels) - sample(
                before, "mailsrv_commands_total", **labels
            )
            self.assertEqual(grew, count, protocol)

    def test_no_user_name_is_a_label(self) -> None:
        self.traffic()
        for (_name, labels), _value in self.scrape().items():
            self.assertNotIn("alice", dict(labels).values())
            self.assertNotIn("Archive", dict(labels).values())


class JSONLogTests(KnownTraffic):
    def test_one_line_per_command_with_the_session_fields(self) -> None:
        clients = self.traffic()
        self.daemon.wait_for('"command": "QUIT", "result": "+OK"')
        lines = self.json_lines()  # every line of the log is JSON
        commands = [e for e in lines if "command" in e and "duration" in e]
        kept = [e for e in commands if e.get("remote") == clients["kept"].local]
        self.assertEqual(
            [(e["command"], e["result"]) for e in kept],
            [
                ("LOGIN", "OK"),
                ("SELECT", "OK"),
                ("FETCH", "OK"),
                ("NOOP", "OK"),
                ("UNKNOWN", "BAD"),
                ("SELECT", "OK"),
            ],
        )
        for event in kept:
            self.assertEqual(event["protocol"], "imap")
            self.assertEqual(event["user"], "alice")
            self.assertEqual(event["session"], kept[0]["session"])
            self.assertEqual(event["level"], "info")
            self.assertIsInstance(event["duration"], float)
        (refused, _logout) = [e for e in commands if e.get("remote") == clients["refused"].local]
        self.assertEqual((refused["command"], refused["result"]), ("LOGIN", "NO"))
        self.assertNotIn("user", refused)  # nobody logged in
        self.assertNotEqual(refused["session"], kept[0]["session"])
        pop = [e for e in commands if e.get("remote") == clients["pop"].local]
        self.assertEqual(
            [(e["command"], e["result"], e.get("user")) for e in pop],
            [
                ("USER", "+OK", None),
                ("PASS", "+OK", "alice"),
                ("STAT", "+OK", "alice"),
                ("RETR", "+OK", "alice"),
                ("QUIT", "+OK", "alice"),
            ],
        )
        self.assertEqual({e["protocol"] for e in pop}, {"pop3"})
        # RETR's octets: its status line and the message, byte-stuffed and ended.
        status = b"+OK %d octets\r\n" % len(MESSAGE)
        self.assertEqual(pop[3]["sent"], len(status) + len(MESSAGE) + 3)


class DebugLogTests(OpsCase):
    level = "debug"

    def test_protocol_lines_without_secrets_or_message_text(self) -> None:
        client = self.imap()
        self.login(client)
        body = b"Subject: s3cret subject\r\n\r\nconfidential words\r\n"
        client.send(b"t2 APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
        self.assertTrue(client.line().startswith(b"t2 OK"))
        client.tag = 2
        self.assertIn(b"OK", client.imap("SELECT INBOX")[-1])
        self.assertIn(b"OK", client.imap("FETCH 1 BODY[]")[-1])
        sasl = self.imap()
        # AUTHENTICATE PLAIN with an initial response: \0alice\0pw
        self.assertIn(b"OK", sasl.imap("AUTHENTICATE PLAIN AGFsaWNlAHB3")[-1])
        # AUTHENTICATE PLAIN with the response on a line of its own.
        refused = self.imap()
        refused.send(b"t1 AUTHENTICATE PLAIN\r\n")
        self.assertEqual(refused.line(), b"+ \r\n")
        refused.send(b"AGJvYgB0b3BzZWNyZXQ=\r\n")  # \0bob\0topsecret: refused
        self.assertTrue(refused.line().startswith(b"t1 NO [AUTHENTICATIONFAILED]"))
        apop = Counting(self.ports["pop3"])
        self.addCleanup(apop.close)
        timestamp = apop.line().split()[-1]
        digest = hashlib.md5(timestamp + b"pw").hexdigest()
        self.assertTrue(apop.pop3(f"APOP alice {digest}")[0].startswith(b"+OK"))
        apop.pop3("QUIT")
        apop.until_closed()
        pop = self.pop3()
        pop.pop3("USER alice")
        pop.pop3("PASS pw")
        pop.pop3("RETR 1", multiline=True)
        pop.pop3("QUIT")
        pop.until_closed()
        # Both POP3 sessions end with QUIT: wait for the second one's, which
        # the server logs after the RETR lines this test reads.
        self.daemon.wait_for('"line": "QUIT"', count=2)
        text = self.daemon.log
        for secret in (
            "s3cret",
            "confidential",
            "AGFsaWNlAHB3",
            "LOGIN alice pw",
            "AGJvYgB0b3BzZWNyZXQ=",
            digest,
        ):
            self.assertNotIn(secret, text)
        lines = [(str(e["direction"]), str(e["line"])) for e in self.json_lines() if "line" in e]
        self.assertIn(("C", "t1 LOGIN ***"), lines)
        self.assertIn(("C", "t1 AUTHENTICATE PLAIN ***"), lines)
        self.assertIn(("C", "t1 AUTHENTICATE PLAIN"), lines)
        self.assertIn(("C", "(continuation line)"), lines)
        self.assertIn(("C", "APOP alice ***"), lines)
        self.assertIn(("C", f"t2 APPEND INBOX {{{len(body)}+}} <{len(body)} octets> "), lines)
        literal = f"BODY[] {{{len(body)}}} <{len(body)} octets>"
        self.assertTrue(any(d == "S" and x.endswith(literal) for d, x in lines), lines)
        self.assertTrue(any(d == "S" and x.startswith("t4 OK") for d, x in lines), lines)
        self.assertIn(("C", "PASS ***"), lines)
        self.assertIn(("S", f"<{len(body) + 3} octets of message>"), lines)


class ConfigTests(unittest.TestCase):
    def write(self, text: str) -> str:
        path: str = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('[imap]\nlisten = ["tcp:10143:interface=127.0.0.1"]\n' + text)
        return path

    def error(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            load_config(self.write(text), check_files=False)
        return str(caught.exception)

    def test_without_prometheus_client_the_key_and_the_pip_command_are_named(self) -> None:
        real = importlib.util.find_spec
        self.patch(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name == "prometheus_client" else real(name, *a),
        )
        message = self.error('[metrics]\nlisten = "tcp:9154:interface=127.0.0.1"\n')
        self.assertIn("metrics.listen", message)
        self.assertIn("pip install 'mailsrv[metrics]'", message)
        # Without [metrics] the package is not needed.
        load_config(self.write(""), check_files=False)

    def test_endpoint_is_checked_as_a_listener_s(self) -> None:
        self.assertIn(
            "metrics.listen: 'tcp:10143:interface=127.0.0.1': port 10143 is also used by "
            "imap.listen[0]",
            self.error('[metrics]\nlisten = "tcp:10143:interface=127.0.0.1"\n'),
        )
        self.assertIn(
            "metrics.listen: not a valid endpoint string 'tcp:nine'",
            self.error('[metrics]\nlisten = "tcp:nine"\n'),
        )
        self.assertIn(
            "metrics.listen: the metrics endpoint takes no PROXY header",
            self.error('[metrics]\nlisten = "haproxy:tcp:9154"\n'),
        )

    def test_admin_socket_and_command_lines(self) -> None:
        config = load_config(self.write('[admin]\nsocket = "run/admin.sock"\n'), check_files=False)
        self.assertEqual(config.admin.socket, os.path.abspath("run/admin.sock"))
        self.assertEqual(
            load_config(self.write(""), check_files=False).admin.socket, "/run/mailsrv/admin.sock"
        )
        self.assertEqual(
            load_config(self.write('[admin]\nsocket = ""\n'), check_files=False).admin.socket, ""
        )
        self.assertIn("logging.commands", self.error('[logging]\ncommands = "yes"\n'))
        self.assertIn(
            "admin.group: no such group 'no-such-group' on this system",
            self.error('[admin]\ngroup = "no-such-group"\n'),
        )
        self.assertEqual(
            load_config(self.write('[admin]\ngroup = "users"\n'), check_files=False).admin.group,
            "users",
        )
        self.assertIn(
            "admin.socket: /" + "x" * 120 + " is longer than the 107 bytes",
            self.error(f'[admin]\nsocket = "/{"x" * 120}"\n'),
        )
