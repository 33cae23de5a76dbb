"""Forward mode, Hessian-vector products and Hessians, each against an independent oracle.

Oracles: the interpreted engine's ``backward()`` (a JVP is the gradient dotted with the tangent),
``sympy.hessian`` of `to_sympy`'s expression evaluated in 40-digit mpmath (Hessians and HVPs of
random programs over every op), central differences of the *first-order* compiled gradient
(`sg.compile`, which shares no code with the forward sweeps), hand derivations (the lecture's
neuron, relu kinks, shared nodes), and a loop of single calls for the batch forms.

Forward mode reuses the op table's vjp rules (``jvp = sum_i vjp(ct=t_i)[i]``), which is right
only because every rule is linear in its cotangent: that is pinned first.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mpmath
import numpy as np
import pytest
import sympy as sp
from hypothesis import given, note, reject, settings
from hypothesis import strategies as st

import symgrad as sg
from symgrad import ops
from symgrad.autodiff import hvp, jvp, value_grad_and_hessian
from symgrad.engine import Value
from symgrad.ir import Const, evaluate, verify
from symgrad.passes import dce, optimize
from symgrad.trace import trace
from tests.cases import load_example
from tests.strategies import engine_value_and_grad, programs, to_values

ROOT = Path(__file__).resolve().parent.parent

# step is relu's derivative, not a user op (Value has no .step()), and sympy cannot fold its
# Piecewise through log of the 0 branch; relu's Hessian differentiates step anyway
SYMPY_OPS = sorted(k for k in ops.OPS if k != "step")


# ---- helpers -------------------------------------------------------------------------------------


def neuron() -> tuple[dict[str, Value], Value]:
    """The lecture's neuron: o = tanh(x1*w1 + x2*w2 + b) with o = 1/sqrt(2)."""
    v = {
        "x1": Value(2.0, label="x1"), "x2": Value(0.0, label="x2"),
        "w1": Value(-3.0, label="w1"), "w2": Value(1.0, label="w2"),
        "b": Value(6.8813735870195432, label="b"),
    }
    n = v["x1"] * v["w1"] + v["x2"] * v["w2"] + v["b"]
    n.label = "n"
    o = n.tanh()
    o.label = "o"
    return v, o


def sympy_derivatives(out: Value, wrt: list[Value], leaves: list[Value]) -> tuple[Any, Any]:
    """Gradient and Hessian of `out` by `wrt` from sympy, at the leaves' current data."""
    expr = sympy_or_reject(out)
    sym = {id(v): sp.Symbol(v.label, real=True) for v in leaves}
    ws = [sym[id(w)] for w in wrt]
    grad = [printable(sp.diff(expr, s)) for s in ws]
    hess = [[printable(e) for e in row] for row in sp.hessian(expr, ws).tolist()]
    lam = sp.lambdify([*(sym[id(v)] for v in leaves), ZOO], [grad, *hess], "mpmath")
    with mpmath.workdps(40):
        rows = lam(*[mpmath.mpf(v.data) for v in leaves], mpmath.nan)
    g = np.array([float(x) for x in rows[0]])
    h = np.array([[float(x) for x in r] for r in rows[1:]]).reshape(len(wrt), len(wrt))
    return g, h


def sympy_or_reject(out: Value) -> Any:
    """`to_sympy`, or reject the example where sympy cannot build it.

    sympy raises "Invalid comparison of non-real zoo" for relu(log(relu(x))) and "Invalid NaN
    comparison" for relu(relu(x) / relu(x)): relu's Piecewise compares the value of a dead branch
    (log(0), 0/0) with 0. A limitation of the sympy oracle, not of the code under test.
    """
    try:
        return sg.to_sympy(out)
    except TypeError as e:
        if "comparison" not in str(e):
            raise
        reject()


ZOO = sp.Symbol("_zoo")


def printable(e: Any) -> Any:
    """DiracDelta (sqrt(x*x) is |x|) is 0 off its kink; zoo (log or 1/x of relu's 0 branch) sits
    in a Piecewise branch that is not taken, but lambdify cannot print it: a Symbol, passed nan.
    """
    return e.replace(sp.DiracDelta, lambda *a: sp.S.Zero).xreplace({sp.zoo: ZOO})


