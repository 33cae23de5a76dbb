"""The NumPy executor (`symgrad.executors.vector`) computes what the Numba tape computes.

Oracle: the Numba tape interpreter (``backend="tape"``). The vector executor
reorders sums (matrix products, per-chunk gradient sums), so results agree to about 1e-12
relative, not bit for bit; nan and inf must appear in the same places. Sums it does NOT turn into
matrix products (pooled terms, `np.add.reduceat`) keep the tape's order and so its bits.
"""

from __future__ import annotations

import math
import random
import struct

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import symgrad as sg
from symgrad.executors import REGISTRY, vector
from symgrad.nn import MLP
from symgrad.ops import OPS
from tests.strategies import POW_EXPONENTS, programs, same_float, to_values

SPECIAL = (0.0, -0.0, math.inf, -math.inf, math.nan, 1e308, -1e308, 5e-324, 1.0, -2.5, 0.5)

# numpy's SIMD transcendental functions (AVX-512 / AVX2 builds) are not libm's: they may differ
# from the engine's math.* rules in the last bits of finite results. Measured on an AVX-512 Zen
# machine over 80k values from 1e-300 to 1e300: exp, log, pow 1 ulp, sigmoid 2, tanh 3, sin and
# cos 0. Ops made of IEEE arithmetic and comparisons only are bit for bit.
ULPS = {"exp": 1, "log": 1, "pow": 1, "sigmoid": 3, "tanh": 4, "sin": 1, "cos": 1}


def _ulps(a: float, b: float) -> int:
    ia, ib = (struct.unpack("<q", struct.pack("<d", v))[0] for v in (a, b))
    ia, ib = (i if i >= 0 else -(2**63) - i for i in (ia, ib))  # monotone in the float order
    return abs(ia - ib)


def _agrees(name: str, got: float, want: float) -> bool:
    if same_float(got, want):
        return True
    # special results (nan, inf, signed zeros) must be exact; finite ones within the op's ulps
    finite = math.isfinite(want) and math.isfinite(got) and want != 0.0 and got != 0.0
    return finite and _ulps(got, want) <= ULPS.get(name, 0)


_TWINS: dict[int, tuple[object, object]] = {}


def _twin(f):
    """The vector executor built from the same kernels as `f` (compiled with the tape)."""
    hit = _TWINS.get(id(f))
    if hit is None or hit[0] is not f:
        hit = _TWINS[id(f)] = (f, REGISTRY["vector"](list(f.executor.kernels.values()), f.name, ""))
    return hit[1]


def _vg(f):
    return next(iter(f.executor.kernels))  # the first kernel: value and gradient (or the jvp...)


def _fw(f):
    return f"{f.name}_forward"


# ---- the op table's vectorised forms -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_has_a_vectorised_form_matching_its_rule(name):
    op = OPS[name]
    vop = vector.vector_op(name)
    assert vop.source and callable(vop.fn)
    grid = [list(t) for t in np.array(np.meshgrid(*[SPECIAL] * op.arity)).reshape(op.arity, -1).T]
    exps = sorted({*POW_EXPONENTS, 0.0, 1.0, -2.0, 1 / 3}) if op.params else [None]
    with np.errstate(all="ignore"):
        for p in exps:
            xs = [np.array([[row[i] for row in grid]] * 2) for i in range(op.arity)]  # (2, n)
            params = [np.full((2, xs[0].shape[1]), p)] if op.params else []
            got = np.broadcast_to(vop.fn(*xs, *params), xs[0].shape)
            for j, row in enumerate(grid):
                want = op.impl(*row, **({"p": p} if op.params else {}))
                for r in range(2):
                    assert _agrees(name, float(got[r, j]), want), (name, row, p, got[r, j], want)


