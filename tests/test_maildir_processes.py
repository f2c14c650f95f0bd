"""Several processes on one Maildir, and processes killed in the middle of delivery.

The promise checked here: every message whose delivery was acknowledged is
in the mailbox exactly once, no UID is handed out twice, and none is reused
later, whatever instant a writer dies at.
"""

from __future__ import annotations

import io
import os
import random
import re
import signal
import subprocess
import sys
from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from mailsrv.storage.maildir import MaildirMailbox, MaildirStorage
from tests.helpers import source_env
from tests.maildir_case import Recorder

# A delivery agent in a loop: one line "UID MESSAGE-ID" per acknowledged message.
CHILD = r"""
import io, sys
from mailsrv.storage.maildir import MaildirStorage
from mailsrv.storage.deliver import deliver

template, user, tag, count = sys.argv[1:5]
account = MaildirStorage(template).account(user)
i = 0
while count == "forever" or i < int(count):
    msgid = f"<{tag}.{i}@test.example>"
    body = f"Message-ID: {msgid}\nSubject: message {i}\n\nbody of {i}\n" + "filler\n" * (i % 7)
    uid = deliver(account, io.BytesIO(body.encode()))
    sys.stdout.write(f"{uid} {msgid}\n")
    sys.stdout.flush()
    i += 1
"""

MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)\r$", re.MULTILINE)


class ProcessTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.template = os.path.join(self.base, "{user}", "Maildir")
        self.root = os.path.join(self.base, "alice", "Maildir")

    def spawn(self, tag: str, count: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD, self.template, "alice", tag, count],
            stdout=subprocess.PIPE,
            env=source_env(),
        )
        self.addCleanup(self._reap, process)
        return process

    def _reap(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def inbox(self) -> MaildirMailbox:
        return MaildirStorage(self.template).account("alice").open_mailbox("INBOX")

    def message_ids(self, inbox: MaildirMailbox) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for uid in inbox.uids():
            with inbox.open(uid) as handle:
                match = MESSAGE_ID.search(handle.read())
            assert match is not None
            found[uid] = match.group(1)
        return found

    @staticmethod
    def parse(lines: list[bytes]) -> dict[bytes, int]:
        acked: dict[bytes, int] = {}
        for line in lines:
            if not line.endswith(b"\n"):
                continue  # cut short by the kill: not an acknowledgement
            uid, msgid = line.split()
            acked[msgid] = int(uid)
        return acked


class ConcurrentWritersTests(ProcessTestCase):
    def test_two_processes_append(self) -> None:
        inbox = self.inbox()
        recorder = Recorder()
        inbox.add_listener(recorder)
        count = 40
        children = [self.spawn(tag, str(count)) for tag in ("one", "two")]
        # Meanwhile this process keeps syncing, racing the writers.
        while any(child.poll() is None for child in children):
            inbox.check()
        acked: dict[bytes, int] = {}
        for child in children:
            assert child.stdout is not None
            acked.update(self.parse(child.stdout.readlines()))
            self.assertEqual(child.returncode, 0)
        self.assertEqual(len(acked), 2 * count)
        self.assertEqual(len(set(acked.values())), 2 * count)
        inbox.check()
        self.assertEqual(sorted(recorder.added), sorted(acked.values()))
        for mailbox in (inbox, self.inbox()):
            found = self.message_ids(mailbox)
            self.assertEqual({msgid: uid for uid, msgid in found.items()}, acked)
            self.assertEqual(mailbox.status().messages, 2 * count)


# An IMAP session's SELECT in another process: wait for "go", then take
# whatever is \Recent and print its UIDs.
CLAIMER = r"""
import sys
from mailsrv.storage.maildir import MaildirStorage

template, user = sys.argv[1:3]
inbox = MaildirStorage(template).account(user).open_mailbox("INBOX")
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.readline()
inbox.check()
sys.stdout.write(" ".join(str(uid) for uid in sorted(inbox.claim_recent())) + "\n")
"""


class RecentTests(ProcessTestCase):
    def test_each_message_is_recent_in_exactly_one_process(self) -> None:
        inbox = self.inbox()
        uids = {inbox.append(io.BytesIO(b"Subject: %d\n\nx\n" % i)) for i in range(20)}
        # Half of them arrive the way Postfix delivers: straight into new/.
        for i in range(20):
            with open(os.path.join(self.root, "new", f"1700000000.P{i}Q{i}.mx"), "wb") as f:
                f.write(b"Subject: outside %d\n\nx\n" % i)
        claimers = []
        for _ in range(4):
            child = subprocess.Popen(
                [sys.executable, "-c", CLAIMER, self.template, "alice"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=source_env(),
            )
            self.addCleanup(self._reap, child)
            assert child.stdout is not None
            self.assertEqual(child.stdout.readline(), b"ready\n")
            claimers.append(child)
        for child in claimers:  # all at once, as racing SELECTs
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()
        claimed: list[int] = []
        for child in claimers:
            assert child.stdout is not None and child.stdin is not None
            claimed.extend(int(uid) for uid in child.stdout.readline().split())
            child.stdin.close()
        self.assertEqual(len(claimed), len(set(claimed)))
        inbox.check()
        self.assertEqual(len(inbox.uids()), 40)
        self.assertEqual(set(claimed), set(inbox.uids()))
        self.assertTrue(uids <= set(claimed))
        self.assertEqual(inbox.claim_recent(), frozenset())


class CrashTests(ProcessTestCase):
    def check_mailbox(self, acked: dict[bytes, int]) -> MaildirMailbox:
        inbox = self.inbox()
        found = self.message_ids(inbox)
        counts = Counter(found.values())
        duplicates = [msgid for msgid, n in counts.items() if n > 1]
        self.assertEqual(duplicates, [])
        by_id = {msgid: uid for uid, msgid in found.items()}
        for msgid, uid in acked.items():
            self.assertEqual(by_id.get(msgid), uid, msgid)
        return inbox

    def test_sigkill_while_delivering(self) -> None:
        rng = random.Random(3501)
        acked: dict[bytes, int] = {}
        for round_number in range(6):
            wanted = rng.randint(1, 30)
            # Two writers at once, so a kill can also land while one waits
            # for the other's lock.
            child = self.spawn(f"round{round_number}", "forever")
            other = self.spawn(f"other{round_number}", "forever")
            assert child.stdout is not None and other.stdout is not None
            lines = [child.stdout.readline() for _ in range(wanted)]
            for process in (other, child) if round_number % 2 else (child, other):
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
            lines.extend(child.stdout.readlines())
            lines.extend(other.stdout.readlines())
            round_acked = self.parse(lines)
            self.assertGreaterEqual(len(round_acked), wanted)
            self.assertFalse(set(round_acked.values()) & set(acked.values()))
            acked.update(round_acked)
            if round_number == 3:
                # Lose the index too: the rebuild must agree with the acks.
                os.unlink(os.path.join(self.root, "mailsrv-index.sqlite"))
            inbox = self.check_mailbox(acked)
            del inbox
        inbox = self.inbox()
        with open(os.path.join(self.root, "mailsrv-uidlist")) as handle:
            listed = [int(line.split()[0]) for line in handle.read().splitlines()[1:]]
        uid = inbox.append(io.BytesIO(b"Message-ID: <after@test.example>\n\nlast\n"))
        self.assertGreater(uid, max(acked.values()))
        self.assertGreater(uid, max(listed))


class Crash(Exception):
    """Stands for the process dying at this instant."""


class CrashPointTests(ProcessTestCase):
    """Deterministic crashes between the steps of an append or a flag change."""

    def test_crash_after_uid_taken(self) -> None:
        inbox = self.inbox()
        first = inbox.append(io.BytesIO(b"one\n"))

        def rename(*args: object, **kwargs: object) -> None:
            raise Crash()

        patched = self.patch(os, "rename", rename)
        self.assertRaises(Crash, inbox.append, io.BytesIO(b"lost\n"))
        patched.restore()
        fresh = self.inbox()
        self.assertEqual(fresh.uids(), (first,))
        # The UID taken by the dead append is never handed out.
        self.assertEqual(fresh.append(io.BytesIO(b"two\n")), first + 2)

    def killed_at(self, point: str, action: str) -> None:
        """Run ``action`` on alice's INBOX (``inbox``) in a process that the
        fault point ``point`` kills with SIGKILL (MAILSRV_CRASH_AT)."""
        script = (
            "import io, sys\n"
            "from mailsrv.interfaces import StoreMode\n"
            "from mailsrv.storage.maildir import MaildirStorage\n"
            "inbox = MaildirStorage(sys.argv[1]).account('alice').open_mailbox('INBOX')\n"
            f"{action}\n"
        )
        child = subprocess.run(
            [sys.executable, "-c", script, self.template],
            env={**source_env(), "MAILSRV_CRASH_AT": point},
            timeout=60,
            check=False,
        )
        self.assertEqual(child.returncode, -signal.SIGKILL)

    def test_crash_before_index_commit(self) -> None:
        inbox = self.inbox()
        first = inbox.append(io.BytesIO(b"one\n"))
        self.killed_at("append-placed", "inbox.append(io.BytesIO(b'Subject: kept\\n\\n'))")
        fresh = self.inbox()
        # The file made it to cur/: it shows up once, with the UID it was given.
        self.assertEqual(fresh.uids(), (first, first + 1))
        with fresh.open(first + 1) as handle:
            self.assertEqual(handle.read(), b"Subject: kept\r\n\r\n")
        self.assertEqual(fresh.append(io.BytesIO(b"two\n")), first + 2)

    def test_crash_during_flag_change(self) -> None:
        inbox = self.inbox()
        uid = inbox.append(io.BytesIO(b"one\n"))
        self.killed_at("store-renamed", f"inbox.store([{uid}], ['\\\\Seen'], StoreMode.ADD)")
        # The file name is the truth: the flag was set.
        self.assertEqual(self.inbox().fetch([uid])[0].flags, frozenset({"\\Seen"}))
