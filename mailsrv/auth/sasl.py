"""Server-side SASL mechanisms (and APOP), shared by the POP3 and IMAP servers.

Pure state machines: no I/O, no base64, no reactor.  A protocol creates a
mechanism with :func:`create`, feeds it the client's decoded initial response
and later answers, and gets back a :data:`Step` each time: a
:class:`Challenge` to send, :class:`Credentials` for the Portal, or a
:class:`Refusal` to answer with an error.  Base64 and the ``*`` cancellation
are wire syntax, so they stay with the protocol.

The credentials follow twisted.cred: PLAIN and LOGIN give
``IUsernamePassword``; CRAM-MD5 and APOP give ``IUsernameHashedPassword``
objects whose ``checkPassword(secret)`` recomputes the client's digest from
the shared secret and compares in constant time.

SCRAM-SHA-256(-PLUS) (:mod:`mailsrv.auth.scram_server`) and OAUTHBEARER /
XOAUTH2 (:mod:`mailsrv.auth.oauth`) need more than the client's words: a
user's secret, a token's validation, the TLS channel's binding.  They get
them from the :class:`SaslServices` a policy carries and the connection's
:class:`~mailsrv.auth.channel.ChannelBindings`, and their steps may come as
Deferreds.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.cred.credentials import IUsernameHashedPassword, UsernamePassword
from twisted.internet.interfaces import IAddress
from zope.interface import implementer

from mailsrv.auth import oauth
from mailsrv.auth.channel import ChannelBindings
from mailsrv.auth.mechanism import (
    Challenge,
    Credentials,
    Mechanism,
    Refusal,
    Step,
    StepResult,
)
from mailsrv.auth.scram import SCHEME as SCRAM
from mailsrv.auth.scram_server import ScramLookup, ScramServer

__all__ = [
    "MECHANISMS",
    "PLAINTEXT_MECHANISMS",
    "APOPCredentials",
    "Challenge",
    "CramMD5",
    "CramMD5Credentials",
    "Credentials",
    "Login",
    "Mechanism",
    "Plain",
    "Refusal",
    "SaslServices",
    "Step",
    "StepResult",
    "create",
    "make_challenge",
    "mechanisms",
]

_HEX_DIGEST = re.compile(rb"[0-9A-Fa-f]{32}")

#: Every mechanism :func:`create` knows, in the order they are offered.
MECHANISMS: tuple[str, ...] = (
    f"{SCRAM}-PLUS",
    SCRAM,
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
    *oauth.MECHANISMS,
)

#: Mechanisms that carry the password itself (need TLS or a trusted network).
PLAINTEXT_MECHANISMS = frozenset({"PLAIN", "LOGIN"})

#: Mechanisms that carry a bearer token, as good as a password while it
#: lasts: offered where plaintext passwords are (RFC 7628 3: TLS MUST be used).
TOKEN_MECHANISMS = frozenset(oauth.MECHANISMS)


def _never() -> bool:
    return False


@attrs.frozen
class SaslServices:
    """What the mechanisms beyond PLAIN, LOGIN and CRAM-MD5 need of the
    server; a policy without it offers none of them.

    ``scram`` finds users' SCRAM secrets (the users' checker) and
    ``scram_available`` says whether any user has one; ``tokens`` validates
    OAuth bearer tokens for the ``token_mechanisms`` offered, with
    ``oauth_info`` for the error challenge.
    """

    scram: ScramLookup | None = None
    scram_available: Callable[[], bool] = _never
    tokens: oauth.ITokenValidator | None = None
    token_mechanisms: tuple[str, ...] = oauth.MECHANISMS
    oauth_info: oauth.OAuthErrorInfo = attrs.field(factory=oauth.OAuthErrorInfo)


def make_challenge(hostname: str, clock: Callable[[], float] = time.time) -> bytes:
    """A unique ``<random.timestamp@hostname>`` string (RFC 1939 APOP, RFC 2195).

    Both mechanisms only need it never to repeat; the random part makes it
    unguessable too, so a recorded digest cannot be replayed.
    """
    nonce = secrets.randbits(64)
    return f"<{nonce}.{os.getpid()}.{int(clock())}@{hostname}>".encode("ascii", "replace")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Plain:
    """RFC 4616 PLAIN: ``authzid NUL authcid NUL passwd`` in one message.

    mailsrv has no proxy users, so an authorization identity is accepted
    only when it is empty or names the user authenticating.
    """

    name = "PLAIN"

    def start(self, initial_response: bytes | None) -> Step:
        if initial_response is None:
            return Challenge(b"")
        return self.respond(initial_response)

    def respond(self, data: bytes) -> Step:
        parts = data.split(b"\0")
        if len(parts) != 3:
            return Refusal("Malformed PLAIN message")
        authzid, authcid, password = parts
        if not authcid or not password:
            return Refusal("Empty user name or password")
        if not (_utf8(authzid) and _utf8(authcid) and _utf8(password)):
            return Refusal("PLAIN message is not UTF-8")
        if authzid and authzid != authcid:
            return Refusal("Proxy authorization is not supported")
        return Credentials(UsernamePassword(authcid, password))


class Login:
    """The de-facto LOGIN mechanism: two challenges, user name then password.

    An initial response, where a client sends one, is the user name.
    """

    name = "LOGIN"

    def __init__(self) -> None:
        self._username: bytes | None = None

    def start(self, initial_response: bytes | None) -> Step:
        if initial_response:
            return self.respond(initial_response)
        return Challenge(b"Username:")

    def respond(self, data: bytes) -> Step:
        if self._username is None:
            if not data or not _utf8(data):
                return Refusal("Invalid user name")
            self._username = data
            return Challenge(b"Password:")
        if not data:
            return Refusal("Empty password")
        return Credentials(UsernamePassword(self._username, data))


@implementer(IUsernameHashedPassword)
class CramMD5Credentials:
    """What a CRAM-MD5 client proved: HMAC-MD5 of the challenge under its secret."""

    def __init__(self, username: bytes, challenge: bytes, response: bytes) -> None:
        self.username = username
        self.challenge = challenge
        self.response = response

    def checkPassword(self, password: bytes | str) -> bool:
        secret = password.encode("utf-8") if isinstance(password, str) else password
        expected = hmac.new(secret, self.challenge, hashlib.md5).hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.response.lower())


class CramMD5:
    """RFC 2195 CRAM-MD5: the server challenges, the client answers
    ``user SP hex(HMAC-MD5(secret, challenge))``."""

    name = "CRAM-MD5"

    def __init__(self, hostname: str, challenge: bytes | None = None) -> None:
        self.challenge = challenge if challenge is not None else make_challenge(hostname)
        self._sent = False

    def start(self, initial_response: bytes | None) -> Step:
        if initial_response:
            return Refusal("CRAM-MD5 does not take an initial response")
        self._sent = True
        return Challenge(self.challenge)

    def respond(self, data: bytes) -> Step:
        if not self._sent:
            return Refusal("CRAM-MD5 exchange not started")
        username, sep, digest = data.rpartition(b" ")
        if not sep or not username or len(digest) != 32:
            return Refusal("Malformed CRAM-MD5 response")
        if not _HEX_DIGEST.fullmatch(digest):
            return Refusal("Malformed CRAM-MD5 response")
        if not _utf8(username):
            return Refusal("CRAM-MD5 user name is not UTF-8")
        return Credentials(CramMD5Credentials(username, self.challenge, digest))


@implementer(IUsernameHashedPassword)
class APOPCredentials:
    """RFC 1939 APOP: ``hex(MD5(timestamp + secret))`` for the greeting's timestamp."""

    def __init__(self, username: bytes, timestamp: bytes, digest: bytes) -> None:
        self.username = username
        self.timestamp = timestamp
        self.digest = digest

    def checkPassword(self, password: bytes | str) -> bool:
        secret = password.encode("utf-8") if isinstance(password, str) else password
        expected = hashlib.md5(self.timestamp + secret).hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.digest.lower())