@pytest.mark.parametrize("name", sorted(OPS))
def test_vectorised_forms_match_on_ordinary_values(name):
    op = OPS[name]
    vop = vector.vector_op(name)
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(0, 3, 2000), np.exp(rng.uniform(-700, 700, 2000))])
    x = np.concatenate([x, -x]).reshape(4, -1)
    args = [x, x[::-1].copy(), np.roll(x, 1)][: op.arity]
    for p in sorted({*POW_EXPONENTS, 2.5}) if op.params else [None]:
        with np.errstate(all="ignore"):
            params = [np.full(x.shape, p)] if op.params else []
            got = np.broadcast_to(vop.fn(*args, *params), x.shape)
        kw = {"p": p} if op.params else {}
        operands = [[float(v) for v in a.ravel()] for a in args]
        bad = [
            (xs, float(g)) for *xs, g in zip(*operands, got.ravel(), strict=True)
            if not _agrees(name, float(g), op.impl(*xs, **kw))
        ]
        assert not bad, (name, p, bad[:5])


@pytest.mark.parametrize("exps", [[p] for p in (*POW_EXPONENTS, -0.5, 1.0, 0.0)] + [
    list(POW_EXPONENTS)])
def test_pow_through_the_executor_keeps_libm_semantics(exps):
    """One exponent for a whole run reaches numpy as a scalar (its fast paths: x ** 2 is x * x,
    x ** 0.5 is sqrt, which differs from pow at -0.0 and -inf); several are an array."""
    x = [sg.Value(0.0, label=f"x{i}") for i in range(2)]
    outs = [xi ** p for p in exps for xi in x]
    f = sg.compile(outs, wrt=[], inputs=x, backend="tape")
    rng = np.random.default_rng(8)
    col = np.array([*SPECIAL, -1e-300, 1e-300, *rng.normal(0, 10, 40)])
    X = np.column_stack([col, col[::-1]])
    got = np.zeros((len(X), len(outs)))
    _twin(f).batch(_fw(f), (np.zeros(0), X, got), "rows")
    for r, row in enumerate(X):
        for c, (p, i) in enumerate((p, i) for p in exps for i in range(2)):
            want = OPS["pow"].impl(float(row[i]), p=p)
            assert _agrees("pow", float(got[r, c]), want), (row[i], p, got[r, c], want)


def test_conditional_templates_become_np_where_and_ufuncs_are_found():
    assert "np.where" in vector.vector_op("relu").source
    assert "np.where" in vector.vector_op("step").source
    assert vector.vector_op("tanh").ufunc is np.tanh
    assert vector.vector_op("sub").ufunc is np.subtract
    assert vector.vector_op("pow").ufunc is np.power
    assert vector.vector_op("sigmoid").ufunc is None  # an expression: evaluated, then stored


def test_a_scalar_only_template_is_refused(monkeypatch):
    from symgrad.ops import OpDef

    bad = OpDef("clip_", 1, impl=lambda x: x, vjp=lambda ct, out, x: (ct,),
                py="max({0}, 0.0)", sympy=lambda sp, x: x, symbol="clip")
    monkeypatch.setitem(OPS, "clip_", bad)
    with pytest.raises(ValueError, match="no array form"):
        vector._derive(bad)


# ---- MLPs against the Numba tape ---------------------------------------------------------------


def _mlp(nin, nouts, activation="tanh", output_activation=None, seed=0):
    random.seed(seed)
    model = MLP(nin, nouts, activation=activation, output_activation=output_activation)
    x = [sg.Value(0.0, label=f"x{i}") for i in range(nin)]
    y = sg.Value(0.0, label="y")
    out = model(x)
    outs = out if isinstance(out, list) else [out]
    loss = sum(((o - y) ** 2 for o in outs), sg.Value(0.0))
    f = sg.compile(loss, wrt=model.parameters(), inputs=[*x, y], backend="tape")
    return f


def _data(nin, n, seed=1):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(size=(n, nin)), rng.choice([-1.0, 1.0], size=n)])


def _vector_batch(f, p, X, reduce):
    """`Compiled.batch` with the vector executor (what backend="vector" will do)."""
    n = X.shape[0]
    values = np.zeros((n, f.n_out))
    if reduce == "none":
        grads = np.zeros((n, f.n_out, f.n_params))
        _twin(f).batch(_vg(f), (p, X, values, grads), "rows")
        return values[:, 0], grads[:, 0]
    acc = np.zeros((f.n_out, f.n_params))
    _twin(f).batch(_vg(f), (p, X, values, acc), "sum")
    return values[:, 0], acc[0]


