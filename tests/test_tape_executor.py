"""The tape executor (dense groups, gradient grids, chunks on threads) gives the line code's bits.

Oracle: the plain-Python line kernels (``backend="python"``), which compute with the op table's
own rules, the interpreted engine's numbers, and sum a batch in the same chunks and order
(`symgrad.layout`): every value and gradient, summed or per row, must be bit for bit the same.
The models are layered networks drawn at random (widths, activations, frozen and shared
weights, several outputs), so that dense groups and grids of every shape, and the steps that
fit neither, all run.
"""

from __future__ import annotations

import math
import re
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import symgrad as sg
from symgrad import layout
from symgrad.executors import interpreter, tape_plan

ACTIVATIONS = ("tanh", "relu", "sigmoid", "linear", "exp")


def _bits(a: np.ndarray) -> np.ndarray:
    """The float64 bits, every nan made the same (a nan's sign and payload aside)."""
    a = np.where(np.isnan(a), np.nan, a)
    return np.ascontiguousarray(a, np.float64).view(np.int64)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(_bits(a), _bits(b))


@st.composite
def layered(draw: st.DrawFn) -> tuple[list[sg.Value], list[sg.Value], list[sg.Value]]:
    """A random layered network: (weights to differentiate by, inputs, outputs)."""
    n_in = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 7), min_size=1, max_size=3))
    vals = st.floats(-1.5, 1.5, allow_nan=False, allow_infinity=False)
    x = [sg.Value(0.0, label=f"x{i}") for i in range(n_in)]
    wrt: list[sg.Value] = []
    h: list[sg.Value] = list(x)
    for li, width in enumerate(widths):
        act = draw(st.sampled_from(ACTIVATIONS))
        shared = draw(st.booleans()) and li > 0  # one weight reused by every neuron
        w_shared = sg.Value(draw(vals), label=f"s{li}")
        nxt = []
        for j in range(width):
            b = sg.Value(draw(vals), label=f"b{li}_{j}")
            s = b
            for i, hi in enumerate(h):
                w = w_shared if shared and i == 0 else sg.Value(draw(vals), label=f"w{li}_{j}_{i}")
                s = s + w * hi
                if w is not w_shared and draw(st.integers(0, 5)) > 0:
                    wrt.append(w)  # the others are frozen: literals in the IR
            wrt.append(b)
            nxt.append(s if act == "linear" else getattr(s, act)())
        if shared:
            wrt.append(w_shared)
        h = nxt
    y = sg.Value(0.0, label="y")
    outs = [(h[0] - y) ** 2]
    if len(h) > 1 and draw(st.booleans()):
        outs.append(h[-1] * h[0])
    return list(dict.fromkeys(wrt)), [*x, y], outs


def _pair(wrt, inputs, outs):
    tp = sg.compile(outs, wrt=wrt, inputs=inputs, backend="tape")
    py = sg.compile(outs, wrt=wrt, inputs=inputs, backend="python")
    return tp, py


@settings(max_examples=40)
@given(layered(), st.sampled_from([1, 15, 16, 17, 33, 64, 100, 257]), st.integers(0, 2**32 - 1))
def test_random_layered_models_equal_the_line_code(model, n, seed):
    wrt, inputs, outs = model
    tp, py = _pair(wrt, inputs, outs)
    X = np.random.default_rng(seed).normal(size=(n, len(inputs)))
    p = tp.current_params()
    for reduce in ("sum", "mean", "none"):
        v1, g1 = tp.batch(p, X, reduce=reduce)
        v2, g2 = py.batch(p, X, reduce=reduce)
        assert _same(v1, v2) and _same(g1, g2), reduce
    assert _same(tp.batch_forward(p, X), py.batch_forward(p, X))
    v1, g1 = tp(p, X[0])
    v2, g2 = py(p, X[0])
    assert _same(np.asarray(v1), np.asarray(v2)) and _same(g1, g2)


