"""Configuration values one at a time: type conversion and the checks of
single keys (ranges, choices, cipher strings, users, groups, path templates,
DSNs), which the sections in :mod:`mailsrv.config_sections` declare in their
field metadata.

Errors are :class:`~mailsrv.errors.ConfigError` built by :func:`_error`,
which names the file being loaded (:class:`_Errors`) or the option.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mailsrv.errors import ConfigError

COMMAND_LINE = "command line"


class _Errors:
    """Carries the file name into nested helpers."""

    path = ""


def _error(key: str, reason: str) -> ConfigError:
    """An error at ``key``: a file key, or an option (``--imap[0]``)."""
    return ConfigError(COMMAND_LINE if key.startswith("--") else _Errors.path, key, reason)


def _check_range(
    low: float | None = None, high: float | None = None
) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if low is not None and value < low:
            return f"must be at least {low}, not {value}"
        if high is not None and value > high:
            return f"must be at most {high}, not {value}"
        return None

    return check


def _check_choice(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(map(repr, choices))}, not {value!r}"
        return None

    return check


def _meta(
    check: Callable[[Any], str | None] | None = None,
    path: bool = False,
    section: type | None = None,
) -> dict[str, Any]:
    """A field's checks: ``check`` the value, resolve it as a ``path``, or
    read it as a ``section`` of its own (a sub-table, ``[auth.oauth]``)."""
    return {"check": check, "path": path, "section": section}


def _check_networks(value: tuple[str, ...]) -> str | None:
    from mailsrv.proxy import parse_networks

    return parse_networks(value)[1]


def _check_id_name(value: str) -> str | None:
    # RFC 2971 3.3: a value is at most 1024 octets; it goes out quoted.
    if not value or len(value.encode("utf-8")) > 1024 or not value.isprintable():
        return f"must be 1 to 1024 octets of printable text, not {value!r}"
    return None


#: TLS 1.2 cipher suites by default: ECDHE key exchange (forward secrecy)
#: with an AEAD cipher only, as RFC 9325 4.1 and 4.2 recommend; no static
#: RSA, no CBC, no SHA-1.  TLS 1.3 suites are all AEAD and forward secret,
#: and this list does not touch them.
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _check_ciphers(value: str) -> str | None:
    """An OpenSSL cipher string that selects some TLS 1.2 suite and no
    suite without authentication or encryption."""
    # Imported here: only a file that sets tls.ciphers pays for it.
    from OpenSSL import SSL

    def expand(ciphers: str) -> list[str]:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_cipher_list(ciphers.encode("ascii"))
        # TLS 1.3 suites (TLS_*) are listed whatever the string says.
        return [
            c for c in SSL.Connection(context, None).get_cipher_list() if not c.startswith("TLS_")
        ]

    if not value.isascii() or not value.strip():
        return f"not an OpenSSL cipher string: {value!r}"
    try:
        selected = expand(value)
    except SSL.Error:
        selected = []
    if not selected:
        return (
            f"{value!r} selects no TLS 1.2 cipher suite this OpenSSL knows "
            f"(the default is {DEFAULT_CIPHERS!r}; `openssl ciphers -v STRING` lists a selection)"
        )
    unsafe = sorted(set(selected) & set(expand("aNULL:eNULL")))
    if unsafe:
        return (
            f"{value!r} selects suites without authentication or encryption "
            f"({', '.join(unsafe[:5])}{', ...' if len(unsafe) > 5 else ''}); add ':!aNULL:!eNULL'"
        )
    return None


def _check_mode(value: int) -> str | None:
    if not 0 <= value <= 0o777:
        return (
            f"{value} is not a permission mode; write it in octal as TOML allows, "
            "e.g. 0o660 (not 660)"
        )
    return None


def _check_user(value: str) -> str | None:
    import pwd

    try:
        pwd.getpwnam(value)
    except KeyError:
        return f"no such user {value!r} on this system"
    return None


def _check_group(value: str) -> str | None:
    import grp

    try:
        grp.getgrnam(value)
    except KeyError:
        return f"no such group {value!r} on this system"
    return None


def _check_delimiter(value: str) -> str | None:
    if len(value) > 1 or value in ("@", "<", ">", " ", '"', "\\"):
        return f"must be one character (such as '+' or '-') or empty to turn it off, not {value!r}"
    return None


_TOKEN_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")


def _check_mechanisms(value: tuple[str, ...]) -> str | None:
    for name in value:
        if name not in _TOKEN_MECHANISMS:
            return f"unknown mechanism {name!r} (known: {', '.join(_TOKEN_MECHANISMS)})"
    return None


def _check_size(value: str) -> str | None:
    from mailsrv.quota import parse_size

    if value == "":
        return None
    try:
        parse_size(value)
    except ValueError as e:
        return str(e)
    return None


def _type_name(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class _WrongType(Exception):
    """A value of another type than the field's; the message says what was expected."""


def _to_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _WrongType("true or false")
    return value


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _WrongType("an integer")
    return value


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _WrongType("a number")
    return float(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _WrongType("a string")
    return value


def _to_strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _WrongType("a list of strings")
    return tuple(value)


#: The converter for each field annotation the sections use.
_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "bool": _to_bool,
    "int": _to_int,
    "int | None": _to_int,
    "float": _to_float,
    "str": _to_str,
    "str | None": _to_str,
    "tuple[str, ...]": _to_strings,
}


def _check_postgresql(dsn: str, section: str = "storage", other: str = "") -> None:
    """The PostgreSQL backend needs psycopg and a DSN libpq can parse.

    Only the syntax is checked here; whether the server is reachable and
    its schema current is checked when the daemon starts.  ``other`` names
    a key whose value would have been used instead of an empty ``dsn``.
    """
    try:
        from psycopg import ProgrammingError, conninfo
    except ImportError:
        raise _error(
            f"{section}.backend",
            "'postgresql' needs psycopg 3, which is not installed: "
            "pip install 'mailsrv[postgresql]'",
        ) from None
    if not dsn:
        instead = f" (or set {other})" if other else ""
        raise _error(
            f"{section}.dsn",
            f"required when {section}.backend is 'postgresql'{instead}: a libpq connection "
            "string ('host=/run/postgresql dbname=mail') or a postgresql:// URI",
        )
    try:
        conninfo.conninfo_to_dict(dsn)
    except ProgrammingError as e:
        raise _error(f"{section}.dsn", f"not a valid PostgreSQL connection string: {e}") from None


def _check_template(template: str, where: str) -> str:
    """Validate a Maildir path template; return it with a relative path made
    absolute (a template starting with {home} is absolute once filled in)."""
    if "{user}" not in template and "{home}" not in template:
        raise _error(where, f"path template {template!r} must contain {{user}} or {{home}}")
    try:
        template.format(user="u", home="/h")
    except (KeyError, IndexError, ValueError) as e:
        raise _error(
            where, f"bad path template {template!r}: only {{user}} and {{home}} allowed ({e})"
        ) from e
    if template.startswith("{home}"):
        return template
    return os.path.abspath(os.path.expanduser(template))