def _close(got, want, rtol=1e-12):
    """Agreement relative to the array's scale (a loss near 0 has few significant digits)."""
    got, want = np.asarray(got), np.asarray(want)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isinf(got), np.isinf(want))
    fin = np.isfinite(want)
    scale = np.max(np.abs(want[fin]), initial=0.0)
    np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=rtol * scale)


MLPS = [
    ((3, [4, 4, 1], "tanh", None), 37),
    ((2, [16, 16, 1], "tanh", None), 100),
    ((5, [8, 8, 1], "relu", "linear"), 64),
    ((4, [6, 3], "sigmoid", "linear"), 33),
    ((16, [64, 64, 1], "tanh", None), 300),
]


@pytest.fixture(scope="module", params=MLPS, ids=lambda m: f"MLP{m[0][:2]}-{m[0][2]}-x{m[1]}")
def mlp_case(request):
    (nin, nouts, act, out_act), n = request.param
    return _mlp(nin, nouts, act, out_act), _data(nin, n)


@pytest.mark.parametrize("reduce", ["sum", "none"])
def test_mlp_batch_matches_the_numba_tape(mlp_case, reduce):
    f, X = mlp_case
    p = f.current_params()
    v1, g1 = f.batch(p, X, reduce=reduce)
    v2, g2 = _vector_batch(f, p, X, reduce)
    _close(v2, v1)
    _close(g2, g1)


def test_mlp_chunks_not_a_multiple_of_the_chunk_size(mlp_case, monkeypatch):
    f, X = mlp_case
    p = f.current_params()
    ref = [f.batch(p, X, reduce=r) for r in ("sum", "none")]
    monkeypatch.setattr(vector, "CHUNK", 16)
    monkeypatch.setattr(vector, "MIN_CHUNK", 16)
    for r, (v1, g1) in zip(("sum", "none"), ref, strict=True):
        v2, g2 = _vector_batch(f, p, X, r)  # 37, 100, 64, 33, 300 rows in chunks of 16
        _close(v2, v1)
        _close(g2, g1)


def test_mlp_single_row_and_single_call(mlp_case):
    f, X = mlp_case
    p = f.current_params()
    v1, g1 = f.batch(p, X[:1])
    v2, g2 = _vector_batch(f, p, X[:1], "sum")
    _close(v2, v1)
    _close(g2, g1)
    # the single-call convention (batch None): arrays are the kernel's own
    value, grad = f(p, X[0])
    out, acc = np.zeros(1), np.zeros((1, f.n_params))
    _twin(f).call(_vg(f), (p, X[0], out, acc))
    _close(out, [value])
    _close(acc[0], grad)


def test_forward_only_layout(mlp_case):
    f, X = mlp_case
    p = f.current_params()
    want = f.batch_forward(p, X)
    got = np.zeros((len(X), 1))
    _twin(f).batch(_fw(f), (p, X, got), "rows")
    _close(got[:, 0], want)


def test_the_lecture_mlp_becomes_matrix_products():
    """The plan the speed comes from: every layer one product, every weight gradient a grid."""
    f = _mlp(16, [64, 64, 1])
    pl = vector.plan(f.executor.tapes[_vg(f)], f.n_params, 1)
    s = pl.stats
    assert s["matmuls"] == 4  # three layers forward, one backward through the hidden layer
    assert s["matmul_terms"] >= 0.98 * s["terms"]
    assert s["grids"] == 3 and s["grid_products"] == s["products"] == 16 * 64 + 64 * 64 + 64
    assert pl.n_rows < 1000  # per-example values only: parameters get no rows
    assert "matrix products" in pl.describe()
    assert vector.plan(f.executor.tapes[_vg(f)], f.n_params, 1) is pl  # built once


def test_frozen_weights_make_irregular_layers():
    """Some weights frozen (literals): steps still share rows, gradient grids are incomplete."""
    random.seed(3)
    model = MLP(4, [5, 1])
    x = [sg.Value(0.0, label=f"x{i}") for i in range(4)]
    y = sg.Value(0.0, label="y")
    loss = (model(x) - y) ** 2
    params = model.parameters()
    wrt = [q for i, q in enumerate(params) if i % 3 != 1]
    f = sg.compile(loss, wrt=wrt, inputs=[*x, y], backend="tape")
    X = _data(4, 50, seed=4)
    for r in ("sum", "none"):
        v1, g1 = f.batch(None, X, reduce=r)
        v2, g2 = _vector_batch(f, f.current_params(), X, r)
        _close(v2, v1)
        _close(g2, g1)