@settings(max_examples=25)
@given(layered(), st.integers(0, 2**32 - 1))
def test_every_row_is_the_engines_backward(model, seed):
    """Per row, value and gradient are what ``Value.backward()`` gives, bit for bit."""
    wrt, inputs, outs = model
    f = sg.compile(outs[0], wrt=wrt, inputs=inputs, backend="tape")
    X = np.random.default_rng(seed).normal(size=(37, len(inputs)))
    values, grads = f.batch(None, X, reduce="none")
    for r in (0, 17, 36):
        for leaf, v in zip(inputs, X[r], strict=True):
            leaf.data = float(v)
        copies, env = _replay(outs[0])
        copies.backward()
        assert values[r] == copies.data or (math.isnan(values[r]) and math.isnan(copies.data))
        # the engine's grad starts at 0.0 (+0.0 + -0.0 is +0.0), as the accumulated rows do
        want = np.array([env[id(w)].grad if id(w) in env else 0.0 for w in wrt])
        assert _same(grads[r], want)


def _replay(out: sg.Value) -> tuple[sg.Value, dict[int, sg.Value]]:
    """A fresh copy of `out`'s graph (the same leaves' data), so its grads start at 0.0."""
    from symgrad.engine import topological_order

    env: dict[int, sg.Value] = {}
    for node in topological_order([out]):
        if not node._prev:
            env[id(node)] = sg.Value(node.data)
        else:
            env[id(node)] = sg.Value._symgrad_apply(
                node.opdef, tuple(env[id(c)] for c in node._prev), node.op_params)
    return env[id(out)], env


@settings(max_examples=10)
@given(layered())
def test_special_values_land_where_the_line_code_puts_them(model):
    wrt, inputs, outs = model
    tp, py = _pair(wrt, inputs, outs)
    specials = [0.0, -0.0, math.inf, -math.inf, math.nan, 1e308, -1e308, 5e-324, 710.0]
    rng = np.random.default_rng(5)
    X = rng.choice([*specials, 0.3, -1.2], size=(90, len(inputs)))
    p = tp.current_params()
    with np.errstate(all="ignore"):
        for reduce in ("sum", "none"):
            v1, g1 = tp.batch(p, X, reduce=reduce)
            v2, g2 = py.batch(p, X, reduce=reduce)
            assert _same(v1, v2) and _same(g1, g2)


@pytest.fixture(scope="module")
def mlp():
    import random

    from symgrad.nn import MLP

    random.seed(4)
    model = MLP(5, [12, 12, 1])
    x = [sg.Value(0.0, label=f"x{i}") for i in range(5)]
    y = sg.Value(0.0, label="y")
    loss = (model(x) - y) ** 2
    return model.parameters(), [*x, y], loss


def test_an_mlp_is_dense_groups_and_grids(mlp):
    wrt, inputs, loss = mlp
    f = sg.compile(loss, wrt=wrt, inputs=inputs, backend="tape")
    pl = f.executor.plans[f"{f.name}_value_and_grad"]
    # three layers forward (the output neuron alone: its sum has 13 terms), one backward (the
    # cotangents of the first hidden layer: 12 sums over the second layer's neurons)
    assert pl.stats["dense_groups"] == 4
    assert pl.stats["grids"] == 3 and pl.stats["grid_results"] == pl.stats["acc_results"]
    assert pl.stats["dense_terms"] >= 0.95 * pl.stats["dot_terms"]
    assert "dense groups" in f.source


def test_threads_give_the_same_bits(mlp):
    numba = pytest.importorskip("numba")
    wrt, inputs, loss = mlp
    f = sg.compile(loss, wrt=wrt, inputs=inputs, backend="tape")
    X = np.random.default_rng(2).normal(size=(3001, 6))
    p = f.current_params()
    got = []
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            got.append([f.batch(p, X, reduce=r) for r in ("sum", "none")])
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    for (v1, g1), (v2, g2) in zip(got[0], got[-1], strict=True):
        assert _same(v1, v2) and _same(g1, g2)


