"""The twistd plugin: ``twistd -n mailsrv --config FILE``.

This module is shipped as ``twisted/plugins/mailsrv_plugin.py`` in the wheel,
beside Twisted's own plugins and without an ``__init__.py``; it imports
mailsrv lazily so ``twistd --help`` stays fast and never fails because of
mailsrv.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    """Options of ``twistd mailsrv``; each overrides its configuration key."""

    synopsis = (
        "[--config FILE] [--imap ENDPOINT]... [--pop3 ENDPOINT]... [--imaps ENDPOINT]... "
        "[--pop3s ENDPOINT]... [--lmtp ENDPOINT]... [--maildir TEMPLATE] [--passwd FILE] "
        "[--tls-cert FILE --tls-key FILE] [--workers N]"
    )
    longdesc = (
        "Serve IMAP4rev1 and POP3 from Maildir storage. Settings come from the TOML file given "
        "with --config (see etc/mailsrv.toml); the options below override its keys. A listener "
        "option replaces that protocol's listeners from the file and may be repeated."
    )
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        ["maildir", None, None, "Maildir path template with {user} or {home} (storage.maildir)."],
        ["passwd", None, None, "Users file in Dovecot passwd-file format (users.passwd_file)."],
        ["tls-cert", None, None, "PEM certificate (chain) for STARTTLS/STLS and implicit TLS."],
        ["tls-key", None, None, "PEM private key of --tls-cert."],
        [
            "workers",
            None,
            None,
            "Reactor processes sharing the listeners; 0: one per CPU (server.workers).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        for name in ("imap", "imaps", "pop3", "pop3s", "lmtp"):
            self[name] = []
        self.config: Any = None

    def opt_imap(self, endpoint: str) -> None:
        """IMAP listener with STARTTLS, e.g. tcp:143 (imap.listen; repeatable)."""
        self["imap"].append(endpoint)

    def opt_imaps(self, endpoint: str) -> None:
        """Implicit-TLS IMAP listener, e.g. tcp:993 (imap.listen_tls; repeatable)."""
        self["imaps"].append(endpoint)

    def opt_pop3(self, endpoint: str) -> None:
        """POP3 listener with STLS, e.g. tcp:110 (pop3.listen; repeatable)."""
        self["pop3"].append(endpoint)

    def opt_pop3s(self, endpoint: str) -> None:
        """Implicit-TLS POP3 listener, e.g. tcp:995 (pop3.listen_tls; repeatable)."""
        self["pop3s"].append(endpoint)

    def opt_lmtp(self, endpoint: str) -> None:
        """LMTP listener for the MTA, e.g. unix:/run/mailsrv/lmtp (lmtp.listen; repeatable)."""
        self["lmtp"].append(endpoint)

    def overrides(self) -> dict[str, Any]:
        return {
            "lmtp": self["lmtp"],
            "imap": self["imap"],
            "imaps": self["imaps"],
            "pop3": self["pop3"],
            "pop3s": self["pop3s"],
            "maildir": self["maildir"],
            "passwd": self["passwd"],
            "tls_cert": self["tls-cert"],
            "tls_key": self["tls-key"],
            "workers": _number(self["workers"]),
        }

    def postOptions(self) -> None:
        from mailsrv.config import format_error, load_config
        from mailsrv.errors import ConfigError

        try:
            self.config = load_config(self["config"], self.overrides())
        except ConfigError as e:
            # One line naming file, key and reason; no usage dump around it.
            raise SystemExit(format_error(e)) from None


@implementer(IServiceMaker, IPlugin)
class MailsrvServiceMaker:
    tapname = "mailsrv"
    description = "IMAP4rev1 and POP3 mail access server over Maildir, with LMTP delivery."
    options = Options

    def makeService(self, options: Options) -> Any:
        from mailsrv.config import format_error, load_config
        from mailsrv.errors import ConfigError
        from mailsrv.service import LogReopener

        class Daemon(MultiService):
            """Turns a bind failure at startup into one line and exit status 1."""

            def privilegedStartService(self) -> None:
                try:
                    super().privilegedStartService()
                except ConfigError as e:
                    raise SystemExit(format_error(e)) from None

        def load() -> Any:
            # A reload reads what startup read: the same file, the same options.
            return load_config(options["config"], options.overrides())

        try:
            daemon = Daemon()
            mail = _make(options, load)
            LogReopener(reload=mail.reload).setServiceParent(daemon)
            mail.setServiceParent(daemon)
        except ConfigError as e:
            raise SystemExit(format_error(e)) from None
        return daemon


def _number(value: str | None) -> int | str | None:
    """``--workers`` as the integer the configuration key holds; anything
    else is left for the configuration check to refuse, naming the option."""
    if value is not None and value.strip().isdigit():
        return int(value)
    return value


def _make(options: Options, load: Any) -> Any:
    """The daemon's service: one process, or the parent of several workers."""
    from mailsrv import log
    from mailsrv.config import cpu_count
    from mailsrv.service import make_service
    from mailsrv.workers import worker_count

    config = options.config
    count = worker_count(config)
    if count == 1:
        if config.storage.backend == "memory" and config.server.workers == 0 and cpu_count() > 1:
            log.get_logger("mailsrv.workers").info(
                "storage.backend 'memory' lives in one process: running one worker, not one per CPU"
            )
        return make_service(config, load=load, systemd_notify=True)
    from mailsrv.workers.supervisor import make_supervised_service

    return make_supervised_service(
        config, count, load=load, overrides=options.overrides(), systemd_notify=True
    )


serviceMaker = MailsrvServiceMaker()
