"""Checks of the loaded configuration as a whole: keys that depend on one
another (TLS, users database, workers), listeners (endpoints, clashing
ports and socket paths, TLS), referenced files; and :func:`describe`, the
summary ``mailsrv check-config`` prints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import attrs

from mailsrv.config_sections import Config, Listener
from mailsrv.config_values import _check_postgresql, _error

#: Endpoint strings are parsed for validation only, never listened on here;
#: importing the reactor at load time would pre-empt twistd's --reactor.
_NO_REACTOR: Any = None

#: Interfaces that mean "every address": they clash with any interface.
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def _check_tls(config: Config) -> None:
    """What the profile excludes cannot be asked for, and extra
    certificates need the default one (for clients that send no name)."""
    tls = config.tls
    if tls.profile == "modern" and tls.min_version == "1.2":
        raise _error(
            "tls.min_version",
            "profile 'modern' is TLS 1.3 only; set tls.profile = 'intermediate' to accept 1.2",
        )
    if tls.ciphers is not None and tls.minimum_version == "1.3":
        raise _error(
            "tls.ciphers",
            "TLS 1.2 suites have no use when TLS 1.3 is the minimum "
            f"(tls.profile = {tls.profile!r}, tls.min_version = {tls.min_version!r}); "
            "TLS 1.3 suites are all forward-secret AEAD",
        )
    if tls.sni and tls.certificate is None:
        raise _error(
            "tls.sni",
            "needs tls.certificate and tls.key: the certificate for clients that send no name",
        )


def _check_auth(config: Config) -> None:
    """Users in PostgreSQL need a database: [auth] dsn, or else [storage] dsn's."""
    auth = config.auth
    if auth.backend != "postgresql":
        return
    if auth.dsn:
        _check_postgresql(auth.dsn, "auth")
    else:
        _check_postgresql(config.storage.dsn, "auth", "storage.dsn")


def single_process_reason(config: Config) -> str | None:
    """Why the configuration needs one process whatever ``[server] workers``
    says (None: it does not).  Memory storage lives in one process; the
    metrics and the admin socket are the parent's, which gathers every
    worker's figures and sessions (:mod:`mailsrv.workers`)."""
    if config.storage.backend == "memory":
        return "storage.backend 'memory' lives in one process"
    return None


def _check_workers(config: Config) -> None:
    """Asking for several workers where one process is needed is an error
    (0, one per CPU, quietly means one there)."""
    reason = single_process_reason(config)
    if reason is None or config.server.workers <= 1:
        return
    raise _error(
        _origin(config, "server.workers"),
        f"storage.backend 'memory' keeps mail inside one process, so it cannot be shared "
        f"by {config.server.workers} workers; set workers to 1 (or use maildir or "
        "postgresql storage)",
    )


def _endpoint_address(endpoint: Any) -> tuple[str, int] | None:
    """(interface, port) of a TCP endpoint, for clash detection; else None."""
    port = getattr(endpoint, "_port", None)
    interface = getattr(endpoint, "_interface", "")
    if isinstance(port, int) and port != 0:
        return (interface if isinstance(interface, str) else "", port)
    return None


_SYSTEMD_DOMAINS = ("INET", "INET6", "UNIX")


def _systemd_problem(endpoint: str) -> str | None:
    """What is wrong with a ``systemd:`` endpoint string, checked without the
    inherited sockets.

    Twisted looks the socket up while parsing, so outside the service
    (``mailsrv check-config`` as systemd's ExecStartPre, which inherits no
    sockets) every systemd endpoint would look broken; the syntax is checked
    here instead, and the socket itself when the daemon starts.
    """
    params: dict[str, str] = {}
    for part in endpoint.split(":")[1:]:
        key, eq, value = part.partition("=")
        if not eq or key in params:
            return "expected systemd:domain=INET:index=N (or name=NAME)"
        params[key] = value
    unknown = set(params) - {"domain", "index", "name"}
    if unknown:
        return f"unknown parameter {sorted(unknown)[0]!r} (systemd takes domain, index or name)"
    if params.get("domain") not in _SYSTEMD_DOMAINS:
        return f"domain must be one of {', '.join(_SYSTEMD_DOMAINS)}"
    if ("index" in params) == ("name" in params):
        return "give exactly one of index=N or name=NAME"
    if "index" in params and not params["index"].isdigit():
        return f"index must be a number, not {params['index']!r}"
    if "name" in params and not params["name"]:
        return "name must not be empty"
    return None


