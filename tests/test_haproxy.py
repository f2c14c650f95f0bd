"""mailsrv behind a real HAProxy (Debian's package): PROXY protocol v1 and
v2 on plain and implicit-TLS listeners, limits and logs that see the real
client, health checks, and a node killed while the others keep serving.

Every test starts a private HAProxy on loopback (tests/haproxy.py) in front
of real ``twistd -n mailsrv`` daemons on the private PostgreSQL server.
Clients connect from other loopback addresses (127.0.0.2, 127.0.0.3) while
HAProxy connects to the nodes from 127.0.0.1, so what a node reports is
the client's address only if it came from the PROXY header.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import formatEvent
from twisted.trial import unittest

from mailsrv import log
from mailsrv.config import load_config
from mailsrv.errors import ConfigError
from mailsrv.proxy import ProxyFactory, ProxyNetworks, parse_networks
from tests import haproxy, pgcluster
from tests.helpers import Daemon, free_port, log_events
from tests.test_postgres_nodes import DEADLINE


class Client:
    """A blocking IMAP or POP3 client connecting from a chosen address."""

    def __init__(self, port: int, source: str = "127.0.0.2", tls: bool = False) -> None:
        sock = socket.create_connection(
            ("127.0.0.1", port), timeout=DEADLINE, source_address=(source, 0)
        )
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(sock)
        self.sock = sock
        self.file = sock.makefile("rb")
        self.count = 0

    def line(self) -> bytes:
        return bytes(self.file.readline())

    def command(self, text: str) -> list[bytes]:
        self.count += 1
        tag = f"t{self.count}".encode()
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        lines: list[bytes] = []
        while True:
            line = self.line()
            if not line:
                raise ConnectionError(f"closed after {lines!r}")
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def v2_header(source: str, port: int) -> bytes:
    """A PROXY v2 header for a TCP/IPv4 connection from ``source``."""
    addresses = (
        socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 143)
    )
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12) + addresses


class ProxyConfigTests(unittest.TestCase):
    def load(self, text: str) -> Any:
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(text)
        return load_config(path, check_files=False)

    def test_proxy_listener_needs_trusted_proxies(self) -> None:
        error = self.assertRaises(
            ConfigError, self.load, '[imap]\nlisten = ["tcp:143", "haproxy:tcp:10143"]\n'
        )
        self.assertEqual(error.key, "imap.listen[1]")
        self.assertIn("server.trusted_proxies", error.reason)

    def test_bad_network(self) -> None:
        error = self.assertRaises(
            ConfigError,
            self.load,
            '[server]\ntrusted_proxies = ["10.0.0.0/8", "proxy.example"]\n'
            '[imap]\nlisten = ["haproxy:tcp:10143"]\n',
        )
        self.assertEqual(error.key, "server.trusted_proxies")
        self.assertIn("'proxy.example'", error.reason)

    def test_ports_still_checked_behind_the_mark(self) -> None:
        error = self.assertRaises(
            ConfigError,
            self.load,
            '[server]\ntrusted_proxies = ["127.0.0.1"]\n'
            '[imap]\nlisten = ["haproxy:tcp:10143", "tcp:10143"]\n',
        )
        self.assertIn("port 10143 is also used by imap.listen[0]", error.reason)
        config = self.load(
            '[server]\ntrusted_proxies = ["127.0.0.1", "::1"]\n'
            '[imap]\nlisten = ["haproxy:tcp:10143"]\n'
        )
        self.assertEqual([listener.proxy for listener in config.listeners], [True])


class ProxyLogLevelTests(unittest.TestCase):
    """The PROXY reader logs through mailsrv.log: ``[logging] level`` applies."""

    @defer.inlineCallbacks
    def refusal_logged(self, level: str) -> Any:
        """What the reader logs, at ``level``, when it refuses a connection
        from an address not in trusted_proxies."""
        log.set_level(level)
        self.addCleanup(log.set_level, "info")
        events = log_events(self)
        networks, _problem = parse_networks(["192.0.2.0/24"])
        factory: Any = ProxyFactory(ServerFactory.forProtocol(Protocol), ProxyNetworks(networks))
        port: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        closed: defer.Deferred[None] = defer.Deferred()

        class Refused(Protocol):
            def connectionLost(self, reason: Any = None) -> None:
                closed.callback(None)

        creator = protocol.ClientCreator(reactor, Refused)
        yield creator.connectTCP("127.0.0.1", port.getHost().port)
        yield closed
        return [formatEvent(e) for e in events if e.get("log_namespace") == "mailsrv.proxy"]

    @defer.inlineCallbacks
    def test_the_level_applies(self) -> Any:
        logged = yield self.refusal_logged("warn")
        self.assertEqual(
            logged,
            ["PROXY listener: refusing 127.0.0.1, which is not in server.trusted_proxies"],
        )
        logged = yield self.refusal_logged("error")
        self.assertEqual(logged, [])


class HAProxyTests(unittest.TestCase):
    """Two nodes on one database behind one HAProxy."""

    def setUp(self) -> None:
        pgcluster.require()
        haproxy.require()
        self.dsn = pgcluster.new_dsn()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "passwd"), "w") as f:
            f.write("alice:{PLAIN}secret\n")
        self.nodes = [self.start_node(number) for number in (1, 2)]
        self.front = {name: free_port() for name in ("imap", "imap1", "imaps", "pop3")}
        servers = {
            "imap": [(f"n{i}", n["imap"]) for i, n in enumerate(self.nodes, 1)],
            "imap1": [("n1", self.nodes[0]["imap"])],
            "imaps": [(f"n{i}", n["imaps"]) for i, n in enumerate(self.nodes, 1)],
            "pop3": [("n1", self.nodes[0]["pop3"])],
        }
        sections = []
        for name, port in self.front.items():
            # v2 for plain IMAP, v1 for implicit TLS and POP3: both are tested.
            proxy = "send-proxy-v2" if name in ("imap", "imap1") else "send-proxy"
            tls_check = " check-ssl verify none" if name == "imaps" else ""
            greeting = "+OK" if name == "pop3" else "* OK"
            sections.append(
                f"frontend {name}\n    bind 127.0.0.1:{port}\n    default_backend {name}_nodes\n"
                f"backend {name}_nodes\n    balance roundrobin\n    option tcp-check\n"
                f'    tcp-check expect string "{greeting}"\n'
                + "".join(
                    f"    server {server} 127.0.0.1:{node_port} {proxy} check check-send-proxy"
                    f"{tls_check} inter 200ms fall 2 rise 1\n"
                    for server, node_port in servers[name]
                )
            )
        self.proxy = haproxy.HAProxy(self.dir, "".join(sections))
        self.addCleanup(self.proxy.stop)
        for name in self.front:
            self.proxy.wait_states(f"{name}_nodes", {s: "UP" for s, _ in servers[name]})

    def start_node(self, number: int) -> dict[str, Any]:
        ports = {"imap": free_port(), "imaps": free_port(), "pop3": free_port()}
        config = os.path.join(self.dir, f"node{number}.toml")
        with open(config, "w") as f:
            f.write(
                f'[server]\nhostname = "node{number}"\ntrusted_proxies = ["127.0.0.1"]\n'
                f'[imap]\nlisten = ["haproxy:tcp:{ports["imap"]}:interface=127.0.0.1"]\n'
                f'listen_tls = ["haproxy:tcp:{ports["imaps"]}:interface=127.0.0.1"]\n'
                f'[pop3]\nlisten = ["haproxy:tcp:{ports["pop3"]}:interface=127.0.0.1"]\n'
                f'[tls]\ncertificate = "{self.dir}/cert.pem"\nkey = "{self.dir}/key.pem"\n'
                "generate_self_signed = true\n"
                f'[users]\npasswd_file = "{self.dir}/passwd"\n'
                "[auth]\nfailure_delay = 0.0\n"
                "[limits]\nmax_connections_per_ip = 2\n"
                f'[storage]\nbackend = "postgresql"\ndsn = "{self.dsn}"\npool_size = 2\n'
            )
        daemon = Daemon.start(["--config", config], cwd=self.dir)
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on", count=3)
        return {"daemon": daemon, **ports}

    def client(self, front: str, source: str = "127.0.0.2", tls: bool = False) -> Client:
        client = Client(self.front[front], source, tls)
        self.addCleanup(client.close)
        return client

    def test_limits_and_logs_see_the_client_address(self) -> None:
        node = self.nodes[0]["daemon"]
        first, second = self.client("imap1"), self.client("imap1")
        for client in (first, second):
            self.assertTrue(client.line().startswith(b"* OK"))
        third = self.client("imap1")
        self.assertEqual(third.line(), b"* BYE Too many connections from your address\r\n")
        node.wait_for("too many connections from")
        refused = [line for line in node.output if "too many connections from" in line]
        self.assertIn("host='127.0.0.2'", refused[0])
        # HAProxy's own address (127.0.0.1) is not what is counted: another
        # client through the same HAProxy gets in.
        other = self.client("imap1", source="127.0.0.3")
        self.assertTrue(other.line().startswith(b"* OK"))
        self.assertTrue(other.command("LOGIN alice secret")[-1].startswith(b"t1 OK"))
        # POP3 over PROXY v1: the failed-login log names the client too.
        pop = self.client("pop3", source="127.0.0.3")
        self.assertTrue(pop.line().startswith(b"+OK"))
        pop.sock.sendall(b"USER alice\r\n")
        self.assertTrue(pop.line().startswith(b"+OK"))
        pop.sock.sendall(b"PASS wrong\r\n")
        self.assertTrue(pop.line().startswith(b"-ERR"))
        node.wait_for("POP3: failed login from 127.0.0.3:")

    def test_implicit_tls_and_starttls_behind_proxy(self) -> None:
        # PROXY v1, then the TLS handshake, then IMAP.
        client = self.client("imaps", source="127.0.0.3", tls=True)
        self.assertTrue(client.line().startswith(b"* OK"))
        self.assertTrue(client.command("LOGIN alice secret")[-1].startswith(b"t1 OK"))
        # PROXY v2, then plaintext IMAP upgraded by STARTTLS.
        plain = self.client("imap")
        self.assertTrue(plain.line().startswith(b"* OK"))
        self.assertTrue(plain.command("STARTTLS")[-1].startswith(b"t1 OK"))
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        plain.sock = context.wrap_socket(plain.sock)
        plain.file = plain.sock.makefile("rb")
        self.assertTrue(plain.command("LOGIN alice secret")[-1].startswith(b"t2 OK"))

    def test_connections_without_a_valid_header_are_refused(self) -> None:
        port = self.nodes[0]["imap"]

        def answer(data: bytes, source: str = "127.0.0.1", split: bool = False) -> bytes:
            sock = socket.create_connection(
                ("127.0.0.1", port), timeout=DEADLINE, source_address=(source, 0)
            )
            try:
                if split:
                    # Two segments (no Nagle): the header arrives in pieces.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.sendall(data[:7])
                    sock.sendall(data[7:])
                else:
                    sock.sendall(data)
                return sock.recv(1024)
            except ConnectionResetError:
                return b""
            finally:
                sock.close()

        # No header: closed without a greeting.
        self.assertEqual(answer(b"t1 CAPABILITY\r\n"), b"")
        self.assertEqual(answer(b"PROXY TCP4 nonsense\r\n"), b"")
        # A trusted proxy's header, even in pieces, v1 and v2.
        self.assertTrue(
            answer(b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 143\r\n", split=True).startswith(b"* OK")
        )
        self.assertTrue(answer(v2_header("192.0.2.8", 5001), split=True).startswith(b"* OK"))
        self.assertTrue(answer(b"PROXY UNKNOWN\r\n").startswith(b"* OK"))
        # A valid header from an address not in trusted_proxies: refused.
        self.assertEqual(answer(b"PROXY TCP4 192.0.2.9 127.0.0.1 5002 143\r\n", "127.0.0.5"), b"")
        self.nodes[0]["daemon"].wait_for("which is not in server.trusted_proxies")

    def test_a_killed_node_is_taken_out_and_the_other_serves(self) -> None:
        self.proxy.wait_states("imap_nodes", {"n1": "UP", "n2": "UP"})
        victim = self.nodes[1]["daemon"]
        victim.process.kill()
        victim.process.wait()
        self.proxy.wait_states("imap_nodes", {"n1": "UP", "n2": "DOWN"})
        for number in range(6):
            client = self.client("imap", source=f"127.0.0.{10 + number}")
            self.assertTrue(client.line().startswith(b"* OK [CAPABILITY"))
            self.assertTrue(client.command("LOGIN alice secret")[-1].startswith(b"t1 OK"))
            self.assertTrue(client.command("SELECT INBOX")[-1].startswith(b"t2 OK"))
            client.close()
