"""``[auth.oauth]``: its checks when the configuration is loaded, and the
token validator it describes.

Every problem is a :class:`~mailsrv.errors.ConfigError` naming the file,
the ``auth.oauth.*`` key and the reason, at load time (``mailsrv
check-config``, startup, SIGHUP), so a daemon never starts with OAuth
half-configured.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from typing import Any

from mailsrv.auth.claims import ClaimRules
from mailsrv.auth.oauth import ITokenValidator
from mailsrv.config import OAuthSection
from mailsrv.errors import ConfigError

__all__ = ["build_token_validator", "check_oauth"]

_WHERE = "auth.oauth"


def _read(path: str, where: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(where, f"{_WHERE}.{key}", f"cannot read {path}: {e.strerror or e}") from e


def check_oauth(oauth: OAuthSection, where: str, check_files: bool = True) -> None:
    """What the validator needs is there and usable; ``where`` is the file
    to name in errors.  Files are read only with ``check_files``."""
    if oauth.validator == "jwt":
        _check_jwt(oauth, where, check_files)
    elif oauth.validator == "introspection":
        _check_introspection(oauth, where, check_files)
    if oauth.validator and not oauth.mechanisms:
        raise ConfigError(where, f"{_WHERE}.mechanisms", "empty: name OAUTHBEARER, XOAUTH2 or both")


def _check_jwt(oauth: OAuthSection, where: str, check_files: bool) -> None:
    from mailsrv.auth.jwt import MIN_SECRET_BYTES, load_public_key

    if (oauth.jwt_public_key is None) == (oauth.jwt_secret_file is None):
        raise ConfigError(
            where,
            f"{_WHERE}.jwt_public_key",
            "validator 'jwt' needs exactly one of jwt_public_key (a PEM public key for RS256 "
            "or ES256) and jwt_secret_file (a shared secret for HS256)",
        )
    if not check_files:
        return
    if oauth.jwt_public_key is not None:
        try:
            load_public_key(_read(oauth.jwt_public_key, where, "jwt_public_key"))
        except ValueError as e:
            raise ConfigError(
                where, f"{_WHERE}.jwt_public_key", f"{oauth.jwt_public_key}: {e}"
            ) from None
    if oauth.jwt_secret_file is not None:
        secret = _read(oauth.jwt_secret_file, where, "jwt_secret_file").strip()
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                where,
                f"{_WHERE}.jwt_secret_file",
                f"{oauth.jwt_secret_file}: an HS256 secret needs at least {MIN_SECRET_BYTES} bytes",
            )


def _check_introspection(oauth: OAuthSection, where: str, check_files: bool) -> None:
    key = f"{_WHERE}.introspection_url"
    url = urllib.parse.urlsplit(oauth.introspection_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(where, key, f"expected an http(s) URL, not {oauth.introspection_url!r}")
    if url.scheme == "http":
        try:
            loopback = ipaddress.ip_address(url.hostname).is_loopback
        except ValueError:
            loopback = url.hostname == "localhost"
        if not loopback:
            raise ConfigError(
                where,
                key,
                "must be https (http only to this machine): the client secret and the "
                "users' tokens would cross the network in clear",
            )
    if not oauth.client_id:
        raise ConfigError(where, f"{_WHERE}.client_id", "validator 'introspection' needs one")
    if bool(oauth.client_secret) == (oauth.client_secret_file is not None):
        raise ConfigError(
            where,
            f"{_WHERE}.client_secret",
            "give exactly one of client_secret and client_secret_file",
        )
    if oauth.client_secret_file is not None and check_files:
        if not _read(oauth.client_secret_file, where, "client_secret_file").strip():
            raise ConfigError(
                where, f"{_WHERE}.client_secret_file", f"{oauth.client_secret_file} is empty"
            )


def build_token_validator(
    oauth: OAuthSection, where: str, reactor: Any = None
) -> ITokenValidator | None:
    """The validator ``oauth`` configures, or None when it names none."""
    if not oauth.validator:
        return None
    check_oauth(oauth, where)
    default_claims = ("email", "sub") if oauth.validator == "jwt" else ("username", "email", "sub")
    rules = ClaimRules(
        user_claims=oauth.user_claims or default_claims,
        issuer=oauth.issuer,
        audience=oauth.audience,
        scope=oauth.scope,
        leeway=oauth.leeway,
        # RFC 7662 2.2: "exp" is optional in an answer, which is fresh anyway.
        require_exp=oauth.validator == "jwt",
    )
    if oauth.validator == "jwt":
        from mailsrv.auth.jwt import JWTValidator, load_public_key

        if oauth.jwt_public_key is not None:
            key = load_public_key(_read(oauth.jwt_public_key, where, "jwt_public_key"))
            return JWTValidator(rules, public_key=key)
        assert oauth.jwt_secret_file is not None
        secret = _read(oauth.jwt_secret_file, where, "jwt_secret_file").strip()
        return JWTValidator(rules, secret=secret)
    from mailsrv.auth.introspection import IntrospectionValidator

    client_secret = oauth.client_secret
    if oauth.client_secret_file is not None:
        raw = _read(oauth.client_secret_file, where, "client_secret_file")
        client_secret = raw.decode("utf-8", "replace").strip()
    return IntrospectionValidator(
        oauth.introspection_url,
        oauth.client_id,
        client_secret,
        rules,
        reactor=reactor,
        timeout=oauth.timeout,
        cache_seconds=oauth.cache_seconds,
        cache_size=oauth.cache_size,
    )
