"""Batches and training over dask arrays (`symgrad.distributed`).

Oracles: the single-machine ``f.batch`` on the same rows (itself checked against the
interpreted engine elsewhere); the documented order of a distributed sum written out here from
its description (each block summed in the chunks of `symgrad.layout`'s rule, the block sums
added by groups of `FAN_IN`), applied to per-row gradients; `fit`'s epochs replayed from the
documented order of blocks and rows; and a NumPy `X`, whose `fit` one block must reproduce.
The cluster tests run a `dask.distributed.LocalCluster` of two worker processes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import symgrad as sg
from symgrad.optim import Adam
from tests.cases import lecture_neuron

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")

from symgrad.distributed import FAN_IN  # noqa: E402  (needs dask)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def neuron() -> sg.Compiled:
    o, wrt, inputs = lecture_neuron()
    return sg.compile(o, wrt=wrt, inputs=inputs, name="neuron")


@pytest.fixture(scope="module")
def two_outputs() -> sg.Compiled:
    o, wrt, inputs = lecture_neuron()
    return sg.compile([o, o * inputs[0]], wrt=wrt, inputs=inputs, name="two")


@pytest.fixture(scope="module")
def loss() -> sg.Compiled:
    """A scalar per-example loss for `fit`: (tanh(w.x + b) - y)**2."""
    w = [sg.Value(0.3, label="w0"), sg.Value(-0.2, label="w1")]
    b = sg.Value(0.1, label="b")
    x = [sg.Value(0.0, label="x0"), sg.Value(0.0, label="x1")]
    y = sg.Value(0.0, label="y")
    out = (w[0] * x[0] + w[1] * x[1] + b).tanh()
    return sg.compile((out - y) ** 2, wrt=[*w, b], inputs=[*x, y], name="loss")


def rows(n: int, width: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width))


# ---- the documented order, written out from its description ---------------------------------


def layout_sum(grads: np.ndarray) -> np.ndarray:
    """A batch's sum as every exact executor adds it: chunks of consecutive rows (at most 16, one
    per 32 rows, starts rounded down to multiples of 16), each from 0.0 in row order, then the
    chunk sums in order into 0.0."""
    n = grads.shape[0]
    chunks = max(1, min(16, n // 32))
    starts = [(c * n // chunks) // 16 * 16 for c in range(chunks)] + [n]
    total = np.zeros(grads.shape[1:])
    for c in range(chunks):
        buf = np.zeros(grads.shape[1:])
        for r in range(starts[c], starts[c + 1]):
            buf += grads[r]
        total += buf
    return total


def tree_sum(parts: list[np.ndarray]) -> np.ndarray:
    """Groups of FAN_IN consecutive parts, each added left to right from 0.0, until one is left."""
    while len(parts) > 1:
        groups = [parts[j: j + FAN_IN] for j in range(0, len(parts), FAN_IN)]
        parts = []
        for group in groups:
            total = np.zeros_like(group[0])
            for g in group:
                total += g
            parts.append(total)
    return parts[0]


def documented_sum(f: sg.Compiled, p: np.ndarray, X: np.ndarray,
                   sizes: Sequence[int]) -> np.ndarray:
    """The distributed "sum" of `f`'s gradient over `X` cut into blocks of `sizes` rows."""
    _, per_row = f.batch(p, X, reduce="none")
    bounds = np.cumsum([0, *sizes])
    if len(sizes) == 1:  # one block: as f.batch sums a batch
        return layout_sum(per_row)
    parts = [one_chunk_sum(per_row[a:b]) for a, b in itertools.pairwise(bounds)]
    return tree_sum(parts)


def one_chunk_sum(grads: np.ndarray) -> np.ndarray:
    """A block's sum as one chunk: its rows in order, from 0.0."""
    total = np.zeros(grads.shape[1:])
    for g in grads:
        total += g
    return total


