"""The SCRAM-SHA-256 and SCRAM-SHA-256-PLUS exchange (RFC 5802, RFC 7677),
server side, as an I/O-free state machine.

:class:`ScramServer` asks a :class:`ScramLookup` (the users' checker) for
the user's secret and the connection's
:class:`~mailsrv.auth.channel.ChannelBindings` for the ``-PLUS`` variant;
once the proof is verified it hands the Portal :class:`ScramCredentials`,
which the checker verifies once more against the secret it holds then (a
cheap HMAC), so nothing but a valid proof opens an account.

Unknown users get a made-up salt, derived from a server key, and the
iteration count real users have (:func:`~mailsrv.auth.scram.fake_secret`),
so the server's first message looks the same for a user who does not
exist; their exchange fails at the proof, as a wrong password does.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from typing import Protocol

import attrs
from twisted.cred.credentials import ICredentials
from twisted.internet import defer
from zope.interface import Attribute, implementer

from mailsrv.auth.channel import ChannelBindings
from mailsrv.auth.mechanism import Challenge, Credentials, Refusal, Step, StepResult
from mailsrv.auth.saslprep import saslprep
from mailsrv.auth.scram import (
    DIGEST_SIZE,
    SCHEME,
    ScramSecret,
    b64decode,
    client_key_matches,
    server_signature,
)

__all__ = ["IScramCredentials", "ScramCredentials", "ScramLookup", "ScramServer"]

#: RFC 5802 7: a nonce is printable ASCII except ",".
_PRINTABLE = re.compile(rb"[\x21-\x2b\x2d-\x7e]+")
_CB_NAME = re.compile(r"[A-Za-z0-9.-]+")
#: RFC 5802 7: an (optional, ignored) extension is attr-val.
_ATTR_VAL = re.compile(r"[A-Za-z]=.+", re.DOTALL)


# -- the Portal's side ------------------------------------------------------------------


class IScramCredentials(ICredentials):
    """A SCRAM proof, checked against the user's secret."""

    username = Attribute("The authentication identity (UTF-8 bytes).")

    def check(secret: ScramSecret) -> bool:  # noqa: N805  (zope: no self)
        """Whether the proof was made with the password of ``secret``."""


@implementer(IScramCredentials)
class ScramCredentials:
    """What the client proved: its ClientProof over the AuthMessage."""

    def __init__(self, username: bytes, auth_message: bytes, proof: bytes) -> None:
        self.username = username
        self.auth_message = auth_message
        self.proof = proof

    def check(self, secret: ScramSecret) -> bool:
        """RFC 5802 3: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage);
        H(ClientKey) must be the StoredKey."""
        return client_key_matches(secret, self.auth_message, self.proof)


class ScramLookup(Protocol):
    """Where the exchange finds a user's secret (the users' checker)."""

    def scram_secret(self, name: str) -> defer.Deferred[ScramSecret]:
        """The secret of ``name``; a fake one (:func:`fake_secret`) when the
        user does not exist or has no secret SCRAM can use."""


# -- the exchange ---------------------------------------------------------------------


