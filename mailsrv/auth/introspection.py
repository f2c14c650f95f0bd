"""A token validator that asks the authorization server (OAuth 2.0 Token
Introspection, RFC 7662).

The request is made with Twisted's HTTP client, so the reactor never waits
on the network; it gives up after ``timeout`` seconds.  The client
authenticates with HTTP Basic (RFC 6749 2.3.1).  An active token's answer
is remembered for ``cache_seconds`` (never past its ``exp``), so a client
that logs in again, and the checker confirming what the mechanism found,
cost no second request.  An endpoint that cannot be reached, or answers
anything but 200 with a JSON object, is a temporary failure (IMAP
``NO [UNAVAILABLE]``), never a refused token.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from mailsrv.auth.claims import ClaimRules
from mailsrv.auth.oauth import ITokenValidator, TokenRefused
from mailsrv.errors import TemporaryFailure
from mailsrv.log import get_logger

__all__ = ["IntrospectionValidator"]

_log = get_logger(__name__)

#: An introspection answer is a small JSON object; more is refused.
MAX_ANSWER = 64 * 1024


@implementer(ITokenValidator)
class IntrospectionValidator:
    """Asks ``url`` about each token, as ``client_id``/``client_secret``."""

    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        rules: ClaimRules,
        *,
        reactor: Any = None,
        agent: IAgent | None = None,
        timeout: float = 5.0,
        cache_seconds: float = 60.0,
        cache_size: int = 10000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.url = url
        self.rules = rules
        self._reactor: IReactorTime = reactor
        # Twisted's web client carries no annotations: the ignores are for that.
        self._agent: IAgent = (
            agent if agent is not None else Agent(reactor)  # type: ignore[no-untyped-call,unused-ignore]
        )
        pair = f"{_form(client_id)}:{_form(client_secret)}".encode()
        self._authorization = b"Basic " + base64.b64encode(pair)
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[dict[str, Any], float]] = OrderedDict()

    def validate(self, token: str, user: str | None) -> defer.Deferred[str]:
        key = hashlib.sha256(token.encode("utf-8")).digest()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            self._cache.move_to_end(key)
            return defer.maybeDeferred(self.rules.authorized_user, cached[0], user, now)
        d = self._ask(token)
        return d.addCallback(self._answered, key, user)

    def _answered(self, claims: dict[str, Any], key: bytes, user: str | None) -> str:
        if claims.get("active") is not True:
            raise TokenRefused("the authorization server says the token is not active")
        now = self._clock()
        authorized = self.rules.authorized_user(claims, user, now)
        until = now + self._cache_seconds
        expires = claims.get("exp")
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            until = min(until, float(expires))
        if self._cache_size > 0 and until > now:
            self._cache[key] = (claims, until)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return authorized

    def _ask(self, token: str) -> defer.Deferred[dict[str, Any]]:
        body = urllib.parse.urlencode({"token": token, "token_type_hint": "access_token"})
        headers = Headers(
            {
                b"Authorization": [self._authorization],
                b"Content-Type": [b"application/x-www-form-urlencoded"],
                b"Accept": [b"application/json"],
                b"User-Agent": [b"mailsrv"],
            }
        )
        producer = FileBodyProducer(io.BytesIO(body.encode("ascii")))  # type: ignore[no-untyped-call,unused-ignore]
        d: defer.Deferred[Any] = self._agent.request(
            b"POST", self.url.encode("ascii"), headers, producer
        )
        d.addCallback(self._read)
        # Cancelling the request fails it with the client's own wrapper of
        # CancelledError, which addTimeout does not recognise: say it here.
        d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=_timed_out)
        return d.addErrback(self._unreachable)

    def _read(self, response: Any) -> defer.Deferred[dict[str, Any]]:
        if response.code != 200:
            readBody(response).addErrback(lambda _: None)  # drained, dropped
            raise TemporaryFailure(
                f"the introspection endpoint answered HTTP {response.code}"
                + (" (are client_id and client_secret right?)" if response.code == 401 else "")
            )
        length = response.length
        if isinstance(length, int) and length > MAX_ANSWER:
            raise TemporaryFailure("the introspection endpoint's answer is too long")
        d: defer.Deferred[bytes] = readBody(response)
        return d.addCallback(_claims)

    def _unreachable(self, failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, TokenRefused):
            return failure
        if isinstance(error, TemporaryFailure):
            _log.warn("OAuth: {e}", e=error)
            return failure
        if isinstance(error, defer.TimeoutError):
            reason = f"did not answer within {self._timeout:g} seconds"
        else:
            reason = f"cannot be reached: {failure.getErrorMessage()}"
        _log.warn("OAuth: the introspection endpoint {url} {reason}", url=self.url, reason=reason)
        return Failure(TemporaryFailure(f"the introspection endpoint {reason}"))  # type: ignore[no-untyped-call,unused-ignore]


def _timed_out(result: object, timeout: float) -> Failure:
    return Failure(defer.TimeoutError(f"no answer within {timeout} seconds"))  # type: ignore[no-untyped-call,unused-ignore]


def _form(text: str) -> str:
    """RFC 6749 2.3.1: client credentials are form-encoded before Basic."""
    return urllib.parse.quote_plus(text)


def _claims(body: bytes) -> dict[str, Any]:
    if len(body) > MAX_ANSWER:
        raise TemporaryFailure("the introspection endpoint's answer is too long")
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise TemporaryFailure("the introspection endpoint's answer is not JSON") from None
    if not isinstance(value, dict):
        raise TemporaryFailure("the introspection endpoint's answer is not a JSON object")
    return value
