"""SASL mechanisms of the embedding application, twisted.mail style.

twisted.mail's servers take a ``challengers`` mapping: a mechanism name ->
a callable (usually a class such as ``twisted.cred.credentials.
CramMD5Credentials``) that makes one credentials object per attempt.  That
object speaks ``twisted.mail.interfaces.IChallengeResponse``
(``getChallenge()``, ``setResponse(data)``, ``moreChallenges()``) and, once
the exchange is over, is itself what goes to ``Portal.login``.
:class:`ChallengerMechanism` runs such an object as a
:class:`mailsrv.auth.sasl.Mechanism`, so IMAP AUTHENTICATE and POP3 AUTH
offer it beside mailsrv's own mechanisms (``SessionPolicy(challengers=...)``).

Only the object's three methods are used; no twisted.mail import is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.interfaces import IAddress

from mailsrv.auth import sasl
from mailsrv.auth.channel import ChannelBindings

__all__ = ["ChallengerMechanism", "create", "normalise", "offered"]


class _Policy(Protocol):
    def plaintext_allowed(self, peer: IAddress | None, secure: bool) -> bool: ...

    @property
    def challenge_auth_available(self) -> Callable[[], bool]: ...

    @property
    def challengers(self) -> Mapping[str, Callable[[], Any]]: ...

    @property
    def hostname(self) -> str: ...

    @property
    def sasl(self) -> sasl.SaslServices | None: ...


def normalise(challengers: Mapping[str | bytes, Callable[[], Any]]) -> dict[str, Callable[[], Any]]:
    """The mapping with upper-case ``str`` names (twisted.mail's are bytes)."""
    result: dict[str, Callable[[], Any]] = {}
    for name, factory in challengers.items():
        text = name.decode("ascii") if isinstance(name, bytes) else name
        result[text.upper()] = factory
    return result


class ChallengerMechanism:
    """One exchange with an ``IChallengeResponse`` credentials object.

    Such a mechanism always begins with a challenge (``getChallenge()``); an
    empty first challenge (PLAIN-like) means a client's initial response
    (SASL-IR, RFC 4959) answers it, anything else refuses one.
    """

    def __init__(self, name: str, factory: Callable[[], Any]) -> None:
        self.name = name
        self._credentials = factory()

    def start(self, initial_response: bytes | None) -> sasl.Step:
        try:
            challenge = self._challenge()
        except Exception as e:
            return sasl.Refusal(f"{self.name} cannot start: {e}")
        if initial_response is None:
            return sasl.Challenge(challenge)
        if challenge:
            return sasl.Refusal(f"{self.name} does not take an initial response")
        return self.respond(initial_response)

    def respond(self, data: bytes) -> sasl.Step:
        credentials = self._credentials
        try:
            credentials.setResponse(data)
            if credentials.moreChallenges():
                return sasl.Challenge(self._challenge())
        except Exception as e:
            # twisted.mail raises IllegalClientResponse for a malformed answer.
            return sasl.Refusal(f"Malformed {self.name} response: {e}")
        return sasl.Credentials(credentials)

    def _challenge(self) -> bytes:
        challenge = self._credentials.getChallenge()
        return challenge.encode("utf-8") if isinstance(challenge, str) else bytes(challenge)


def offered(
    policy: _Policy,
    secure: bool,
    peer: IAddress | None,
    bindings: ChannelBindings | None = None,
) -> list[str]:
    """mailsrv's mechanisms for this connection, then the application's
    (``bindings``: the connection's TLS channel bindings, for -PLUS).

    An application's PLAIN or LOGIN carries the password too, so it obeys
    the plaintext policy as mailsrv's own do; any other name it gives is
    offered everywhere (the application chose it).
    """
    own = sasl.mechanisms(policy, secure, peer, bindings)
    extra = policy.challengers
    if not extra:
        return own
    plaintext = policy.plaintext_allowed(peer, secure)
    names = [name for name in own if name not in extra]
    for name in extra:
        if name in sasl.PLAINTEXT_MECHANISMS and not plaintext:
            continue
        names.append(name)
    return names


def create(
    policy: _Policy, name: str, bindings: ChannelBindings | None = None
) -> sasl.Mechanism | None:
    """A fresh mechanism for ``name``: the application's if it gave one,
    else mailsrv's (None if neither knows it, or it lacks the services it
    needs)."""
    factory = policy.challengers.get(name.upper())
    if factory is not None:
        return ChallengerMechanism(name.upper(), factory)
    return sasl.create(name, policy.hostname, services=policy.sasl, bindings=bindings)
