"""TLS: the server context for STARTTLS/STLS and implicit-TLS listeners.

One :class:`~twisted.internet.ssl.CertificateOptions` serves every listener,
with TLS 1.2 as the floor (configurable up to 1.3) and, for TLS 1.2, the
suites of ``tls.ciphers`` (forward-secret AEAD ones by default).
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from mailsrv import log, preload
from mailsrv.config import TLSSection
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


def server_context(
    section: TLSSection, config_path: str = "configuration", hostname: str = "localhost"
) -> ssl.CertificateOptions:
    """Build the server TLS context, creating a dev certificate if asked.

    The certificate file may hold the full chain (leaf first), as Let's
    Encrypt's ``fullchain.pem`` does; the intermediates are sent along.
    """
    if section.certificate is None or section.key is None:
        raise ConfigError(config_path, "tls.certificate", "no certificate configured")
    if section.generate_self_signed:
        ensure_self_signed(section, config_path, hostname)
    pem = _read(section.certificate, "tls.certificate", config_path)
    key_pem = _read(section.key, "tls.key", config_path)
    try:
        chain = [
            crypto.load_certificate(crypto.FILETYPE_PEM, block)
            for block in _pem_blocks(pem, b"CERTIFICATE")
        ]
        if not chain:
            raise ValueError("no PEM certificate found")
    except (crypto.Error, ValueError) as e:
        raise ConfigError(
            config_path, "tls.certificate", f"{section.certificate}: not a PEM certificate ({e})"
        ) from None
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
    except crypto.Error as e:
        raise ConfigError(
            config_path, "tls.key", f"{section.key}: not an unencrypted PEM private key ({e})"
        ) from None
    if not _same_public_key(chain[0], key):
        # pyOpenSSL would only notice at the first handshake, which then
        # fails for every client ("key values mismatch").
        raise ConfigError(
            config_path,
            "tls.key",
            f"{section.key} is not the private key of the certificate {section.certificate}; "
            "set tls.key to the key that certificate was issued for (for a self-signed "
            "development pair, `mailsrv gen-cert --force` makes a new matching one)",
        )
    try:
        return ssl.CertificateOptions(
            privateKey=key,
            certificate=chain[0],
            extraCertChain=chain[1:],
            raiseMinimumTo=_VERSIONS[section.min_version],
            acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(section.ciphers),
        )
    except ValueError as e:  # no usable suite left; the configuration check should prevent it
        raise ConfigError(config_path, "tls.ciphers", f"{section.ciphers!r}: {e}") from None


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
