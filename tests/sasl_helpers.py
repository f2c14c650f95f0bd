"""A SCRAM-SHA-256 client written from RFC 5802 3's formulas, for the tests
that need what no PyPI client does (tls-exporter, tampered messages), and
the bits of TLS a client binds to."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

from cryptography.hazmat.primitives import serialization

__all__ = ["ScramClient", "client_bindings"]


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


class ScramClient:
    """One client exchange.  ``flag`` is the gs2-cbind-flag ("n", "y" or
    "p=TYPE" with ``binding`` its data)."""

    def __init__(
        self,
        user: str,
        password: str,
        *,
        flag: str = "n",
        binding: bytes = b"",
        nonce: str | None = None,
        authzid: str = "",
    ) -> None:
        self.password = password.encode()
        self.gs2 = f"{flag},{'a=' + authzid if authzid else ''},".encode()
        self.binding = binding
        self.nonce = nonce or base64.b64encode(secrets.token_bytes(12)).decode()
        escaped = user.replace("=", "=3D").replace(",", "=2C")
        self.bare = f"n={escaped},r={self.nonce}".encode()
        self.server_signature = b""

    def first(self) -> bytes:
        return self.gs2 + self.bare

    def final(self, server_first: bytes, *, password: bytes | None = None) -> bytes:
        """The client-final-message (with another ``password`` for a forged proof)."""
        fields = dict(item.split(b"=", 1) for item in server_first.split(b","))
        salt, iterations = base64.b64decode(fields[b"s"]), int(fields[b"i"])
        assert fields[b"r"].startswith(self.nonce.encode())
        salted = hashlib.pbkdf2_hmac("sha256", password or self.password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        channel = base64.b64encode(self.gs2 + self.binding)
        without_proof = b"c=" + channel + b",r=" + fields[b"r"]
        auth_message = self.bare + b"," + server_first + b"," + without_proof
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return without_proof + b",p=" + base64.b64encode(proof)

    def verified(self, server_final: bytes) -> bool:
        return server_final == b"v=" + base64.b64encode(self.server_signature)


def client_bindings(transport: Any) -> dict[str, bytes]:
    """What a TLS client binds to, computed on its side of the connection:
    the exporter (TLS 1.3) or its own Finished (TLS 1.2), and the SHA-256
    of the server's certificate (the tests' certificates are signed with
    ECDSA-SHA256)."""
    connection = transport.getHandle()
    found = {}
    if connection.get_protocol_version_name() == "TLSv1.3":
        found["tls-exporter"] = connection.export_keying_material(
            b"EXPORTER-Channel-Binding", 32, b""
        )
    else:
        # RFC 5929 3.1: a full handshake's first Finished is the client's.
        found["tls-unique"] = connection.get_finished()
    der = (
        connection.get_peer_certificate().to_cryptography().public_bytes(serialization.Encoding.DER)
    )
    found["tls-server-end-point"] = hashlib.sha256(der).digest()
    return found
