"""The PostgreSQL storage backend (``[storage] backend = "postgresql"``).

Needs psycopg 3 (``pip install 'mailsrv[postgresql]'``).  Modules:

* :mod:`.schema` -- tables and versioned migrations (``mailsrv db upgrade``);
* :mod:`.db` -- connections in a bounded thread pool, error translation;
* :mod:`.queries`, :mod:`.accounts` -- the SQL of every operation;
* :mod:`.blobs` -- the content-addressed, reference-counted body store;
* :mod:`.mailbox`, :mod:`.storage` -- IMailbox, IAccount, IStorage;
* :mod:`.notify` -- LISTEN/NOTIFY between nodes;
* :mod:`.locks` -- POP3's maildrop lock across nodes;
* :mod:`.deliver` -- ``mailsrv deliver`` into the database.

docs/scale-out.md describes the design.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailsrv.storage.postgres.storage import PostgresAccount, PostgresStorage

__all__ = ["PostgresAccount", "PostgresStorage"]


def __getattr__(name: str) -> Any:
    # Imported on use: `mailsrv db` and the config check need only
    # the schema module, not Twisted's thread machinery.
    if name in __all__:
        from mailsrv.storage.postgres import storage

        return getattr(storage, name)
    raise AttributeError(name)
