"""Reverse mode on the IR, checked against independent oracles on random programs.

Oracles: the interpreted engine's ``backward()``, the original micrograd package (for programs
over its ops), sympy (``sg.to_sympy`` + ``sympy.diff``, evaluated to 30 digits at the exact
binary inputs), and central finite differences of the plain float evaluation. Programs come
from `tests.strategies`: each op reads earlier values by index, so fan-out, shared
subexpressions and dead code are common.

Two correct float computations may round differently (np.tanh and math.tanh differ in the last
bit for some arguments; micrograd divides as x * y**-1 and sums in another order), so
comparisons allow, besides the relative tolerance, the slack `rounding_slack` measures: how far
the engine's results move when every value is perturbed by 1e-15 relative, and how large the
terms summed into each gradient are. It is tiny for a well-conditioned program, and the honest
error bar for an ill-conditioned one.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
import sympy as sp
from hypothesis import assume, given, note, reject, settings
from hypothesis import strategies as st

import symgrad as sg
from symgrad import autodiff, ir
from symgrad.ops import OPS
from symgrad.symbolic import NoSympyForm
from symgrad.trace import trace
from tests.strategies import (
    MICROGRAD_OPS,
    Case,
    Program,
    Step,
    engine_value_and_grad,
    evaluate,
    kink_signature,
    programs,
    rounding_slack,
    same_float,
    to_micrograd,
    to_values,
)

FEW = settings(max_examples=15, deadline=None)  # for tests that compile with numba


def _compiled(
    case: Case, backend: str = "python", **kw: Any
) -> tuple[list[float], list[list[float]], sg.Compiled]:
    """Values and Jacobian (outputs x inputs) of the compiled program, all leaves as wrt."""
    leaves, outs, _ = to_values(case.program, case.inputs)
    several = len(outs) > 1
    # a name of our own: numba shares cached modules between identical sources
    kw.setdefault("name", "ad")
    f = sg.compile(outs if several else outs[0], wrt=leaves, backend=backend, **kw)
    v, g = f()
    values = [float(x) for x in np.atleast_1d(v)]
    jac = np.atleast_2d(g).tolist()
    return values, jac, f


def _assert_close(
    got: tuple[list[float], list[list[float]]],
    want: tuple[list[float], list[list[float]]],
    rel: float,
    slack: tuple[list[float], list[list[float]]] | None,
    context: str,
) -> None:
    gv, gj = got
    wv, wj = want
    sv, sj = slack if slack is not None else ([0.0] * len(wv), [[0.0] * len(r) for r in wj])
    assert len(gv) == len(wv) and [len(r) for r in gj] == [len(r) for r in wj]
    pairs = [(f"value {k}", gv[k], wv[k], sv[k]) for k in range(len(wv))]
    pairs += [
        (f"d out{k} / d x{i}", gj[k][i], wj[k][i], sj[k][i])
        for k in range(len(wj)) for i in range(len(wj[k]))
    ]
    for what, a, b, s in pairs:
        # below the smallest normal float the spacing is absolute (5e-324): a relative
        # tolerance means nothing there, so subnormal results may differ by a few spacings
        ok = same_float(a, b) or abs(a - b) <= rel * abs(b) + s + 1e-320
        assert ok, f"{what}: got {a!r}, want {b!r} (slack {s:.3g})\n{context}"


# ---- the interpreted engine and micrograd --------------------------------------------------------


@given(programs(max_ops=10, n_outputs=1))
def test_python_backend_matches_engine(case: Case) -> None:
    v, j, f = _compiled(case)
    note(str(f.ir))
    ctx = f"{case}\n{f.ir}"
    slack = rounding_slack(case)
    _assert_close((v, j), engine_value_and_grad(case), 1e-12, slack, ctx)
    if case.program.ops_used() <= MICROGRAD_OPS:
        _assert_close((v, j), _micrograd(case), 1e-12, slack, ctx)


def _micrograd(case: Case) -> tuple[list[float], list[list[float]]]:
    leaves, outs = to_micrograd(case.program, case.inputs)
    values, jac = [], []
    for o in outs:
        # micrograd's backward only visits o's graph: reset every leaf, seed, sweep
        for leaf in leaves:
            leaf.grad = 0.0
        _zero_graph(o)
        o.backward()
        values.append(float(o.data))
        jac.append([float(leaf.grad) for leaf in leaves])
    return values, jac


def _zero_graph(root: Any) -> None:
    stack, seen = [root], set()
    while stack:
        v = stack.pop()
        if id(v) not in seen:
            seen.add(id(v))
            v.grad = 0
            stack.extend(v._prev)


@given(programs(safe=False, max_ops=10, n_outputs=2, leaf_values=st.floats()))
def test_python_backend_equals_engine_bit_for_bit(case: Case) -> None:
    # the plain-Python backend runs the op table's own rules, the engine's arithmetic in the
    # engine's order: the same bits for any input, nan and inf included (nan signs aside)
    v, j, f = _compiled(case)
    ev, ej = engine_value_and_grad(case)
    flat = [*v, *(g for row in j for g in row)]
    want = [*ev, *(g for row in ej for g in row)]
    for a, b in zip(flat, want, strict=True):
        assert same_float(a, b), f"{a!r} != {b!r}\n{case}\n{f.ir}"


@given(programs(ops=sorted(MICROGRAD_OPS), max_ops=10, n_outputs=2))
def test_micrograd_programs_match_micrograd(case: Case) -> None:
    v, j, f = _compiled(case)
    want = _micrograd(case)
    slack = rounding_slack(case)  # micrograd divides as x * y**-1: other roundings
    ctx = f"{case}\n{f.ir}"
    _assert_close((v, j), want, 1e-12, slack, ctx)
    _assert_close(engine_value_and_grad(case), want, 1e-12, slack, ctx)


@FEW
@given(programs(max_ops=8, n_outputs=2))
def test_numba_backend_matches_engine(case: Case) -> None:
    v, j, f = _compiled(case, "numba")
    want = engine_value_and_grad(case)
    _assert_close((v, j), want, 1e-12, rounding_slack(case), f"{case}\n{f.ir}")


RAW_LEAVES = st.one_of(
    st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 1e308, -1e308, 5e-324, 2.0, -3.0]),
    st.floats(),
)


@FEW
@given(programs(safe=False, max_ops=6, leaf_values=RAW_LEAVES))
def test_numba_follows_ieee_like_the_engine(case: Case) -> None:
    # nan where the engine has nan, the same infinities, the same finite numbers
    v, j, f = _compiled(case, "numba")
    ev, ej = engine_value_and_grad(case)
    for a, b in zip([*v, *j[0]], [*ev, *ej[0]], strict=True):
        ok = same_float(a, b) or (math.isfinite(b) and math.isclose(a, b, rel_tol=1e-12))
        assert ok, f"{a!r} != {b!r}\n{case}\n{f.ir}"


# ---- sympy and finite differences ----------------------------------------------------------------


def _sympy_value_and_grad(case: Case) -> tuple[list[float], list[list[float]]]:
    leaves, outs, _ = to_values(case.program, case.inputs)
    try:
        exprs = sg.to_sympy(outs)
    except NoSympyForm:  # a comparison with a branch sympy finds non-real: no oracle here
        reject()
    names = [leaf.label for leaf in leaves]
    syms = {s.name: s for e in exprs for s in e.free_symbols}
    assert set(syms) <= set(names), (syms, names)
    args = [syms.get(n, sp.Symbol(n, real=True)) for n in names]
    # exact rationals in, 30 digits out; substituting first resolves relu's Piecewise, so a
    # branch that is not taken (where sympy may have put zoo) is never evaluated
    point = {s: sp.Rational(x) for s, x in zip(args, case.inputs, strict=True)}
    try:
        rows = [[e, *(sp.diff(e, s) for s in args)] for e in exprs]
    except RecursionError:
        # sympy simplifying some piecewise conditions recurses without end: no oracle here
        reject()
    out = [[float(sp.sympify(d).xreplace(point).evalf(30)) for d in r] for r in rows]
    return [r[0] for r in out], [r[1:] for r in out]


def test_a_comparison_sympy_cannot_form_is_a_clear_error_and_check_checks_numerically():
    """``2 >= 1/step(x)``: where step is 0 sympy has zoo, which it refuses to compare. to_sympy
    says so (NoSympyForm, a ValueError), and check falls back to the numeric tier."""
    program = Program(n_inputs=1, steps=(Step(op="step", args=(0,), params=()),
                                         Step(op="pow", args=(1,), params=(-1.0,)),
                                         Step(op="ge", args=(2.0, 2), params=())),
                      outputs=(3, 0))
    leaves, outs, _ = to_values(program, (1.0,))
    with pytest.raises(NoSympyForm, match="cannot form"):
        sg.to_sympy(outs)
    out = outs[0] + outs[1]
    res = sg.check(out, wrt=leaves)  # raises if a derivative is wrong
    assert res.method == "numeric" and res.compared > 0
    with pytest.raises(ValueError, match="method='numeric'"):
        sg.check(out, wrt=leaves, method="symbolic")


@settings(max_examples=max(10, settings.default.max_examples // 2))
@given(programs(max_ops=6, n_outputs=2))
def test_compiled_and_engine_match_sympy(case: Case) -> None:
    want = _sympy_value_and_grad(case)
    v, j, f = _compiled(case)
    slack = rounding_slack(case)
    ctx = f"{case}\n{f.ir}"
    _assert_close((v, j), want, 1e-9, slack, ctx)
    _assert_close(engine_value_and_grad(case), want, 1e-9, slack, ctx)


def _richardson(case: Case, x: np.ndarray, d: np.ndarray, h: float) -> float | None:
    """Central difference along d with steps h and h/2, the h^2 error term cancelled."""
    out = case.program.outputs[0]
    stencil = [x + t * h * d for t in (-1.0, -0.5, 0.5, 1.0)]
    # a kink inside the stencil makes the difference quotient meaningless there
    if len({kink_signature(case.program, p) for p in [x, *stencil]}) != 1:
        return None
    fm, fmh, fph, fp = (evaluate(case.program, p)[out] for p in stencil)
    return (4 * (fph - fmh) / h - (fp - fm) / (2 * h)) / 3


@given(programs(max_ops=10), st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3))
def test_gradient_matches_central_differences(case: Case, direction: list[float]) -> None:
    n = case.program.n_inputs
    d = np.array(direction[:n])
    assume(np.linalg.norm(d) > 0.1)
    d /= np.linalg.norm(d)
    x = np.array(case.inputs)
    v, j, f = _compiled(case)
    jvp = float(np.dot(j[0], d))
    scale = 1.0 + float(np.dot(np.abs(j[0]), np.abs(d))) + abs(v[0]) * 1e-3
    # shrink h until two successive estimates agree: fast oscillations (cos(exp(exp(x))))
    # need a small h, and a small h costs digits
    ests = [_richardson(case, x, d, h) for h in (1e-2, 1e-3, 1e-4, 1e-5)]
    pairs = [(abs(a - b), b) for a, b in pairwise(ests) if a is not None and b is not None]
    assume(pairs)
    spread, fd = min(pairs)
    assume(spread <= 1e-7 * scale)  # the difference quotient converged
    assert abs(fd - jvp) <= 1e-6 * scale, f"fd {fd!r} vs grad.d {jvp!r}\n{case}\n{f.ir}"


# ---- optimised vs not, Jacobians -----------------------------------------------------------------


@given(programs(max_ops=10, n_outputs=2))
def test_optimised_and_unoptimised_agree_exactly(case: Case) -> None:
    # the passes only make IEEE-exact rewrites, so the generated code computes the same bits
    v1, j1, f1 = _compiled(case, optimize=True)
    v0, j0, f0 = _compiled(case, optimize=False)
    assert len(f1.ir.body) <= len(f0.ir.body)
    flat1 = [*v1, *(g for row in j1 for g in row)]
    flat0 = [*v0, *(g for row in j0 for g in row)]
    for a, b in zip(flat1, flat0, strict=True):
        assert same_float(a, b), f"{a!r} vs {b!r}\n{case}\n{f1.ir}\n{f0.ir}"


@given(programs(max_ops=10, n_outputs=3))
def test_jacobian_rows_are_the_per_output_gradients(case: Case) -> None:
    leaves, outs, _ = to_values(case.program, case.inputs)
    f = sg.compile(outs, wrt=leaves, backend="python")
    values, jac = f()
    assert values.shape == (3,) and jac.shape == (3, len(leaves))
    rows = [sg.compile(o, wrt=leaves, backend="python")() for o in outs]
    # bit for bit: each row's sweep adds up contributions in its own output's order, the order
    # of that output's backward() (see test_jacobian_row_adds_up_like_backward below)
    ev, ej = engine_value_and_grad(case)
    for k, (value, grad) in enumerate(rows):
        assert same_float(values[k], value) and same_float(values[k], ev[k])
        for a, b, c in zip(jac[k], grad, ej[k], strict=True):
            assert same_float(a, b) and same_float(a, c), f"row {k}: {jac[k]} vs {grad}\n{case}"


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_jacobian_row_adds_up_like_backward(backend: str) -> None:
    x = sg.Value(1.0, label="x")
    q = x * 3.0
    o = (x * 1e17 + (-x) * 1e17) + q  # d o/dx = 1e17 - 1e17 + 3, the 3 is lost or kept by order
    o.backward()
    _, grad = sg.compile(o, wrt=[x], backend=backend, name="ad")()
    assert grad.tolist() == [x.grad]  # one output: the same order as backward()
    _, jac = sg.compile([q, o], wrt=[x], backend=backend, name="ad")()
    assert jac[1].tolist() == [x.grad]


# ---- shared nodes accumulate like backward() -----------------------------------------------------


def _shared_cases() -> dict[str, Any]:
    def x_times_x() -> tuple[sg.Value, list[sg.Value]]:
        x = sg.Value(3.0, label="x")
        return x * x, [x]

    def a_plus_a() -> tuple[sg.Value, list[sg.Value]]:
        a = sg.Value(-4.0, label="a")
        b = a + a
        return b * a, [a]

    def diamond() -> tuple[sg.Value, list[sg.Value]]:
        x = sg.Value(0.5, label="x")
        top = x * 3.0
        left, right = top.tanh(), top * top
        return (left + right) * top, [x]

    def shared_weights() -> tuple[sg.Value, list[sg.Value]]:
        w, b = sg.Value(0.7, label="w"), sg.Value(-0.2, label="b")
        h = sg.Value(1.5, label="x")
        for _ in range(4):  # one weight, used by every layer
            h = (w * h + b).tanh()
        return h, [w, b]

    def same_node_twice_as_output() -> tuple[sg.Value, list[sg.Value]]:
        x, y = sg.Value(2.0, label="x"), sg.Value(-1.0, label="y")
        s = x * y
        return s * s + s, [x, y]

    cases = (x_times_x, a_plus_a, diamond, shared_weights, same_node_twice_as_output)
    return {f.__name__: f for f in cases}


SHARED = _shared_cases()


@pytest.mark.parametrize("backend", ["python", "numba"])
@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_nodes_accumulate_like_backward(name: str, backend: str) -> None:
    out, wrt = SHARED[name]()
    f = sg.compile(out, wrt=wrt, backend=backend, name="ad")
    value, grad = f()
    out.backward()
    assert value == pytest.approx(out.data, rel=1e-15)
    assert grad.tolist() == pytest.approx([w.grad for w in wrt], rel=1e-13, abs=0.0)


def test_x_times_x_gradient_is_exact() -> None:
    x = sg.Value(3.0, label="x")
    value, grad = sg.compile(x * x, wrt=[x], backend="python")()
    assert (value, grad.tolist()) == (9.0, [6.0])


# ---- degenerate graphs ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_output_that_is_an_input(backend: str) -> None:
    x, y, z = sg.Value(2.5, label="x"), sg.Value(-1.0, label="y"), sg.Value(7.0, label="z")
    value, grad = sg.compile(x, wrt=[x, y], backend=backend, name="ad")()
    assert value == 2.5 and grad.tolist() == [1.0, 0.0]
    # an `inputs` leaf as the output: its value, and no gradient by the parameters
    value, grad = sg.compile(z, wrt=[x], inputs=[z], backend=backend, name="ad")(None, [4.0])
    assert value == 4.0 and grad.tolist() == [0.0]
    # two outputs, both leaves
    values, jac = sg.compile([y, x], wrt=[x, y], backend=backend, name="ad")()
    assert values.tolist() == [-1.0, 2.5] and jac.tolist() == [[0.0, 1.0], [1.0, 0.0]]


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_constant_output_has_exactly_zero_gradient(backend: str) -> None:
    x = sg.Value(1.5, label="x")
    c = sg.Value(0.3, label="c")  # in neither wrt nor inputs: a frozen constant
    out = (c * 2.0).tanh() + c
    value, grad = sg.compile(out, wrt=[x], backend=backend, name="ad")()
    assert value == pytest.approx(math.tanh(0.6) + 0.3, rel=1e-15)
    assert grad.tolist() == [0.0] and math.copysign(1.0, grad[0]) == 1.0


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_unused_wrt_leaf_gets_zero(backend: str) -> None:
    x, unused = sg.Value(0.5, label="x"), sg.Value(9.0, label="unused")
    value, grad = sg.compile(x.exp(), wrt=[unused, x], backend=backend, name="ad")()
    assert value == pytest.approx(math.exp(0.5), rel=1e-15)
    assert grad[0] == 0.0 and grad[1] == pytest.approx(math.exp(0.5), rel=1e-15)


@pytest.mark.parametrize("backend", ["python", "numba"])
@pytest.mark.parametrize("zero", [0.0, -0.0])
def test_relu_derivative_at_zero_is_zero(backend: str, zero: float) -> None:
    x = sg.Value(zero, label="x")
    out = x.relu() + x * 0.5
    _, grad = sg.compile(out, wrt=[x], backend=backend, name="ad")()
    out.backward()
    assert grad.tolist() == [0.5] == [x.grad]


def test_long_chain_compiles_without_recursion_error() -> None:
    # 5,000 ops, each reading the one before: deep for any recursive walk
    x = sg.Value(0.3, label="x")
    y = x
    ops = [lambda v: v.tanh(), lambda v: v * 1.1, lambda v: v + 0.01, lambda v: v.sin(),
           lambda v: -v]
    for i in range(5000):
        y = ops[i % len(ops)](y)
    f = sg.compile(y, wrt=[x], backend="python")
    value, grad = f()
    y.backward()
    assert f.stats["nodes"]["trace"] == 5000
    assert value == pytest.approx(y.data, rel=1e-12)
    assert grad[0] == pytest.approx(x.grad, rel=1e-9, abs=0.0)


@pytest.mark.slow
def test_100k_node_chain_differentiates_at_the_ir_level() -> None:
    a, b, x = sg.Value(0.5, label="a"), sg.Value(0.25, label="b"), sg.Value(1.0, label="x")
    y = x
    for _ in range(50_000):  # 100,000 op nodes
        y = y * a + b
    func = trace(y, [a, b, x]).func
    assert len(func.body) == 100_000
    grad_func = ir.verify(autodiff.value_and_grad(func, 3))
    value, *grad = ir.evaluate(grad_func, [0.5, 0.25, 1.0])
    y.backward()
    assert value == y.data
    assert grad == [a.grad, b.grad, x.grad]
    # y_n = b (1 + a + ... + a^(n-1)) + a^n x -> 0.5: dy/da = b / (1 - a)^2 = 1, dy/db = 2
    assert grad == pytest.approx([1.0, 2.0, 0.0])


# ---- zero cotangents -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_zero_cotangent_times_nan_local_derivative(backend: str) -> None:
    # step's rule returns None (no cotangent): neither engine may then form 0 * cos(nan) = nan
    x = sg.Value(math.inf, label="x")
    out = OPS["step"](x.sin()).sigmoid()  # sin(inf) = nan, and so is its derivative cos(inf)
    _, grad = sg.compile(out, wrt=[x], backend=backend, name="ad")()
    out.backward()
    assert same_float(grad[0], x.grad), (grad[0], x.grad)
    assert grad[0] == 0.0  # the derivative of a step is 0 wherever it is defined