@pytest.mark.parametrize("spin", [0, 1000, None])
def test_helpers_waiting_in_compiled_code_give_the_same_bits(mlp, monkeypatch, spin):
    """Batch after batch on two threads, the helper caught spinning (or, with spin 0, woken
    from its queue each time, or parked while the batch runs), every result is the one-thread
    result; a helper never keeps a job it did not finish."""
    numba = pytest.importorskip("numba")
    from symgrad.executors import native_threads

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread only")
    if spin is not None:
        monkeypatch.setattr(native_threads, "SPIN", spin)

    class Always:  # every core, whatever the clock says (threads.Pace would pick)
        def choose(self, most: int) -> int:
            return most

        def record(self, threads: int, seconds: float) -> None:
            pass

    monkeypatch.setattr(interpreter.TapeInterpreter, "_pace", lambda *args: Always())
    wrt, inputs, loss = mlp
    f = sg.compile(loss, wrt=wrt, inputs=inputs, backend="tape")
    f.wait()
    rng = np.random.default_rng(5)
    Xs = [rng.normal(size=(n, 6)) for n in (700, 1000, 2500)]
    helpers = interpreter._Interpreter.get().helpers
    taken = helpers.boxes(1)[0, native_threads.TAKEN]
    p = f.current_params()
    try:
        numba.set_num_threads(1)
        want = [[f.batch(p, X, reduce=r) for r in ("sum", "none")] for X in Xs]
        numba.set_num_threads(2)
        for _ in range(15):
            for X, expected in zip(Xs, want, strict=True):
                for (v, g), (v1, g1) in zip([f.batch(p, X, reduce=r) for r in ("sum", "none")],
                                            expected, strict=True):
                    assert _same(v, v1) and _same(g, g1)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    box = helpers.boxes(1)[0]
    assert int(box[native_threads.STATE]) % 8 in (native_threads.SPINNING, native_threads.PARKED)
    if spin is None:  # caught spinning: it took some of the 90 jobs
        assert box[native_threads.TAKEN] > taken


def test_an_interrupt_while_waiting_for_helpers_waits_for_them_first(mlp, monkeypatch):
    """Ctrl-C (a KeyboardInterrupt) arriving while the calling thread waits for a helper still
    running its last chunk: the helper has the job's arrays by address only, so the caller
    must see it finish before the exception frees them; the interrupt is raised after that."""
    numba = pytest.importorskip("numba")
    from symgrad.executors import native_threads

    if numba.get_num_threads() < 2:
        pytest.skip("one thread only")

    class Always:  # every core, whatever the clock says
        def choose(self, most: int) -> int:
            return most

        def record(self, threads: int, seconds: float) -> None:
            pass

    monkeypatch.setattr(interpreter.TapeInterpreter, "_pace", lambda *args: Always())
    monkeypatch.setattr(interpreter, "WAIT_POLLS", 0)  # straight to the wait that yields
    real, interrupted = interpreter._yield_core, []

    def interrupt() -> None:  # a signal handled here, where the wait checks for them
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        real()

    monkeypatch.setattr(interpreter, "_yield_core", interrupt)
    wrt, inputs, loss = mlp
    f = sg.compile(loss, wrt=wrt, inputs=inputs, backend="tape")
    f.wait()
    X = np.random.default_rng(8).normal(size=(20_000, 6))
    p = f.current_params()
    boxes = interpreter._Interpreter.get().helpers.boxes(numba.get_num_threads() - 1)
    for _ in range(100):
        try:
            f.batch(p, X, reduce="none")
        except KeyboardInterrupt:
            assert interrupted
            states = [int(w) % 8 for w in boxes[:, native_threads.STATE]]
            assert native_threads.RUNNING not in states  # no helper left writing
            break
    else:
        pytest.skip("no helper was still running when the calling thread was done")