def test_products_of_two_per_example_values_and_parameter_products():
    """Pair terms (x_j * h_j), gradients that are parameter x parameter or parameter x input."""
    w = [sg.Value(0.3 * (i + 1), label=f"w{i}") for i in range(5)]
    x = [sg.Value(0.0, label=f"x{i}") for i in range(5)]
    h = [(wi * xi).tanh() for wi, xi in zip(w, x, strict=True)]
    s = sum((hi * xi for hi, xi in zip(h, x, strict=True)), w[0] * w[1])
    loss = s * 3.0 * w[2] * w[3] + w[4] * x[0]
    f = sg.compile(loss, wrt=w, inputs=x, backend="tape")
    X = np.random.default_rng(5).normal(size=(23, 5))
    for r in ("sum", "none"):
        v1, g1 = f.batch(None, X, reduce=r)
        v2, g2 = _vector_batch(f, f.current_params(), X, r)
        _close(v2, v1)
        _close(g2, g1)


def test_gradients_that_are_products_of_every_kind():
    """Summed products outside any grid: input x input, parameter x input, parameter x literal."""
    w = [sg.Value(0.5 + 0.25 * i, label=f"w{i}") for i in range(6)]
    x = [sg.Value(0.0, label=f"x{i}") for i in range(4)]
    loss = w[0] * w[1] * x[0] + 3.0 * w[2] * w[3] + w[4] * x[1] * x[2] + (w[5] * x[3]).tanh()
    f = sg.compile(loss, wrt=w, inputs=x, backend="tape")
    kinds = {k for k, *_ in vector.plan(f.executor.tapes[_vg(f)], f.n_params, 1).results.per_row}
    assert {"rr", "ru", "uu"} <= kinds, kinds
    X = np.random.default_rng(6).normal(size=(19, 4))
    for r in ("sum", "none"):
        v1, g1 = f.batch(None, X, reduce=r)
        v2, g2 = _vector_batch(f, f.current_params(), X, r)
        _close(v2, v1)
        _close(g2, g1)


def test_higher_order_layouts():
    """jvp, hvp and hessian kernels (several argument and accumulated arrays) run as well."""
    random.seed(2)
    model = MLP(3, [4, 1])
    x = [sg.Value(0.0, label=f"x{i}") for i in range(3)]
    loss = (model(x) - 0.5) ** 2
    wrt = model.parameters()
    p = np.array([q.data for q in wrt])
    t = np.linspace(-1.0, 1.0, len(wrt))
    X = np.random.default_rng(9).normal(size=(11, 3))
    for build, arrays in [
        (sg.jvp, lambda: (p, t, X[0], np.zeros(1), np.zeros(1))),
        (sg.hvp, lambda: (p, t, X[0], np.zeros(len(p)), np.zeros(len(p)))),
        (sg.hessian, lambda: (p, X[0], np.zeros(1), np.zeros(len(p)), np.zeros((len(p),) * 2))),
    ]:
        h = build(loss, wrt=wrt, inputs=x, backend="tape")
        a, b = arrays(), arrays()
        h.executor.call(_vg(h), a)
        _twin(h).call(_vg(h), b)
        for got, want in zip(b[-2:], a[-2:], strict=True):
            _close(got, want)
    n, P = len(X), len(p)
    for batch, shapes in [("sum", [(n, 1), (P,), (P, P)]), ("rows", [(n, 1), (n, P), (n, P, P)])]:
        a = (p, X, *[np.zeros(s) for s in shapes])
        b = (p, X, *[np.zeros(s) for s in shapes])
        h.executor.batch(_vg(h), a, batch)
        _twin(h).batch(_vg(h), b, batch)
        for got, want in zip(b[2:], a[2:], strict=True):
            _close(got, want)


