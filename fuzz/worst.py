"""Time the worst cases of :mod:`fuzz.pathological` at the bound's size.

    python -m fuzz.worst [--size 65536] [--repeat 5] [--limit-ms 10]

Prints, per case, the best of ``--repeat`` runs (the machine's noise only
ever adds time) and marks those over ``--limit-ms``; exits 1 if any is.
Not part of the test suite: a machine's speed is no test's business
(``tests/test_fuzz_bounds.py`` checks the growth instead).
"""

from __future__ import annotations

import argparse
import sys
import time

from fuzz.pathological import BOUND_SIZE, CASES


def measure(name: str, size: int, repeat: int) -> tuple[float, int]:
    """Best time in seconds of ``repeat`` runs, and the input's size."""
    case = CASES[name]
    data = case.build(size)
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        case.entry(data)
        best = min(best, time.perf_counter() - started)
    return best, len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=BOUND_SIZE)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--limit-ms", type=float, default=10.0)
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    args = parser.parse_args(argv)
    over = 0
    for name in args.cases or CASES:
        seconds, size = measure(name, args.size, args.repeat)
        mark = "" if seconds * 1000 <= args.limit_ms else "  OVER"
        over += bool(mark)
        print(f"{seconds * 1000:8.2f} ms  {size:6d} octets  {name}{mark}")
    print(f"{over} of {len(args.cases or CASES)} over {args.limit_ms:g} ms")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