def test_an_error_in_a_helpers_job_reaches_the_caller():
    """What a helper's job raises is raised by the calling thread (once), and the helper's box
    is parked again, not left RUNNING for the caller to wait on."""
    from symgrad.executors import native_threads

    done = threading.Event()

    def serve(box: np.ndarray, spin: int) -> None:
        box[native_threads.STATE] = native_threads.RUNNING
        done.set()
        raise ValueError("the job failed")

    helpers = native_threads.Helpers(serve, 1)
    box = helpers.boxes(1)[0]
    assert done.wait(10)
    for _ in range(1000):  # the helper records the error, then parks its box
        if box[native_threads.STATE] % 8 == native_threads.PARKED:
            break
        time.sleep(0.01)
    assert box[native_threads.STATE] % 8 == native_threads.PARKED
    with pytest.raises(ValueError, match="the job failed"):
        helpers.raise_errors()
    helpers.raise_errors()  # once only


def test_pace_follows_the_faster_thread_count_and_keeps_trying_the_other():
    """Threads that never hurt: with made-up timings, `Pace` settles on whichever thread count
    is faster, switches when that changes (a busy machine, then idle again), and still tries
    the other one every EXPLORE calls."""
    from symgrad.executors.threads import Pace

    pace = Pace()
    assert pace.choose(1) == 1  # one thread allowed: nothing to choose
    speed = {4: 1.0, 1: 3.0}  # seconds per row: idle, threads win

    def run(calls: int) -> list[int]:
        chosen = []
        for _ in range(calls):
            t = pace.choose(4)
            pace.record(t, speed[t])
            chosen.append(t)
        return chosen

    first = run(2 * Pace.EXPLORE)
    assert first[:3] == [4, 4, 1]  # each tried (threads twice: the first call wakes them)
    assert first.count(1) <= 3 and first[-2] == 4  # the last call is a try of 1
    speed.update({4: 5.0})  # busy: a descheduled helper makes threads slower than one
    busy = run(4 * Pace.EXPLORE)
    assert busy[-Pace.EXPLORE + 1:].count(4) <= 2  # one try: two calls
    speed.update({4: 1.0})  # idle again: found at the next try
    idle = run(2 * Pace.EXPLORE)
    assert idle[-Pace.EXPLORE:].count(4) >= Pace.EXPLORE - 1


def test_pace_learns_when_the_most_threads_differ_from_call_to_call():
    """Batches of one size class may allow different thread counts (their chunk counts differ,
    or Numba's thread count changes): every count above one is timed as "several threads", so
    one thread is still tried and chosen when it is faster, and threads when they are."""
    from symgrad.executors.threads import Pace

    def run(pace: Pace, mosts: list[int], calls: int, one_faster: bool) -> list[int]:
        chosen = []
        for k in range(calls):
            t = pace.choose(mosts[k % len(mosts)])
            pace.record(t, (1.0 if t == 1 else 5.0) if one_faster else (3.0 if t == 1 else 1.0))
            chosen.append(t)
        return chosen

    pace = Pace()
    busy = run(pace, [12, 10, 11], 4 * Pace.EXPLORE, one_faster=True)
    assert busy[-2 * Pace.EXPLORE:].count(1) >= 2 * Pace.EXPLORE - 4  # tries only
    idle = run(pace, [12, 10, 11], 2 * Pace.EXPLORE, one_faster=False)
    assert idle[-Pace.EXPLORE:].count(1) <= 1
    assert set(idle[-Pace.EXPLORE:]) - {1} <= {10, 11, 12}


def test_a_batch_records_the_threads_it_ran_on(mlp):
    numba = pytest.importorskip("numba")
    wrt, inputs, loss = mlp
    f = sg.compile(loss, wrt=wrt, inputs=inputs, backend="tape")
    f.wait()
    X = np.random.default_rng(7).normal(size=(2000, 6))
    p = f.current_params()
    used = set()
    for _ in range(70):
        f.batch(p, X)
        used.add(f.executor.last_threads)
    assert used <= {1, numba.get_num_threads()}
    if numba.get_num_threads() > 1:
        assert used == {1, numba.get_num_threads()}  # the other count is tried now and then
    f.batch(p, X[:40])  # too little work for threads
    assert f.executor.last_threads == 1


