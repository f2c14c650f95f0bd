"""TLS policy: the profiles, certificates chosen by SNI, and what
``mailsrv check-config`` says of the certificates.

Handshakes are made by Python's ``ssl`` client against a real daemon, over
an implicit-TLS listener and over STARTTLS.  (The default profile's cipher
suites are tested in tests/test_daemon.py, CipherSuiteTests.)
"""

from __future__ import annotations

import io
import os
import socket
import ssl

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.trial import unittest

from mailsrv import cli
from tests.helpers import Daemon, free_port, read_line, write_certificate


def common_name(der: bytes) -> str:
    certificate = x509.load_der_x509_certificate(der)
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


class DaemonTLSCase(unittest.TestCase):
    def start(self, tls: str, certificates: dict[str, tuple[str, ...]]) -> None:
        """A daemon with an implicit-TLS and a plain IMAP listener, the
        certificates ``file stem -> names`` written first, and ``tls``
        added to [tls]."""
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        for stem, names in certificates.items():
            write_certificate(
                os.path.join(self.dir, f"{stem}.pem"), os.path.join(self.dir, f"{stem}.key"), names
            )
        self.port, self.plain_port = free_port(), free_port()
        config = os.path.join(self.dir, "mailsrv.toml")
        with open(config, "w") as f:
            f.write(
                f'[imap]\nlisten_tls = ["tcp:{self.port}:interface=127.0.0.1"]\n'
                f'listen = ["tcp:{self.plain_port}:interface=127.0.0.1"]\n'
                "[users]\npasswd_file = 'passwd'\ncreate_if_missing = true\n"
                "[storage]\nmaildir = 'mail/{user}/Maildir'\n"
                f"[tls]\n{tls}"
            )
        daemon = Daemon.start(["--config", config], cwd=self.dir)
        self.addCleanup(daemon.stop)
        daemon.wait_for("listening on", count=2)

    def client(self, version: ssl.TLSVersion | None = None, old: bool = False) -> ssl.SSLContext:
        """A client context; ``old``: every suite at security level 0, as a
        client from before TLS 1.2 would offer."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if old:
            context.set_ciphers("ALL:@SECLEVEL=0")
        if version is not None:
            context.minimum_version = context.maximum_version = version
        return context

    def handshake(
        self, name: str | None = None, version: ssl.TLSVersion | None = None, old: bool = False
    ) -> tuple[str, str]:
        """(protocol version, common name of the certificate served) on the
        implicit-TLS listener, asking for ``name`` by SNI (None: no SNI)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as raw:
            with self.client(version, old).wrap_socket(raw, server_hostname=name) as s:
                self.assertTrue(read_line(s).startswith(b"* OK"))
                der = s.getpeercert(binary_form=True)
                assert der is not None and s.version() is not None
                return str(s.version()), common_name(der)

    def starttls(self, name: str) -> str:
        """The common name served after STARTTLS to a client asking for ``name``."""
        with socket.create_connection(("127.0.0.1", self.plain_port), timeout=30) as raw:
            self.assertTrue(read_line(raw).startswith(b"* OK"))
            raw.sendall(b"s STARTTLS\r\n")
            self.assertTrue(read_line(raw).startswith(b"s OK"))
            with self.client().wrap_socket(raw, server_hostname=name) as s:
                der = s.getpeercert(binary_form=True)
                assert der is not None
                return common_name(der)


class ProfileTests(DaemonTLSCase):
    def test_modern_is_tls13_only(self) -> None:
        self.start('certificate = "c.pem"\nkey = "c.key"\nprofile = "modern"\n', {"c": ("h",)})
        self.assertEqual(self.handshake(version=ssl.TLSVersion.TLSv1_3)[0], "TLSv1.3")
        with self.assertRaises(ssl.SSLError):
            self.handshake(version=ssl.TLSVersion.TLSv1_2)

    def test_intermediate_is_tls12_and_13(self) -> None:
        """The default profile: TLS 1.2 and 1.3 (RFC 9325 3.1.1, 3.1.2)."""
        self.start('certificate = "c.pem"\nkey = "c.key"\n', {"c": ("h",)})
        self.assertEqual(self.handshake(version=ssl.TLSVersion.TLSv1_3)[0], "TLSv1.3")
        self.assertEqual(self.handshake(version=ssl.TLSVersion.TLSv1_2)[0], "TLSv1.2")

    def test_nothing_below_tls12_by_default(self) -> None:
        """TLS 1.0 and 1.1 are refused (RFC 8996 2, 3), whatever the client
        offers: it asks at security level 0, as old clients do."""
        self.start('certificate = "c.pem"\nkey = "c.key"\n', {"c": ("h",)})
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            with self.assertRaises(ssl.SSLError, msg=version.name):
                self.handshake(version=version, old=True)

    def test_min_version_raises_the_floor(self) -> None:
        self.start('certificate = "c.pem"\nkey = "c.key"\nmin_version = "1.3"\n', {"c": ("h",)})
        self.assertEqual(self.handshake(version=ssl.TLSVersion.TLSv1_3)[0], "TLSv1.3")
        with self.assertRaises(ssl.SSLError):
            self.handshake(version=ssl.TLSVersion.TLSv1_2)


