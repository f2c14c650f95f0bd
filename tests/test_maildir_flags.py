"""Maildir++ flags: letters in file names, keywords in dovecot-keywords, the cache."""

from __future__ import annotations

import io
import os

from mailsrv.errors import (
    LimitExceeded,
    StorageError,
)
from mailsrv.interfaces import (
    StoreMode,
)
from mailsrv.storage.maildir.layout import split_filename
from tests.maildir_case import MESSAGE, MaildirTestCase, Recorder


class FlagTests(MaildirTestCase):
    def test_system_flags_in_file_name(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(
            io.BytesIO(MESSAGE), ["\\Seen", "\\ANSWERED", "\\Flagged", "\\Deleted", "\\Draft"]
        )
        (name,) = self.cur_files()
        self.assertEqual(split_filename(name)[1], "DFRST")
        self.assertEqual(
            inbox.fetch([uid])[0].flags,
            frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"}),
        )

    def test_recent_is_not_stored(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE), ["\\Recent"])
        self.assertEqual(inbox.fetch([uid])[0].flags, frozenset())

    def test_keywords_round_trip(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE), ["$Forwarded", "Work"])
        inbox.store([uid], ["$Junk"], StoreMode.ADD)
        with open(os.path.join(self.root, "dovecot-keywords")) as handle:
            self.assertEqual(handle.read(), "0 $Forwarded\n1 Work\n2 $Junk\n")
        (name,) = self.cur_files()
        self.assertEqual(split_filename(name)[1], "abc")
        fresh = self.storage().account("alice").open_mailbox("INBOX")
        self.assertEqual(fresh.fetch([uid])[0].flags, frozenset({"$Forwarded", "Work", "$Junk"}))
        inbox.store([uid], ["Work"], StoreMode.REMOVE)
        self.assertEqual(split_filename(self.cur_files()[0])[1], "ac")

    def test_keywords_match_case_insensitively(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE), ["$Label1"])
        inbox.store([uid], ["$label1"], StoreMode.ADD)
        self.assertEqual(inbox.fetch([uid])[0].flags, frozenset({"$Label1"}))

    def test_too_many_keywords(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE), [f"k{i}" for i in range(26)])
        self.assertEqual(len(inbox.fetch([uid])[0].flags), 26)
        self.assertRaises(LimitExceeded, inbox.store, [uid], ["one-too-many"], StoreMode.ADD)

    def test_keywords_listed_in_letter_order(self) -> None:
        inbox = self.inbox()
        self.assertEqual((list(inbox.keywords()), inbox.keyword_limit), ([], 26))
        uid = inbox.append(io.BytesIO(MESSAGE), ["Work", "$Forwarded"])
        inbox.store([uid], ["$Junk"], StoreMode.ADD)
        # Defined stays defined, as in Dovecot: the letter keeps its name.
        inbox.store([uid], ["Work"], StoreMode.REMOVE)
        self.assertEqual(list(inbox.keywords()), ["$Forwarded", "Work", "$Junk"])
        # Another process's view of the same folder agrees.
        self.assertEqual(list(self.inbox().keywords()), ["$Forwarded", "Work", "$Junk"])

    def test_no_room_refuses_all_new_keywords(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE), [f"k{i:02}" for i in range(25)])
        path = os.path.join(self.root, "dovecot-keywords")
        with open(path) as handle:
            before = handle.read()
        exc = self.assertRaises(
            LimitExceeded, inbox.store, [uid], ["k00", "new1", "new2"], StoreMode.ADD
        )
        self.assertEqual(
            str(exc), "no room for keyword new1: a Maildir folder holds at most 26 keywords"
        )
        with open(path) as handle:
            self.assertEqual(handle.read(), before)
        self.assertEqual(len(inbox.keywords()), 25)
        inbox.store([uid], ["NEW1", "new1"], StoreMode.ADD)  # one letter for both
        self.assertEqual(inbox.keywords()[-1], "NEW1")

    def test_names_imap_cannot_carry_are_hidden(self) -> None:
        """Another program may have written keywords IMAP cannot send back:
        they keep their letters, but no message shows them."""
        inbox = self.inbox()
        with open(os.path.join(self.root, "dovecot-keywords"), "w") as handle:
            handle.write("0 my flag\n1 NIL\n2 Work\n")
        uid = inbox.append(io.BytesIO(MESSAGE), ["Work"])
        (name,) = self.cur_files()
        cur = os.path.join(self.root, "cur")
        os.rename(os.path.join(cur, name), os.path.join(cur, name[: -len("c")] + "abc"))
        inbox.check()
        self.assertEqual(inbox.fetch([uid])[0].flags, frozenset({"Work"}))
        self.assertEqual((list(inbox.keywords()), inbox.keyword_limit), (["Work"], 24))
        inbox.store([uid], ["\\Seen", "Later"], StoreMode.REPLACE)
        self.assertEqual(split_filename(self.cur_files()[0])[1], "Sabd")
        self.assertEqual(inbox.fetch([uid])[0].flags, frozenset({"\\Seen", "Later"}))

    def test_nil_is_no_keyword(self) -> None:
        inbox = self.inbox()
        for flag in ("NIL", "nil"):
            exc = self.assertRaises(StorageError, inbox.append, io.BytesIO(MESSAGE), [flag])
            self.assertEqual(exc.code, "CANNOT")
        self.assertEqual(self.cur_files(), [])
        self.assertFalse(os.path.exists(os.path.join(self.root, "dovecot-keywords")))

    def test_invalid_flags(self) -> None:
        inbox = self.inbox()
        self.assertRaises(StorageError, inbox.append, io.BytesIO(MESSAGE), ["\\Bogus"])
        self.assertRaises(StorageError, inbox.append, io.BytesIO(MESSAGE), ["two words"])
        self.assertEqual(self.cur_files(), [])

    def test_unknown_letters_preserved(self) -> None:
        inbox = self.inbox()
        inbox.append(io.BytesIO(MESSAGE))
        (name,) = self.cur_files()
        cur = os.path.join(self.root, "cur")
        # mutt marks it passed (P) and seen.
        os.rename(os.path.join(cur, name), os.path.join(cur, name[:-1] + ",PS"))
        inbox.check()
        (uid,) = inbox.uids()
        self.assertEqual(inbox.fetch([uid])[0].flags, frozenset({"\\Seen"}))
        inbox.store([uid], ["\\Flagged"], StoreMode.REPLACE)
        self.assertEqual(split_filename(self.cur_files()[0])[1], "FP")

    def test_store_result_and_modseq(self) -> None:
        inbox = self.inbox()
        a = inbox.append(io.BytesIO(MESSAGE))
        b = inbox.append(io.BytesIO(MESSAGE), ["\\Seen"])
        before = inbox.highest_modseq
        result = inbox.store([a, b], ["\\Seen"], StoreMode.ADD)
        self.assertEqual([m.uid for m in result.updated], [a])
        self.assertGreater(result.updated[0].modseq, before)
        self.assertEqual(inbox.highest_modseq, result.updated[0].modseq)
        self.assertEqual([m.uid for m in inbox.changed_since(before)], [a])
        conflicting = inbox.store([a, b], ["\\Flagged"], StoreMode.ADD, unchanged_since=before)
        self.assertEqual(conflicting.conflicts, (a,))
        self.assertEqual([m.uid for m in conflicting.updated], [b])

    def test_outside_flag_change_announced(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE))
        recorder = Recorder()
        inbox.add_listener(recorder)
        (name,) = self.cur_files()
        cur = os.path.join(self.root, "cur")
        os.rename(os.path.join(cur, name), os.path.join(cur, name + "S"))
        inbox.check()
        self.assertEqual(recorder.changed, [(uid, frozenset({"\\Seen"}))])