# ---- random programs ---------------------------------------------------------------------------


def _both(f, p, X, batch):
    """(tape, vector) results of the value-and-gradient kernel on the same arrays."""
    n = X.shape[0]
    out = []
    for run in ("tape", "vector"):
        if batch is None:
            arrays = (p, X[0], np.zeros(f.n_out), np.zeros((f.n_out, f.n_params)))
        elif batch == "rows":
            arrays = (p, X, np.zeros((n, f.n_out)), np.zeros((n, f.n_out, f.n_params)))
        else:
            arrays = (p, X, np.zeros((n, f.n_out)), np.zeros((f.n_out, f.n_params)))
        with np.errstate(all="ignore"):
            ex = f.executor if run == "tape" else _twin(f)
            if batch is None:
                ex.call(_vg(f), arrays)
            else:
                ex.batch(_vg(f), arrays, batch)
        out.append((arrays[2], arrays[3]))
    return out


def _split(case):
    """Compile a program with its first leaf a parameter and the others per-example inputs."""
    leaves, outs, _ = to_values(case.program, case.inputs)
    f = sg.compile(outs, wrt=leaves[:1], inputs=leaves[1:], backend="tape", name="prog")
    p = np.array(case.inputs[:1], float)
    X = np.tile(np.array(case.inputs[1:], float), (3, 1))  # 3 identical rows
    return f, p, X


@settings(max_examples=60)
@given(programs(n_inputs=(1, 4), max_ops=12, n_outputs=2))
def test_random_programs_match_the_tape(case):
    f, p, X = _split(case)
    for batch in (None, "rows", "sum"):
        (v1, g1), (v2, g2) = _both(f, p, X, batch)
        # conditioning of random programs is poor: 1e-9 (the tape's own bound against the
        # line-by-line code), numpy's tanh differing from libm's by a few ulps
        np.testing.assert_allclose(v2, v1, rtol=1e-9, atol=1e-12, err_msg=str(case))
        np.testing.assert_allclose(g2, g1, rtol=1e-9, atol=1e-12, err_msg=str(case))


@settings(max_examples=80)
@given(programs(n_inputs=(1, 4), max_ops=10, safe=False, n_outputs=2))
def test_unsafe_random_programs_put_nan_and_inf_where_the_tape_does(case):
    f, p, X = _split(case)
    for batch in (None, "rows", "sum"):
        (v1, g1), (v2, g2) = _both(f, p, X, batch)
        for a, b in ((v2, v1), (g2, g1)):
            assert np.array_equal(np.isnan(a), np.isnan(b)), (batch, str(case), a, b)
            assert np.array_equal(np.isposinf(a), np.isposinf(b)), (batch, str(case), a, b)
            assert np.array_equal(np.isneginf(a), np.isneginf(b)), (batch, str(case), a, b)


@settings(max_examples=40)
@given(programs(n_inputs=(1, 3), max_ops=10, n_outputs=2))
def test_single_calls_with_every_leaf_a_parameter(case):
    """No per-example input at all: every value is uniform, broadcast over one row."""
    leaves, outs, _ = to_values(case.program, case.inputs)
    f = sg.compile(outs, wrt=leaves, inputs=[], backend="tape", name="prog")
    p = np.array(case.inputs, float)
    (v1, g1), (v2, g2) = _both(f, p, np.zeros((1, 0)), None)
    np.testing.assert_allclose(v2, v1, rtol=1e-9, atol=1e-12, err_msg=str(case))
    np.testing.assert_allclose(g2, g1, rtol=1e-9, atol=1e-12, err_msg=str(case))


@st.composite
def _sums_of_products(draw):
    """Left-folded sums mixing products of parameters and inputs, shared partial results."""
    n_w, n_x = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    vals = st.floats(-4, 4, allow_nan=False, allow_infinity=False)
    w = [sg.Value(draw(vals), label=f"w{i}") for i in range(n_w)]
    x = [sg.Value(0.0, label=f"x{i}") for i in range(n_x)]
    pool = w + x
    outs = []
    for _ in range(draw(st.integers(1, 3))):
        s = draw(st.sampled_from(pool))
        for _ in range(draw(st.integers(2, 9))):
            kind = draw(st.integers(0, 4))
            a, b = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
            t = a * b if kind < 3 else a
            s = s + t if kind != 1 else t + s
            if draw(st.booleans()):
                pool.append(t if kind < 3 else s)
        outs.append(s)
    return w, x, outs