def _check_listeners(config: Config, required: bool) -> None:
    listeners = config.listeners
    if not listeners and required:
        raise _error(
            "imap.listen",
            "no listeners configured: set imap.listen, imap.listen_tls, pop3.listen, "
            "pop3.listen_tls or lmtp.listen (or give --imap/--imaps/--pop3/--pop3s/--lmtp)",
        )
    seen: dict[tuple[str, int], Listener] = {}
    paths: dict[str, Listener] = {}
    # The metrics endpoint is checked as a listener is: valid, on a port of its own.
    metrics = Listener("metrics", config.metrics.listen, False, "metrics.listen")
    for listener in [*listeners, metrics] if config.metrics.listen else listeners:
        listener = _without_proxy_mark(config, listener)
        if listener.endpoint.split(":", 1)[0] == "systemd":
            problem = _systemd_problem(listener.endpoint)
            if problem is not None:
                raise _error(listener.origin, f"{listener.endpoint!r}: {problem}")
            _check_tls_available(config, listener)
            continue
        endpoint = _parse_endpoint(listener)
        _claim_socket_path(listener, endpoint, paths)
        if listener.implicit_tls and listener.endpoint.split(":", 1)[0] in ("ssl", "tls"):
            raise _error(
                listener.origin,
                f"{listener.endpoint!r}: give a plain endpoint such as 'tcp:993'; "
                "mailsrv wraps it in TLS with the [tls] certificate",
            )
        address = _endpoint_address(endpoint)
        if address is None:
            continue
        _claim_port(listener, address, seen)
        _check_tls_available(config, listener)


def _without_proxy_mark(config: Config, listener: Listener) -> Listener:
    """``listener`` with its endpoint bare of ``haproxy:``, which needs
    trusted proxies and may be given once."""
    if listener.proxy and not config.server.trusted_proxies:
        raise _error(
            listener.origin,
            f"{listener.endpoint!r} expects PROXY headers: list the load balancers' "
            'addresses in server.trusted_proxies (e.g. ["10.0.0.10", "10.0.0.11"])',
        )
    if listener.bare_endpoint.startswith(Listener.PROXY_PREFIX):
        raise _error(listener.origin, f"{listener.endpoint!r}: 'haproxy:' given twice")
    return attrs.evolve(listener, endpoint=listener.bare_endpoint)


def _parse_endpoint(listener: Listener) -> Any:
    """The listener's endpoint, built without a reactor (nothing binds)."""
    # Imported here: it costs a fifth of a second, which `mailsrv
    # deliver`, run by the MTA once per message, should not pay.
    from twisted.internet import endpoints

    try:
        return endpoints.serverFromString(_NO_REACTOR, listener.endpoint)
    except Exception as e:  # Twisted raises assorted types for bad strings
        raise _error(
            listener.origin, f"not a valid endpoint string {listener.endpoint!r}: {e}"
        ) from e


def _claim_socket_path(listener: Listener, endpoint: Any, paths: dict[str, Listener]) -> None:
    """A Unix socket's path, unless another listener has it."""
    path = getattr(endpoint, "_address", None)  # a UNIX socket's path
    if not isinstance(path, str):
        return
    other = paths.get(os.path.abspath(path))
    if other is not None:
        raise _error(
            listener.origin,
            f"{listener.endpoint!r}: socket {path} is also used by {other.origin}",
        )
    paths[os.path.abspath(path)] = listener


def _claim_port(
    listener: Listener, address: tuple[str, int], seen: dict[tuple[str, int], Listener]
) -> None:
    """A TCP port, unless out of range or another listener's on the same
    interface (or either is a wildcard)."""
    interface, port = address
    if not 0 < port < 65536:
        raise _error(listener.origin, f"port {port} is out of range 1-65535")
    for (other_interface, other_port), other in seen.items():
        if other_port == port and (
            interface == other_interface
            or interface in _WILDCARD_HOSTS
            or other_interface in _WILDCARD_HOSTS
        ):
            raise _error(
                listener.origin,
                f"{listener.endpoint!r}: port {port} is also used by "
                f"{other.origin} ({other.endpoint!r})",
            )
    seen[address] = listener


def _check_tls_available(config: Config, listener: Listener) -> None:
    if listener.implicit_tls and not config.tls_enabled:
        raise _error(listener.origin, "implicit TLS listener needs tls.certificate and tls.key")


def _check_metrics(config: Config) -> None:
    """``[metrics] listen`` needs prometheus_client to serve it (the
    endpoint itself is checked with the listeners)."""
    import importlib.util

    if config.metrics.listen.startswith(Listener.PROXY_PREFIX):
        raise _error("metrics.listen", "the metrics endpoint takes no PROXY header")
    if config.metrics.listen and importlib.util.find_spec("prometheus_client") is None:
        raise _error(
            "metrics.listen",
            "serving metrics needs prometheus_client, which is not installed: "
            "pip install 'mailsrv[metrics]'",
        )


