"""The interop clients once more, against a daemon whose ``[storage] backend`` and
``[auth] backend`` are ``"postgresql"`` (issue 16: "the interop suite runs once against a
PostgreSQL-backed daemon").

Each class reuses a client's tests unchanged: users come from ``mailsrv user add`` and mail
from ``mailsrv deliver``, both into the database, and the assertions on stored messages
and flag letters read the database's tables (:meth:`MailServer.messages`). One transport
per client is enough here, since the transports are the same code over either backend;
all the classes share one daemon on the test process's private PostgreSQL cluster.

The modules are imported, not their classes: trial runs every test case class it finds in
a module's namespace, and the Maildir classes must not run twice.
"""

from __future__ import annotations

from tests.interop import (
    test_curl,
    test_fetchmail,
    test_imapclient,
    test_imaplib,
    test_mbsync,
    test_mutt,
    test_poplib,
    test_qresync,
)


class ImaplibOnPostgreSQL(test_imaplib.ImaplibIMAPSTests):
    backend = "postgresql"


class PoplibOnPostgreSQL(test_poplib.PoplibPOP3STests):
    backend = "postgresql"


class CurlOnPostgreSQL(test_curl.CurlTests):
    backend = "postgresql"


class MbsyncOnPostgreSQL(test_mbsync.MbsyncTests):
    backend = "postgresql"


class FetchmailOnPostgreSQL(test_fetchmail.FetchmailTests):
    backend = "postgresql"


class ImapclientOnPostgreSQL(test_imapclient.ImapclientSortThreadTests):
    backend = "postgresql"


class QresyncOnPostgreSQL(test_qresync.QresyncClientTests):
    backend = "postgresql"


class MuttOnPostgreSQL(test_mutt.MuttTests):
    backend = "postgresql"