@settings(max_examples=60)
@given(_sums_of_products())
def test_fused_sums_outside_matrix_products_keep_the_tapes_bits(case):
    """Sums and products only, on a batch: every fused sum runs through the vector paths."""
    w, x, outs = case
    f = sg.compile(outs, wrt=w, inputs=x, backend="tape")
    X = np.random.default_rng(0).normal(size=(40, len(x)))
    p = f.current_params()
    for batch in ("rows", "sum"):
        (v1, g1), (v2, g2) = _both(f, p, X, batch)
        _close(v2, v1)
        _close(g2, g1)
    pl = vector.plan(f.executor.tapes[_vg(f)], f.n_params, f.n_out)
    if pl.stats["matmuls"] == 0:  # pooled sums only: the tape's order, so its bits
        (v1, _), (v2, _) = _both(f, p, X, "rows")
        assert np.array_equal(v1, v2)


def test_empty_batch_and_inf_inputs():
    f = _mlp(3, [4, 4, 1])
    p = f.current_params()
    p[0] = 0.0  # a zero weight meets an infinite input: 0 * inf is nan inside a matrix product
    X = _data(3, 9)
    X[2, 0] = np.inf
    X[5, 1] = np.nan
    X[7, :] = -np.inf
    for r in ("sum", "none"):
        v1, g1 = f.batch(p, X, reduce=r)
        v2, g2 = _vector_batch(f, p, X, r)
        _close(v2, v1)
        _close(g2, g1)
    # no rows: nothing to do, nothing written
    values, acc = np.zeros((0, 1)), np.zeros((1, f.n_params))
    vector.run(f.executor.tapes[_vg(f)], p, np.zeros((0, 4)), 1, values, acc, False)
    assert not acc.any()


# ---- tanh's derivative where tanh saturates ----------------------------------------------------
# The exact backends compute it by the op table's rule ``1 - tanh(n)**2``, which cancels to 0.0
# from |n| about 19; the vector backend computes sech(n)**2 from n. Oracle: mpmath at 50 digits.


def _rel_errors(got, exact):
    """|got - exact| / |exact| in mpmath (exact 0 must be got exactly)."""
    out = []
    for g, e in zip(np.ravel(got).tolist(), exact, strict=True):
        if e == 0:
            assert g == 0.0, (g, e)
        else:
            out.append(float(abs((mpmath.mpf(g) - e) / e)))
    return out


def test_sech2_has_full_relative_accuracy_down_to_the_smallest_normal():
    x = np.concatenate([np.linspace(0.0, 380.0, 7601), 10.0 ** np.linspace(-300, 0, 301)])
    x = np.concatenate([x, -x])
    with np.errstate(over="ignore"):  # cosh(x)**2 overflows: the result is 0.0
        got = vector._sech2(x)
    with mpmath.workdps(50):
        exact = [mpmath.sech(mpmath.mpf(v)) ** 2 for v in x.tolist()]
        normal = [i for i, e in enumerate(exact) if e >= np.finfo(float).tiny]
        assert max(_rel_errors(got[normal], [exact[i] for i in normal])) < 1e-15
    assert np.all(got[np.abs(x) > 356.0] == 0.0)  # subnormal or less: 0.0, never nan
    with np.errstate(over="ignore"):
        specials = vector._sech2(np.array([np.inf, -np.inf, np.nan, 1e308, -1e308, -0.0, 5e-324]))
    assert np.array_equal(specials, [0.0, 0.0, np.nan, 0.0, 0.0, 1.0, 1.0], equal_nan=True)