class ServerNameTests(DaemonTLSCase):
    """RFC 6066 3: the certificate for the name the client asks for."""

    def setUp(self) -> None:
        self.start(
            'certificate = "default.pem"\nkey = "default.key"\n'
            '[[tls.sni]]\ncertificate = "org.pem"\nkey = "org.key"\n'
            '[[tls.sni]]\ncertificate = "net.pem"\nkey = "net.key"\n',
            {
                "default": ("default.test",),
                "org": ("mail.example.org", "imap.example.org"),
                "net": ("wild.example.net", "*.example.net"),
            },
        )

    def test_implicit_tls(self) -> None:
        for name, served in (
            ("mail.example.org", "mail.example.org"),
            ("IMAP.Example.ORG", "mail.example.org"),
            ("x.example.net", "wild.example.net"),
            ("wild.example.net", "wild.example.net"),
            # A wildcard stands for one label only (RFC 6125 6.4.3).
            ("a.b.example.net", "default.test"),
            ("example.net", "default.test"),
            ("other.test", "default.test"),
            (None, "default.test"),
        ):
            self.assertEqual(self.handshake(name)[1], served, name)

    def test_starttls(self) -> None:
        self.assertEqual(self.starttls("x.example.net"), "wild.example.net")
        self.assertEqual(self.starttls("unknown.test"), "default.test")


class CheckConfigTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        open(os.path.join(self.dir, "pw"), "w").close()

    def check(self, certificates: dict[str, float], sni: str = "") -> tuple[int, str, str]:
        """check-config with certificates ``stem -> days left`` (the first is
        tls.certificate) and ``sni`` added after [tls]."""
        for stem, days in certificates.items():
            write_certificate(
                os.path.join(self.dir, f"{stem}.pem"),
                os.path.join(self.dir, f"{stem}.key"),
                (f"{stem}.example.org",),
                days=days,
            )
        first = next(iter(certificates))
        config = os.path.join(self.dir, "c.toml")
        with open(config, "w") as f:
            f.write(
                f'[imap]\nlisten = ["tcp:1143"]\n[users]\npasswd_file = "{self.dir}/pw"\n'
                f'[tls]\ncertificate = "{self.dir}/{first}.pem"\nkey = "{self.dir}/{first}.key"\n'
                + sni
            )
        self.config = config
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(["check-config", config], stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def test_names_and_expiry(self) -> None:
        sni = f'[[tls.sni]]\ncertificate = "{self.dir}/b.pem"\nkey = "{self.dir}/b.key"\n'
        status, out, err = self.check({"a": 400, "b": 3}, sni)
        self.assertEqual((status, err), (0, ""))
        self.assertIn("TLS profile intermediate: TLS 1.2 and 1.3", out)
        self.assertIn(f"tls.certificate: {self.dir}/a.pem for a.example.org, valid until ", out)
        self.assertIn(f"tls.sni[0].certificate: {self.dir}/b.pem for b.example.org", out)
        self.assertIn("warning: tls.sni[0].certificate expires in 3.0 days", out)
        self.assertNotIn("warning: tls.certificate", out)

    def test_expired(self) -> None:
        status, out, err = self.check({"a": -2})
        self.assertEqual((status, out), (cli.EX_CONFIG, ""))
        self.assertIn(f"{self.config}: tls.certificate: {self.dir}/a.pem expired on ", err)

    def test_sni_pair_mismatch(self) -> None:
        sni = f'[[tls.sni]]\ncertificate = "{self.dir}/b.pem"\nkey = "{self.dir}/a.key"\n'
        status, out, err = self.check({"a": 30, "b": 30}, sni)
        self.assertEqual((status, out), (cli.EX_CONFIG, ""))
        self.assertIn(
            f"tls.sni[0].key: {self.dir}/a.key is not the private key of the certificate "
            f"{self.dir}/b.pem",
            err,
        )
