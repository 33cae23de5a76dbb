"""The large-graph lowering (tape) and the batch loops give the same numbers as line-by-line code.

Oracles: the line-by-line generated code (plain Python, and Numba for bit-for-bit checks) and
the interpreted engine. The tape reorders independent instructions and reuses workspace slots;
neither may change a single bit of any row's result.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import symgrad as sg
from symgrad import tape
from symgrad.executors.interpreter import run_tape
from symgrad.nn import MLP
from tests.strategies import programs, same_float, to_values


def _compile_case(case, backend):
    leaves, outs, _ = to_values(case.program, case.inputs)
    return sg.compile(outs, wrt=leaves, inputs=[], backend=backend, name="prog"), leaves


def _mlp_loss(nin, hidden, seed=0):
    random.seed(seed)
    model = MLP(nin, [hidden, hidden, 1])
    x = [sg.Value(0.0, label=f"x{i}") for i in range(nin)]
    y = sg.Value(0.0, label="y")
    return model, x, y, (model(x) - y) ** 2


@pytest.fixture(scope="module")
def mlp_pair():
    model, x, y, loss = _mlp_loss(3, 6)
    lines = sg.compile(loss, wrt=model.parameters(), inputs=[*x, y], backend="numba")
    tp = sg.compile(loss, wrt=model.parameters(), inputs=[*x, y], backend="tape")
    return model, x, y, loss, lines, tp


def test_lowering_is_chosen_by_size_and_reported(monkeypatch):
    model, x, y, loss = _mlp_loss(2, 3)
    small = sg.compile(loss, wrt=model.parameters(), inputs=[*x, y], backend="python")
    assert small.stats["lowering"] == "lines"
    monkeypatch.setattr(sg.executors, "LINE_LIMIT", 10)
    big = sg.compile(loss, wrt=model.parameters(), inputs=[*x, y], backend="numba")
    monkeypatch.undo()
    assert big.stats["lowering"] == "tape"
    assert "tape:" in big.source and "def run_elementwise" in big.source
    p = small.current_params()
    X = np.random.default_rng(0).normal(size=(7, 3))
    v1, g1 = small.batch(p, X)
    v2, g2 = big.batch(p, X)
    np.testing.assert_allclose(v2, v1, rtol=1e-12)
    np.testing.assert_allclose(g2, g1, rtol=1e-12, atol=1e-14)


def test_tape_rows_match_line_code(mlp_pair):
    _, _, _, _, lines, tp = mlp_pair
    p = lines.current_params()
    X = np.random.default_rng(1).normal(size=(101, 4))  # not a multiple of the block size
    v1, g1 = lines.batch(p, X, reduce="none")
    v2, g2 = tp.batch(p, X, reduce="none")
    # Numba turns a literal x ** 2.0 into x * x, while the tape (like the engine) calls libm's
    # pow, which may differ in the last bit: values agree to an ulp, the gradients exactly
    np.testing.assert_allclose(v2, v1, rtol=2.5e-16, atol=0)
    assert np.array_equal(g1, g2)
    for red in ("sum", "mean"):
        _, a = lines.batch(p, X, reduce=red)
        _, b = tp.batch(p, X, reduce=red)
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(a, g1.sum(0) / (len(X) if red == "mean" else 1), rtol=1e-12)


def test_tape_single_call_and_forward_match_the_engine(mlp_pair):
    model, _, _, loss, _, tp = mlp_pair
    for p in model.parameters():
        p.grad = 0.0
    loss.backward()
    value, grad = tp()
    assert value == loss.data  # bit for bit: the exactness contract
    assert np.array_equal(grad, [p.grad for p in model.parameters()])
    assert tp.forward() == loss.data
    X = np.random.default_rng(2).normal(size=(5, 4))
    np.testing.assert_allclose(tp.batch_forward(None, X), tp.batch(None, X)[0], rtol=0, atol=0)


@settings(max_examples=40)
@given(programs(n_inputs=(1, 3), max_ops=10, n_outputs=2))
def test_tape_matches_python_lines_on_random_programs(case):
    py, _ = _compile_case(case, "python")
    tp, _ = _compile_case(case, "tape")
    v1, g1 = py()
    v2, g2 = tp()
    assert np.array_equal(v2, v1, equal_nan=True), str(case)  # bit for bit (nan's sign aside)
    assert np.array_equal(g2, g1, equal_nan=True), str(case)


@settings(max_examples=30)
@given(programs(n_inputs=(1, 3), max_ops=8, safe=False))
def test_tape_follows_ieee_like_the_engine(case):
    """Unrestricted programs (nan, inf, -0.0): the tape's value is the engine's, bit for bit."""
    leaves, outs, _ = to_values(case.program, case.inputs)
    tp = sg.compile(outs, wrt=leaves, backend="tape")
    value, _ = tp()
    # np.tanh and math.tanh may differ in the last bit; elsewhere the ops are the same libm calls
    if "tanh" not in case.program.ops_used() and "sigmoid" not in case.program.ops_used():
        assert same_float(value, outs[0].data), str(case)
    else:
        assert (math.isnan(value) and math.isnan(outs[0].data)) or value == pytest.approx(
            outs[0].data, rel=1e-9, abs=0, nan_ok=True
        ) or not math.isfinite(outs[0].data), str(case)


@settings(max_examples=50)
@given(programs(n_inputs=(1, 4), max_ops=14, n_outputs=3))
def test_runs_are_independent_and_slots_never_clobber_live_values(case):
    """No instruction of a run reads a slot that the same run writes; results survive to the end."""
    from symgrad.autodiff import value_and_grad
    from tests.strategies import to_ir

    func = value_and_grad(to_ir(case.program), case.program.n_inputs)
    t = tape.lower(func, n_uniform=1)
    for op, lo, hi in t.runs:
        written = set(t.out[lo:hi].tolist())
        assert len(written) == hi - lo, case  # one slot per output in a run
        if op == tape.DOT:
            read = {int(s) for k in range(lo, hi) for s in t.ta[t.a0[k]:t.a1[k]]}
            read |= {int(s) for k in range(lo, hi) for s in t.tb[t.a0[k]:t.a1[k]]}
        else:
            read = set(t.a0[lo:hi].tolist())
            read |= {int(t.a1[k]) for k in range(lo, hi) if t.a1[k] != 0}
        assert not (written & read), case
    # the lowered tape computes what the IR evaluator computes
    from symgrad.ir import evaluate

    args = list(case.inputs)
    want = evaluate(func, args)
    n_out = len(case.program.outputs)
    vals = np.zeros((1, n_out))
    acc = np.zeros((1, len(want) - n_out))
    # numba's np.tanh is libm's, as the evaluator's math.tanh (numpy's own may differ by an ulp)
    run_tape(t, np.array(args[:1], float), np.array([args[1:]], float), n_out, vals, acc)
    got = list(vals[0]) + list(acc[0])
    for a, b in zip(got, want, strict=True):
        # accumulated results start from +0.0, so a -0.0 gradient reads as +0.0
        assert same_float(a, b) or (a == b == 0.0), case


def _same_at_every_thread_count(f, p, X):
    """`f.batch` summed on one thread and on all: the same bits; returns them."""
    numba = pytest.importorskip("numba")
    results = []
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results.append(f.batch(p, X, reduce="sum"))
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    (v0, g0), (v1, g1) = results[0], results[-1]
    assert np.array_equal(v0, v1) and np.array_equal(g0, g1)
    return v0, g0


@pytest.mark.slow
def test_batch_does_not_depend_on_the_thread_count(mlp_pair, monkeypatch):
    _, _, _, _, lines, _ = mlp_pair
    p = lines.current_params()
    X = np.random.default_rng(3).normal(size=(5000, 4))  # above THREAD_WORK: on threads
    v0, g0 = _same_at_every_thread_count(lines, p, X)
    # the threaded build equals the serial one (same chunks, summed in the same order)
    monkeypatch.setattr(type(lines.executor), "THREAD_WORK", 10**12)
    vs, gs = lines.batch(p, X)
    assert np.array_equal(vs, v0)
    assert np.array_equal(gs, g0)
    _, rows = lines.batch(p, X, reduce="none")
    np.testing.assert_allclose(g0, rows.sum(0), rtol=1e-12, atol=1e-13)


@pytest.mark.slow
def test_tape_batch_does_not_depend_on_the_thread_count(mlp_pair):
    model, x, y, loss, _, tp = mlp_pair
    p = tp.current_params()
    X = np.random.default_rng(4).normal(size=(3000, 4))
    v0, g0 = _same_at_every_thread_count(tp, p, X)
    # one summation order for every lowering: the plain-Python line code (which computes with
    # the op table's rules, libm's) sums the same chunks in the same order, to the same bits
    py = sg.compile(loss, wrt=model.parameters(), inputs=[*x, y], backend="python")
    v1, g1 = py.batch(p, X)
    assert np.array_equal(v1, v0) and np.array_equal(g1, g0)


@st.composite
def _sums_of_products(draw):
    """Random left-folded sums mixing products, plain terms, parameters and shared values."""
    n_w, n_x = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    vals = st.floats(-4, 4, allow_nan=False, allow_infinity=False)
    w = [sg.Value(draw(vals), label=f"w{i}") for i in range(n_w)]
    x = [sg.Value(draw(vals), label=f"x{i}") for i in range(n_x)]
    pool = w + x
    outs = []
    for _ in range(draw(st.integers(1, 3))):
        s = draw(st.sampled_from(pool))
        for _ in range(draw(st.integers(1, 9))):
            kind = draw(st.integers(0, 4))
            a, b = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
            t = a * b if kind < 3 else a
            s = s + t if kind != 1 else t + s  # both operand orders
            if draw(st.booleans()):
                pool.append(t if kind < 3 else s)  # shared: used again later
        outs.append(s)
    return w, x, outs


@settings(max_examples=60)
@given(_sums_of_products())
def test_fused_sums_are_bit_for_bit_the_unfused_ones(case):
    """Sums and products only: the fused tape must give exactly the unfused code's bits."""
    w, x, outs = case
    ref = sg.compile(outs, wrt=w, inputs=x, backend="python")
    tp = sg.compile(outs, wrt=w, inputs=x, backend="tape")
    X = np.random.default_rng(0).normal(size=(40, len(x)))
    v1, g1 = ref.batch(None, X, reduce="none")
    v2, g2 = tp.batch(None, X, reduce="none")
    assert np.array_equal(v1, v2)
    assert np.array_equal(g1, g2)


def test_mlp_layers_become_a_few_fused_runs():
    model, x, y, loss = _mlp_loss(4, 8)
    f = sg.compile(loss, wrt=model.parameters(), inputs=[*x, y], backend="tape")
    t = f.executor.tapes[f"{f.name}_value_and_grad"]
    dots = [r for r in t.runs if r[0] == tape.DOT]
    assert len(dots) >= 4  # two layers forward, the backward sums
    assert len(t.runs) < 40 < len(f.ir.body)
    assert "dot" in f.source
