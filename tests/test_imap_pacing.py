"""Batch pacing (mailsrv.imap.pacing): long commands leave the reactor often."""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from mailsrv.imap import pacing


class PacerTests(SynchronousTestCase):
    def run_batches(self, cost: float, rounds: int = 5) -> list[int]:
        now = [0.0]
        self.patch(time, "perf_counter", lambda: now[0])
        pacer = pacing.Pacer(500)
        sizes = []
        for _ in range(rounds):
            size = pacer.next_size()
            sizes.append(size)
            now[0] += cost * size
            pacer.done(size)
        return sizes

    def test_cheap_batches_grow_to_the_largest(self) -> None:
        sizes = self.run_batches(1e-6)
        self.assertEqual(sizes[0], 4 * pacing.SMALLEST)
        self.assertEqual(sizes[1:], [500] * 4)

    def test_costly_batches_shrink_to_the_target(self) -> None:
        # A fiftieth of the target a message (files read and decoded): 50 a batch.
        sizes = self.run_batches(pacing.TARGET / 50)
        for size in sizes[1:]:
            self.assertIn(size, (49, 50))

    def test_never_below_the_smallest(self) -> None:
        sizes = self.run_batches(1.0)
        self.assertEqual(sizes[1:], [pacing.SMALLEST] * 4)
