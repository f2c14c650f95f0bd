"""What the OAuth tests share: JWTs signed here with keys made here, and a
real RFC 7662 introspection endpoint (twisted.web) on a loopback port."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.parse
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from twisted.internet import defer, reactor
from twisted.web import resource, server

__all__ = ["Endpoint", "Keys", "claims", "sign"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Keys:
    """One key of each kind, made for the test run."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.secret = b"s" * 40

    @staticmethod
    def pem(private: Any) -> bytes:
        return bytes(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def sign(claims: dict[str, Any], alg: str, key: Any, header: dict[str, Any] | None = None) -> str:
    """A JWS compact serialization (RFC 7515 7.1) of ``claims``."""
    head = {"alg": alg, "typ": "JWT", **(header or {})}
    signing_input = f"{_b64url(json.dumps(head).encode())}.{_b64url(json.dumps(claims).encode())}"
    data = signing_input.encode()
    if alg == "HS256":
        signature = hmac.new(key, data, hashlib.sha256).digest()
    elif alg == "RS256":
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif alg == "none":
        signature = b""
    else:
        raise ValueError(alg)
    return f"{signing_input}.{_b64url(signature)}"


def claims(user: str = "alice", lifetime: float = 300, **more: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": f"id-{user}", "email": user, "iat": now, "exp": now + lifetime, **more}


class _Introspect(resource.Resource):
    isLeaf = True

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__()
        self.endpoint = endpoint

    def render_POST(self, request: Any) -> Any:
        endpoint = self.endpoint
        endpoint.requests.append(request)
        if endpoint.hold:
            return server.NOT_DONE_YET  # never answers
        expected = "Basic " + base64.b64encode(b"mailsrv:client+secret").decode()
        if request.getHeader("authorization") != expected:
            request.setResponseCode(401)
            return b'{"error":"invalid_client"}'
        form = urllib.parse.parse_qs(request.content.read().decode())
        answer = endpoint.tokens.get(form.get("token", [""])[0], {"active": False})
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(answer).encode()


class Endpoint:
    """An introspection endpoint answering for ``tokens`` (token -> answer)
    to the client ``mailsrv`` with the secret ``client secret``."""

    def __init__(self, test: Any) -> None:
        self.tokens: dict[str, dict[str, Any]] = {}
        self.requests: list[Any] = []
        self.hold = False
        # Any: Twisted types listenTCP's factory as ServerFactory[_ProtoWithFactory],
        # which Site (a ServerFactory of HTTP channels) is not, the generic being invariant.
        site: Any = server.Site(_Introspect(self))
        self.port: Any = reactor.listenTCP(0, site, interface="127.0.0.1")
        test.addCleanup(self.stop)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/introspect"

    def stop(self) -> defer.Deferred[None]:
        for request in self.requests:
            if not request.finished and request.channel is not None:
                request.channel.transport.abortConnection()
        return defer.maybeDeferred(self.port.stopListening)
