"""Microbenchmark: nanoseconds per value of symgrad.vecmath's ports against libm, in a loop.

Each contender is the same njit loop, `out[j] = f(xs[j])` over a contiguous float64 array, with
`f` one of:

- ``port (fma)`` / ``port (no fma)``: `symgrad.vecmath.<op>_fma` / `<op>_nofma`, inlined and
  vectorised; the table marks the one that verified on this machine (the other is timed for
  comparison only: it does not give libm's bits here);
- ``libm``: `<op>_libm`, a call of the C library's function for each value;
- ``numba math``: `math.<op>` as numba compiles it (for sigmoid, `1 / (1 + math.exp(-x))`),
  what generated code calls without vecmath.

Inputs: tanh on [-5, 5], exp on [-20, 20], sigmoid on [-10, 10], log on [1e-3, 1e3] (uniform in
the logarithm). Timings come from one process with interleaved rounds: every round calls each
contender once, in rotated order, and the table reports the median over the rounds; a call on
fewer values is repeated so that one sample lasts about a millisecond. The first line gives the
time `vecmath.status()` took in this process (the ports' verification, with any JIT or cache
loading it needed).

Usage::

    python benchmarks/vecmath_bench.py                     # n = 10,000 and 100,000, 21 rounds
    python benchmarks/vecmath_bench.py --n 100000 --rounds 41 --ops tanh,exp
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's symgrad

from symgrad import vecmath


def _loop(fn: Callable[[float], float]) -> Callable[[np.ndarray, np.ndarray], None]:
    @numba.njit
    def run(xs, out):
        for j in range(xs.size):
            out[j] = fn(xs[j])

    return run


@numba.njit
def _numba_tanh(x):
    return math.tanh(x)


@numba.njit
def _numba_exp(x):
    return math.exp(x)


@numba.njit
def _numba_log(x):
    return math.log(x)


@numba.njit(error_model="numpy")
def _numba_sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


NUMBA_MATH = {"tanh": _numba_tanh, "exp": _numba_exp, "log": _numba_log,
              "sigmoid": _numba_sigmoid}


def inputs(op: str, n: int) -> np.ndarray:
    """The benchmark's inputs for `op`: fixed, in a range where the function is not flat."""
    rng = np.random.default_rng(0)
    if op == "log":
        return np.exp(rng.uniform(math.log(1e-3), math.log(1e3), n))
    half = {"tanh": 5.0, "exp": 20.0, "sigmoid": 10.0}[op]
    return rng.uniform(-half, half, n)


def contenders(op: str) -> dict[str, Callable]:
    """Label -> compiled loop, for one op."""
    return {
        "port (fma)": _loop(getattr(vecmath, f"{op}_fma")),
        "port (no fma)": _loop(getattr(vecmath, f"{op}_nofma")),
        "libm": _loop(getattr(vecmath, f"{op}_libm")),
        "numba math": _loop(NUMBA_MATH[op]),
    }


def time_op(op: str, n: int, rounds: int) -> dict[str, float]:
    """Median nanoseconds per value of each contender, from interleaved rounds."""
    xs = inputs(op, n)
    out = np.empty_like(xs)
    loops = contenders(op)
    for run in loops.values():
        run(xs, out)  # compile and warm up
    start = time.perf_counter()
    next(iter(loops.values()))(xs, out)
    reps = max(1, int(1e-3 / max(time.perf_counter() - start, 1e-9)))
    samples: dict[str, list[float]] = {label: [] for label in loops}
    labels = list(loops)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            run = loops[label]
            t0 = time.perf_counter()
            for _ in range(reps):
                run(xs, out)
            samples[label].append((time.perf_counter() - t0) / (reps * n) * 1e9)
    return {label: statistics.median(s) for label, s in samples.items()}


def table(results: dict[tuple[str, int], dict[str, float]], verdicts: dict[str, str]) -> str:
    """The results as a markdown table; the verified port is marked with *."""
    lines = ["| op | n | contender | ns/value | vs libm |", "| --- | --- | --- | --- | --- |"]
    for (op, n), times in results.items():
        verified = {"exact port (fma)": "port (fma)",
                    "exact port (no fma)": "port (no fma)"}.get(verdicts[op])
        for label, ns in times.items():
            mark = " *" if label == verified else ""
            lines.append(f"| {op} | {n:,} | {label}{mark} | {ns:.2f} | "
                         f"{ns / times['libm']:.2f}x |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", default="10000,100000",
                   help="values per loop, comma-separated (default 10000,100000)")
    p.add_argument("--rounds", type=int, default=21, help="interleaved rounds (default 21)")
    p.add_argument("--ops", default=",".join(vecmath.OPS),
                   help=f"comma-separated subset of {','.join(vecmath.OPS)}")
    args = p.parse_args(argv)
    args.n = [int(v) for v in args.n.split(",")]
    args.ops = args.ops.split(",")
    unknown = sorted(set(args.ops) - set(vecmath.OPS))
    if unknown:
        p.error(f"unknown op(s) {', '.join(unknown)}; expected some of {', '.join(vecmath.OPS)}")
    if args.rounds < 1 or min(args.n) < 1:
        p.error("--rounds and --n must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Verify, time, print the table."""
    args = parse_args(argv)
    t0 = time.perf_counter()
    verdicts = vecmath.status()
    verify_s = time.perf_counter() - t0
    print(f"# {platform.processor() or platform.machine()}, {' '.join(platform.libc_ver())}, "
          f"numba {numba.__version__}, python {platform.python_version()}")
    print(f"# vecmath.status() took {verify_s:.3f} s in this process: "
          + ", ".join(f"{op}: {v}" for op, v in verdicts.items()))
    results = {}
    for op in args.ops:
        for n in args.n:
            print(f"timing {op} n={n}", file=sys.stderr)
            results[(op, n)] = time_op(op, n, args.rounds)
    print(table(results, verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
