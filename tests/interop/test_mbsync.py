"""mbsync (isync): two-way synchronisation of a local Maildir with the server.

The first run copies the server's folders and messages down; then both sides
change (new mail, flags, deletions, a new folder) and the second run must carry
every change across, in both directions, without duplicating anything.
"""

from __future__ import annotations

import os
import re
from typing import ClassVar

from tests.interop.support import (
    InteropTestCase,
    MaildirMessage,
    by_subject,
    imap_uids_by_subject,
    make_message,
    read_maildir,
    wire,
)


def content(message: MaildirMessage | bytes) -> bytes:
    """A message's bytes as both sides must agree on them: CRLF line ends (mbsync
    stores LF locally) and without the X-TUID header mbsync adds while uploading."""
    data = message.data if isinstance(message, MaildirMessage) else message
    return re.sub(rb"(?m)^X-TUID: [^\r\n]*\r?\n", b"", wire(data))


class MbsyncTests(InteropTestCase):
    programs: ClassVar = [("mbsync", "isync")]

    def write_config(self, user: str, password: str, ssl_type: str) -> tuple[str, str]:
        """An .mbsyncrc for one channel, the local Maildir tree beside it: (rc, local root)."""
        local = os.path.join(self.home, "Mail")
        os.makedirs(local, exist_ok=True)
        port = self.server.ports["imaps" if ssl_type == "IMAPS" else "imap"]
        rc = os.path.join(self.home, ".mbsyncrc")
        with open(rc, "w") as f:
            f.write(
                f"""\
IMAPAccount server
Host localhost
Port {port}
User {user}
Pass {password}
SSLType {ssl_type}
CertificateFile {self.server.cafile}
Timeout 30

IMAPStore server
Account server

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel mail
Far :server:
Near :local:
Patterns *
Create Both
Expunge Both
Sync All
SyncState *
"""
            )
        return rc, local

    def mbsync(self, rc: str) -> None:
        self.run_client([self.paths["mbsync"], "--config", rc, "--all"])

    def local(self, root: str, folder: str = "INBOX") -> dict[str, MaildirMessage]:
        return by_subject(read_maildir(os.path.join(root, folder)))

    def test_two_way_sync_over_imaps(self) -> None:
        user, password = self.server.add_user("mbsync")
        sent = {}
        for subject in ("alpha", "bravo", "charlie", "golf"):
            sent[subject] = make_message(subject, f"Body of {subject}.\n")
        self.server.deliver_concurrently(user, list(sent.values()))
        rc, root = self.write_config(user, password, "IMAPS")

        # First run: everything comes down, nothing changes on the server.
        self.mbsync(rc)
        local = self.local(root)
        self.assertEqual(sorted(local), ["alpha", "bravo", "charlie", "golf"])
        for subject, message in local.items():
            self.assertEqual(content(message), wire(sent[subject]))
            self.assertEqual(message.flags, "")
        self.assertEqual(
            sorted(d for d in os.listdir(root) if not d.startswith(".")),
            ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"],
        )
        self.assertEqual([m.flags for m in self.server.messages(user)], [""] * 4)

        # Local changes: read and flag alpha, delete bravo, file a new message and a new folder.
        alpha = local["alpha"]
        os.rename(
            alpha.path,
            os.path.join(root, "INBOX", "cur", os.path.basename(alpha.path).split(":2,")[0])
            + ":2,FS",
        )
        os.unlink(local["bravo"].path)
        delta = make_message("delta", "Written locally.\n")
        with open(os.path.join(root, "INBOX", "new", "1700000000.1_1.localhost"), "wb") as f:
            f.write(delta)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(root, "Projects", sub))
        echo = make_message("echo", "In a folder made locally.\n")
        with open(os.path.join(root, "Projects", "cur", "1700000000.2_1.localhost:2,F"), "wb") as f:
            f.write(echo)
        # Server changes: new mail, charlie answered elsewhere, golf expunged elsewhere.
        sent["foxtrot"] = make_message("foxtrot", "Arrived between the runs.\n")
        self.server.deliver(user, sent["foxtrot"])
        imap = self.server.imap(user, password, "INBOX")
        self.addCleanup(imap.logout)
        uids = imap_uids_by_subject(imap)
        self.assertEqual(imap.uid("STORE", str(uids["charlie"]), "+FLAGS", r"(\Answered)")[0], "OK")
        self.assertEqual(imap.uid("STORE", str(uids["golf"]), "+FLAGS", r"(\Deleted)")[0], "OK")
        self.assertEqual(imap.expunge()[0], "OK")
        imap.close()

        # Second run: every change crosses over.
        self.mbsync(rc)
        # mbsync 1.4 compresses whenever the server offers COMPRESS=DEFLATE
        # (RFC 4978): both runs went through the deflate layer, inside TLS.
        self.assertEqual(self.server.log.count(f"IMAP: {user} turned COMPRESS=DEFLATE on"), 2)
        server = self.server.by_subject(user)
        self.assertEqual(sorted(server), ["alpha", "charlie", "delta", "foxtrot"])
        self.assertEqual(
            {s: m.flags for s, m in server.items()},
            {"alpha": "FS", "charlie": "R", "delta": "", "foxtrot": ""},
        )
        self.assertEqual(content(server["delta"]), wire(delta))
        projects = self.server.by_subject(user, "Projects")
        self.assertEqual([(s, m.flags) for s, m in projects.items()], [("echo", "F")])
        self.assertEqual(content(projects["echo"]), wire(echo))

        local = self.local(root)
        self.assertEqual(sorted(local), ["alpha", "charlie", "delta", "foxtrot"])
        self.assertEqual(
            {s: m.flags for s, m in local.items()},
            {"alpha": "FS", "charlie": "R", "delta": "", "foxtrot": ""},
        )
        self.assertEqual(content(local["foxtrot"]), wire(sent["foxtrot"]))
        self.assertEqual(sorted(self.local(root, "Projects")), ["echo"])

        # A third run with nothing changed changes nothing.
        self.mbsync(rc)
        self.assertEqual(sorted(self.local(root)), ["alpha", "charlie", "delta", "foxtrot"])
        self.assertEqual(
            sorted(self.server.by_subject(user)), ["alpha", "charlie", "delta", "foxtrot"]
        )

    def test_sync_over_starttls(self) -> None:
        user, password = self.server.add_user("mbsync")
        message = make_message("over starttls", "Hello.\n")
        self.server.deliver(user, message)
        rc, root = self.write_config(user, password, "STARTTLS")
        self.mbsync(rc)
        local = self.local(root)
        self.assertEqual(list(local), ["over starttls"])
        self.assertEqual(content(local["over starttls"]), wire(message))
        # Marked read locally; the next run tells the server.
        path = local["over starttls"].path
        os.rename(
            path,
            os.path.join(root, "INBOX", "cur", os.path.basename(path).split(":2,")[0] + ":2,S"),
        )
        self.mbsync(rc)
        self.assertEqual([m.flags for m in self.server.messages(user)], ["S"])
        self.assertEqual([m.flags for m in read_maildir(os.path.join(root, "INBOX"))], ["S"])