def _origin(config: Config, key: str) -> str:
    return config.from_command_line.get(key, key)


def _check_files(config: Config) -> None:
    tls = config.tls
    if (tls.certificate is None) != (tls.key is None):
        given, missing = (
            ("tls.certificate", "tls.key") if tls.key is None else ("tls.key", "tls.certificate")
        )
        if given in config.from_command_line:  # say it in the words the user typed
            option = {"tls.certificate": "--tls-cert", "tls.key": "--tls-key"}[missing]
            raise _error(option, "--tls-cert and --tls-key must be given together")
        raise _error(_origin(config, missing), "tls.certificate and tls.key must be given together")
    files: list[tuple[str, str | None]] = []
    if tls.certificate is not None and not tls.generate_self_signed:
        files += [("tls.certificate", tls.certificate), ("tls.key", tls.key)]
    for i, pair in enumerate(tls.sni):
        files += [(f"tls.sni[{i}].certificate", pair.certificate), (f"tls.sni[{i}].key", pair.key)]
    for key, path in files:
        assert path is not None
        if not os.path.isfile(path):
            raise _error(_origin(config, key), f"file not found: {path}")
        if not os.access(path, os.R_OK):
            raise _error(_origin(config, key), f"file not readable: {path}")
    users = config.users
    if config.auth.backend != "passwd-file":
        return  # users are in the database: no users file to find
    if not users.create_if_missing and not os.path.isfile(users.passwd_file):
        raise _error(_origin(config, "users.passwd_file"), f"file not found: {users.passwd_file}")


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolved_workers(config: Config) -> int:
    """How many reactor processes ``[server] workers`` asks for: 0 is one
    per CPU, except where :func:`single_process_reason` says one."""
    if single_process_reason(config) is not None:
        return 1
    return config.server.workers or cpu_count()


def redact_dsn(dsn: str) -> str:
    """A DSN fit for logs and output: its password replaced by ``***``."""
    try:
        from psycopg import conninfo

        params = conninfo.conninfo_to_dict(dsn)
    except Exception:
        return "(unparsable DSN)"
    if "password" in params:
        params["password"] = "***"
    return " ".join(f"{key}={value}" for key, value in params.items())


def describe(config: Config) -> Sequence[str]:
    """A short human summary, printed by ``mailsrv check-config``."""
    lines = [f"configuration {config.path or '(built-in defaults)'} is valid"]
    for listener in config.listeners:
        kind = "implicit TLS" if listener.implicit_tls else "plain"
        if listener.proxy:
            kind += ", PROXY header first"
        lines.append(f"  {listener.protocol} {kind}: {listener.endpoint} ({listener.origin})")
    if config.auth.backend == "postgresql":
        lines.append(f"  users: postgresql {redact_dsn(config.auth_dsn)}")
    else:
        lines.append(f"  users file: {config.users.passwd_file}")
    if config.storage.backend == "postgresql":
        lines.append(f"  storage: postgresql {redact_dsn(config.storage.dsn)}")
    else:
        lines.append(f"  storage: {config.storage.backend} {config.storage.maildir}")
    oauth = config.auth.oauth
    if oauth.validator:
        lines.append(f"  OAuth tokens: {oauth.validator} ({', '.join(oauth.mechanisms)})")
    tls = config.tls.certificate or "none (STARTTLS/STLS not offered)"
    lines.append(f"  TLS certificate: {tls}")
    count = resolved_workers(config)
    how = " (one per CPU)" if config.server.workers == 0 and count > 1 else ""
    lines.append(f"  workers: {count}{how}")
    if config.tls_enabled:
        versions = "1.3 only" if config.tls.minimum_version == "1.3" else "1.2 and 1.3"
        suites = config.tls.cipher_list
        lines.append(
            f"  TLS profile {config.tls.profile}: TLS {versions}"
            + (f", TLS 1.2 suites {suites}" if suites else "")
        )
    quota = config.quota
    limits = [f"storage {quota.storage}"] if quota.storage not in ("", "0") else []
    limits += [f"{quota.messages} messages"] if quota.messages else []
    over = "retried (tempfail)" if quota.delivery == "tempfail" else "bounced"
    lines.append(f"  default quota: {', '.join(limits) or 'none'}; a delivery over quota is {over}")
    return lines
