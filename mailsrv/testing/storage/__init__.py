"""The storage contract as tests every backend runs.

A backend's test module mixes :class:`StorageSuiteMixin` into a trial
``TestCase`` and says how to build its storage::

    class MemoryStorageTests(StorageSuiteMixin, unittest.TestCase):
        def make_storage(self) -> IStorage:
            return MemoryStorage()

Hooks a backend may override:

* :meth:`StorageSuiteMixin.make_storage` (required): a fresh, empty storage.
* :meth:`StorageSuiteMixin.reopen_storage`: a new storage over the same
  data, as after a restart; the default returns the same object, so
  persistent backends override it and the suite checks that UIDs, flags,
  UIDVALIDITY and subscriptions survive.
* :meth:`StorageSuiteMixin.forget_expunges`: drop a mailbox's expunge log
  as the backend's retention would; the suite checks QRESYNC's answers
  beyond the log.  Without it that test is skipped.
* :meth:`StorageSuiteMixin.deliver_outside`: put a message into the
  suite user's INBOX the way a writer other than the storage object under
  test does (an MTA writing files, another node of a database); the suite
  checks that :meth:`~mailsrv.interfaces.IMailbox.check` finds it.  Without
  it that test is skipped, saying why.
* :attr:`StorageSuiteMixin.username`: the user the suite works as.
* :attr:`StorageSuiteMixin.bulk_message_count`: how many messages the
  large-mailbox test appends.

Every call goes through :func:`call` (``defer.maybeDeferred``), so backends
that answer with Deferreds or coroutines pass the same tests as synchronous
ones.  Only what a client could observe is asserted: names, attributes,
bytes, flags, dates, counters, UIDs and listener notifications.
"""

from mailsrv.testing.storage.accounts import AccountContract
from mailsrv.testing.storage.base import ListenerRecorder, call, message_bytes
from mailsrv.testing.storage.batches import BatchContract
from mailsrv.testing.storage.changes import ChangeContract
from mailsrv.testing.storage.indexed import IndexContract
from mailsrv.testing.storage.messages import MessageContract
from mailsrv.testing.storage.metadata import MetadataContract
from mailsrv.testing.storage.modseq import ModseqContract
from mailsrv.testing.storage.objects import ObjectContract
from mailsrv.testing.storage.rows import RowsContract

__all__ = ["ListenerRecorder", "StorageSuiteMixin", "call", "message_bytes"]


class StorageSuiteMixin(
    AccountContract,
    MessageContract,
    ChangeContract,
    ModseqContract,
    BatchContract,
    ObjectContract,
    MetadataContract,
    RowsContract,
    IndexContract,
):
    """The IStorage/IAccount/IMailbox contract, for any backend."""
