"""Configuration: a TOML file loaded into validated attrs objects.

Every problem is reported as one :class:`~mailsrv.errors.ConfigError` naming
the file, the key and the reason (``etc/mailsrv.toml: imap.listen[0]: ...``),
so an administrator never has to read a traceback.  Command-line options
(``--imap``, ``--passwd``, ...) override the file key by key and are
validated by the same rules; their errors name the option.

Relative paths are resolved against the working directory at load time, the
way ``twistd`` and shells treat them, and stored absolute.

The sections are declared in :mod:`mailsrv.config_sections`, single values
converted and checked in :mod:`mailsrv.config_values`, and the whole
(listeners, files, keys that depend on one another) checked in
:mod:`mailsrv.config_checks`; this module loads a file through them all and
is where the rest of mailsrv imports them from.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Any

import attrs

from mailsrv.config_checks import (
    _check_auth,
    _check_files,
    _check_listeners,
    _check_metrics,
    _check_tls,
    _check_workers,
    cpu_count,
    describe,
    redact_dsn,
    resolved_workers,
)
from mailsrv.config_sections import (
    _MAX_SOCKET_PATH,
    DEFAULT_ADMIN_SOCKET,
    MAX_WORKERS,
    OVERRIDES,
    TLS_PROFILES,
    AdminSection,
    AuthSection,
    Config,
    LimitsSection,
    Listener,
    ListenSection,
    LMTPSection,
    LoggingSection,
    MetricsSection,
    OAuthSection,
    QuotaSection,
    ServerSection,
    SNICertificate,
    StorageSection,
    TimeoutsSection,
    TLSSection,
    UsersSection,
)
from mailsrv.config_sections import (
    _SECTIONS as _SECTIONS,  # tests walk the sections through this module
)
from mailsrv.config_values import (
    _CONVERTERS,
    COMMAND_LINE,
    DEFAULT_CIPHERS,
    _check_postgresql,
    _check_template,
    _error,
    _Errors,
    _type_name,
    _WrongType,
)
from mailsrv.errors import ConfigError

__all__ = [
    "COMMAND_LINE",
    "DEFAULT_ADMIN_SOCKET",
    "DEFAULT_CIPHERS",
    "MAX_WORKERS",
    "OVERRIDES",
    "TLS_PROFILES",
    "AdminSection",
    "AuthSection",
    "Config",
    "ConfigError",
    "LMTPSection",
    "LimitsSection",
    "ListenSection",
    "Listener",
    "LoggingSection",
    "MetricsSection",
    "OAuthSection",
    "QuotaSection",
    "SNICertificate",
    "ServerSection",
    "StorageSection",
    "TLSSection",
    "TimeoutsSection",
    "UsersSection",
    "cpu_count",
    "describe",
    "format_error",
    "load_config",
    "redact_dsn",
    "resolved_workers",
]


def _convert(value: Any, annotation: str, where: str) -> Any:
    """Check ``value`` against a field's annotation; return the stored form."""
    if annotation == "tuple[SNICertificate, ...]":
        return _sni_certificates(value, where)
    converter = _CONVERTERS.get(annotation)
    if converter is None:
        raise AssertionError(f"no converter for {annotation}")
    try:
        return converter(value)
    except _WrongType as e:
        raise _error(where, f"expected {e}, got {_type_name(value)} {value!r}") from None


