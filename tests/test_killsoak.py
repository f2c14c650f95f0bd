"""The kill soak's short form (tests/stress/killsoak.py): a real daemon
killed with SIGKILL at random moments of its write paths, restarted and
checked against everything it acknowledged; and the checks themselves, shown
to catch each kind of loss.  The seed is fixed and printed with any failure,
so ``python -m tests.stress.killsoak --kills 10 --workers-share 0.3 --seed N`` replays it."""

from __future__ import annotations

import os

from twisted.trial import unittest

from tests.stress.killactors import CHURN
from tests.stress.killmodel import Model, Pending, Seen
from tests.stress.killsoak import Soak, run, summary

SEED = 4242


class ShortSoakTests(unittest.TestCase):
    def test_kills_lose_nothing_acknowledged(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        soak = run(directory, kills=10, seed=SEED, workers_share=0.3)
        report = summary(soak) + "".join("\n  " + v for v in soak.model.violations)
        self.assertEqual(soak.model.violations, [], report)
        # It did exercise the server: writes acknowledged, kills of a worker
        # and of the parent as well as of a single process.
        self.assertEqual(soak.stats.kills, 10, report)
        self.assertGreater(soak.model.acknowledged, 20, report)
        self.assertGreater(soak.stats.worker_kills + soak.stats.parent_kills, 0, report)


class AuditTests(unittest.TestCase):
    """The audit of a restarted daemon reports what a kill could have
    destroyed: here destroyed by hand between two cycles."""

    def test_lost_and_torn_messages_are_reported(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        soak = Soak(directory, seed=7)
        self.addCleanup(soak.close)
        soak.setup()
        while len(soak.model.boxes["INBOX"].messages) < 3:
            soak.cycle(1)
        self.assertEqual(soak.model.violations, [])
        soak.reap(soak.kill())
        cur = os.path.join(soak.maildir, "cur")
        first, second = sorted(os.listdir(cur))[:2]
        os.unlink(os.path.join(cur, first))
        path = os.path.join(cur, second)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 5)
        soak.verified.clear()
        soak.start_daemon(1)
        soak.audit([])
        text = "\n".join(soak.model.violations)
        self.assertIn("is lost", text)
        self.assertIn("is not the one sent", text)
        self.assertIn(f"seed {soak.seed}", text)
        self.assertTrue(CHURN in soak.model.boxes)


def seen(uidvalidity: int, uidnext: int, **messages: tuple[str, tuple[str, ...]]) -> Seen:
    """A mailbox as shown after a restart: ``u5=("k1", ("\\Seen",))``."""
    return Seen(
        uidvalidity,
        uidnext,
        {int(k[1:]): (label, frozenset(flags)) for k, (label, flags) in messages.items()},
    )


class ModelTests(unittest.SynchronousTestCase):
    """Each kind of loss the model exists to catch, shown by hand."""

    def model(self) -> Model:
        model = Model()
        for name in ("INBOX", "Archive"):
            model.created(name)
        model.appended("INBOX", 7, [1, 2], ["k1", "k2"], [frozenset({"\\Seen"}), frozenset()])
        model.appended("Archive", 8, [1], ["k3"], [frozenset()])
        return model

    def reconcile(
        self, inbox: Seen, archive: Seen | None = None, pending: tuple[Pending, ...] = ()
    ) -> list[str]:
        model = self.model()
        boxes = {"INBOX": inbox, "Archive": archive or seen(8, 2, u1=("k3", ()))}
        model.reconcile(boxes, pending)
        return model.violations

    def test_all_kept_is_no_violation(self) -> None:
        self.assertEqual(self.reconcile(seen(7, 3, u1=("k1", ("\\Seen",)), u2=("k2", ()))), [])

    def test_lost_message(self) -> None:
        (text,) = self.reconcile(seen(7, 3, u1=("k1", ("\\Seen",))))
        self.assertIn("acknowledged UID 2 (k2) is lost", text)

    def test_lost_flag(self) -> None:
        (text,) = self.reconcile(seen(7, 3, u1=("k1", ()), u2=("k2", ())))
        self.assertIn("UID 1 (k1) has flags ()", text)

    def test_duplicate(self) -> None:
        found = seen(7, 4, u1=("k1", ("\\Seen",)), u2=("k2", ()), u3=("k2", ()))
        (text,) = self.reconcile(found)
        self.assertIn("UID 3 holds k2, which nothing put there", text)

    def test_uid_reused(self) -> None:
        model = self.model()
        model.expunged("INBOX", [2])
        model.reconcile(
            {
                "INBOX": seen(7, 3, u1=("k1", ("\\Seen",)), u2=("k9", ())),
                "Archive": seen(8, 2, u1=("k3", ())),
            },
            [Pending("append", box="INBOX", labels=("k9",))],
        )
        self.assertIn("UID 2 reused", "\n".join(model.violations))

    def test_uidvalidity_and_uidnext(self) -> None:
        texts = self.reconcile(seen(9, 3, u1=("k1", ("\\Seen",)), u2=("k2", ())))
        self.assertIn("UIDVALIDITY 7 became 9", texts[0])
        texts = self.reconcile(seen(7, 2, u1=("k1", ("\\Seen",)), u2=("k2", ())))
        self.assertIn("UIDNEXT went back from 3 to 2", texts[0])

    def test_pending_operations_may_or_may_not_happen(self) -> None:
        move = Pending("move", box="INBOX", target="Archive", uids=(2,))
        store = Pending(
            "store", box="INBOX", uids=(1,), alternatives={1: (frozenset({"\\Seen"}), frozenset())}
        )
        append = Pending("append", box="INBOX", labels=("k4", "k5"), flags=frozenset())
        kept = seen(7, 5, u1=("k1", ("\\Seen",)), u2=("k2", ()))
        done = seen(7, 5, u1=("k1", ()), u3=("k4", ()), u4=("k5", ()))
        moved = seen(8, 3, u1=("k3", ()), u2=("k2", ()))
        self.assertEqual(self.reconcile(kept, None, (move, store, append)), [])
        self.assertEqual(self.reconcile(done, moved, (move, store, append)), [])

    def test_half_a_move(self) -> None:
        move = Pending("move", box="INBOX", target="Archive", uids=(2,))
        both = seen(8, 3, u1=("k3", ()), u2=("k2", ()))
        texts = self.reconcile(seen(7, 3, u1=("k1", ("\\Seen",)), u2=("k2", ())), both, (move,))
        self.assertIn("in both mailboxes", "\n".join(texts))
        texts = self.reconcile(seen(7, 3, u1=("k1", ("\\Seen",))), None, (move,))
        self.assertIn("in neither mailbox", "\n".join(texts))

    def test_partial_batch_is_counted_not_a_violation(self) -> None:
        model = self.model()
        append = Pending("append", box="INBOX", labels=("k4", "k5"), flags=frozenset())
        found = seen(7, 5, u1=("k1", ("\\Seen",)), u2=("k2", ()), u3=("k4", ()))
        model.reconcile({"INBOX": found, "Archive": seen(8, 2, u1=("k3", ()))}, [append])
        self.assertEqual((model.violations, model.partial_batches), ([], 1))

    def test_refused_append_must_not_appear(self) -> None:
        model = self.model()
        model.refused.add("k4")
        found = seen(7, 4, u1=("k1", ("\\Seen",)), u2=("k2", ()), u3=("k4", ()))
        append = Pending("append", box="INBOX", labels=("k4",))
        model.reconcile({"INBOX": found, "Archive": seen(8, 2, u1=("k3", ()))}, [append])
        self.assertIn("answered NO", "\n".join(model.violations))

    def test_mailboxes(self) -> None:
        model = self.model()
        model.created("f1")
        model.reconcile(
            {
                "INBOX": seen(7, 3, u1=("k1", ("\\Seen",)), u2=("k2", ())),
                "f2": seen(3, 1),
            },
            [Pending("rename", box="f1", target="f3")],
        )
        text = "\n".join(model.violations)
        self.assertIn("acknowledged mailbox Archive is gone", text)
        self.assertIn("f2 exists, never acknowledged", text)
        self.assertIn("RENAME f1 f3 in flight: neither name exists", text)

    def test_acknowledged_delivery_must_be_found(self) -> None:
        model = self.model()
        model.delivered("INBOX", "k6")
        model.reconcile(
            {
                "INBOX": seen(7, 3, u1=("k1", ("\\Seen",)), u2=("k2", ())),
                "Archive": seen(8, 2, u1=("k3", ())),
            },
            [],
        )
        self.assertIn("acknowledged delivery of k6 is lost", "\n".join(model.violations))

    def test_recreated_mailbox_must_not_reuse_uids(self) -> None:
        model = self.model()
        model.created("f1")
        model.appended("f1", 30, [1], ["k7"], [frozenset()])
        model.deleted("f1")
        model.created("f1")
        # Same UIDVALIDITY, UID 1 again for another message: RFC 3501 2.3.1.1.
        model.appended("f1", 30, [1], ["k8"], [frozenset()])
        self.assertIn("f1: UID 1 given to k8, was k7's", "\n".join(model.violations))
        self.assertEqual(model.gone, set())

    def test_new_uid_below_uidnext_shown_before(self) -> None:
        model = self.model()
        model.reconcile(
            {
                "INBOX": seen(7, 5, u1=("k1", ("\\Seen",)), u2=("k2", ())),
                "Archive": seen(8, 2, u1=("k3", ())),
            },
            [],
        )
        self.assertEqual(model.violations, [])
        # UIDs 3 and 4 were handed out and never used; a new message must
        # still get 5 or more (RFC 3501 2.3.1.1: strictly ascending).
        model.appended("INBOX", 7, [3], ["k4"], [frozenset()])
        self.assertIn("new UID 3 is below UIDNEXT 5", "\n".join(model.violations))