class _Failed(Exception):
    """The client's message is unacceptable: ``error`` is the RFC 5802 7
    server-error-value to send, or None to fail at once."""

    def __init__(self, reason: str, error: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


def _saslname(value: str) -> str:
    """Undo the ``=2C`` / ``=3D`` escapes (RFC 5802 5.1): any other ``=``
    makes the authentication fail."""
    if not value:
        raise _Failed("Empty SCRAM user name")
    if re.search(r"=(?!2C|3D)", value):
        raise _Failed("Malformed SCRAM user name")
    return value.replace("=2C", ",").replace("=3D", "=")


def _attribute(part: str, name: str) -> str:
    if not part.startswith(name + "="):
        raise _Failed(f"Malformed SCRAM message: expected {name}=", "invalid-encoding")
    return part[2:]


@attrs.frozen
class _ClientFirst:
    flag: str  # "n", "y" or "p"
    binding: str | None  # the channel binding type after "p="
    gs2_header: bytes
    bare: bytes
    username: str
    nonce: bytes


def _gs2_flag(flag: str) -> tuple[str, str | None]:
    """("n" | "y" | "p", the binding type after "p=")."""
    if flag.startswith("p="):
        if not _CB_NAME.fullmatch(flag[2:]):
            raise _Failed("Malformed channel binding name")
        return "p", flag[2:]
    if flag not in ("n", "y"):
        # RFC 5802 5: anything but n, y or p means the message is invalid.
        raise _Failed("Malformed SCRAM client-first message")
    return flag, None


def _prepared_name(name: str) -> str:
    try:
        # RFC 5802 5.1: a name the server receives is prepared as a query.
        username = saslprep(name, stored=False)
    except ValueError as e:
        raise _Failed(f"SCRAM user name refused by SASLprep: {e}") from None
    if not username:
        raise _Failed("Empty SCRAM user name")
    return username


def _parse_client_first(data: bytes) -> _ClientFirst:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Failed("SCRAM message is not UTF-8") from None
    parts = text.split(",", 2)
    if len(parts) != 3:
        raise _Failed("Malformed SCRAM client-first message")
    flag, authzid, bare = parts
    flag, binding = _gs2_flag(flag)
    attributes = bare.split(",")
    if attributes[0].startswith("m="):
        raise _Failed("SCRAM mandatory extensions are not supported")
    if len(attributes) < 2 or not all(_ATTR_VAL.fullmatch(part) for part in attributes[2:]):
        raise _Failed("Malformed SCRAM client-first message")
    name = _saslname(_attribute(attributes[0], "n"))
    nonce = _attribute(attributes[1], "r").encode("utf-8")
    if not _PRINTABLE.fullmatch(nonce):
        raise _Failed("Malformed SCRAM nonce")
    username = _prepared_name(name)
    if authzid and _saslname(_attribute(authzid, "a")) not in (name, username):
        raise _Failed("Proxy authorization is not supported")
    header = (text[: len(text) - len(bare)]).encode("utf-8")
    return _ClientFirst(flag, binding, header, bare.encode("utf-8"), username, nonce)


class ScramServer:
    """One SCRAM-SHA-256 or SCRAM-SHA-256-PLUS exchange.

    ``bindings`` are the connection's channel bindings (None where there is
    no TLS); ``nonce`` fixes the server's nonce, for tests built from the
    RFC's example dialogues.
    """

    def __init__(
        self,
        lookup: ScramLookup,
        *,
        plus: bool = False,
        bindings: ChannelBindings | None = None,
        nonce: bytes | None = None,
    ) -> None:
        self.name = SCHEME + ("-PLUS" if plus else "")
        self._lookup = lookup
        self._plus = plus
        self._bindings = bindings
        self._server_nonce = nonce if nonce is not None else _fresh_nonce()
        self._first: _ClientFirst | None = None
        self._secret: ScramSecret | None = None
        self._server_first = b""
        self._expected_binding = b""
        self._proved: ScramCredentials | None = None
        self._failed = False

    def start(self, initial_response: bytes | None) -> StepResult:
        if initial_response is None:
            return Challenge(b"")  # RFC 4422 5: a client-first mechanism
        return self.respond(initial_response)

    def respond(self, data: bytes) -> StepResult:
        if self._failed:
            return Refusal("Authentication failed")
        if self._first is None:
            try:
                return self._client_first(data)
            except _Failed as e:
                # Before the server's first message there is no SCRAM
                # message to carry an error: the exchange just fails.
                return Refusal(e.reason)
        if self._proved is None:
            try:
                return self._client_final(data)
            except _Failed as e:
                # RFC 5802 5.1: a server-final-message sent on failure
                # carries e=; the client answers it, and the login fails.
                self._failed = True
                return Challenge(b"e=" + (e.error or "other-error").encode("ascii"), failed=True)
        # RFC 4422 3.6 / RFC 3501 6.2.2: the answer to the additional data
        # with success is empty.
        if data:
            return Refusal("Unexpected data after the SCRAM exchange")
        return Credentials(self._proved)

    def _client_first(self, data: bytes) -> StepResult:
        first = _parse_client_first(data)
        offered = self._bindings.types() if self._bindings is not None else ()
        if self._plus:
            if first.flag != "p":
                raise _Failed(f"{self.name} needs channel binding (p=)")
            assert first.binding is not None
            if first.binding not in offered:
                raise _Failed(f"Unsupported channel binding type {first.binding}")
            assert self._bindings is not None
            binding = self._bindings.data(first.binding)
            if binding is None:
                raise _Failed(f"Unsupported channel binding type {first.binding}")
            self._expected_binding = first.gs2_header + binding
        else:
            if first.flag == "p":
                raise _Failed(f"Channel binding needs {SCHEME}-PLUS")
            if first.flag == "y" and offered:
                # RFC 5802 6: the client thought we cannot bind, but we
                # offered -PLUS: the mechanism list was tampered with.
                raise _Failed("Channel binding is supported: downgrade refused")
            self._expected_binding = first.gs2_header
        self._first = first
        d = self._lookup.scram_secret(first.username)
        return d.addCallback(self._server_first_message)

    def _server_first_message(self, secret: ScramSecret) -> Step:
        assert self._first is not None
        self._secret = secret
        salt = base64.b64encode(secret.salt)
        self._server_first = (
            (b"r=" + self._first.nonce + self._server_nonce + b",s=" + salt)
            + b",i="
            + str(secret.iterations).encode("ascii")
        )
        return Challenge(self._server_first)

    def _client_final(self, data: bytes) -> Step:
        assert self._first is not None and self._secret is not None
        without_proof, sep, proof_text = data.rpartition(b",p=")
        if not sep:
            raise _Failed("Malformed SCRAM client-final message", "invalid-encoding")
        try:
            attributes = without_proof.decode("utf-8").split(",")
        except UnicodeDecodeError:
            raise _Failed("SCRAM message is not UTF-8", "invalid-encoding") from None
        if any(part.startswith("m=") for part in attributes):
            raise _Failed("SCRAM extensions are not supported", "extensions-not-supported")
        if len(attributes) < 2 or not all(_ATTR_VAL.fullmatch(p) for p in attributes[2:]):
            raise _Failed("Malformed SCRAM client-final message", "invalid-encoding")
        binding = b64decode(_attribute(attributes[0], "c"))
        nonce = _attribute(attributes[1], "r").encode("utf-8")
        proof = b64decode(proof_text)
        if binding is None or proof is None or len(proof) != DIGEST_SIZE:
            raise _Failed("Malformed SCRAM client-final message", "invalid-encoding")
        if not hmac.compare_digest(nonce, self._first.nonce + self._server_nonce):
            raise _Failed("SCRAM nonce mismatch", "other-error")
        if not hmac.compare_digest(binding, self._expected_binding):
            raise _Failed("Channel bindings do not match", "channel-bindings-dont-match")
        auth_message = b",".join((self._first.bare, self._server_first, without_proof))
        proved = ScramCredentials(self._first.username.encode("utf-8"), auth_message, proof)
        if not proved.check(self._secret):
            raise _Failed("Invalid SCRAM proof", "invalid-proof")
        self._proved = proved
        return Challenge(b"v=" + base64.b64encode(server_signature(self._secret, auth_message)))


def _fresh_nonce() -> bytes:
    # base64 of 18 random bytes: 24 printable characters, no "," and no "=".
    return base64.b64encode(secrets.token_bytes(18))
