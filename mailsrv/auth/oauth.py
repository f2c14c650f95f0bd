"""OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's older format): logins with
an OAuth 2.0 bearer token, checked by a pluggable :class:`ITokenValidator`.

The mechanisms are I/O-free state machines like the others; the validator
does the I/O (an introspection request, :mod:`mailsrv.auth.introspection`)
or none (a signed JWT, :mod:`mailsrv.auth.jwt`) and answers with a
Deferred.  A refused token is answered as RFC 7628 3.2.2 says: an error
challenge carrying a JSON status, the client's dummy response, then the
failure (XOAUTH2 the same, with Google's JSON).

The Portal then gets :class:`TokenCredentials`; the users' checker asks the
validator again (it caches) and accepts only a user it knows, so a token
for someone without an account here opens nothing.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs
from twisted.cred.credentials import ICredentials
from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from mailsrv.auth.mechanism import Challenge, Credentials, Refusal, Step, StepResult

__all__ = [
    "MECHANISMS",
    "ITokenCredentials",
    "ITokenValidator",
    "OAuthBearer",
    "OAuthErrorInfo",
    "TokenCredentials",
    "TokenRefused",
    "XOAuth2",
    "create",
]

#: The mechanisms of this module, in the order they are offered.
MECHANISMS = ("OAUTHBEARER", "XOAUTH2")

_KVSEP = b"\x01"
_KEY = re.compile(rb"[A-Za-z]+")
# RFC 7628 3.1: value = *(VCHAR / SP / HTAB / CR / LF)
_VALUE = re.compile(rb"[\x21-\x7e \t\r\n]*")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")

# XOAUTH2 answers with HTTP status codes where OAUTHBEARER names the error.
_XOAUTH2_STATUS = {"invalid_request": "400", "invalid_token": "401", "insufficient_scope": "403"}


class TokenRefused(Exception):
    """A token that does not authorize the login.

    ``status`` is the error code of RFC 6750 3.1 (``invalid_token``,
    ``invalid_request``, ``insufficient_scope``) sent to the client; the
    message is for the log only.
    """

    def __init__(self, message: str, status: str = "invalid_token") -> None:
        super().__init__(message)
        self.status = status


class ITokenValidator(Interface):
    """Decides whether a bearer token lets someone log in, and as whom."""

    def validate(token: str, user: str | None) -> defer.Deferred[str]:  # noqa: N805
        """Fire with the user name the token authorizes, or fail with
        :class:`TokenRefused`.  ``user`` is the name the client asked for
        (OAUTHBEARER's authzid, XOAUTH2's user), None if it named none: a
        token for anyone else is refused.  Any other failure (an
        unreachable endpoint) is a temporary one, not a wrong token."""


class ITokenCredentials(ICredentials):
    """A bearer token and the user it was validated for."""

    username = Attribute("The user name the token authorized (UTF-8 bytes).")
    token = Attribute("The bearer token (text).")


@implementer(ITokenCredentials)
@attrs.frozen(repr=False)
class TokenCredentials:
    username: bytes
    token: str

    def __repr__(self) -> str:
        return f"TokenCredentials({self.username!r}, <token>)"


@attrs.frozen
class OAuthErrorInfo:
    """What an error challenge tells the client beyond the status (RFC 7628
    3.2.2): the scope to ask for and where the provider's OpenID
    configuration is, when configured."""

    scope: str = ""
    openid_configuration: str = ""


def _kvpairs(data: bytes) -> dict[bytes, bytes] | None:
    """``*kvpair kvsep`` (``key=value^A...^A``) into a dict; None if
    malformed.  Unknown keys are kept, for the callers to ignore (RFC 7628
    3.1); a repeated key keeps its first value."""
    if not data.endswith(_KVSEP):
        return None
    body = data[:-1]
    if not body:
        return {}
    if not body.endswith(_KVSEP):
        return None
    pairs: dict[bytes, bytes] = {}
    for item in body[:-1].split(_KVSEP):
        key, eq, value = item.partition(b"=")
        if not eq or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            return None
        pairs.setdefault(key, value)
    return pairs


def _bearer_token(pairs: dict[bytes, bytes]) -> str | None:
    match = _BEARER.fullmatch(pairs.get(b"auth", b"").decode("ascii"))
    return match.group(1) if match else None


def _saslname(value: str) -> str | None:
    """An authzid with its ``=2C`` / ``=3D`` escapes undone (RFC 5801 4)."""
    if re.search(r"=(?!2C|3D)", value):
        return None
    return value.replace("=2C", ",").replace("=3D", "=")


class _TokenMechanism:
    """What OAUTHBEARER and XOAUTH2 share: the token's validation, the
    error challenge and the dummy response after it."""

    name = ""

    def __init__(self, validator: ITokenValidator, info: OAuthErrorInfo | None = None) -> None:
        self._validator = validator
        self._info = info or OAuthErrorInfo()
        self._failed = False
        self._started = False

    def start(self, initial_response: bytes | None) -> StepResult:
        if initial_response is None:
            return Challenge(b"")
        return self.respond(initial_response)

    def respond(self, data: bytes) -> StepResult:
        if self._failed:
            # RFC 7628 3.2.3: the dummy response (or anything) ends it.
            return Refusal("Authentication failed")
        if self._started:
            return Refusal("Unexpected data in the OAuth exchange")
        self._started = True
        parsed = self._parse(data)
        if isinstance(parsed, Refusal):
            return parsed
        token, user = parsed
        if token is None:
            # RFC 7628 4.3: an empty "auth" (a client asking what scope to
            # get) is answered invalid_token.
            return self._error_challenge("invalid_token")
        d = defer.maybeDeferred(self._validator.validate, token, user)
        return d.addCallbacks(self._validated, self._refused, callbackArgs=(token,))

    def _parse(self, data: bytes) -> tuple[str | None, str | None] | Refusal:
        """(token, user asked for), or a Refusal for a malformed message."""
        raise NotImplementedError

    def _validated(self, user: str, token: str) -> Step:
        return Credentials(TokenCredentials(user.encode("utf-8"), token))

    def _refused(self, failure: Failure) -> Step | Failure:
        refused = failure.value
        if not isinstance(refused, TokenRefused):
            return failure  # not the client's fault: answered as unavailable
        return self._error_challenge(refused.status)

    def _error_challenge(self, status: str) -> Challenge:
        self._failed = True
        return Challenge(self._error_json(status), failed=True)

    def _error_json(self, status: str) -> bytes:
        raise NotImplementedError


class OAuthBearer(_TokenMechanism):
    """RFC 7628: ``gs2-header ^A kvpairs ^A`` with ``auth=Bearer token``."""

    name = "OAUTHBEARER"

    def _parse(self, data: bytes) -> tuple[str | None, str | None] | Refusal:
        if data == _KVSEP:
            # RFC 7628 3.1: a lone ^A as the first message may simply fail.
            return Refusal("Empty OAUTHBEARER message")
        header, sep, rest = data.partition(_KVSEP)
        parts = header.split(b",")
        if not sep or len(parts) != 3 or parts[2] != b"":
            return Refusal("Malformed OAUTHBEARER message")
        flag, authzid = parts[0], parts[1]
        if flag not in (b"n", b"y"):
            return Refusal("OAUTHBEARER does not support channel binding")
        user: str | None = None
        if authzid:
            if not authzid.startswith(b"a="):
                return Refusal("Malformed OAUTHBEARER message")
            try:
                user = _saslname(authzid[2:].decode("utf-8"))
            except UnicodeDecodeError:
                user = None
            if not user:
                return Refusal("Malformed OAUTHBEARER authorization identity")
        pairs = _kvpairs(rest)
        if pairs is None:
            return Refusal("Malformed OAUTHBEARER message")
        return _bearer_token(pairs), user

    def _error_json(self, status: str) -> bytes:
        body: dict[str, Any] = {"status": status}
        if self._info.scope:
            body["scope"] = self._info.scope
        if self._info.openid_configuration:
            body["openid-configuration"] = self._info.openid_configuration
        return json.dumps(body, separators=(",", ":")).encode("utf-8")


class XOAuth2(_TokenMechanism):
    """Google's XOAUTH2: ``user=name ^A auth=Bearer token ^A ^A``."""

    name = "XOAUTH2"

    def _parse(self, data: bytes) -> tuple[str | None, str | None] | Refusal:
        pairs = _kvpairs(data)
        if pairs is None or not pairs.get(b"user"):
            return Refusal("Malformed XOAUTH2 message")
        try:
            user = pairs[b"user"].decode("utf-8")
        except UnicodeDecodeError:
            return Refusal("XOAUTH2 user name is not UTF-8")
        return _bearer_token(pairs), user

    def _error_json(self, status: str) -> bytes:
        body: dict[str, Any] = {"status": _XOAUTH2_STATUS.get(status, "401"), "schemes": "Bearer"}
        if self._info.scope:
            body["scope"] = self._info.scope
        return json.dumps(body, separators=(",", ":")).encode("utf-8")


def create(
    name: str, validator: ITokenValidator, info: OAuthErrorInfo | None = None
) -> _TokenMechanism | None:
    """A fresh OAUTHBEARER or XOAUTH2 exchange, or None for another name."""
    if name == "OAUTHBEARER":
        return OAuthBearer(validator, info)
    if name == "XOAUTH2":
        return XOAuth2(validator, info)
    return None
