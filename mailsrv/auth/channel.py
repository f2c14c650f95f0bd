"""TLS channel bindings for SCRAM-SHA-256-PLUS.

Three types, each offered only where it is sound:

* ``tls-exporter`` (RFC 9266): 32 bytes of the TLS exporter with the label
  ``EXPORTER-Channel-Binding`` and an empty context, on TLS 1.3 only (on
  TLS 1.2 it is safe only with the extended master secret, which pyOpenSSL
  does not tell);
* ``tls-unique`` (RFC 5929 3): the first Finished message of the
  handshake, on TLS 1.2 only (undefined for 1.3), and only after a full
  handshake: RFC 7677 4 forbids it after a resumed one (the triple
  handshake attack).  RFC 5802 6.1 makes it the default type, and TLS 1.2
  clients (GNU SASL, so mutt) ask for it;
* ``tls-server-end-point`` (RFC 5929 4): the hash of the server's
  certificate, with the hash function of the certificate's signature (MD5
  and SHA-1 become SHA-256); a certificate whose signature names no hash
  (Ed25519) gives none.

The data come from the pyOpenSSL ``Connection`` Twisted's TLS transports
hand out through ``getHandle()`` (implicit TLS and STARTTLS alike).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from OpenSSL import SSL

__all__ = ["EXPORTER", "SERVER_END_POINT", "UNIQUE", "ChannelBindings", "bindings_of"]

EXPORTER = "tls-exporter"
UNIQUE = "tls-unique"
SERVER_END_POINT = "tls-server-end-point"

_EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
_EXPORTER_LENGTH = 32


class ChannelBindings:
    """The channel bindings of one TLS connection, computed when asked."""

    def __init__(self, connection: SSL.Connection) -> None:
        self._connection = connection

    def types(self) -> tuple[str, ...]:
        """The binding types this connection can give, preferred first."""
        found = []
        version = self._connection.get_protocol_version_name()
        if version == "TLSv1.3":
            found.append(EXPORTER)
        elif version == "TLSv1.2" and _resumed(self._connection) is False:
            found.append(UNIQUE)
        if self._end_point() is not None:
            found.append(SERVER_END_POINT)
        return tuple(found)

    def data(self, kind: str) -> bytes | None:
        """The binding data of type ``kind``, or None if not available."""
        if kind not in self.types():
            return None
        if kind == EXPORTER:
            exported: bytes = self._connection.export_keying_material(
                _EXPORTER_LABEL, _EXPORTER_LENGTH, b""
            )
            return exported
        if kind == UNIQUE:
            # A full handshake: the client's Finished came first.
            finished: bytes | None = self._connection.get_peer_finished()
            return finished
        return self._end_point()

    def _end_point(self) -> bytes | None:
        certificate = self._connection.get_certificate()
        if certificate is None:
            return None
        return server_end_point(certificate.to_cryptography())


def server_end_point(certificate: x509.Certificate) -> bytes | None:
    """RFC 5929 4.1: the certificate hashed with its signature's hash
    function, SHA-256 in place of MD5 and SHA-1; None when there is none."""
    try:
        algorithm = certificate.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None
    if algorithm is None:
        return None
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate.public_bytes(serialization.Encoding.DER))
    return digest.finalize()


def _resumed(connection: SSL.Connection) -> bool | None:
    """Whether the handshake resumed a session; None where pyOpenSSL's
    OpenSSL binding cannot say (then tls-unique is not offered)."""
    session_reused = getattr(getattr(SSL, "_lib", None), "SSL_session_reused", None)
    handle = getattr(connection, "_ssl", None)
    if session_reused is None or handle is None:
        return None
    return bool(session_reused(handle))


def bindings_of(transport: object) -> ChannelBindings | None:
    """The channel bindings of a Twisted transport once its TLS handshake
    is complete; None for a connection without TLS."""
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    handle = get_handle()
    if not isinstance(handle, SSL.Connection) or handle.get_finished() is None:
        return None
    return ChannelBindings(handle)
