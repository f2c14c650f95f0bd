"""pydal's IMAP adapter (``pydal/contrib/imap_adapter.py``, web2py's DAL for IMAP)
used as its documentation shows: ``DAL("imap://user:password@host:port")``,
``define_tables()``, counting today's small unseen messages, selecting fields,
``update(seen=True)`` and ``delete()``.

The adapter was written for Python 2 and an older pydal; as shipped it is not
registered for ``imap://`` URIs and cannot run.  The glue below makes it run on
Python 3 with today's pydal without changing a byte of what it sends: it registers
the adapter, gives it the dialect, parser and representer today's pydal looks up,
maps the dialect's operators onto the adapter's own ``EQ``/``AND``/... methods
(which build the SEARCH strings), and hands it an imaplib whose answers are
``str`` as Python 2's were.  The IMAP conversation is recorded so a failure shows it.
"""

from __future__ import annotations

import datetime
import imaplib
import types
from typing import TYPE_CHECKING, Any, ClassVar

from tests.interop.support import (
    InteropTestCase,
    imap_flags,
    imap_uids_by_subject,
    make_message,
    wire,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

try:
    from pydal import DAL
    from pydal.adapters import adapters
    from pydal.contrib.imap_adapter import IMAPAdapter
    from pydal.dialects import dialects
    from pydal.dialects.base import NoSQLDialect
    from pydal.objects import Expression, Field, Query
    from pydal.parsers import parsers
    from pydal.parsers.base import BasicParser
    from pydal.representers import representers
    from pydal.representers.base import NoSQLRepresenter
except ImportError as e:  # pragma: no cover - pydal is in the test extra
    PYDAL_MISSING: str | None = f"pydal is not installed ({e}): pip install '.[test]'"
else:
    PYDAL_MISSING = None


# -- the glue -----------------------------------------------------------------------------


def _as_str(value: Any) -> Any:
    """imaplib's Python 3 answers (bytes) as Python 2's imaplib gave them (str)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, tuple):
        return tuple(_as_str(v) for v in value)
    if isinstance(value, list):
        return [_as_str(v) for v in value]
    return value


#: Every IMAP line of the adapter's connections: (">" or "<", line).
TRANSCRIPT: list[tuple[str, bytes]] = []


class Python2StyleIMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 whose public methods answer with str; records the conversation."""

    def send(self, data: ReadableBuffer) -> None:
        TRANSCRIPT.append((">", bytes(data)))
        super().send(data)

    def readline(self) -> bytes:
        line = super().readline()
        TRANSCRIPT.append(("<", line))
        return line


def _answering_str(name: str) -> Any:
    method = getattr(imaplib.IMAP4, name)

    def wrapped(self: Any, *args: Any) -> Any:
        return _as_str(method(self, *args))

    return wrapped


for _name in ("list", "search", "uid", "store", "fetch", "expunge", "append", "select", "login"):
    setattr(Python2StyleIMAP4, _name, _answering_str(_name))

DRIVER = types.SimpleNamespace(
    IMAP4=Python2StyleIMAP4, IMAP4_SSL=imaplib.IMAP4_SSL, ParseFlags=imaplib.ParseFlags
)

if PYDAL_MISSING is None:

    @adapters.register_for("imap")
    class IMAPAdapterGlue(IMAPAdapter):
        """The shipped adapter, with what today's pydal expects of an adapter."""

        fake_cursor = types.SimpleNamespace(close=lambda: None)

        def find_driver(self, *args: Any) -> None:
            # The adapter calls find_driver(adapter_args); today's takes no argument.
            self.driver = DRIVER

        def reconnect(self, f: Any = None) -> None:
            # Today's pydal manages the connection itself (a read-only property).
            self.get_connection()

        def _expand(
            self,
            expression: Any,
            field_type: Any = None,
            colnames: bool = False,
            query_env: Any = None,
        ) -> Any:
            # The expansion pydal's NoSQL adapters did when this adapter was written.
            if isinstance(expression, Field):
                return expression.name
            if isinstance(expression, (Expression, Query)):
                operands = [x for x in (expression.first, expression.second) if x is not None]
                return expression.op(*operands, **expression.optional_args)
            return str(expression)

    @dialects.register_for(IMAPAdapterGlue)
    class IMAPDialect(NoSQLDialect):
        """pydal's operators, answered by the adapter's own SEARCH builders."""

        true = True
        false = False

        def eq(self, first: Any, second: Any = None, query_env: Any = None) -> Any:
            return self.adapter.EQ(first, second)

        def ne(self, first: Any, second: Any = None, query_env: Any = None) -> Any:
            return self.adapter.NE(first, second)

        def lt(self, first: Any, second: Any = None, query_env: Any = None) -> Any:
            return self.adapter.LT(first, second)

        def lte(self, first: Any, second: Any = None, query_env: Any = None) -> Any:
            return self.adapter.LE(first, second)

        def gt(self, first: Any, second: Any = None, query_env: Any = None) -> Any:
            return self.adapter.GT(first, second)

        def gte(self, first: Any, second: Any = None, query_env: Any = None) -> Any:
            return self.adapter.GE(first, second)

        def _and(self, first: Any, second: Any, query_env: Any = None) -> Any:
            return self.adapter.AND(first, second)

        def _or(self, first: Any, second: Any, query_env: Any = None) -> Any:
            return self.adapter.OR(first, second)

        def _not(self, first: Any, query_env: Any = None) -> Any:
            return self.adapter.NOT(first)

        def belongs(self, first: Any, second: Any, query_env: Any = None) -> Any:
            return self.adapter.BELONGS(first, second)

        def contains(
            self, first: Any, second: Any, case_sensitive: bool = True, query_env: Any = None
        ) -> Any:
            return self.adapter.CONTAINS(first, second, case_sensitive)

    @parsers.register_for(IMAPAdapterGlue)
    class IMAPParser(BasicParser):
        pass

    @representers.register_for(IMAPAdapterGlue)
    class IMAPRepresenter(NoSQLRepresenter):
        pass


# -- the tests ----------------------------------------------------------------------------


class PydalIMAPTests(InteropTestCase):
    documented_size_limit: ClassVar[int] = 6000

    def setUp(self) -> None:
        if PYDAL_MISSING is not None:
            self.cannot_run(PYDAL_MISSING)
        super().setUp()

    def connect(self, user: str, password: str) -> Any:
        TRANSCRIPT.clear()
        # Plain IMAP: the adapter uses TLS only on port 993, and LOGIN on loopback
        # is allowed by auth.plaintext = "loopback" (the default).
        db = DAL(f"imap://{user}:{password}@127.0.0.1:{self.server.ports['imap']}")
        self.addCleanup(self.disconnect, db)
        return db

    def disconnect(self, db: Any) -> None:
        try:
            db._adapter.connection.logout()
        except (imaplib.IMAP4.error, OSError):
            pass

    def conversation(self) -> str:
        return "".join(f"{d} {line.decode(errors='replace')}" for d, line in TRANSCRIPT)

    def test_documented_usage(self) -> None:
        user, password = self.server.add_user("pydal")
        today = datetime.date.today()
        small = {
            "small from gumby": "Mr. Gumby <gumby@example.org>",
            "small from alice": "Alice <alice@example.org>",
            "small but read": "Bob <bob@example.org>",
        }
        bodies = {}
        for subject, sender in small.items():
            bodies[subject] = f"Hello from {sender}.\n"
        big = make_message(
            "big from alice", ("x" * 70 + "\n") * 100, sender="Alice <a@example.org>"
        )
        self.assertGreater(len(wire(big)), self.documented_size_limit)
        self.server.deliver_concurrently(
            user,
            [make_message(s, bodies[s], sender=sender) for s, sender in small.items()] + [big],
        )
        observer = self.server.imap(user, password, "INBOX")
        self.addCleanup(observer.logout)
        uids = imap_uids_by_subject(observer)
        observer.uid("STORE", str(uids["small but read"]), "+FLAGS", r"(\Seen)")

        db = self.connect(user, password)
        mailboxes = db.define_tables()
        self.assertEqual(mailboxes["INBOX"], "INBOX")
        self.assertIn("Sent", mailboxes)
        self.assertEqual(db.INBOX.mailbox, "INBOX")

        # "Count today's unseen messages smaller than 6000 octets from the inbox mailbox"
        q = db.INBOX.seen == False  # noqa: E712 - pydal query syntax
        q &= db.INBOX.created == today
        q &= db.INBOX.size < self.documented_size_limit
        self.assertEqual(db(q).count(), 2, self.conversation())

        # Selecting fields: headers and flags only.
        rows = db(q).select(db.INBOX.uid, db.INBOX.sender, db.INBOX.subject, db.INBOX.seen)
        self.assertEqual(
            sorted((r.uid, r.sender, r.subject, r.seen) for r in rows),
            sorted((uids[s], small[s], s, False) for s in ("small from gumby", "small from alice")),
            self.conversation(),
        )
        # Whole messages (content): the adapter fetches RFC822 in a read-only EXAMINE.
        (row,) = db(db.INBOX.uid == uids["small from alice"]).select(
            db.INBOX.subject, db.INBOX.content
        )
        self.assertEqual(row.content[0]["text"], bodies["small from alice"].replace("\n", "\r\n"))
        flags = imap_flags(observer)
        self.assertEqual(flags[uids["small from alice"]] - {"\\Recent"}, set())
        self.assertEqual(
            {m.subject: m.flags for m in self.server.messages(user)},
            {
                "small from gumby": "",
                "small from alice": "",
                "small but read": "S",
                "big from alice": "",
            },
        )

        # "Mark last query messages as seen"
        seen = db(db.INBOX.uid.belongs([r.uid for r in rows])).update(seen=True)
        self.assertEqual(seen, 2, self.conversation())
        self.assertEqual(db(q).count(), 0)
        self.assertEqual(
            {m.subject: m.flags for m in self.server.messages(user)},
            {
                "small from gumby": "S",
                "small from alice": "S",
                "small but read": "S",
                "big from alice": "",
            },
        )

        # "Delete messages in the imap database that have mails from mr. Gumby"
        deleted = db(db.INBOX.sender.contains("gumby")).delete()
        self.assertEqual(deleted, 1, self.conversation())
        self.assertEqual(
            sorted(self.server.by_subject(user)),
            ["big from alice", "small but read", "small from alice"],
        )
        observer.select("INBOX", readonly=True)
        self.assertEqual(
            sorted(imap_uids_by_subject(observer)),
            ["big from alice", "small but read", "small from alice"],
        )

        # Mark for deletion instead: update(deleted=True), seen from another session.
        marked = db(db.INBOX.size > self.documented_size_limit).update(deleted=True)
        self.assertEqual(marked, 1, self.conversation())
        self.assertEqual(self.server.by_subject(user)["big from alice"].flags, "T")
