"""The parsers' work grows linearly with their input, even at its worst.

Each case of :mod:`fuzz.pathological` is an input built to make one entry
point work hard (many literals in one command, thousands of MIME parts,
deeply nested parentheses...).  The work it causes is counted in function
calls, at 16 KiB and at 64 KiB: four times the input may cost at most a
little over four times the calls.  A quadratic parser (the framer used to
search all of a command's segments at each literal, so 64 KiB of literals
took seconds) fails here whatever the machine's speed.  The time each case
takes is measured by ``python -m fuzz.worst`` (docs/security.md).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from fuzz.pathological import BOUND_SIZE, CASES, calls

SMALL = BOUND_SIZE // 4
#: Four times the input, at most this many times the work.
GROWTH = 4.6


class LinearWorkTests(SynchronousTestCase):
    def test_every_case_grows_linearly(self) -> None:
        for name, case in CASES.items():
            small, large = case.build(SMALL), case.build(BOUND_SIZE)
            self.assertLessEqual(len(large), BOUND_SIZE, name)
            self.assertGreater(len(large), BOUND_SIZE * 0.9, name)
            work = calls(case.entry, small), calls(case.entry, large)
            self.assertLessEqual(work[1], work[0] * GROWTH, f"{name}: {work[0]} -> {work[1]} calls")

    def test_many_literals_in_one_command(self) -> None:
        """The framer's case alone, at a size where quadratic work is plain."""
        case = CASES["imap literals"]
        small, large = calls(case.entry, case.build(4096)), calls(case.entry, case.build(65536))
        self.assertLessEqual(large, small * 16 * 1.15)
