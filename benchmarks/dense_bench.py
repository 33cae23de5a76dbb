"""Microbenchmark: symgrad.executors.dense kernels against BLAS and a naive Numba loop, on one core.

Shapes are the dense layers of the benchmark models, MLP(16,[64,64,1]) and MLP(2,[16,16,1]),
on blocks of examples:

- ``forward``: `dense_forward`, bias first (K = n_in + 1), as the tape's forward sums are;
- ``input grad``: `dense_forward` on cotangents (n_out = n_in of the layer, K = its n_out);
- ``weight grad``: `dense_outer`, cotangents times inputs summed over the block (the lists
  in the order `outer_swapped` picks);
- ``per-row grad``: `dense_outer_rows`, one product per example into a (rows, P) gradient.

Contenders, timed on the same operands:

- ``dense``: the kernel, called from Python (its dispatch is part of the time);
- ``blas``: numpy's matmul (OpenBLAS on one thread) on operands already gathered into
  contiguous matrices: its best case, and not the same summation order;
- ``naive``: a Numba loop in today's tape style, one sum at a time with its accumulator in
  memory (forward), or a sequential scalar sum per gradient entry (same order as `dense`).

GFLOP/s counts a multiply and an add as 2 flops (n_out * K * nb of each). Timing: after a
warm-up, each round times every contender in turn (order rotated each round), a sample repeats
calls for about ``--target`` seconds; the table shows the median over rounds. Samples are the
calling thread's CPU time, so time the machine gives to other processes is not counted (the
kernels and BLAS run on that thread).

``--compile`` instead measures JIT cost in fresh processes: each kernel's first call with a cold
Numba cache (an empty ``NUMBA_CACHE_DIR``), then the same with the cache warm. ``--asm`` prints
the vector instructions of the tiles' machine code.

Usage::

    python benchmarks/dense_bench.py [--rounds 9] [--target 0.02] [--compile] [--asm]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads BLAS: one core

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from symgrad.executors import dense  # noqa: E402

# ---- naive Numba loops: how the tape computes these today -------------------------------------


@numba.njit(nogil=True, cache=True)
def naive_forward(work, out_rows, x_rows, W, nb, acc):
    for o in range(W.shape[0]):
        for k in range(W.shape[1]):
            x = x_rows[k]
            w = W[o, k]
            if k == 0:
                for e in range(nb):
                    acc[e] = work[x, e] * w
            else:
                for e in range(nb):
                    acc[e] = acc[e] + work[x, e] * w
        dest = out_rows[o]
        for e in range(nb):
            work[dest, e] = acc[e]


@numba.njit(nogil=True, cache=True)
def naive_outer(G, work, a_rows, b_rows, e0, e1):
    for i in range(G.shape[0]):
        for j in range(G.shape[1]):
            a, b = a_rows[i], b_rows[j]
            s = G[i, j]
            for e in range(e0, e1):
                s = s + work[a, e] * work[b, e]
            G[i, j] = s


@numba.njit(nogil=True, cache=True)
def naive_outer_rows(out, row0, col0, di, dj, work, a_rows, b_rows, nb):
    for i in range(a_rows.shape[0]):
        for j in range(b_rows.shape[0]):
            a, b = a_rows[i], b_rows[j]
            c = col0 + i * di + j * dj
            for e in range(nb):
                out[row0 + e, c] = out[row0 + e, c] + work[a, e] * work[b, e]


# ---- cases ------------------------------------------------------------------------------------


def forward_case(n_out: int, K: int, nb: int, rng: np.random.Generator) -> dict[str, Callable]:
    work = rng.standard_normal((K + n_out, nb))
    x_rows = rng.permutation(K + n_out)[:K].astype(np.int64)
    out_rows = np.setdiff1d(np.arange(K + n_out), x_rows).astype(np.int64)
    W = rng.standard_normal((n_out, K))
    X = np.ascontiguousarray(work[x_rows])
    Y = np.empty((n_out, nb))
    acc = np.empty(nb)
    return {
        "dense": lambda: dense.dense_forward(work, out_rows, x_rows, W, nb),
        "blas": lambda: np.matmul(W, X, out=Y),
        "naive": lambda: naive_forward(work, out_rows, x_rows, W, nb, acc),
    }


def outer_case(n_ct: int, n_x: int, nb: int, rng: np.random.Generator) -> dict[str, Callable]:
    # a layer's weight gradient: cotangents (n_ct) times inputs (n_x), the lists in the order
    # outer_swapped picks
    work = rng.standard_normal((n_ct + n_x, nb))
    ct, x = np.arange(n_ct, dtype=np.int64), np.arange(n_ct, n_ct + n_x, dtype=np.int64)
    a_rows, b_rows = (x, ct) if dense.outer_swapped(n_ct, n_x) else (ct, x)
    A, Bt = work[a_rows], np.ascontiguousarray(work[b_rows].T)
    G, G2 = np.zeros((len(a_rows), len(b_rows))), np.zeros((len(a_rows), len(b_rows)))
    tmp = np.empty_like(G)

    def blas() -> None:
        np.matmul(A, Bt, out=tmp)
        G2.__iadd__(tmp)

    return {
        "dense": lambda: dense.dense_outer(G, work, a_rows, b_rows, 0, nb),
        "blas": blas,
        "naive": lambda: naive_outer(G2, work, a_rows, b_rows, 0, nb),
    }


def outer_rows_case(n_i: int, n_j: int, nb: int, rng: np.random.Generator) -> dict[str, Callable]:
    work = rng.standard_normal((n_i + n_j, nb))
    a_rows = np.arange(n_i, dtype=np.int64)
    b_rows = np.arange(n_i, n_i + n_j, dtype=np.int64)
    out = np.zeros((nb, n_i * (n_j + 1)))
    A, B = work[:n_i], work[n_i:]
    view = out.reshape(nb, n_i, n_j + 1)[:, :, :n_j]

    def blas() -> None:  # numpy's broadcast product, then the add
        view.__iadd__(A.T[:, :, None] * B.T[:, None, :])

    return {
        "dense": lambda: dense.dense_outer_rows(out, 0, 0, n_j + 1, 1, work, a_rows, b_rows, nb),
        "blas": blas,
        "naive": lambda: naive_outer_rows(out, 0, 0, n_j + 1, 1, work, a_rows, b_rows, nb),
    }


# (model, what, kernel case, n_out or cotangents, K or inputs, blocks)
BIG, SMALL = "MLP(16,[64,64,1])", "MLP(2,[16,16,1])"
BIG_BLOCKS, SMALL_BLOCKS = (32, 128, 256), (32, 100)
LAYERS = [
    (BIG, "forward 16->64", forward_case, 64, 17, BIG_BLOCKS),
    (BIG, "forward 64->64", forward_case, 64, 65, BIG_BLOCKS),
    (BIG, "forward 64->1", forward_case, 1, 65, BIG_BLOCKS),
    (BIG, "input grad 64->64", forward_case, 64, 64, BIG_BLOCKS),
    (BIG, "input grad 64->1", forward_case, 64, 1, BIG_BLOCKS),
    (BIG, "weight grad 16->64", outer_case, 64, 16, BIG_BLOCKS),
    (BIG, "weight grad 64->64", outer_case, 64, 64, BIG_BLOCKS),
    (BIG, "weight grad 64->1", outer_case, 1, 64, BIG_BLOCKS),
    (BIG, "per-row grad 64->64", outer_rows_case, 64, 64, BIG_BLOCKS),
    (SMALL, "forward 2->16", forward_case, 16, 3, SMALL_BLOCKS),
    (SMALL, "forward 16->16", forward_case, 16, 17, SMALL_BLOCKS),
    (SMALL, "forward 16->1", forward_case, 1, 17, SMALL_BLOCKS),
    (SMALL, "input grad 16->16", forward_case, 16, 16, SMALL_BLOCKS),
    (SMALL, "weight grad 2->16", outer_case, 16, 2, SMALL_BLOCKS),
    (SMALL, "weight grad 16->16", outer_case, 16, 16, SMALL_BLOCKS),
    (SMALL, "weight grad 16->1", outer_case, 1, 16, SMALL_BLOCKS),
]
CONTENDERS = ("dense", "blas", "naive")


def time_round(calls: dict[str, Callable], order: list[str], target: float,
               reps: dict[str, int]) -> dict[str, float]:
    out = {}
    for name in order:
        fn, n = calls[name], reps[name]
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        out[name] = (time.thread_time() - t0) / n
    return out


def bench_case(calls: dict[str, Callable], rounds: int, target: float) -> dict[str, float]:
    reps = {}
    for name, fn in calls.items():  # warm up (compiles), then size each sample
        fn()
        t0 = time.perf_counter()
        for _ in range(10):
            fn()
        reps[name] = max(1, int(target / max((time.perf_counter() - t0) / 10, 1e-7)))
    samples: dict[str, list[float]] = {n: [] for n in calls}
    names = list(calls)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name, t in time_round(calls, order, target, reps).items():
            samples[name].append(t)
    return {n: statistics.median(v) for n, v in samples.items()}


def run_bench(rounds: int, target: float) -> None:
    rng = np.random.default_rng(0)
    thin = ", ".join(f"{r} x {dense.THIN_CHAINS // r * dense.WIDTH}" for r in range(1, dense.ROWS))
    print(f"# one core; numpy {np.__version__}, numba {numba.__version__}, "
          f"vector width {dense.WIDTH} doubles, tile {dense.ROWS} x {dense.COLS}, "
          f"thin tiles {thin} (narrow: {dense.NARROW_COLS} lanes)")
    head = f"{'model':18s} {'kernel':22s} {'nb':>4s}"
    print(head + "".join(f" {c + ' us':>10s} {c + ' GF/s':>11s}" for c in CONTENDERS))
    for model, what, case, m, k, blocks in LAYERS:
        for nb in blocks:
            med = bench_case(case(m, k, nb, rng), rounds, target)
            flops = 2.0 * m * k * nb
            line = f"{model:18s} {what:22s} {nb:4d}"
            for c in CONTENDERS:
                line += f" {med[c] * 1e6:10.2f} {flops / med[c] / 1e9:11.1f}"
            print(line, flush=True)


# ---- compile time, in fresh processes -------------------------------------------------------

_FIRST_CALLS = """
import json, sys, time
import numpy as np, numba
times = {}
if sys.argv[1] == "after-tape":  # the process has compiled symgrad's tape interpreter first
    from symgrad.executors.interpreter import _Interpreter
    c0 = time.process_time()
    _Interpreter.get()
    times["tape interpreter (context)"] = time.process_time() - c0