def test_chunks_are_aligned_and_cover_the_rows():
    for n in [1, 15, 31, 32, 33, 100, 511, 1000, 4097, 100_000]:
        k = layout.n_chunks(n)
        rows = [r for c in range(k) for r in layout.chunk_rows(c, n, k)]
        assert rows == list(range(n))
        assert all(layout.chunk_start(c, n, k) % layout.ALIGN == 0 for c in range(k))
        assert all(len(layout.chunk_rows(c, n, k)) > 0 for c in range(k))


def test_calls_before_the_interpreter_is_built_run_as_plain_python(mlp, monkeypatch):
    wrt, inputs, loss = mlp
    f = sg.compile(loss, wrt=wrt, inputs=inputs, backend="tape")
    X = np.random.default_rng(3).normal(size=(40, 6))
    p = f.current_params()
    want = [f.batch(p, X, reduce=r) for r in ("sum", "none")], f(p, X[0])
    ex = f.executor
    monkeypatch.setattr(interpreter._Interpreter, "_build", Future())  # never finishes
    monkeypatch.setattr(interpreter._Interpreter, "built", None)
    monkeypatch.setattr(type(ex), "FALLBACK_WORK", 10**9)
    assert not f.ready
    got = [f.batch(p, X, reduce=r) for r in ("sum", "none")], f(p, X[0])
    assert ex._fallback is not None  # the plain-Python line code ran
    for (v1, g1), (v2, g2) in zip(got[0], want[0], strict=True):
        assert _same(v1, v2) and _same(g1, g2)
    assert got[1][0] == want[1][0] and _same(got[1][1], want[1][1])


def test_a_forked_child_builds_its_own_interpreter(mlp):
    """A fork while the interpreter is being built: the child must not wait for the parent's
    building thread (which the child does not have)."""
    import multiprocessing as mp

    wrt, inputs, loss = mlp
    f = sg.compile(loss, wrt=wrt, inputs=inputs, backend="tape")
    X = np.random.default_rng(4).normal(size=(3000, 6))
    want = f.batch(None, X)
    pending: Future = Future()  # the parent "is building": forked, the child cannot finish it
    old = interpreter._Interpreter._build
    interpreter._Interpreter._build = pending
    try:
        with mp.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_batch_in_child, (f, X)).get(timeout=120)
    finally:
        interpreter._Interpreter._build = old
    assert _same(got[0], want[0]) and _same(got[1], want[1])


def _batch_in_child(f, X):
    return f.batch(None, X)


def test_odd_layouts_of_x_run_without_a_new_compile(mlp):
    """Fortran-ordered, strided or read-only X reach the interpreter as plain C arrays."""
    wrt, inputs, loss = mlp
    f = sg.compile(loss, wrt=wrt, inputs=inputs, backend="tape")
    f.wait()
    X = np.random.default_rng(5).normal(size=(300, 6))
    want = f.batch(None, X)
    ro = X.copy()
    ro.flags.writeable = False
    run_sums = interpreter._Interpreter.get().ns["run_sums"]
    before = len(run_sums.signatures)
    for odd in (np.asfortranarray(X), np.repeat(X, 2, axis=0)[::2], ro):
        got = f.batch(None, odd)
        assert _same(got[0], want[0]) and _same(got[1], want[1])
    assert len(run_sums.signatures) == before


def test_a_port_that_does_not_verify_falls_back_to_libm(monkeypatch):
    from symgrad import vecmath

    monkeypatch.setattr(vecmath, "mismatches", lambda got, want: np.array([0]))
    it = interpreter._Interpreter()
    assert it.verdicts["tanh"].startswith("libm")
    assert it.exact[sg.tape.OPCODES["tanh"]] == 0


