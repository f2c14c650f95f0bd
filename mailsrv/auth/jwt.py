"""A token validator for JWTs (RFC 7519) signed with a key the server is
configured with: HS256 with a shared secret, RS256 with an RSA public key,
ES256 with a P-256 public key (RFC 7518 3).

Only the algorithm the configured key is for is accepted, whatever the
token's header says (so never ``none``, and never an RSA public key used
as an HMAC secret).  Checking a signature takes well under a millisecond,
so it runs where it is asked, on the reactor's thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from twisted.internet import defer
from zope.interface import implementer

from mailsrv.auth.claims import ClaimRules
from mailsrv.auth.oauth import ITokenValidator, TokenRefused

__all__ = ["JWTValidator", "load_public_key"]

#: Shorter HS256 secrets are refused: RFC 7518 3.2 asks for at least the
#: hash's size.
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def load_public_key(pem: bytes) -> PublicKey:
    """A PEM public key fit for RS256 or ES256; ValueError saying why not."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise ValueError(f"not a PEM public key ({e})") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key of {key.key_size} bits; RS256 needs {MIN_RSA_BITS}")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"an EC key on {key.curve.name}; ES256 needs P-256")
        return key
    raise ValueError("neither an RSA nor a P-256 key (RS256, ES256)")


def _b64url(text: str) -> bytes:
    if not text or any(c not in _B64URL for c in text):
        raise TokenRefused("the token is not a JWT")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenRefused("the token is not a JWT") from None


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise TokenRefused("the token is not a JWT") from None
    if not isinstance(value, dict):
        raise TokenRefused("the token is not a JWT")
    return value


@implementer(ITokenValidator)
class JWTValidator:
    """Validates JWTs signed with ``public_key`` (RS256 or ES256, by the
    key's type) or ``secret`` (HS256): exactly one of the two."""

    def __init__(
        self,
        rules: ClaimRules,
        *,
        public_key: PublicKey | None = None,
        secret: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (public_key is None) == (secret is None):
            raise ValueError("give a public key or a secret, not both or neither")
        if secret is not None and len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"an HS256 secret needs at least {MIN_SECRET_BYTES} bytes")
        self.rules = rules
        self._key = public_key
        self._secret = secret
        self._clock = clock
        if secret is not None:
            self.algorithm = "HS256"
        elif isinstance(public_key, rsa.RSAPublicKey):
            self.algorithm = "RS256"
        else:
            self.algorithm = "ES256"

    def validate(self, token: str, user: str | None) -> defer.Deferred[str]:
        return defer.maybeDeferred(self._validate, token, user)

    def _validate(self, token: str, user: str | None) -> str:
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRefused("the token is not a JWT")
        header = _json_object(_b64url(parts[0]))
        if header.get("alg") != self.algorithm:
            raise TokenRefused(f"the token is signed with {header.get('alg')!r}")
        if "crit" in header:
            # RFC 7515 4.1.11: extensions we would have to understand.
            raise TokenRefused("the token has critical header parameters")
        signed = f"{parts[0]}.{parts[1]}".encode("ascii")
        if not self._verified(signed, _b64url(parts[2])):
            raise TokenRefused("the token's signature does not verify")
        claims = _json_object(_b64url(parts[1]))
        return self.rules.authorized_user(claims, user, self._clock())

    def _verified(self, signed: bytes, signature: bytes) -> bool:
        if self._secret is not None:
            expected = hmac.new(self._secret, signed, hashlib.sha256).digest()
            return hmac.compare_digest(expected, signature)
        try:
            if isinstance(self._key, rsa.RSAPublicKey):
                self._key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
                return True
            assert isinstance(self._key, ec.EllipticCurvePublicKey)
            # RFC 7518 3.4: R and S, 32 bytes each, not DER.
            if len(signature) != 64:
                return False
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            self._key.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA256()))
            return True
        except InvalidSignature:
            return False