else:
    c0 = time.process_time()
    numba.njit(lambda a: a[0])(np.zeros(1))
    times["numba warm-up (context)"] = time.process_time() - c0
from symgrad.executors import dense
work = np.zeros((8, 32)); rows = np.arange(4); rows2 = np.arange(4, 8)
calls = {
    "dense_forward": lambda: dense.dense_forward(work, rows2, rows, np.zeros((4, 4)), 32),
    "dense_outer": lambda: dense.dense_outer(np.zeros((4, 4)), work, rows, rows2, 0, 32),
    "dense_outer_rows": lambda: dense.dense_outer_rows(np.zeros((32, 20)), 0, 0, 5, 1, work,
                                                        rows, rows2, 32),
    "gather": lambda: dense.gather(work[:, 0], np.zeros((2, 2), np.int64), np.zeros((2, 2))),
}
for name, fn in calls.items():
    c0 = time.process_time()
    fn()
    times[name] = time.process_time() - c0
print(json.dumps(times))
"""


def _first_calls(context: str, cache: str) -> dict[str, float]:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), NUMBA_CACHE_DIR=cache, SYMGRAD_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", _FIRST_CALLS, context], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def run_compile(repeats: int) -> None:
    """Cold and warm first calls, in fresh processes with a fresh cache directory each."""
    columns = [("alone", "cold"), ("alone", "warm"), ("after-tape", "cold")]
    results: dict[tuple[str, str], dict[str, list[float]]] = {c: {} for c in columns}
    for _ in range(repeats):
        for context in ("alone", "after-tape"):
            with tempfile.TemporaryDirectory() as cache:
                for state in ("cold", "warm")[: 2 if context == "alone" else 1]:
                    for name, t in _first_calls(context, cache).items():
                        results[(context, state)].setdefault(name, []).append(t)
    print(f"# first call, CPU seconds (median of {repeats} fresh processes): a cold cache "
          "compiles, a warm one loads; 'after tape' runs in a process that compiled symgrad's "
          "tape interpreter first (cold), as a model's first compile does")
    print(f"{'':30s} {'alone cold':>11s} {'alone warm':>11s} {'after tape':>11s}")
    names = [n for c in columns for n in results[c]]
    for name in dict.fromkeys(names):
        cells = [statistics.median(results[c][name]) if name in results[c] else None
                 for c in columns]
        print(f"{name:30s}" + "".join(f" {'':>11s}" if v is None else f" {v:11.3f}"
                                      for v in cells))
    for c in columns:
        total = sum(statistics.median(v) for n, v in results[c].items() if "context" not in n)
        print(f"# all four kernels, {c[0]}, {c[1]} cache: {total:.3f} s")


def run_asm() -> None:
    f64, i64, i = numba.float64[:, ::1], numba.int64[::1], numba.int64
    sigs = {"dense_forward": (f64, i64, i64, f64, i), "dense_outer": (f64, f64, i64, i64, i, i)}
    for name, sig in sigs.items():
        fn = numba.njit(nogil=True)(getattr(dense, name).py_func)  # uncached: readable asm
        fn.compile(sig)
        asm = fn.inspect_asm(fn.signatures[0])
        counts = {op: len(re.findall(rf"\b{op}\b", asm))
                  for op in ("vmulpd", "vaddpd", "vbroadcastsd", "mulsd", "addsd")}
        fma = len(re.findall(r"\bvf[n]?m(add|sub)", asm))
        regs = sorted(set(re.findall(r"%([xyz]mm)\d+", " ".join(
            ln for ln in asm.splitlines() if "vaddpd" in ln or "vmulpd" in ln))))
        print(f"{name}: {counts}, fused multiply-adds: {fma}, vector registers: {regs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--target", type=float, default=0.02, help="seconds per sample")
    ap.add_argument("--compile", action="store_true", help="measure cold/warm JIT cost only")
    ap.add_argument("--repeats", type=int, default=3, help="processes per --compile state")
    ap.add_argument("--asm", action="store_true", help="print the tiles' vector instructions")
    args = ap.parse_args()
    if args.compile:
        run_compile(args.repeats)
    elif args.asm:
        run_asm()
    else:
        run_bench(args.rounds, args.target)


if __name__ == "__main__":
    main()