def fd_hessian(f: Any, p: np.ndarray, x: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central differences of a first-order `Compiled`'s gradient, one row per parameter."""
    rows = []
    for j in range(len(p)):
        up, down = p.copy(), p.copy()
        up[j] += h
        down[j] -= h
        rows.append((f(up, x)[1] - f(down, x)[1]) / (up[j] - down[j]))
    return np.array(rows).reshape(len(p), len(p))


def split(case: Any, data: st.DataObject) -> tuple[list[Value], list[Value], list[Value]]:
    """A case's leaves, split into wrt (at least one) and inputs."""
    leaves, outs, _ = to_values(case.program, case.inputs)
    k = data.draw(st.integers(1, len(leaves)), label="n_wrt")
    return leaves[:k], leaves[k:], outs


def hess_tol(ref: np.ndarray) -> float:
    # observed errors are below 3e-15 of this scale over thousands of random programs
    return 1e-9 * (1.0 + float(np.max(np.abs(ref), initial=0.0)))


# ---- the basis of forward mode: vjp rules are linear in the cotangent ----------------------------


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_vjp_rules_are_linear_in_the_cotangent(name: str) -> None:
    op = ops.OPS[name]
    params = {p: 2.0 for p in op.params}
    xs = (0.7, 1.3, -0.4)[: op.arity]
    out = op.impl(*xs, **params)
    for c in (2.5, -0.75):
        base = op.vjp(1.0, out, *xs, **params)
        scaled = op.vjp(c, out, *xs, **params)
        for b, s in zip(base, scaled, strict=True):
            assert (b is None) == (s is None)
            if b is not None:
                assert math.isclose(s, c * b, rel_tol=1e-15, abs_tol=1e-300)


# ---- the IR transforms ---------------------------------------------------------------------------


def test_jvp_ir_text_for_a_product() -> None:
    x, y = Value(3.0, label="x"), Value(-2.0, label="y")
    z = x * y
    z.label = "z"
    f = jvp(trace(z, [x, y]).func, 2)
    # one tangent term per operand, from mul's vjp rule with the operand's tangent as ct
    assert str(verify(f)) == "\n".join([
        "f_jvp(x, y, x_dot, y_dot):",
        "  z = mul(x, y)",
        "  v0 = mul(y, x_dot)                # tangent of z = mul(x, y)",
        "  v1 = mul(x, y_dot)                # tangent of z = mul(x, y)",
        "  z_dot = add(v0, v1)               # tangent of z = mul(x, y)",
        "  return z, z_dot",
    ])
    assert evaluate(f, [3.0, -2.0, 0.5, 4.0]) == [-6.0, -2.0 * 0.5 + 3.0 * 4.0]


def test_jvp_keeps_zero_tangents_symbolic() -> None:
    # only w gets a tangent: exp(x*x) gets none, the sum passes tanh's tangent through unchanged,
    # and no 0.0 * anything is emitted
    w, x = Value(0.5, label="w"), Value(2.0, label="x")
    y = (x * x).exp() + (w * x).tanh()
    f = verify(jvp(trace(y, [w], [x]).func, 1))
    assert str(f) == "\n".join([
        "f_jvp(w, w_dot, x):",
        "  v0 = mul(x, x)",
        "  v1 = exp(v0)",
        "  v2 = mul(w, x)",
        "  v3 = tanh(v2)",
        "  v4 = add(v1, v3)",
        "  v5 = mul(x, w_dot)                # tangent of v2 = mul(w, x)",
        "  v6 = mul(v3, v3)                  # tangent of v3 = tanh(v2)",
        "  v7 = sub(1.0, v6)                 # tangent of v3 = tanh(v2)",
        "  v8 = mul(v7, v5)                  # tangent of v3 = tanh(v2)",
        "  return v4, v8",
    ])
    # the tangents of a program with no parameters are literal zeros
    g = jvp(trace(y, [], [w, x]).func, 0)
    assert [str(r) for r in g.results[1:]] == ["0.0"] and len(g.body) == len(trace(y).func.body)


def test_jvp_of_results_that_are_arguments_or_constants() -> None:
    a, b = Value(1.5, label="a"), Value(2.0, label="b")
    f = trace([a, b * 0.0 + 3.0, b], [a, b]).func
    j = verify(jvp(f, 2))
    vals = evaluate(j, [1.5, 2.0, 0.25, -4.0])
    assert vals[:3] == [1.5, 3.0, 2.0]
    assert vals[3:] == [0.25, 0.0, -4.0]  # a's tangent is its own, b*0 + 3 has b_dot * 0


def test_forward_mode_emits_no_dead_code() -> None:
    # div's rule emits both operands' cotangents; forward mode copies only the one it needs
    x, y = Value(0.7, label="x"), Value(1.9, label="y")
    f = trace((x / y) ** 3 - (y / x).log() * (x * y).tanh(), [x, y]).func
    for g in (jvp(f, 2), jvp(f, 1), hvp(f, 2)):
        assert len(dce(g).body) == len(g.body), str(g)


def test_hessian_basis_tangents_fold_away() -> None:
    v, o = neuron()
    f = value_grad_and_hessian(trace(o, [v["w1"], v["w2"], v["b"]], [v["x1"], v["x2"]]).func, 3)
    opt, _ = optimize(f)
    assert len(opt.results) == 1 + 3 + 9
    consts = [a for i in opt.body for a in i.args if isinstance(a, Const)]
    # the 1.0 seeds were multiplied away; the only literal left is tanh's rule's 1.0 - o*o
    assert [str(c) for c in consts] == ["1.0"]
    assert [i.op for i in opt.body if Const(1.0) in i.args] == ["sub"]
    assert not any(isinstance(r, Const) for r in opt.results)  # zero tangents never made


def test_hvp_ir_names_the_tangents_of_the_gradient() -> None:
    v, o = neuron()
    f = hvp(trace(o, [v["w1"], v["b"]], [v["x1"]]).func, 2)
    text = str(f)
    assert text.startswith("f_hvp(w1, b, w1_dot, b_dot, x1):")
    assert text.splitlines()[-1] == "  return w1_bar, b_bar, w1_bar_dot, b_bar_dot"


def test_hessian_transform_refuses_several_results() -> None:
    a = Value(1.0, label="a")
    f = trace([a * a, a], [a]).func
    with pytest.raises(ValueError, match="single result"):
        value_grad_and_hessian(f, 1)
    with pytest.raises(ValueError, match="single result"):
        hvp(f, 1)
    with pytest.raises(ValueError, match="out of range"):
        jvp(f, 2)


# ---- the lecture's neuron, by hand ---------------------------------------------------------------


def neuron_by_hand(v: dict[str, Value]) -> tuple[float, np.ndarray, np.ndarray]:
    """o, grad and Hessian by (x1, x2, w1, w2, b), from o' = 1 - o^2 and o'' = -2 o (1 - o^2).

    n = x1 w1 + x2 w2 + b, so grad n = (w1, w2, x1, x2, 1) and the only nonzero second
    derivatives of n are d2n/dx1dw1 = d2n/dx2dw2 = 1: H = o'' grad_n grad_n^T + o' hess_n.
    """
    d = {k: x.data for k, x in v.items()}
    o = math.tanh(d["x1"] * d["w1"] + d["x2"] * d["w2"] + d["b"])
    o1, o2 = 1 - o * o, -2 * o * (1 - o * o)
    dn = np.array([d["w1"], d["w2"], d["x1"], d["x2"], 1.0])
    hn = np.zeros((5, 5))
    hn[0, 2] = hn[2, 0] = hn[1, 3] = hn[3, 1] = 1.0
    return o, o1 * dn, o2 * np.outer(dn, dn) + o1 * hn


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_neuron_hessian_by_hand(backend: str) -> None:
    v, o = neuron()
    wrt = [v[k] for k in ("x1", "x2", "w1", "w2", "b")]
    H = sg.hessian(o, wrt=wrt, backend=backend)
    value, grad, hess = H()
    o_, g_, h_ = neuron_by_hand(v)
    assert math.isclose(value, o_, rel_tol=1e-15)
    np.testing.assert_allclose(grad, g_, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(hess, h_, rtol=1e-14, atol=1e-15)
    # at o = 1/sqrt(2): o'' = -1/sqrt(2), so d2o/dw1^2 = o'' x1^2 = -4/sqrt(2)
    assert math.isclose(hess[2, 2], -4 / math.sqrt(2), rel_tol=1e-14)
    np.testing.assert_allclose(hess, hess.T, rtol=1e-15)  # to rounding: not symmetrised


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_neuron_jvp_and_hvp_by_hand(backend: str) -> None:
    v, o = neuron()
    wrt, inputs = [v["w1"], v["w2"], v["b"]], [v["x1"], v["x2"]]
    _, g_, h_ = neuron_by_hand(v)
    g, h = g_[2:], h_[2:, 2:]
    t = np.array([0.5, -1.0, 2.0])
    j = sg.jvp(o, wrt=wrt, inputs=inputs, backend=backend)
    value, tangent_out = j(None, t)
    assert math.isclose(value, 1 / math.sqrt(2), rel_tol=1e-15)
    assert math.isclose(tangent_out, g @ t, rel_tol=1e-14)
    hv = sg.hvp(o, wrt=wrt, inputs=inputs, backend=backend)
    grad, Hv = hv(None, t)
    np.testing.assert_allclose(grad, g, rtol=1e-14)
    np.testing.assert_allclose(Hv, h @ t, rtol=1e-14)
    # inputs can be passed: at x1 = 1, x2 = 3 the formula changes accordingly
    v["x1"].data, v["x2"].data = 1.0, 3.0
    _, g2, h2 = neuron_by_hand(v)
    grad, Hv = hv([-3.0, 1.0, 6.8813735870195432], t, [1.0, 3.0])
    np.testing.assert_allclose(grad, g2[2:], rtol=1e-14)
    np.testing.assert_allclose(Hv, h2[2:, 2:] @ t, rtol=1e-13)


# ---- kinks and shared nodes, by hand -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_relu_kinks_have_zero_second_derivative(backend: str) -> None:
    x, y = Value(1.5, label="x"), Value(-0.5, label="y")
    # relu(x*y) is 0 at x*y < 0; relu(x + 3y)... is active below; relu(2x) is linear in x
    f = (x * y).relu() * x + (x - 3.0 * y).relu() ** 2 + (2.0 * x).relu()
    H = sg.hessian(f, wrt=[x, y], backend=backend)
    for px, py in [(1.5, -0.5), (1.5, 0.5), (-1.0, 2.0), (0.7, 0.2)]:
        _, g, h = H([px, py])
        a = px * py > 0
        c = px - 3 * py > 0
        # f = [a] x^2 y + [c] (x - 3y)^2 + [2x > 0] 2x
        g_ = [a * 2 * px * py + c * 2 * (px - 3 * py) + (px > 0) * 2.0,
              a * px * px - c * 6 * (px - 3 * py)]
        h_ = [[a * 2 * py + c * 2, a * 2 * px - c * 6], [a * 2 * px - c * 6, c * 18]]
        np.testing.assert_allclose(g, g_, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(h, h_, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_shared_nodes_accumulate_second_derivatives(backend: str) -> None:
    # u = x*y is used three times, x four times: f = u*u + u*x + tanh(u) + x
    x, y = Value(0.3, label="x"), Value(-0.8, label="y")
    u = x * y
    f = u * u + u * x + u.tanh() + x
    H = sg.hessian(f, wrt=[x, y], backend=backend)
    _, g, h = H()
    px, py = 0.3, -0.8
    uu = px * py
    t1, t2 = 1 - math.tanh(uu) ** 2, -2 * math.tanh(uu) * (1 - math.tanh(uu) ** 2)
    # f_u = 2u + x + t1, f_x (explicit) = u + 1; f_uu = 2 + t2, f_ux = 1
    fu, fuu = 2 * uu + px + t1, 2 + t2
    g_ = [fu * py + uu + 1, fu * px]
    h_xx = fuu * py * py + 2 * py + 2 * py * 1  # d/dx [fu*y + u + 1] = (fuu*y + 1)*y + y
    h_ = [[fuu * py * py + 2 * py, fuu * px * py + fu + px],
          [fuu * px * py + fu + px, fuu * px * px]]
    assert math.isclose(h_[0][0], h_xx - 2 * py)  # the two derivations agree
    np.testing.assert_allclose(g, g_, rtol=1e-14)
    np.testing.assert_allclose(h, h_, rtol=1e-13)


def test_degenerate_outputs() -> None:
    a, b = Value(1.0, label="a"), Value(2.0, label="b")
    # the output is a parameter: grad is a basis vector, the Hessian exactly zero
    value, grad, hess = sg.hessian(a, wrt=[a, b], backend="python")()
    assert value == 1.0
    np.testing.assert_array_equal(grad, [1.0, 0.0])
    np.testing.assert_array_equal(hess, np.zeros((2, 2)))
    # a constant output (b is an input, not a parameter)
    c = b * 3.0
    value, grad, hess = sg.hessian(c, wrt=[a], inputs=[b], backend="python")()
    assert (value, grad.tolist(), hess.tolist()) == (6.0, [0.0], [[0.0]])
    # x*x: the classic fan-out
    value, grad, hess = sg.hessian(a * a * a, wrt=[a], backend="python")([2.0])
    assert (value, grad.tolist(), hess.tolist()) == (8.0, [12.0], [[12.0]])
    j = sg.jvp(a * b, wrt=[], inputs=[a, b], backend="python")
    assert j(None, []) == (2.0, 0.0)


# ---- random programs -----------------------------------------------------------------------------


@settings(max_examples=25)
@given(case=programs(n_inputs=(1, 3), max_ops=10, n_outputs=2), data=st.data())
def test_jvp_equals_engine_jacobian_times_tangent(case: Any, data: st.DataObject) -> None:
    note(str(case))
    leaves, outs, _ = to_values(case.program, case.inputs)
    _, jac = engine_value_and_grad(case)
    jac = np.array(jac)
    t = np.array(data.draw(st.lists(st.floats(-2, 2), min_size=len(leaves),
                                    max_size=len(leaves)), label="tangent"))
    j = sg.jvp(outs, wrt=leaves, backend="python")
    _, tangent_out = j(None, t)
    want = jac @ t
    note(str(j.ir))
    scale = np.abs(jac) @ np.abs(t)
    np.testing.assert_allclose(tangent_out, want, rtol=1e-10, atol=1e-12 * (1 + np.max(scale)))


@settings(max_examples=25)
@given(case=programs(n_inputs=(1, 3), max_ops=10, ops=SYMPY_OPS), data=st.data())
def test_hessian_matches_sympy_and_finite_differences(case: Any, data: st.DataObject) -> None:
    note(str(case))
    wrt, inputs, outs = split(case, data)
    H = sg.hessian(outs[0], wrt=wrt, inputs=inputs, backend="python")
    note(str(H.ir))
    _, grad, hess = H()
    g_sym, h_sym = sympy_derivatives(outs[0], wrt, wrt + inputs)
    np.testing.assert_allclose(grad, g_sym, rtol=1e-10, atol=hess_tol(g_sym))
    np.testing.assert_allclose(hess, h_sym, rtol=1e-9, atol=hess_tol(h_sym))
    # symmetric without symmetrising: rows and columns come from different sweeps
    np.testing.assert_allclose(hess, hess.T, rtol=1e-12, atol=hess_tol(h_sym))
    # central differences of the first-order compiled gradient
    f = sg.compile(outs[0], wrt=wrt, inputs=inputs, backend="python")
    p, x = H.current_params(), H.current_inputs()
    fd = fd_hessian(f, p, x)
    scale = 1 + np.max(np.abs(h_sym)) + np.max(np.abs(g_sym))
    np.testing.assert_allclose(hess, fd, rtol=1e-4, atol=1e-5 * scale)


@settings(max_examples=25)
@given(case=programs(n_inputs=(1, 3), max_ops=10, ops=SYMPY_OPS), data=st.data())
def test_hvp_equals_sympy_hessian_times_v(case: Any, data: st.DataObject) -> None:
    note(str(case))
    wrt, inputs, outs = split(case, data)
    v = np.array(data.draw(st.lists(st.floats(-2, 2), min_size=len(wrt), max_size=len(wrt)),
                           label="v"))
    h = sg.hvp(outs[0], wrt=wrt, inputs=inputs, backend="python")
    note(str(h.ir))
    grad, hv = h(None, v)
    g_sym, h_sym = sympy_derivatives(outs[0], wrt, wrt + inputs)
    np.testing.assert_allclose(grad, g_sym, rtol=1e-10, atol=hess_tol(g_sym))
    np.testing.assert_allclose(hv, h_sym @ v, rtol=1e-9, atol=hess_tol(h_sym) * (1 + sum(abs(v))))


@settings(max_examples=10)
@given(case=programs(n_inputs=(2, 3), max_ops=8, ops=SYMPY_OPS))
def test_check_order_2_passes_on_random_programs(case: Any) -> None:
    leaves, outs, _ = to_values(case.program, case.inputs)
    sympy_or_reject(outs[0])
    # at the drawn point only: random points may leave the ops' domains
    result = sg.check(outs[0], wrt=leaves, order=2, points=0, backend="python",
                      method="symbolic")
    assert result.compared == len(leaves) + len(leaves) ** 2


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_numba_hessian_matches_python(seed: int) -> None:
    rng = np.random.default_rng(seed)
    xs = [Value(float(x), label=f"x{i}") for i, x in enumerate(rng.uniform(0.5, 1.5, 4))]
    f = (xs[0] * xs[1]).tanh() * xs[2].log() + xs[3] ** 0.5 / xs[0] + (xs[1] - xs[3]).exp()
    f = f + (xs[2] * xs[3]).sigmoid() * xs[0].sin() ** 2 - xs[1].cos() * (-xs[2]) ** 3
    Hn = sg.hessian(f, wrt=xs[:3], inputs=xs[3:])
    Hp = sg.hessian(f, wrt=xs[:3], inputs=xs[3:], backend="python")
    p = rng.uniform(0.5, 1.5, 3)
    for a, b in zip(Hn(p), Hp(p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    _, h_sym = sympy_derivatives(f, xs[:3], xs)
    np.testing.assert_allclose(Hn()[2], h_sym, rtol=1e-12, atol=1e-13)


# ---- sg.check(order=2) ---------------------------------------------------------------------------


def test_check_order_2_on_the_neuron_and_rosenbrock() -> None:
    v, o = neuron()
    r = sg.check(o, wrt=[v["w1"], v["w2"], v["b"]], inputs=[v["x1"], v["x2"]], order=2,
                 backend="python")
    assert len(r.points) == 4 and r.compared == 4 * (3 + 9)
    x, y = Value(-1.2, label="x"), Value(1.0, label="y")
    sg.check((1 - x) ** 2 + 100 * (y - x**2) ** 2, order=2, backend="python")


def test_check_order_2_reports_a_wrong_second_order_rule() -> None:
    # sabotage step's rule (relu's derivative): first derivatives stay right, second go wrong
    step = ops.OPS["step"]
    good = step.vjp
    x, y = Value(0.8, label="x"), Value(0.6, label="y")
    f = (x * y).relu() * x
    sg.check(f, order=1, backend="python")
    object.__setattr__(step, "vjp", lambda ct, out, x: (ct,))
    try:
        sg.check(f, order=1, backend="python")  # still right
        with pytest.raises(sg.GradientMismatch) as err:
            sg.check(f, order=2, backend="python")
    finally:
        object.__setattr__(step, "vjp", good)
    msg = str(err.value)
    assert msg.startswith("hessian mismatch for d2(output)/d(")
    for word in ("compiled", "sympy", "finite differences", "gradient agrees with sympy"):
        assert word in msg


def test_check_order_argument() -> None:
    a = Value(1.0, label="a")
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        sg.check(a * a, order=3, backend="python")
    with pytest.raises(ValueError, match="single output"):
        sg.check([a * a, a], order=2, backend="python")


# ---- batch forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["python", "numba", "tape"])
def test_hessian_batch_equals_a_loop_of_calls(backend: str) -> None:
    v, o = neuron()
    y = Value(0.5, label="y")
    loss = (o - y) ** 2
    wrt, inputs = [v["w1"], v["w2"], v["b"]], [v["x1"], v["x2"], y]
    H = sg.hessian(loss, wrt=wrt, inputs=inputs, backend=backend)
    X = np.random.default_rng(0).normal(size=(37, 3))
    p = np.array([-1.0, 0.5, 0.3])
    calls = [H(p, row) for row in X]
    values = np.array([c[0] for c in calls])
    grads = np.array([c[1] for c in calls])
    hessians = np.array([c[2] for c in calls])
    vals, g, h = H.batch(p, X, reduce="none")
    np.testing.assert_allclose(vals, values, rtol=1e-14)
    np.testing.assert_allclose(g, grads, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(h, hessians, rtol=1e-14, atol=1e-16)
    vals, g, h = H.batch(p, X)
    np.testing.assert_allclose(vals, values, rtol=1e-14)
    np.testing.assert_allclose(g, grads.sum(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h, hessians.sum(0), rtol=1e-12, atol=1e-14)
    _, g, h = H.batch(None, X, reduce="mean")
    _, g0, h0 = H.batch(H.current_params(), X, reduce="sum")
    np.testing.assert_allclose(g, g0 / len(X), rtol=1e-15)
    np.testing.assert_allclose(h, h0 / len(X), rtol=1e-15)
    with pytest.raises(ValueError, match="reduce must be one of"):
        H.batch(p, X, reduce="max")
    with pytest.raises(ValueError, match="X: expected 3 column"):
        H.batch(p, X[:, :2])


# ---- the API: validation, several outputs, attributes --------------------------------------------


def test_bad_tangents_name_the_argument() -> None:
    v, o = neuron()
    wrt, inputs = [v["w1"], v["w2"], v["b"]], [v["x1"], v["x2"]]
    j = sg.jvp(o, wrt=wrt, inputs=inputs, backend="python")
    h = sg.hvp(o, wrt=wrt, inputs=inputs, backend="python")
    with pytest.raises(ValueError, match=r"tangent: expected 3 value\(s\) \(len\(wrt\)\), got 2"):
        j(None, [1.0, 2.0])
    with pytest.raises(ValueError, match="tangent: required"):
        j()
    with pytest.raises(ValueError, match=r"tangent: expected a 1-D"):
        j(None, [[1.0, 2.0, 3.0]])
    with pytest.raises(TypeError, match="tangent: expected real numbers"):
        j(None, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"v: expected 3 value\(s\)"):
        h(None, [1.0] * 4)
    with pytest.raises(ValueError, match="v: required"):
        h()
    with pytest.raises(ValueError, match=r"params: expected 3 value\(s\)"):
        h([1.0], [1.0] * 3)
    with pytest.raises(ValueError, match=r"inputs: expected 2 value\(s\)"):
        j(None, [1.0] * 3, [1.0])
    H = sg.hessian(o, wrt=wrt, inputs=inputs, backend="python")
    with pytest.raises(ValueError, match=r"params: expected 3 value\(s\)"):
        H([1.0, 2.0])


def test_several_outputs() -> None:
    a, b = Value(0.5, label="a"), Value(-1.5, label="b")
    outs = [a * b, (a + b).tanh(), a]
    j = sg.jvp(outs, wrt=[a, b], backend="python")
    value, tangent_out = j(None, [1.0, 2.0])
    _, jac = sg.compile(outs, wrt=[a, b], backend="python")()
    np.testing.assert_allclose(value, [-0.75, math.tanh(-1.0), 0.5])
    np.testing.assert_allclose(tangent_out, jac @ [1.0, 2.0], rtol=1e-15)
    for make in (sg.hvp, sg.hessian):
        with pytest.raises(ValueError, match="single output Value, got 3"):
            make(outs, wrt=[a, b], backend="python")


def test_programs_have_ir_source_stats_and_safe_names() -> None:
    # labels equal to the kernels' array names must not shadow them
    h_, pd = Value(0.5, label="hess"), Value(2.0, label="params_dot")
    f = (h_ * pd).tanh() * h_
    H = sg.hessian(f, backend="python")
    assert "hess_ = params[0]" in H.source and "params_dot_ = params[1]" in H.source
    assert H.wrt_names == ["hess", "params_dot"]
    assert H.stats["nodes"]["final"] == len(H.ir.body)
    assert {"trace", "hessian", "fold", "final"} <= set(H.stats["nodes"])
    assert "Hessian" in repr(H) and "2 params (hess_, params_dot_)" in repr(H)
    _, hv = sg.hvp(f, backend="python")(None, [1.0, 0.0])
    np.testing.assert_allclose(hv, H()[2][0], rtol=1e-15)
    j = sg.jvp(f, backend="python")
    assert "params_dot_ = params[1]" in j.source
    assert "params_dot_dot = params_dot[1]" in j.source
    assert j(None, [0.0, 1.0])[1] == pytest.approx(H()[1][1], rel=1e-15)
    with pytest.raises(ValueError, match="backend must be one of"):
        sg.hessian(f, backend="fortran")


# ---- the example ---------------------------------------------------------------------------------


def test_newton_example_converges(capsys: pytest.CaptureFixture[str]) -> None:
    newton = load_example(ROOT / "examples" / "newton.py")
    newton_losses, gd_losses = newton.main(["--iters", "30", "--backend", "python"])
    out = capsys.readouterr().out
    assert "newton" in out and "gradient descent" in out
    assert newton_losses[-1] < 1e-20 < gd_losses[-1]
    assert all(b <= a for a, b in itertools.pairwise(newton_losses))  # damped: monotone


@pytest.mark.slow
def test_newton_script_reaches_the_minimum(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "newton.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = [ln.split() for ln in result.stdout.splitlines() if ln.strip().startswith("30 ")]
    assert rows and float(rows[0][1]) < 1e-20  # Newton at the minimum after 30 steps