def test_gradient_of_a_saturating_tanh_keeps_relative_accuracy():
    w = sg.Value(1.0, label="w")
    x = sg.Value(0.0, label="x")
    y = (w * x).tanh()
    f = sg.compile(y, wrt=[w], inputs=[x], backend="vector")
    exact_f = sg.compile(y, wrt=[w], inputs=[x], backend="tape")
    assert "1 tanh derivatives as sech(n)**2" in f.source
    X = np.linspace(-40.0, 40.0, 801).reshape(-1, 1)
    with mpmath.workdps(50):
        exact = [mpmath.mpf(v) * mpmath.sech(mpmath.mpf(v)) ** 2 for v in X[:, 0].tolist()]
        values, grads = f.batch(None, X, reduce="none")
        np.testing.assert_allclose(values, np.tanh(X[:, 0]), rtol=1e-15)
        assert max(_rel_errors(grads[:, 0], exact)) < 1e-14
        # summed over the saturated rows only (positive terms, so no cancellation)
        far = X[:, 0] >= 20.0
        _, total = f.batch(None, X[far], reduce="sum")
        want = mpmath.fsum(e for e, k in zip(exact, far.tolist(), strict=True) if k)
        assert _rel_errors(total, [want])[0] < 1e-14
        # the exact backends' 1 - tanh**2 has no relative accuracy left there
        _, tape_grads = exact_f.batch(None, X, reduce="none")
        assert np.all(tape_grads[np.abs(X[:, 0]) >= 20.0] == 0.0)
    # where the tape's gradient is special (nan, inf, signed zeros), the vector one is the same
    Xs = np.array(SPECIAL).reshape(-1, 1)
    _, g1 = exact_f.batch(None, Xs, reduce="none")
    _, g2 = f.batch(None, Xs, reduce="none")
    for a, b in zip(g2[:, 0].tolist(), g1[:, 0].tolist(), strict=True):
        assert same_float(a, b) or (math.isfinite(b) and b != 0.0 and math.isclose(a, b)), (a, b)


def test_mlp_gradients_keep_relative_accuracy_where_pre_activations_saturate():
    """One tanh layer, a linear output: ``d out / d w1[i, j] = w2[i] sech(n_i)**2 x_j``. Small
    integer weights and inputs make the pre-activations exact, so the oracle sees the same n."""
    random.seed(0)
    nin, hidden = 3, 8
    model = MLP(nin, [hidden, 1], activation="tanh", output_activation="linear")
    rng = np.random.default_rng(11)
    layer1, (out_neuron,) = model.layers[0].neurons, model.layers[1].neurons
    for nrn in layer1:
        for v in [*nrn.w, nrn.b]:
            v.data = float(rng.integers(-4, 5))
    for v in [*out_neuron.w, out_neuron.b]:
        v.data = float(rng.integers(1, 4)) * rng.choice([-0.5, 1.0])
    x = [sg.Value(0.0, label=f"x{i}") for i in range(nin)]
    params = model.parameters()
    f = sg.compile(model(x), wrt=params, inputs=x, backend="vector")
    plan = vector.plan(f.executor.tapes[_vg(f)], f.n_params, 1)
    assert plan.stats["sech2"] == hidden
    X = rng.integers(-6, 7, size=(40, nin)).astype(float)
    _, grads = f.batch(None, X, reduce="none")
    exact = []
    with mpmath.workdps(50):
        for row in X.tolist():
            d_out = []
            for nrn, w2 in zip(layer1, out_neuron.w, strict=True):
                n = nrn.b.data + sum(wj.data * xj for wj, xj in zip(nrn.w, row, strict=True))
                s2 = mpmath.mpf(w2.data) * mpmath.sech(mpmath.mpf(n)) ** 2
                d_out += [s2 * mpmath.mpf(xj) for xj in row] + [s2]
            tanhs = [mpmath.tanh(mpmath.mpf(nrn.b.data + sum(
                wj.data * xj for wj, xj in zip(nrn.w, row, strict=True)))) for nrn in layer1]
            exact += d_out + tanhs + [mpmath.mpf(1)]
        assert max(_rel_errors(grads, exact)) < 1e-14
    # the saturated neurons are there: the exact backend's gradients lose them entirely
    exact_f = sg.compile(model(x), wrt=params, inputs=x, backend="tape")
    _, tape_grads = exact_f.batch(None, X, reduce="none")
    lost = (tape_grads == 0.0) & (grads != 0.0)
    assert lost.sum() >= 20
