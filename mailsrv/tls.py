"""TLS: the server context for STARTTLS/STLS and implicit-TLS listeners.

One :class:`~twisted.internet.ssl.CertificateOptions` serves every listener,
with the versions and suites of ``tls.profile`` ("intermediate": TLS 1.2
with forward-secret AEAD suites and 1.3; "modern": 1.3 only), and the
certificates of ``[[tls.sni]]`` for the names they are for.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from mailsrv import log, preload
from mailsrv.config import DEFAULT_CIPHERS, TLSSection
from mailsrv.errors import ConfigError

_log = log.get_logger(__name__)

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def generate_self_signed(
    cert_path: str, key_path: str, hostname: str, *, replace: bool = False
) -> None:
    """Write a self-signed certificate for ``hostname`` and localhost.

    For development and tests only; the key file is created with mode 0600.
    Without ``replace``, an existing file at either path is left alone and
    :class:`FileExistsError` names it: a new key beside an old certificate
    (or the reverse) would break every handshake.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    for path in (cert_path, key_path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    # Both files are claimed before either is written, so a refusal leaves
    # nothing half done.
    key_fd = os.open(key_path, flags, 0o600)
    try:
        cert_fd = os.open(cert_path, flags, 0o644)
    except BaseException:
        os.close(key_fd)
        if not replace:
            os.unlink(key_path)
        raise
    with os.fdopen(key_fd, "wb") as f:
        f.write(key_bytes)
    with os.fdopen(cert_fd, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def ensure_self_signed(
    section: TLSSection,
    config_path: str = "configuration",
    hostname: str = "localhost",
    *,
    create: bool = True,
) -> bool:
    """For ``generate_self_signed``: create the pair when both files are
    missing (with ``create``); True when both files exist afterwards.

    One file present without the other is an error, never a reason to
    write: the missing one cannot be made to match the one that exists.
    """
    if section.certificate is None or section.key is None:
        raise ConfigError(config_path, "tls.certificate", "no certificate configured")
    files = {"tls.certificate": section.certificate, "tls.key": section.key}
    present = {key: os.path.exists(path) for key, path in files.items()}
    if all(present.values()):
        return True
    if any(present.values()):
        missing = next(key for key, there in present.items() if not there)
        found = next(key for key, there in present.items() if there)
        raise ConfigError(
            config_path,
            missing,
            f"{files[missing]} does not exist but {found} {files[found]} does; "
            "generate_self_signed creates a pair only where both files are missing and never "
            f"replaces one. Point {missing} at the file that belongs with {files[found]}, or "
            f"move {files[found]} away to have a new pair made",
        )
    if not create:
        return False
    try:
        generate_self_signed(section.certificate, section.key, hostname)
    except OSError as e:
        raise ConfigError(
            config_path,
            "tls.generate_self_signed",
            f"cannot create {e.filename or section.certificate}: {e.strerror}",
        ) from None
    _log.info(
        "TLS: created a self-signed certificate {cert} and key {key}",
        cert=section.certificate,
        key=section.key,
    )
    return True


def _read(path: str, key: str, config_path: str) -> bytes:
    preloaded = preload.take(path)  # a worker's first read: what its parent read as root
    if preloaded is not None:
        return preloaded[0]
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(config_path, key, f"cannot read {path}: {e.strerror}") from None


def _load_pair(
    cert_path: str, key_path: str, cert_key: str, key_key: str, config_path: str
) -> tuple[list[crypto.X509], crypto.PKey]:
    """The certificate chain (leaf first) and private key in two PEM files,
    checked to belong together; errors name ``cert_key`` or ``key_key``."""
    pem = _read(cert_path, cert_key, config_path)
    key_pem = _read(key_path, key_key, config_path)
    try:
        chain = [
            crypto.load_certificate(crypto.FILETYPE_PEM, block)
            for block in _pem_blocks(pem, b"CERTIFICATE")
        ]
        if not chain:
            raise ValueError("no PEM certificate found")
    except (crypto.Error, ValueError) as e:
        raise ConfigError(
            config_path, cert_key, f"{cert_path}: not a PEM certificate ({e})"
        ) from None
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error as e:
        raise ConfigError(
            config_path, key_key, f"{key_path}: not an unencrypted PEM private key ({e})"
        ) from None
    if not _same_public_key(chain[0], key):
        # pyOpenSSL would only notice at the first handshake, which then
        # fails for every client ("key values mismatch").
        raise ConfigError(
            config_path,
            key_key,
            f"{key_path} is not the private key of the certificate {cert_path}; "
            f"set {key_key} to the key that certificate was issued for (for a self-signed "
            "development pair, `mailsrv gen-cert --force` makes a new matching one)",
        )
    return chain, key


def _options(
    section: TLSSection, chain: list[crypto.X509], key: crypto.PKey, config_path: str
) -> ssl.CertificateOptions:
    """One certificate's context with the section's versions and suites."""
    ciphers = section.cipher_list
    try:
        return ssl.CertificateOptions(
            privateKey=key,
            certificate=chain[0],
            extraCertChain=chain[1:],
            raiseMinimumTo=_VERSIONS[section.minimum_version],
            acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(
                ciphers if ciphers is not None else DEFAULT_CIPHERS
            ),
        )
    except ValueError as e:  # no usable suite left; the configuration check should prevent it
        raise ConfigError(config_path, "tls.ciphers", f"{ciphers!r}: {e}") from None


def server_context(
    section: TLSSection, config_path: str = "configuration", hostname: str = "localhost"
) -> ssl.CertificateOptions:
    """Build the server TLS context, creating a dev certificate if asked.

    The certificate file may hold the full chain (leaf first), as Let's
    Encrypt's ``fullchain.pem`` does; the intermediates are sent along.
    The certificates of ``[[tls.sni]]`` are served to clients that name one
    of theirs (:class:`ServerNames`); every other client gets this one.
    """
    if section.certificate is None or section.key is None:
        raise ConfigError(config_path, "tls.certificate", "no certificate configured")
    if section.generate_self_signed:
        ensure_self_signed(section, config_path, hostname)
    chain, key = _load_pair(
        section.certificate, section.key, "tls.certificate", "tls.key", config_path
    )
    options = _options(section, chain, key, config_path)
    if section.sni:
        names = ServerNames()
        for i, pair in enumerate(section.sni):
            where = f"tls.sni[{i}]"
            sni_chain, sni_key = _load_pair(
                pair.certificate, pair.key, f"{where}.certificate", f"{where}.key", config_path
            )
            found = certificate_names(_x509(sni_chain[0]))
            if not found:
                raise ConfigError(
                    config_path,
                    f"{where}.certificate",
                    f"{pair.certificate} names no host (no DNS name, no common name)",
                )
            names.add(found, _options(section, sni_chain, sni_key, config_path))
        names.install(options)
    return options


class ServerNames:
    """Picks the certificate for the name a client asks for (RFC 6066 3).

    Names are matched without regard to case; a certificate for
    ``*.example.org`` serves ``mail.example.org`` but neither
    ``example.org`` nor ``a.b.example.org`` (RFC 6125 6.4.3).  The first
    certificate listed for a name wins; a name no certificate is for gets
    the default one.
    """

    def __init__(self) -> None:
        self._exact: dict[str, ssl.CertificateOptions] = {}
        self._wildcard: dict[str, ssl.CertificateOptions] = {}

    def add(self, names: list[str], options: ssl.CertificateOptions) -> None:
        for name in names:
            name = name.lower().rstrip(".")
            if name.startswith("*."):
                self._wildcard.setdefault(name[2:], options)
            else:
                self._exact.setdefault(name, options)

    def find(self, name: str) -> ssl.CertificateOptions | None:
        name = name.lower().rstrip(".")
        found = self._exact.get(name)
        if found is None and "." in name:
            found = self._wildcard.get(name.split(".", 1)[1])
        return found

    def install(self, default: ssl.CertificateOptions) -> None:
        """Have ``default``'s context switch to the right one at each
        handshake (Twisted keeps one context per CertificateOptions)."""
        default.getContext().set_tlsext_servername_callback(self._choose)

    def _choose(self, connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        if not raw:
            return
        try:
            name = raw.decode("ascii")
        except UnicodeDecodeError:  # RFC 6066 3: an A-label, so ASCII; else no match
            return
        options = self.find(name)
        if options is not None:
            connection.set_context(options.getContext())


def _x509(certificate: crypto.X509) -> x509.Certificate:
    return certificate.to_cryptography()


def certificate_names(certificate: x509.Certificate) -> list[str]:
    """The DNS names a certificate is for: its subjectAltName's, or, with
    none, its common name (RFC 6125 6.4.4)."""
    try:
        alt = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return [str(common[0].value)] if common else []
    return [str(name) for name in alt.value.get_values_for_type(x509.DNSName)]


@attrs.frozen
class CertificateInfo:
    """What ``mailsrv check-config`` says of one configured certificate."""

    key: str
    path: str
    names: tuple[str, ...]
    not_after: datetime.datetime

    def days_left(self, now: datetime.datetime | None = None) -> float:
        now = now or datetime.datetime.now(datetime.UTC)
        return (self.not_after - now).total_seconds() / 86400


def certificates(section: TLSSection, config_path: str = "configuration") -> list[CertificateInfo]:
    """The configured certificates (the default one first), their names
    and expiry; each pair is checked to match as :func:`server_context` does."""
    pairs = []
    if section.certificate is not None and section.key is not None:
        pairs.append(("tls.certificate", "tls.key", section.certificate, section.key))
    for i, pair in enumerate(section.sni):
        pairs.append((f"tls.sni[{i}].certificate", f"tls.sni[{i}].key", pair.certificate, pair.key))
    found = []
    for cert_key, key_key, cert_path, key_path in pairs:
        chain, _key = _load_pair(cert_path, key_path, cert_key, key_key, config_path)
        leaf = _x509(chain[0])
        found.append(
            CertificateInfo(cert_key, cert_path, tuple(certificate_names(leaf)), expires(leaf))
        )
    return found


def expires(certificate: x509.Certificate) -> datetime.datetime:
    """When ``certificate`` stops being valid, in UTC.

    cryptography 42 added the timezone-aware ``not_valid_after_utc``;
    Debian 12's python3-cryptography (38, linked to the system's OpenSSL
    3.0, which keeps 8 KiB less per TLS session: docs/admin-guide.md) has
    only the naive ``not_valid_after``, in UTC too.
    """
    try:
        return certificate.not_valid_after_utc
    except AttributeError:  # cryptography < 42
        return certificate.not_valid_after.replace(tzinfo=datetime.UTC)


@implementer(IOpenSSLServerConnectionCreator)
class CurrentTLS:
    """The server TLS context in force, asked at each new TLS connection.

    Implicit-TLS listeners are wrapped once, at startup; a reload that loads
    a renewed certificate sets :attr:`context`, and the next handshake uses
    it while connections already open keep theirs.
    """

    def __init__(self, context: ssl.CertificateOptions) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.context.getContext(), None)


def _same_public_key(certificate: crypto.X509, key: crypto.PKey) -> bool:
    def public(pkey: crypto.PKey) -> bytes:
        return crypto.dump_publickey(crypto.FILETYPE_ASN1, pkey)

    return public(certificate.get_pubkey()) == public(key)


def _pem_blocks(data: bytes, label: bytes) -> list[bytes]:
    begin = b"-----BEGIN " + label + b"-----"
    end = b"-----END " + label + b"-----"
    blocks = []
    start = data.find(begin)
    while start != -1:
        stop = data.find(end, start)
        if stop == -1:
            break
        blocks.append(data[start : stop + len(end)] + b"\n")
        start = data.find(begin, stop)
    return blocks