def create(
    name: str,
    hostname: str,
    *,
    services: SaslServices | None = None,
    bindings: ChannelBindings | None = None,
) -> Mechanism | None:
    """A fresh mechanism for ``name`` (case-insensitive), or None if unknown
    or without the ``services`` it needs.  ``bindings`` are the connection's
    TLS channel bindings (None without TLS).

    Whether the mechanism may be used on this connection is
    :func:`mechanisms`' decision, not this function's.
    """
    upper = name.upper()
    if upper == "PLAIN":
        return Plain()
    if upper == "LOGIN":
        return Login()
    if upper == "CRAM-MD5":
        return CramMD5(hostname)
    if services is None:
        return None
    if upper in (SCRAM, f"{SCRAM}-PLUS") and services.scram is not None:
        return ScramServer(services.scram, plus=upper != SCRAM, bindings=bindings)
    if upper in services.token_mechanisms and services.tokens is not None:
        return oauth.create(upper, services.tokens, services.oauth_info)
    return None


class _Policy(Protocol):
    def plaintext_allowed(self, peer: IAddress | None, secure: bool) -> bool: ...

    # Attributes, as SessionPolicy declares them.
    @property
    def challenge_auth_available(self) -> Callable[[], bool]: ...

    @property
    def sasl(self) -> SaslServices | None: ...


def mechanisms(
    policy: _Policy,
    secure: bool,
    peer: IAddress | None,
    bindings: ChannelBindings | None = None,
) -> list[str]:
    """The mechanisms to offer on a connection.

    SCRAM-SHA-256 when some user can use it, and its -PLUS variant where
    the connection's TLS gives a channel binding (RFC 5802 6: a server that
    can bind offers both); PLAIN and LOGIN reveal the password, and
    OAUTHBEARER and XOAUTH2 a bearer token, so they are offered only where
    the plaintext policy allows it; CRAM-MD5 only when some user has a
    secret it can be checked against.
    """
    offered = []
    services = policy.sasl
    if services is not None and services.scram is not None and services.scram_available():
        if bindings is not None and bindings.types():
            offered.append(f"{SCRAM}-PLUS")
        offered.append(SCRAM)
    plaintext = policy.plaintext_allowed(peer, secure)
    if plaintext:
        offered += ["PLAIN", "LOGIN"]
    if policy.challenge_auth_available():
        offered.append("CRAM-MD5")
    if plaintext and services is not None and services.tokens is not None:
        offered += [name for name in oauth.MECHANISMS if name in services.token_mechanisms]
    return offered