def test_the_ports_verify_here_or_say_why():
    it = interpreter._Interpreter.get()
    for name in ("tanh", "exp", "log", "sigmoid"):
        verdict = it.verdicts[name]
        assert verdict == "exact vectorised port" or verdict.startswith("libm: "), verdict


def test_the_static_part_reads_the_plan_fields_in_their_order():
    text = (Path(interpreter.__file__).parent / "interpreter_static.py").read_text()
    names = re.search(r"\(F_STEPS,.*?\) = range\((\d+)\)", text, re.S)
    assert names is not None
    fields = re.findall(r"F_([A-Z0-9_]+)", names.group(0))
    assert [f.lower() for f in fields] == list(tape_plan.PLAN_FIELDS)
    assert int(names.group(1)) == len(tape_plan.PLAN_FIELDS)


@pytest.mark.parametrize("backend", ["numba", "python", "tape"])
def test_sum_in_chunks_adds_the_rows_in_the_chunks_asked_for(mlp, backend):
    """`sum_in_chunks`: chunks of `layout.chunk_rows` for the given count, summed from 0.0 in
    row order, then added in order (the per-row gradients are the oracle)."""
    wrt, inputs, loss = mlp
    f = sg.compile(loss, wrt=wrt, inputs=inputs, backend=backend)
    X = np.random.default_rng(6).normal(size=(203, 6))
    p = f.current_params()
    _, rows = f.batch(p, X, reduce="none")
    for k in (1, 2, 7):
        want = np.zeros(rows.shape[1])
        for c in range(k):
            part = np.zeros(rows.shape[1])
            for r in layout.chunk_rows(c, len(X), k):
                part += rows[r]
            want += part
        values, got = f.sum_in_chunks(p, X, k)
        assert _same(got, want) and _same(values, f.batch_forward(p, X)), k
    assert _same(f.sum_in_chunks(p, X, layout.n_chunks(len(X)))[1], f.batch(p, X)[1])
    with pytest.raises(ValueError, match="n_chunks"):
        f.sum_in_chunks(p, X, 0)


def test_a_forked_child_gets_helper_threads_of_its_own(mlp):
    import multiprocessing as mp

    wrt, inputs, loss = mlp
    f = sg.compile(loss, wrt=wrt, inputs=inputs, backend="tape")
    f.wait()
    X = np.random.default_rng(7).normal(size=(4000, 6))
    f.batch(None, X)  # the parent's helper threads are running now
    with mp.get_context("fork").Pool(1) as pool:
        alive, queued = pool.apply_async(_helpers_after_batches, (f, X)).get(timeout=120)
    assert alive and queued == 0


def _helpers_after_batches(f, X):
    import time

    import numba

    from symgrad.executors import threads

    numba.set_num_threads(2)
    for _ in range(5):
        f.batch(None, X)
    deadline = time.monotonic() + 5.0  # jobs the caller finished alone are skipped, not kept
    while threads._jobs.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)
    return all(t.is_alive() for t in threads._helpers), threads._jobs.qsize()


@pytest.mark.parametrize("build_s, says", [(0.05, False), (0.6, True)])
def test_exit_waits_for_a_build_and_says_so_only_when_it_takes_long(
    monkeypatch, capsys, build_s: float, says: bool
) -> None:
    # a load from the cache ends within the quiet wait: no message; a real first build does not
    import threading

    fut: Future = Future()
    threading.Timer(build_s, fut.set_result, args=(None,)).start()
    monkeypatch.setattr(interpreter._Interpreter, "_build", fut)
    monkeypatch.setattr(interpreter._Interpreter, "QUIET_WAIT", 0.3)
    interpreter._Interpreter.finish_build()
    assert fut.done()  # waited either way
    assert ("finishing the first build" in capsys.readouterr().err) == says
