"""The moons MLP trained on millions of rows held as a dask array, on a dask cluster.

The rows (x0, x1, y) of micrograd's two moons are generated block by block where dask runs the
blocks (each block from its own seed, so the data set is the same wherever it is made) and kept
there (``persist``): no machine but the workers ever holds them all. The per-example loss is
`examples/moons.py`'s, compiled once; the compiled function reaches the workers by pickling.

It prints the throughput (rows per second) of the mean gradient over all the rows,
``f.batch(params, X, reduce="mean")``, on one worker and on all of them, next to the same call
in this process on a NumPy copy of the rows; then trains with `sg.fit` (Adam over minibatches
streamed block by block), and evaluates the trained network on the cluster: the mean loss over
all rows and its accuracy.

Without ``--scheduler`` it starts a LocalCluster of two worker processes of one thread each
(Numba's threads too, ``NUMBA_NUM_THREADS=1``: one core each); with ``--scheduler
tcp://host:8786`` it uses that cluster (symgrad and the same Python packages installed on its
workers) and reports one worker and all of them.

Run: python examples/distributed.py [--rows N] [--block-rows B] [--epochs E] [--batch-size S]
     [--lr LR] [--repeats R] [--scheduler ADDRESS] [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# this file is named like the dask.distributed package: its directory must not shadow it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import dask  # noqa: E402
import dask.array as da  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import symgrad as sg  # noqa: E402
from symgrad.optim import Adam  # noqa: E402


def _moons_example() -> Any:
    """examples/moons.py, imported by path (its model and loss are the ones trained here)."""
    spec = importlib.util.spec_from_file_location("moons", HERE / "moons.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


moons = _moons_example()


def moons_block(seed: int, block_info: Any = None) -> np.ndarray:
    """One block of moons rows ``(x0, x1, y)``: points on the two half circles at random
    angles, noise 0.1, labels -1 (upper moon) and +1 (lower), from the seed and the block's
    place only."""
    (i, _), (n, _) = block_info[None]["chunk-location"], block_info[None]["chunk-shape"]
    rng = np.random.default_rng([seed, i])
    t = rng.uniform(0.0, math.pi, n)
    y = rng.choice([-1.0, 1.0], n)
    upper = y < 0
    x0 = np.where(upper, np.cos(t), 1.0 - np.cos(t))
    x1 = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    noise = rng.normal(scale=0.1, size=(n, 2))
    return np.column_stack([x0 + noise[:, 0], x1 + noise[:, 1], y])


def moons_array(n_rows: int, block_rows: int, seed: int) -> da.Array:
    """`n_rows` moons rows as a dask array of blocks of `block_rows` rows (the last smaller)."""
    sizes = [block_rows] * (n_rows // block_rows) + ([n_rows % block_rows] if n_rows % block_rows
                                                     else [])
    return da.map_blocks(moons_block, seed, chunks=(tuple(sizes), (3,)), dtype=np.float64,
                         meta=np.empty((0, 0)), name=f"moons-{seed}-{n_rows}-{block_rows}")


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """The median wall time of `repeats` calls (after one untimed call)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@contextlib.contextmanager
def connect(address: str | None) -> Iterator[tuple[Client, str]]:
    """A client of the cluster at `address`, or of a new LocalCluster of 2 one-core workers."""
    if address:
        with Client(address) as client:
            yield client, f"the cluster at {address}"
        return
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=logging.ERROR,
                      env={"NUMBA_NUM_THREADS": "1"}) as cluster, Client(cluster) as client:
        yield client, "a LocalCluster of 2 worker processes x 1 thread (NUMBA_NUM_THREADS=1)"


