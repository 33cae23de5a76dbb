"""The ``distributed`` workload of bench.py: the batch gradient on dask against the local one.

The small model's loss (MLP(2,[16,16,1]), ``(out - y)**2``) summed over 1,000,000 rows
(``--quick``: 200,000 and fewer rounds), timed as ``f.batch(params, X, reduce="sum")``:

- ``local``: X a NumPy array, this process (Numba's default threads);
- ``dask threads``: X a dask array of `BLOCKS` blocks, dask's threaded scheduler, this process;
- ``LocalCluster 1 worker`` / ``2 workers``: the same blocks kept (``persist``) on a LocalCluster
  of worker processes with one thread each (``NUMBA_NUM_THREADS=1``: one core each); the call
  submits the graph and gathers the gradient.

The per-block overhead is what each extra block costs: the same rows in `MANY_BLOCKS` blocks
against `BLOCKS`, ``(t_many - t_few) / (MANY_BLOCKS - BLOCKS)``, on the threaded scheduler and
on the two-worker cluster. Every gradient is checked against the local one before timing. Both
clusters stay up during the timing, so the rounds interleave every contender as bench.py does.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import ModuleType
from typing import Any

import numpy as np

import symgrad as sg

ROWS = 1_000_000
ROWS_QUICK = 200_000
BLOCKS = 16
MANY_BLOCKS = 256


def run(args: argparse.Namespace, skips: set[str], bench: ModuleType) -> tuple[str, bool]:
    """Time the workload; returns the report and whether something failed."""
    if "distributed" in skips:
        return "skipped: --skip distributed", False
    if not (bench.have_module("dask") and bench.have_module("distributed")):
        return ("skipped: dask and distributed not installed (pip install "
                "'symgrad[distributed]')"), False
    rows = ROWS_QUICK if args.quick else ROWS
    model = bench.make_model("distributed", 2, [16, 16, 1], rows, args.seed)
    model = replace(model, title=f"{model.title} distributed")
    bench.log(f"\n== {model.title}: {bench.n_params(model.sizes)} parameters, {model.n:,} "
              f"rows; starting two LocalClusters (1 and 2 workers) ...")
    loss, leaves, inputs = bench.symgrad_loss(model)
    f = sg.compile(loss, wrt=leaves, inputs=inputs)
    f.wait()
    params, XY = model.params.copy(), model.XY
    with _cluster(1) as one, _cluster(2) as two:
        results = _contenders(f, params, XY, one, two, bench)
        failed = _check(results, f, params, XY, bench)
        timed = [r for r in results if not r.error]
        bench.time_rounds(timed, args.target, max(3, args.rounds))
        for r in results:
            r.call = None
    return _report(model, results, bench), failed


@contextlib.contextmanager
def _cluster(workers: int) -> Iterator[Any]:
    """A client of a new LocalCluster of `workers` one-core worker processes."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=logging.ERROR,
                      env={"NUMBA_NUM_THREADS": "1"}) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