def local_chunk_sizes(n: int) -> tuple[int, ...]:
    """The sizes of the chunks `f.batch` sums `n` rows in (the same rule as `layout_sum`)."""
    chunks = max(1, min(16, n // 32))
    starts = [(c * n // chunks) // 16 * 16 for c in range(chunks)] + [n]
    return tuple(b - a for a, b in itertools.pairwise(starts))


def assert_close_to_local(got: np.ndarray, f: sg.Compiled, p: np.ndarray, X: np.ndarray,
                          reduce: str) -> None:
    """Within 1e-12 of the sum of the magnitudes of the terms (the scale of rounding)."""
    _, per_row = f.batch(p, X, reduce="none")
    _, local = f.batch(p, X, reduce=reduce)
    scale = np.abs(per_row).sum(axis=0) / (X.shape[0] if reduce == "mean" else 1)
    assert np.all(np.abs(got - local) <= 1e-12 * scale), (got, local)


# ---- what it returns, and when it runs -------------------------------------------------------


def test_import_symgrad_does_not_import_dask() -> None:
    code = ("import sys, numpy as np, symgrad as sg\n"
            "o = sg.Value(1.0) * sg.Value(2.0, label='x')\n"
            "assert not [m for m in sys.modules if m == 'dask' or m.startswith('dask.')]\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_numpy_batch_does_not_touch_dask(neuron: sg.Compiled,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import symgrad.distributed as dist

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the dask path ran for a NumPy X")

    monkeypatch.setattr(dist, "batch", refuse)
    monkeypatch.setattr(dist, "batch_forward", refuse)
    neuron.batch(None, rows(50))
    neuron.batch_forward(None, rows(50))


def test_nothing_runs_until_compute(neuron: sg.Compiled) -> None:
    seen: list[int] = []

    def record(block: np.ndarray) -> np.ndarray:
        seen.append(block.shape[0])
        return block

    X = rows(100)
    Xd = da.from_array(X, chunks=(30, 2)).map_blocks(record, meta=np.empty((0, 0)))
    values, grad = neuron.batch(None, Xd)
    forward = neuron.batch_forward(None, Xd)
    assert isinstance(values, da.Array) and isinstance(grad, da.Array)
    assert isinstance(forward, da.Array)
    assert values.shape == (100,) and values.chunks == ((30, 30, 30, 10),)
    assert grad.shape == (3,) and grad.numblocks == (1,)
    assert seen == []
    v, g, fw = dask.compute(values, grad, forward, scheduler="sync")
    assert sorted(seen) == [10, 30, 30, 30]  # each block once, shared by the three
    ref_v, _ref_g = neuron.batch(None, X)
    assert np.array_equal(v, ref_v) and np.array_equal(fw, ref_v)
    assert_close_to_local(g, neuron, neuron.current_params(), X, "sum")


@st.composite
def chunkings(draw: st.DrawFn) -> tuple[int, tuple[int, ...]]:
    """A number of rows and a row chunking of them (empty blocks allowed)."""
    n = draw(st.integers(1, 400))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=24)))
    bounds = [0, *cuts, n]
    return n, tuple(b - a for a, b in itertools.pairwise(bounds))


@given(chunkings(), st.sampled_from(["sum", "mean", "none"]), st.integers(0, 2**32 - 1))
def test_any_row_chunking_gives_the_documented_sum(neuron: sg.Compiled,
                                                   case: tuple[int, tuple[int, ...]],
                                                   reduce: str, seed: int) -> None:
    n, sizes = case
    X = rows(n, seed=seed) * 3.0
    p = np.random.default_rng(seed).normal(size=3)
    values, grad = dask.compute(*neuron.batch(p, da.from_array(X, chunks=(sizes, 2)),
                                              reduce=reduce), scheduler="sync")
    ref_values, ref_grad = neuron.batch(p, X, reduce=reduce)
    assert np.array_equal(values, ref_values)
    if reduce == "none":
        assert np.array_equal(grad, ref_grad)  # per row: exact on any chunking
        return
    expected = documented_sum(neuron, p, X, sizes)
    if reduce == "mean":
        expected = expected / n
    assert np.array_equal(grad, expected)
    assert_close_to_local(grad, neuron, p, X, reduce)


@pytest.mark.parametrize("n", [1, 31, 700, 5000])
def test_one_block_is_the_single_machine_batch_bit_for_bit(neuron: sg.Compiled, n: int) -> None:
    X = rows(n, seed=n)
    for reduce in ("sum", "mean", "none"):
        got = dask.compute(*neuron.batch(None, da.from_array(X, chunks=(n, 2)), reduce=reduce))
        ref = neuron.batch(None, X, reduce=reduce)
        assert all(np.array_equal(a, b) for a, b in zip(got, ref, strict=True)), (n, reduce)


def test_the_local_chunk_sizes_are_the_layouts() -> None:
    for n in [1, 31, 64, 700, 783, 784, 1000, 20000]:
        assert sg.layout.chunk_sizes(n) == local_chunk_sizes(n)


@pytest.mark.parametrize("n", [40, 100, 511, 783, 1000, 5000, 20011])
def test_blocks_that_are_the_local_chunks_are_bit_for_bit(neuron: sg.Compiled, n: int) -> None:
    sizes = sg.layout.chunk_sizes(n)
    X = rows(n, seed=n) * 5.0
    for reduce in ("sum", "mean"):
        got = dask.compute(*neuron.batch(None, da.from_array(X, chunks=(sizes, 2)),
                                         reduce=reduce))
        ref = neuron.batch(None, X, reduce=reduce)
        assert np.array_equal(got[1], ref[1]), (n, reduce)


def test_many_blocks_combine_by_the_fixed_tree_on_every_scheduler(neuron: sg.Compiled) -> None:
    X = rows(2000, seed=4) * 2.0
    sizes = (37,) * 54 + (2000 - 37 * 54,)  # more than FAN_IN**1 blocks: a tree of 3 levels
    assert len(sizes) > FAN_IN
    p = neuron.current_params()
    Xd = da.from_array(X, chunks=(sizes, 2))
    got = {s: dask.compute(neuron.batch(p, Xd)[1], scheduler=s)[0] for s in ("sync", "threads")}
    expected = documented_sum(neuron, p, X, sizes)
    assert all(np.array_equal(g, expected) for g in got.values())
    assert_close_to_local(got["sync"], neuron, p, X, "sum")


def test_several_outputs_keep_their_axes(two_outputs: sg.Compiled) -> None:
    X = rows(300, seed=2)
    Xd = da.from_array(X, chunks=(64, 2))
    for reduce in ("sum", "none"):
        values, grad = two_outputs.batch(None, Xd, reduce=reduce)
        ref_values, ref_grad = two_outputs.batch(None, X, reduce=reduce)
        assert values.shape == ref_values.shape and grad.shape == ref_grad.shape
        v, g = dask.compute(values, grad)
        assert np.array_equal(v, ref_values)
        if reduce == "none":
            assert np.array_equal(g, ref_grad)
        else:
            np.testing.assert_allclose(g, ref_grad, rtol=1e-13, atol=1e-13)
    forward = two_outputs.batch_forward(None, Xd)
    assert forward.shape == (300, 2)
    assert np.array_equal(forward.compute(), two_outputs.batch_forward(None, X))


@pytest.mark.slow
def test_the_tape_lowering_runs_blocks_too() -> None:
    o, wrt, inputs = lecture_neuron()
    f = sg.compile(o, wrt=wrt, inputs=inputs, backend="tape")
    X = rows(3000, seed=5)
    Xd = da.from_array(X, chunks=(3000, 2))
    assert all(np.array_equal(a, b) for a, b in
               zip(dask.compute(*f.batch(None, Xd)), f.batch(None, X), strict=True))
    sizes = (1000, 1000, 1000)
    g = dask.compute(f.batch(None, da.from_array(X, chunks=(sizes, 2)))[1])[0]
    assert np.array_equal(g, documented_sum(f, f.current_params(), X, sizes))


def test_integer_blocks_are_read_as_floats(neuron: sg.Compiled) -> None:
    X = np.arange(40, dtype=np.int64).reshape(20, 2) - 20
    got = dask.compute(*neuron.batch(None, da.from_array(X, chunks=(20, 2))))
    ref = neuron.batch(None, X.astype(float))
    assert all(np.array_equal(a, b) for a, b in zip(got, ref, strict=True))


def test_bad_dask_input_is_refused_clearly(neuron: sg.Compiled) -> None:
    X = rows(100)
    with pytest.raises(ValueError, match=r"columns are split into 2 chunks.*rechunk"):
        neuron.batch(None, da.from_array(X, chunks=(50, 1)))
    with pytest.raises(ValueError, match=r"columns are split"):
        neuron.batch_forward(None, da.from_array(X, chunks=(50, 1)))
    unknown = da.from_array(X, chunks=(50, 2))
    unknown = unknown[unknown[:, 0] > 0]
    with pytest.raises(ValueError, match=r"unknown.*compute_chunk_sizes"):
        neuron.batch(None, unknown)
    with pytest.raises(ValueError, match=r"expected 2 column"):
        neuron.batch(None, da.from_array(rows(10, width=3), chunks=(5, 3)))
    with pytest.raises(ValueError, match=r"2-D"):
        neuron.batch(None, da.from_array(np.zeros(10), chunks=5))
    with pytest.raises(ValueError, match=r"empty"):
        neuron.batch(None, da.zeros((0, 2), chunks=(5, 2)))
    with pytest.raises(TypeError, match=r"booleans"):
        neuron.batch(None, da.from_array(X > 0, chunks=(50, 2)))
    with pytest.raises(ValueError, match=r"reduce must be one of"):
        neuron.batch(None, da.from_array(X, chunks=(50, 2)), reduce="max")
    with pytest.raises(ValueError, match=r"params"):
        neuron.batch([1.0], da.from_array(X, chunks=(50, 2)))
    with pytest.raises(TypeError, match=r"expected a NumPy or dask array.*Delayed"):
        neuron.batch(None, dask.delayed(X))


# ---- fit -------------------------------------------------------------------------------------


def regression_data(n: int, seed: int = 0) -> np.ndarray:
    x = rows(n, seed=seed)
    return np.column_stack([x, np.tanh(0.7 * x[:, 0] - 0.4 * x[:, 1] + 0.2)])


def fit_both(f: sg.Compiled, data: np.ndarray, chunks: Any, **kw: Any
             ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """`fit` on a NumPy X and on the same rows as a dask array, same settings."""
    args = {"epochs": 3, "seed": 7, "progress": False, **kw}
    local = sg.fit(f, None, data, optimizer=Adam(0.05), **args)
    dist = sg.fit(f, None, da.from_array(data, chunks=chunks), optimizer=Adam(0.05), **args)
    return local, dist


@pytest.mark.parametrize("batch_size", [16, 50, None])
def test_fit_on_one_block_is_fit_on_numpy_bit_for_bit(loss: sg.Compiled,
                                                      batch_size: int | None) -> None:
    data = regression_data(200)
    (p_local, l_local), (p_dist, l_dist) = fit_both(loss, data, (200, 3), batch_size=batch_size)
    assert np.array_equal(p_local, p_dist) and np.array_equal(l_local, l_dist)


def test_full_batch_fit_on_blocks_steps_with_the_distributed_mean(loss: sg.Compiled) -> None:
    data = regression_data(300)
    (p_local, l_local), (p_dist, l_dist) = fit_both(loss, data, (64, 3), epochs=5)
    np.testing.assert_allclose(p_dist, p_local, rtol=1e-10)
    np.testing.assert_allclose(l_dist, l_local, rtol=1e-12)


def replay_minibatch_fit(f: sg.Compiled, data: np.ndarray, sizes: Sequence[int], bs: int,
                         epochs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented epochs: blocks in an order drawn from the generator, each block's rows
    in an order drawn next, minibatches cut from the shuffled rows across block boundaries."""
    rng = np.random.default_rng(seed)
    opt = Adam(0.05)
    p = f.current_params()
    bounds = np.cumsum([0, *sizes])
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(sizes))
        shuffled = []
        for i in order:
            block = data[bounds[i]: bounds[i + 1]]
            shuffled.append(block[rng.permutation(block.shape[0])])
        epoch_rows = np.concatenate(shuffled)
        total = 0.0
        for start in range(0, epoch_rows.shape[0], bs):
            values, grad = f.batch(p, epoch_rows[start: start + bs], reduce="mean")
            total += float(values.sum())
            opt.step(p, grad)
        losses.append(total / epoch_rows.shape[0])
    return p, np.array(losses)


def test_minibatch_fit_streams_blocks_in_the_documented_order(loss: sg.Compiled) -> None:
    data = regression_data(250, seed=3)
    sizes = (60, 0, 45, 100, 45)
    fetched: list[int] = []
    lock = threading.Lock()

    def record(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        with lock:
            fetched.append(block_info[0]["chunk-location"][0])
        return block

    Xd = da.from_array(data, chunks=(sizes, 3)).map_blocks(record, meta=np.empty((0, 0)))
    p, losses = sg.fit(loss, None, Xd, optimizer=Adam(0.05), epochs=3, batch_size=32, seed=11,
                       progress=False)
    ref_p, ref_losses = replay_minibatch_fit(loss, data, sizes, 32, 3, 11)
    assert np.array_equal(p, ref_p) and np.array_equal(losses, ref_losses)
    # one block at a time, each non-empty block once per epoch: X is never gathered whole
    assert sorted(fetched) == sorted([0, 2, 3, 4] * 3)


def test_fit_refuses_a_badly_chunked_dask_array(loss: sg.Compiled) -> None:
    with pytest.raises(ValueError, match="columns are split"):
        sg.fit(loss, None, da.from_array(regression_data(20), chunks=(10, 2)),
               optimizer=Adam(0.1), epochs=1, progress=False)


# ---- on a cluster: two worker processes --------------------------------------------------------


@contextlib.contextmanager
def local_cluster() -> Iterator[Any]:
    """A LocalCluster of 2 single-threaded worker processes, shut down on exit."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with local_cluster() as c:
        yield c


@pytest.fixture
def client(cluster: Any) -> Iterator[Any]:
    """A client of the shared cluster, the default scheduler for this test only."""
    from distributed import Client

    with Client(cluster) as c:
        yield c


@pytest.mark.slow
def test_the_processes_scheduler_gives_the_threads_bits(neuron: sg.Compiled) -> None:
    X = rows(1000, seed=12)
    Xd = da.from_array(X, chunks=(300, 2))
    for reduce in ("sum", "none"):
        calls = neuron.batch(None, Xd, reduce=reduce)
        on_processes = dask.compute(*calls, scheduler="processes", num_workers=2)
        on_threads = dask.compute(*calls, scheduler="threads")
        assert all(np.array_equal(a, b) for a, b in zip(on_processes, on_threads, strict=True))


@pytest.mark.slow
def test_a_cluster_gives_the_local_results(neuron: sg.Compiled, client: Any) -> None:
    X = rows(3000, seed=8)
    sizes = (700, 800, 1000, 500)
    Xd = da.from_array(X, chunks=(sizes, 2))
    p = neuron.current_params()
    for reduce in ("sum", "mean", "none"):
        on_cluster = dask.compute(*neuron.batch(p, Xd, reduce=reduce))
        on_threads = dask.compute(*neuron.batch(p, Xd, reduce=reduce), scheduler="threads")
        assert all(np.array_equal(a, b) for a, b in zip(on_cluster, on_threads, strict=True))
        assert np.array_equal(on_cluster[0], neuron.batch(p, X)[0])
        if reduce != "none":
            assert_close_to_local(on_cluster[1], neuron, p, X, reduce)
    one_block = dask.compute(*neuron.batch(p, da.from_array(X, chunks=(3000, 2))))
    assert all(np.array_equal(a, b) for a, b in zip(one_block, neuron.batch(p, X), strict=True))
    assert np.array_equal(neuron.batch_forward(p, Xd).compute(), neuron.batch_forward(p, X))
    # each worker loaded the function once: later graphs find the same object
    from symgrad.distributed import _shipped

    token = _shipped(neuron).token

    def loaded_id() -> int | None:
        f = sys.modules["symgrad.distributed"]._loaded.get(token)
        return None if f is None else id(f)

    before = client.run(loaded_id)
    assert any(before.values())
    dask.compute(*neuron.batch(p, Xd))
    assert client.run(loaded_id) == before


@pytest.mark.slow
def test_fit_on_a_cluster_is_fit_on_threads(loss: sg.Compiled, client: Any) -> None:
    data = regression_data(400, seed=9)
    Xd = da.from_array(data, chunks=(150, 3))
    for batch_size in (None, 64):
        args = {"optimizer": Adam(0.05), "epochs": 2, "batch_size": batch_size, "seed": 1,
                "progress": False}
        on_cluster = sg.fit(loss, None, Xd, **args)
        with dask.config.set(scheduler="threads"):
            on_threads = sg.fit(loss, None, Xd, **{**args, "optimizer": Adam(0.05)})
        assert all(np.array_equal(a, b) for a, b in zip(on_cluster, on_threads, strict=True))


def slow_block(block: np.ndarray) -> np.ndarray:
    """A block that takes a while to make (so a worker can die while it runs)."""
    time.sleep(0.3)
    return block


@pytest.mark.slow
def test_a_worker_killed_mid_computation_changes_nothing(neuron: sg.Compiled) -> None:
    from distributed import Client

    X = rows(4000, seed=10)
    Xd = da.from_array(X, chunks=(500, 2)).map_blocks(slow_block, meta=np.empty((0, 0)))
    p = neuron.current_params()
    expected = dask.compute(*neuron.batch(p, Xd), scheduler="threads")
    with local_cluster() as cluster, Client(cluster) as client:
        client.run(lambda: None)  # both workers up
        futures = client.compute(list(neuron.batch(p, Xd)))
        deadline = time.monotonic() + 60
        while not any(client.processing().values()):
            assert time.monotonic() < deadline, "no task started"
            time.sleep(0.02)
        time.sleep(0.1)
        busy = [w for w, tasks in client.processing().items() if tasks]
        pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
        assert not all(f.done() for f in futures)
        os.kill(pid, signal.SIGKILL)
        got = client.gather(futures)
        assert pid not in client.run(os.getpid).values()  # it died; its blocks ran elsewhere
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.slow
def test_the_example_trains_on_a_local_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "distributed.py"), "--rows", "200000",
         "--block-rows", "50000", "--repeats", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "200,000 rows in 4 blocks" in out, out
    for line in ("this process, f.batch on a NumPy array", "dask, 1 worker, 4 blocks",
                 "dask, 2 workers, 4 blocks"):
        assert line in out and "M rows/s" in out.split(line, 1)[1].splitlines()[0], out
    accuracy = float(out.split("accuracy ", 1)[1].split("%", 1)[0])
    assert accuracy > 95.0, out  # the moons are separable: one epoch learns them


def test_lazy_results_keep_the_params_they_were_built_with(neuron: sg.Compiled) -> None:
    """An optimiser updates its vector in place: a lazy result built before a step must still
    be the result at the parameters of its call (and not spill into another graph)."""
    X = rows(90, seed=8)
    Xd = da.from_array(X, chunks=(30, 2))
    theta = neuron.current_params().copy()
    want = [neuron.batch(theta, X)[1]]
    lazy = [neuron.batch(theta, Xd)[1]]
    theta *= 0.5
    want.append(neuron.batch(theta, X)[1])
    lazy.append(neuron.batch(theta, Xd)[1])
    fresh = neuron.batch(neuron.current_params(), Xd)[1]
    got = dask.compute(*lazy, fresh, scheduler="sync")
    for g, w in zip(got, [*want, want[0]], strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-12)


def test_a_shipped_function_is_freed_with_it() -> None:
    import gc
    import weakref

    x = sg.Value(0.0, label="x")
    w = sg.Value(1.5, label="w")
    f = sg.compile((w * x).tanh(), wrt=[w], inputs=[x], backend="python")
    dask.compute(f.batch(None, da.from_array(rows(10, 1)[:, :1], chunks=(5, 1)))[1])
    ref = weakref.ref(f)
    del f
    gc.collect()
    assert ref() is None


def test_the_tree_reads_only_the_gradients(neuron: sg.Compiled) -> None:
    """Adding the block sums must not depend on the blocks' per-row values."""
    _, grad = neuron.batch(None, da.from_array(rows(100), chunks=(25, 2)))
    graph = dict(grad.__dask_graph__())
    nodes = [v for k, v in graph.items() if isinstance(k, tuple) and "-part" not in k[0]
             and isinstance(v, tuple) and v and getattr(v[0], "__name__", "") == "_add_in_order"]
    assert nodes
    for node in nodes:
        assert all("-part" in key[0] for key in node[1])


def test_the_hessians_batch_refuses_a_dask_array() -> None:
    x = sg.Value(0.0, label="x")
    w = sg.Value(1.5, label="w")
    H = sg.hessian((w * x).tanh(), wrt=[w], inputs=[x], backend="python")
    with pytest.raises(TypeError, match="dask") as err:
        H.batch(None, da.from_array(rows(10, 1)[:, :1], chunks=(5, 1)))
    # the message must not say that the refusing object takes dask arrays
    assert "Hessian cannot take a dask array" in str(err.value)


def test_sum_in_chunks_refuses_a_dask_array(neuron: sg.Compiled) -> None:
    with pytest.raises(TypeError, match="Compiled cannot take a dask array"):
        neuron.sum_in_chunks(None, da.from_array(rows(10), chunks=(5, 2)), 2)
