"""Microbenchmark: symgrad.dense kernels against BLAS and a naive Numba loop, on one core.

Shapes are the dense layers of the benchmark models, MLP(16,[64,64,1]) and MLP(2,[16,16,1]),
on blocks of examples:

- ``forward``: `dense_forward`, bias first (K = n_in + 1), as the tape's forward sums are;
- ``input grad``: `dense_forward` on cotangents (n_out = n_in of the layer, K = its n_out);
- ``weight grad``: `dense_outer`, cotangents times inputs summed over the block (the longer
  list second, as its docstring asks);
- ``per-row grad``: `dense_outer_rows`, one product per example into a (rows, P) gradient.

Contenders, timed on the same operands:

- ``dense``: the kernel, called from Python (its dispatch is part of the time);
- ``blas``: numpy's matmul (OpenBLAS on one thread) on operands already gathered into
  contiguous matrices: its best case, and not the same summation order;
- ``naive``: a Numba loop in today's tape style, one sum at a time with its accumulator in
  memory (forward), or a sequential scalar sum per gradient entry (same order as `dense`).

GFLOP/s counts a multiply and an add as 2 flops (n_out * K * nb of each). Timing: after a
warm-up, each round times every contender in turn (order rotated each round), a sample repeats
calls for about ``--target`` seconds; the table shows the median over rounds.

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
from symgrad import dense  # noqa: E402

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


def outer_case(n_i: int, n_j: int, nb: int, rng: np.random.Generator) -> dict[str, Callable]:
    work = rng.standard_normal((n_i + n_j, nb))
    a_rows = np.arange(n_i, dtype=np.int64)
    b_rows = np.arange(n_i, n_i + n_j, dtype=np.int64)
    A, Bt = work[:n_i], np.ascontiguousarray(work[n_i:].T)
    G, G2, tmp = np.zeros((n_i, n_j)), np.zeros((n_i, n_j)), np.empty((n_i, n_j))

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


# (model, what, kernel case, n_out or n_i, K or n_j)
LAYERS = [
    ("MLP(16,[64,64,1])", "forward 16->64", forward_case, 64, 17),
    ("MLP(16,[64,64,1])", "forward 64->64", forward_case, 64, 65),
    ("MLP(16,[64,64,1])", "forward 64->1", forward_case, 1, 65),
    ("MLP(16,[64,64,1])", "input grad 64->64", forward_case, 64, 64),
    ("MLP(16,[64,64,1])", "input grad 64->1", forward_case, 64, 1),
    ("MLP(16,[64,64,1])", "weight grad 16->64", outer_case, 16, 64),
    ("MLP(16,[64,64,1])", "weight grad 64->64", outer_case, 64, 64),
    ("MLP(16,[64,64,1])", "weight grad 64->1", outer_case, 1, 64),
    ("MLP(16,[64,64,1])", "per-row grad 64->64", outer_rows_case, 64, 64),
    ("MLP(2,[16,16,1])", "forward 2->16", forward_case, 16, 3),
    ("MLP(2,[16,16,1])", "forward 16->16", forward_case, 16, 17),
    ("MLP(2,[16,16,1])", "input grad 16->16", forward_case, 16, 16),
    ("MLP(2,[16,16,1])", "weight grad 2->16", outer_case, 2, 16),
    ("MLP(2,[16,16,1])", "weight grad 16->16", outer_case, 16, 16),
]
BLOCKS = (32, 128, 256)
CONTENDERS = ("dense", "blas", "naive")


def time_round(calls: dict[str, Callable], order: list[str], target: float,
               reps: dict[str, int]) -> dict[str, float]:
    out = {}
    for name in order:
        fn, n = calls[name], reps[name]
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out[name] = (time.perf_counter() - t0) / n
    return out


def bench_case(calls: dict[str, Callable], rounds: int, target: float) -> dict[str, float]:
    reps = {}
    for name, fn in calls.items():  # warm up (compiles), then size each sample
        fn()
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, int(target / max(time.perf_counter() - t0, 1e-7)))
    samples: dict[str, list[float]] = {n: [] for n in calls}
    names = list(calls)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name, t in time_round(calls, order, target, reps).items():
            samples[name].append(t)
    return {n: statistics.median(v) for n, v in samples.items()}


def run_bench(rounds: int, target: float) -> None:
    rng = np.random.default_rng(0)
    print(f"# one core; numpy {np.__version__}, numba {numba.__version__}, "
          f"vector width {dense.WIDTH} doubles, tile {dense.ROWS} x {dense.COLS}")
    head = f"{'model':18s} {'kernel':22s} {'nb':>4s}"
    print(head + "".join(f" {c + ' us':>10s} {c + ' GF/s':>11s}" for c in CONTENDERS))
    for model, what, case, m, k in LAYERS:
        for nb in BLOCKS:
            med = bench_case(case(m, k, nb, rng), rounds, target)
            flops = 2.0 * m * k * nb
            line = f"{model:18s} {what:22s} {nb:4d}"
            for c in CONTENDERS:
                line += f" {med[c] * 1e6:10.2f} {flops / med[c] / 1e9:11.1f}"
            print(line, flush=True)


# ---- compile time, in fresh processes -------------------------------------------------------

_FIRST_CALLS = """
import json, time
t0 = time.perf_counter()
import numpy as np, numba
from symgrad import dense
times = {"import": time.perf_counter() - t0}
work = np.zeros((8, 32)); rows = np.arange(4); rows2 = np.arange(4, 8)
calls = {
    "numba warm-up (trivial function)": lambda: numba.njit(lambda a: a[0])(work[0]),
    "dense_forward": lambda: dense.dense_forward(work, rows2, rows, np.zeros((4, 4)), 32),
    "dense_outer": lambda: dense.dense_outer(np.zeros((4, 4)), work, rows, rows2, 0, 32),
    "dense_outer_rows": lambda: dense.dense_outer_rows(np.zeros((32, 20)), 0, 0, 5, 1, work,
                                                        rows, rows2, 32),
    "gather": lambda: dense.gather(work[:, 0], np.zeros((2, 2), np.int64), np.zeros((2, 2))),
}
for name, fn in calls.items():
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    times[name] = (time.perf_counter() - t0, time.process_time() - c0)
print(json.dumps(times))
"""


def run_compile(repeats: int) -> None:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    results: dict[str, dict[str, list[float]]] = {"cold": {}, "warm": {}}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            env["NUMBA_CACHE_DIR"] = cache
            for state in ("cold", "warm"):
                out = subprocess.run([sys.executable, "-c", _FIRST_CALLS], env=env, check=True,
                                     capture_output=True, text=True).stdout
                for name, t in json.loads(out).items():
                    if name != "import":
                        results[state].setdefault(name, []).append(t[1])
    print(f"# first call (CPU seconds, median of {repeats} fresh processes each); a kernel's "
          "first call compiles it (cold cache) or loads it (warm)")
    print(f"{'':34s} {'cold':>8s} {'warm':>8s}")
    for name in results["cold"]:
        cold = statistics.median(results["cold"][name])
        warm = statistics.median(results["warm"][name])
        print(f"{name:34s} {cold:8.3f} {warm:8.3f}")
    kernels = [n for n in results["cold"] if not n.startswith("numba")]
    for state in ("cold", "warm"):
        total = sum(statistics.median(results[state][n]) for n in kernels)
        print(f"# all kernels, {state} cache: {total:.3f} s")


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