def throughput(client: Client, f: sg.Compiled, params: np.ndarray, X: da.Array,
               local: np.ndarray, repeats: int) -> None:
    """Rows per second of the mean gradient: this process on NumPy, one worker, all workers."""
    n = X.shape[0]
    workers = sorted(client.scheduler_info()["workers"])
    t_local = median_seconds(lambda: f.batch(params, local, reduce="mean"), repeats)
    print(f"mean gradient over {n:,} rows, median of {repeats}:")
    print(f"  {'this process, f.batch on a NumPy array':44s} {t_local:7.3f} s  "
          f"{n / t_local / 1e6:6.2f} M rows/s")
    ref = f.batch(params, local, reduce="mean")[1]
    for use in ([workers[0]], workers) if len(workers) > 1 else ([workers[0]],):
        on = client.persist(X, workers=use)  # the blocks live where they are used

        def run(on: da.Array = on, use: list[str] = use) -> np.ndarray:
            futures = client.compute(list(f.batch(params, on, reduce="mean")), workers=use,
                                     allow_other_workers=False)
            return client.gather(futures)[1]

        t = median_seconds(run, repeats)
        diff = float(np.max(np.abs(run() - ref)) / np.max(np.abs(ref)))
        what = f"dask, {len(use)} worker{'s' if len(use) > 1 else ''}, {X.numblocks[0]} blocks"
        print(f"  {what:44s} {t:7.3f} s  {n / t / 1e6:6.2f} M rows/s  "
              f"(vs this process: {t_local / t:.2f}x; max rel. diff {diff:.0e})")
        del on


def train(client: Client, f: sg.Compiled, X: da.Array, args: argparse.Namespace) -> None:
    """`sg.fit` over the dask array, then the trained network's loss and accuracy over all
    rows, computed on the cluster."""
    n = X.shape[0]
    how = (f"minibatches of {args.batch_size:,} rows, the blocks streamed here one at a time"
           if args.batch_size < n else "full batches, the mean gradient computed on the cluster")
    print(f"training: {args.epochs} epoch(s) of Adam (lr {args.lr}), {how} ...")
    t0 = time.perf_counter()
    params, losses = sg.fit(f, None, X, optimizer=Adam(args.lr), epochs=args.epochs,
                            batch_size=args.batch_size, seed=args.seed, progress=False)
    t_train = time.perf_counter() - t0
    for e, loss in enumerate(losses):
        print(f"  epoch {e + 1}/{args.epochs}: mean loss {loss:.4f}")
    steps = args.epochs * -(-n // args.batch_size)
    print(f"  {t_train:.1f} s, {args.epochs * n / t_train / 1e6:.2f} M rows/s ({steps:,} steps)")
    values = f.batch_forward(params, X)  # per-row losses, on the cluster
    mean_loss, accuracy = dask.compute(values.mean(), (values < 1.0).mean())
    # relu(1 - y * score) < 1 exactly when y * score > 0: the point is on the right side
    print(f"trained: mean loss over all {n:,} rows {mean_loss:.4f}, accuracy {accuracy:.2%} "
          "(computed on the cluster)")


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the rows on the cluster, time the gradient, train, evaluate."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=3_000_000, help="rows (default 3,000,000)")
    ap.add_argument("--block-rows", type=int, default=250_000,
                    help="rows per dask block (default 250,000)")
    ap.add_argument("--epochs", type=int, default=1, help="passes over the data (default 1)")
    ap.add_argument("--batch-size", type=int, default=1000, help="rows per step (default 1000)")
    ap.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate (default 0.01)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per row (default 3)")
    ap.add_argument("--scheduler", default=None, metavar="ADDRESS",
                    help="a dask scheduler's address (default: start a LocalCluster)")
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    if min(args.rows, args.block_rows, args.epochs, args.batch_size, args.repeats) < 1:
        ap.error("--rows, --block-rows, --epochs, --batch-size and --repeats must be positive")

    model = moons.make_model(args.seed)
    f = moons.compile_loss(model)
    f.wait()  # the tape interpreter may still be building: time the kernels, not their build
    X = moons_array(args.rows, args.block_rows, args.seed)
    print(f"moons: {args.rows:,} rows in {X.numblocks[0]} blocks of up to {args.block_rows:,} "
          f"(a dask array); MLP(2, [16, 16, 1]), {f.n_params} parameters, lowering {f.lowering}")
    with connect(args.scheduler) as (client, what):
        print(f"cluster: {what}")
        local = X.compute()  # a NumPy copy for the single-process comparison only
        throughput(client, f, f.current_params(), X, local, args.repeats)
        del local
        train(client, f, client.persist(X), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