class CacheTests(MaildirTestCase):
    def test_cache_dropped_with_message(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(MESSAGE))
        inbox.set_cached(uid, "envelope", b"(cached)")
        self.assertEqual(self.inbox().get_cached(uid, "envelope"), b"(cached)")
        self.assertIsNone(inbox.get_cached(uid, "other"))
        inbox.store([uid], ["\\Deleted"], StoreMode.ADD)
        inbox.expunge()
        self.assertIsNone(inbox.get_cached(uid, "envelope"))
        inbox.set_cached(uid, "envelope", b"(late)")
        self.assertIsNone(inbox.get_cached(uid, "envelope"))


class KeywordFileTests(MaildirTestCase):
    def test_missing_file_read_once(self) -> None:
        """With no dovecot-keywords (no message ever had a keyword), refreshing
        the table before each FETCH or STORE reads nothing; a file written
        later by another process is read."""
        from mailsrv.storage.maildir import keywords

        path = os.path.join(self.base, "dovecot-keywords")
        table = keywords.KeywordTable(path)
        reads: list[str] = []
        real = keywords.read_keywords

        def counted(where: str) -> list[str | None]:
            reads.append(where)
            return real(where)

        self.patch(keywords, "read_keywords", counted)
        for _ in range(3):
            table.refresh()
        self.assertEqual(reads, [])
        self.assertEqual(table.flags("a"), frozenset())
        keywords.write_keywords(path, ["$Work"])
        table.refresh()
        self.assertEqual(reads, [path])
        self.assertEqual(table.flags("a"), frozenset({"$Work"}))
        os.unlink(path)
        table.refresh()
        self.assertEqual(table.flags("a"), frozenset())