def _sni_certificates(value: Any, where: str) -> tuple[SNICertificate, ...]:
    """``[[tls.sni]]`` tables: each a ``certificate`` and a ``key`` path."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise _error(
            where,
            f"expected tables ([[{where}]] with certificate and key), got {_type_name(value)}",
        )
    pairs = []
    for i, table in enumerate(value):
        here = f"{where}[{i}]"
        if not isinstance(table, dict):
            raise _error(
                here, f"expected a table with certificate and key, got {_type_name(table)}"
            )
        unknown = sorted(set(table) - {"certificate", "key"})
        if unknown:
            raise _error(f"{here}.{unknown[0]}", "unknown key (known keys: certificate, key)")
        paths = []
        for name in ("certificate", "key"):
            path = table.get(name)
            if not isinstance(path, str) or not path:
                raise _error(f"{here}.{name}", "required: the path of a PEM file")
            paths.append(os.path.abspath(os.path.expanduser(path)))
        pairs.append(SNICertificate(*paths))
    return tuple(pairs)


def _build_section(
    name: str,
    cls: type,
    table: Mapping[str, Any],
    overrides: Mapping[str, tuple[str, Any]],
) -> Any:
    fields = {f.name: f for f in attrs.fields(cls)}
    for key in table:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise _error(f"{name}.{key}", f"unknown key (known keys of [{name}]: {known})")
    values: dict[str, Any] = {}
    for key, field in fields.items():
        if key in overrides:
            where, raw = overrides[key]
        elif key in table:
            where, raw = f"{name}.{key}", table[key]
        else:
            continue
        values[key] = _field_value(field, raw, where)
    if name == "storage":
        _check_storage(values, overrides)
    return cls(**values)


def _check_storage(values: dict[str, Any], overrides: Mapping[str, tuple[str, Any]]) -> None:
    """[storage]: the Maildir path template, the PostgreSQL DSN."""
    if "maildir" in values:
        where = overrides.get("maildir", ("storage.maildir", None))[0]
        values["maildir"] = _check_template(values["maildir"], where)
    if values.get("backend") == "postgresql":
        _check_postgresql(values.get("dsn", ""))


def _field_value(field: Any, raw: Any, where: str) -> Any:
    """One key's value, converted and checked as its field's metadata says;
    a table inside a section (``[auth.oauth]``) is built as a section."""
    inner = field.metadata.get("section")
    if inner is not None:
        if not isinstance(raw, dict):
            raise _error(where, f"expected a table [{where}], got {_type_name(raw)}")
        return _build_section(where, inner, raw, {})
    value = _convert(raw, str(field.type), where)
    check = field.metadata.get("check")
    if check is not None and value is not None:
        problem = check(value)
        if problem:
            raise _error(where, problem)
    if field.metadata.get("path") and isinstance(value, str):
        if not value:
            raise _error(where, "must not be empty")
        value = os.path.abspath(os.path.expanduser(value))
    return value


def _admin_section(section: AdminSection) -> AdminSection:
    """``[admin] socket`` made absolute, and short enough for a Unix socket."""
    if not section.socket:
        return section
    path = os.path.abspath(os.path.expanduser(section.socket))
    if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        raise _error(
            "admin.socket",
            f"{path} is longer than the {_MAX_SOCKET_PATH} bytes a Unix socket's path may have",
        )
    return attrs.evolve(section, socket=path)


def load_config(
    path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    check_files: bool = True,
    require_listeners: bool = True,
) -> Config:
    """Read, validate and return the configuration.

    ``overrides`` maps option names of :data:`OVERRIDES` (``imap``,
    ``passwd``, ...) to values; ``None`` values and empty lists are ignored.
    With ``check_files`` false, referenced files need not exist yet (the
    ``mailsrv user add`` command creates the users file); admin commands
    also pass ``require_listeners=False``.
    """
    _Errors.path = path or COMMAND_LINE
    data = _read_file(path) if path is not None else {}
    by_section = _overrides_by_section(overrides or {})
    sections = {
        name: _build_section(name, cls, data.get(name, {}), by_section.get(name, {}))
        for name, cls in _SECTIONS.items()
    }
    sections["admin"] = _admin_section(sections["admin"])
    from_command_line = {
        f"{section}.{key}": origin
        for section, keys in by_section.items()
        for key, (origin, _value) in keys.items()
    }
    config = Config(
        path=os.path.abspath(path) if path else None,
        from_command_line=from_command_line,
        **sections,
    )
    _check_auth(config)
    _check_workers(config)
    _check_tls(config)
    _check_metrics(config)
    from mailsrv.auth.oauth_config import check_oauth

    check_oauth(config.auth.oauth, _Errors.path, check_files)
    _check_listeners(config, require_listeners)
    if check_files:
        _check_files(config)
    return config


def _read_file(path: str) -> dict[str, Any]:
    """The TOML file's tables, each a known section."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        # tomllib decodes the whole file first; TOML is UTF-8 (TOML 1.0).
        raise ConfigError(
            path, "", f"not valid TOML: not UTF-8 (octet {e.object[e.start]:#04x} at {e.start})"
        ) from None
    for name, value in data.items():
        if name not in _SECTIONS:
            raise _error(name, f"unknown section (known: {', '.join(_SECTIONS)})")
        if not isinstance(value, dict):
            raise _error(name, f"expected a table [{name}], got {_type_name(value)}")
    return data


def _overrides_by_section(
    overrides: Mapping[str, Any],
) -> dict[str, dict[str, tuple[str, Any]]]:
    """Command-line values by section and key, each with its option's name;
    None and empty lists are no value."""
    by_section: dict[str, dict[str, tuple[str, Any]]] = {}
    for option, value in overrides.items():
        if option not in OVERRIDES:
            raise AssertionError(f"unknown override {option!r}")
        if value is None or value == [] or value == ():
            continue
        section, key = OVERRIDES[option]
        by_section.setdefault(section, {})[key] = ("--" + option.replace("_", "-"), value)
    return by_section


def format_error(error: ConfigError) -> str:
    """The one line printed when startup is refused."""
    return f"mailsrv: configuration error: {error}"
