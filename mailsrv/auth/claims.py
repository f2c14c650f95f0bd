"""What a token's claims must say before its bearer may log in: the rules
the JWT and the introspection validators share.

The claims are a JWT's payload (RFC 7519 4.1) or an introspection answer
(RFC 7662 2.2), which use the same names for the same things: ``exp``,
``nbf``, ``iss``, ``aud``, ``scope`` and the user's name in ``sub``,
``email`` or ``username``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from mailsrv.auth.oauth import TokenRefused

__all__ = ["ClaimRules"]


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TokenRefused(f"claim {name!r} is not a number")
    return float(value)


@attrs.frozen
class ClaimRules:
    """``user_claims`` name the user, first present wins; an ``issuer``,
    ``audience`` or ``scope`` that is set must be in the token; ``leeway``
    seconds of clock skew are allowed on ``exp`` and ``nbf``; ``require_exp``
    refuses a token that never expires."""

    user_claims: tuple[str, ...] = ("email", "sub")
    issuer: str = ""
    audience: str = ""
    scope: str = ""
    leeway: float = 60.0
    require_exp: bool = True

    def authorized_user(self, claims: Mapping[str, Any], user: str | None, now: float) -> str:
        """The user the claims authorize (``user``, when the client named
        one); TokenRefused saying why not."""
        self._check_time(claims, now)
        self._check_audience(claims)
        return self._user(claims, user)

    def _check_time(self, claims: Mapping[str, Any], now: float) -> None:
        expires = _number(claims, "exp")
        if expires is None and self.require_exp:
            raise TokenRefused("the token has no expiry (exp)")
        if expires is not None and now > expires + self.leeway:
            raise TokenRefused("the token has expired")
        not_before = _number(claims, "nbf")
        if not_before is not None and now + self.leeway < not_before:
            raise TokenRefused("the token is not valid yet (nbf)")

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        """Issuer, audience and scope, those that are configured."""
        if self.issuer and claims.get("iss") != self.issuer:
            raise TokenRefused(f"the token was issued by {claims.get('iss')!r}")
        if self.audience:
            audience = claims.get("aud")
            audiences = audience if isinstance(audience, list) else [audience]
            if self.audience not in audiences:
                raise TokenRefused(f"the token is meant for {audience!r}")
        if self.scope:
            granted = claims.get("scope", claims.get("scp", ""))
            scopes = granted.split() if isinstance(granted, str) else granted
            if not isinstance(scopes, list) or self.scope not in scopes:
                raise TokenRefused("the token lacks the scope", "insufficient_scope")

    def _user(self, claims: Mapping[str, Any], user: str | None) -> str:
        for name in self.user_claims:
            value = claims.get(name)
            if isinstance(value, str) and value:
                break
        else:
            raise TokenRefused(f"the token names no user ({', '.join(self.user_claims)})")
        if user is not None and user != value:
            raise TokenRefused(f"the token is for {value!r}, not {user!r}")
        return value