def _contenders(f: sg.Compiled, params: np.ndarray, XY: np.ndarray, one: Any, two: Any,
                bench: ModuleType) -> list[Any]:
    """The timed calls, as bench.Result objects (label, blocks and workers in the label)."""
    import dask
    import dask.array as da

    def local() -> tuple[float, np.ndarray]:
        values, grad = f.batch(params, XY)
        return float(np.sum(values)), grad

    def threaded(blocks: int) -> Callable[[], tuple[float, np.ndarray]]:
        X = da.from_array(XY, chunks=(-(-XY.shape[0] // blocks), XY.shape[1]))

        def call() -> tuple[float, np.ndarray]:
            values, grad = dask.compute(*f.batch(params, X), scheduler="threads")
            return float(np.sum(values)), grad
        return call

    def on_cluster(client: Any, blocks: int) -> Callable[[], tuple[float, np.ndarray]]:
        X = client.persist(da.from_array(XY, chunks=(-(-XY.shape[0] // blocks), XY.shape[1])))

        def call() -> tuple[float, np.ndarray]:
            values, grad = client.gather(client.compute(list(f.batch(params, X))))
            return float(np.sum(values)), grad
        return call

    setups = [
        ("local", "local f.batch, NumPy X, this process", lambda: local),
        (f"threads/{BLOCKS}", f"dask threads, {BLOCKS} blocks", lambda: threaded(BLOCKS)),
        (f"threads/{MANY_BLOCKS}", f"dask threads, {MANY_BLOCKS} blocks",
         lambda: threaded(MANY_BLOCKS)),
        (f"1w/{BLOCKS}", f"LocalCluster 1 worker x 1 thread, {BLOCKS} blocks",
         lambda: on_cluster(one, BLOCKS)),
        (f"2w/{BLOCKS}", f"LocalCluster 2 workers x 1 thread, {BLOCKS} blocks",
         lambda: on_cluster(two, BLOCKS)),
        (f"2w/{MANY_BLOCKS}", f"LocalCluster 2 workers x 1 thread, {MANY_BLOCKS} blocks",
         lambda: on_cluster(two, MANY_BLOCKS)),
    ]
    out = []
    for key, label, setup in setups:
        res = bench.Result(key, label)
        bench.log(f"   setting up {label} ...")
        try:
            res.call = setup()
            res.first = res.call()  # workers load the function, blocks settle
        except Exception as e:  # reported in the table; the run's exit status says it
            res.error = f"{type(e).__name__}: {e}"
            res.call = None
            bench.log(f"   {label} FAILED: {res.error}")
        out.append(res)
    return out


def _check(results: list[Any], f: sg.Compiled, params: np.ndarray, XY: np.ndarray,
           bench: ModuleType) -> bool:
    """Every gradient against the local one (to `bench.GRAD_TOL`); True if one failed."""
    ref_value, ref_grad = float(np.sum(f.batch(params, XY)[0])), f.batch(params, XY)[1]
    failed = False
    for r in results:
        if r.first is None:
            failed = True
            continue
        d = max(bench._max_rel_diff(r.first[0], ref_value),
                bench._max_rel_diff(r.first[1], ref_grad))
        r.note = f"grad ~ local {d:.0e}"
        if d > bench.GRAD_TOL:
            r.error = f"gradient differs from the local one by {d:.2e}"
            r.call = None
            failed = True
    return failed


def _report(model: Any, results: list[Any], bench: ModuleType) -> str:
    """The table: per call, rows per second, against local; then the per-block overheads."""
    by_key = {r.contender: r for r in results}
    base = by_key["local"].per_call
    rows = []
    for r in results:
        if r.error:
            rows.append([r.label, "-", "-", "-", "FAILED " + r.error[:70]])
            continue
        pc = r.per_call
        rows.append([r.label, bench.fmt_time(pc), f"{model.n / pc / 1e6:.2f} M" if pc else "-",
                     f"{base / pc:.2f}x" if pc and base else "-", r.note])
    text = bench.table(rows, ["contender", "per call", "rows/s", "speed vs local", "note"])
    lines = []
    for what, few, many in (("dask threads", f"threads/{BLOCKS}", f"threads/{MANY_BLOCKS}"),
                            ("LocalCluster 2 workers", f"2w/{BLOCKS}", f"2w/{MANY_BLOCKS}")):
        a, b = by_key[few].per_call, by_key[many].per_call
        if a and b and not (by_key[few].error or by_key[many].error):
            lines.append(f"  {what}: {bench.fmt_time((b - a) / (MANY_BLOCKS - BLOCKS))} per "
                         f"block ({BLOCKS} -> {MANY_BLOCKS} blocks of the same rows)")
    return (f"{model.title}: f.batch(params, X, reduce='sum'), {model.n:,} rows\n\n" + text
            + "\n\nper-block overhead, (t(many blocks) - t(few)) / (extra blocks):\n"
            + ("\n".join(lines) if lines else "  not measured")
            + "\n\nrows/s: rows / median per-call time; speed vs local: local time / this one "
              "(above 1: faster).\nThe cluster calls submit the graph and gather the gradient; "
              "their blocks are kept on the\n  workers (persist). Worker processes run one "
              "thread each (NUMBA_NUM_THREADS=1).")
