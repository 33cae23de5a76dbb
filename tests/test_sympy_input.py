"""sympy expressions compiled: `sg.compile(expr, wrt=[symbols], inputs=[symbols])`.

Oracle: sympy itself, the expression's value and ``sympy.diff`` evaluated to 30 digits at the
exact binary point. Random expressions are the exports (`sg.to_sympy`) of the random programs of
`tests.strategies`, so every op of the table comes back in through its sympy counterpart.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import sympy as sp
from hypothesis import assume, given, note, settings

import symgrad as sg
from symgrad.symbolic import from_sympy
from tests.strategies import Case, programs, rounding_slack, to_values

x, y, w, b = sp.symbols("x y w b", real=True)


def sympy_value_and_grad(expr: Any, wrt: list[Any], point: dict[Any, float]) -> tuple[
        float, list[float]]:
    exact = {s: sp.Rational(v) for s, v in point.items()}
    value = float(sp.sympify(expr).xreplace(exact).evalf(30))
    # DiracDelta (the derivative of sign and of Abs's sign) is 0 off its kink
    grads = [sp.diff(expr, s).replace(sp.DiracDelta, lambda *a: sp.S.Zero) for s in wrt]
    return value, [float(g.xreplace(exact).evalf(30)) for g in grads]


def assert_matches_sympy(expr: Any, wrt: list[Any], inputs: list[Any], point: dict[Any, float],
                         rel: float = 1e-13) -> sg.Compiled:
    f = sg.compile(expr, wrt=wrt, inputs=inputs, backend="python")
    value, grad = f([point[s] for s in wrt], [point[s] for s in inputs])
    want_v, want_g = sympy_value_and_grad(expr, wrt, point)
    assert value == pytest.approx(want_v, rel=rel, abs=1e-300), f.ir
    assert list(grad) == pytest.approx(want_g, rel=rel, abs=1e-300), f.ir
    return f


EXPRESSIONS = [
    sp.tanh(w * x + b),
    (w * x + b - y) ** 2,
    w / (1 + sp.exp(-x)),
    x * w / 3 - sp.Rational(2, 7) * b,
    w * y ** -2 + 1 / w + 1 / sp.sqrt(w),
    sp.log(w**2 + 1) * sp.sin(x) + sp.cos(b) ** 3,
    2**w + sp.pi * w + sp.E ** b,
    sp.Abs(w - x) + sp.sign(b) * w + sp.sqrt(w * w + 1),
    sp.Max(w, x, b) + sp.Min(w, 0.25),
    sp.Piecewise((w**2, x < y), (b, x > 2 * y), (w * b, True)),
    sp.Piecewise((w, sp.And(x < y, w > 0)), (-w, sp.Or(x > 3, sp.Not(b > 0))), (b, True)),
    sp.Piecewise((w, sp.Eq(x, y)), (b, sp.Ne(x, 2)), (w + b, True)),
    sp.Piecewise((w * x, x > 0), (0, True)) + sp.Heaviside(w, 0) * b,
    sp.Piecewise((1, x < w), (0, True)) * b + sp.Piecewise((1, w >= x), (0, True)) * w,
]


@pytest.mark.parametrize("expr", EXPRESSIONS, ids=[str(e)[:40] for e in EXPRESSIONS])
def test_value_and_gradient_equal_sympys(expr: Any) -> None:
    for point in ({w: 0.7, x: 0.3, y: -1.2, b: 0.4}, {w: 1.9, x: 2.6, y: 0.5, b: -0.8},
                  {w: 1.5, x: 2.0, y: 2.0, b: 1.1}):
        assert_matches_sympy(expr, [w, b], [x, y], point)


def test_the_ir_is_what_the_same_value_graph_gives() -> None:
    f = sg.compile(sp.tanh(w * x + b), wrt=[w, b], inputs=[x], backend="python")
    W, B, X = sg.Value(0.0, label="w"), sg.Value(0.0, label="b"), sg.Value(0.0, label="x")
    # sympy's order of terms and factors: b + w*x
    g = sg.compile((B + W * X).tanh(), wrt=[W, B], inputs=[X], backend="python")
    assert str(f.ir) == str(g.ir)
    assert f.wrt_names == ["w", "b"] and f.input_names == ["x"]


def test_quotients_divide_and_relu_comes_back_as_relu() -> None:
    f = sg.compile(x * w / 3 + sp.Piecewise((w, w > 0), (0, True)), wrt=[w], inputs=[x],
                   backend="python")
    text = str(f.ir)
    assert "div(" in text and "3.0" in text and "relu(w)" in text
    assert "0.333" not in text.split("return")[0].split("#")[0]


@settings(max_examples=40)
@given(programs(max_ops=6))
def test_exported_random_programs_compile_back(case: Case) -> None:
    leaves, outs, _ = to_values(case.program, case.inputs)
    expr = sg.to_sympy(outs[0])
    # sympy puts zoo (1/0, complex infinity) in branches a division by a condition never takes;
    # it is no real number, and the importer says so (test_unsupported_expressions_are_named)
    assume(not expr.has(sp.zoo))
    syms = {s.name: s for s in expr.free_symbols}
    wrt = [syms.get(v.label, sp.Symbol(v.label, real=True)) for v in leaves]
    point = dict(zip(wrt, case.inputs, strict=True))
    f = sg.compile(expr, wrt=wrt, backend="python")
    note(str(f.ir))
    value, grad = f(list(case.inputs))
    want_v, want_g = sympy_value_and_grad(expr, wrt, point)
    sv, sj = rounding_slack(case)
    # the expression is the program's formula, not its operations: other roundings
    assert abs(value - want_v) <= 1e-9 * abs(want_v) + sv[0] + 1e-300, (value, want_v)
    for a, e, s in zip(grad, want_g, sj[0], strict=True):
        assert abs(a - e) <= 1e-9 * abs(e) + s + 1e-300, (list(grad), want_g, case)


def test_several_expressions_give_the_jacobian() -> None:
    f = sg.compile([w * x, sp.exp(w) + b], wrt=[w, b], inputs=[x], backend="python")
    values, jac = f([0.5, 2.0], [3.0])
    np.testing.assert_allclose(values, [1.5, math.exp(0.5) + 2.0], rtol=1e-15)
    np.testing.assert_allclose(jac, [[3.0, 0.0], [math.exp(0.5), 1.0]], rtol=1e-15)


def test_default_wrt_is_every_other_symbol_by_name() -> None:
    f = sg.compile(y * x + w, inputs=[x], backend="python")
    assert f.wrt_names == ["w", "y"] and f.input_names == ["x"]
    assert f([2.0, 3.0], [5.0]) == (17.0, pytest.approx([1.0, 5.0]))


def test_numba_tape_hessian_and_jvp_take_sympy_too() -> None:
    expr = (w * x + b) ** 2 + sp.Max(w, b)
    for backend in ("numba", "tape"):
        f = sg.compile(expr, wrt=[w, b], inputs=[x], backend=backend)
        value, grad = f([0.5, 0.25], [2.0])
        assert value == (0.5 * 2 + 0.25) ** 2 + 0.5
        np.testing.assert_allclose(grad, [2 * 1.25 * 2 + 1, 2 * 1.25], rtol=1e-15)
    H = sg.hessian(expr, wrt=[w, b], inputs=[x], backend="python")
    _, _, hess = H([0.5, 0.25], [2.0])
    np.testing.assert_allclose(hess, [[8.0, 4.0], [4.0, 2.0]], rtol=1e-15)
    j = sg.jvp(expr, wrt=[w, b], inputs=[x], backend="python")
    assert j([0.5, 0.25], [1.0, 0.0], [2.0])[1] == pytest.approx(6.0)
    with pytest.raises(ValueError, match="single output"):
        sg.hessian([expr, w], wrt=[w, b], inputs=[x])


def test_check_compares_an_imported_graph_with_sympy() -> None:
    out, wrt, inputs = from_sympy(sp.log(w**2 + x**2) * sp.Abs(b), [w, b], [x])
    for leaf, v in zip([*wrt, *inputs], (0.6, -1.4, 0.9), strict=True):
        leaf.data = v
    sg.check(out, wrt=wrt, inputs=inputs, backend="python")


# ---- clear errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "match"), [
    (sp.atan(w), r"atan.*no counterpart.*supported"),
    (sp.gamma(w) + w, r"gamma"),
    (sp.Function("g")(w), r"\bg\b.*no counterpart"),
    (w**x, r"variable exponent"),
    ((-2) ** w, r"variable exponent"),
    (sp.Piecewise((w, x > 0)), r"otherwise branch"),
    (sp.Heaviside(w), r"Heaviside.*1/2"),
    (w + sp.I, r"not a real number"),
    (w * sp.zoo, r"zoo is not a real number"),
    (sp.Derivative(sp.Function("g")(w), w), r"Derivative"),
])
def test_unsupported_expressions_are_named(expr: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        sg.compile(expr, wrt=[w], inputs=[x], backend="python")


def test_bad_symbol_lists() -> None:
    with pytest.raises(ValueError, match=r"\bb\b.*neither wrt nor inputs"):
        sg.compile(w * b, wrt=[w], backend="python")
    with pytest.raises(ValueError, match=r"inputs\[0\].*already listed as wrt\[0\]"):
        sg.compile(w * x, wrt=[w], inputs=[w], backend="python")
    with pytest.raises(TypeError, match=r"wrt\[1\]: expected a sympy Symbol, got Mul"):
        sg.compile(w * x, wrt=[w, 2 * x], backend="python")
    with pytest.raises(TypeError, match=r"wrt: expected a list of sympy Symbols"):
        sg.compile(w * x, wrt=w, backend="python")
    with pytest.raises(TypeError, match=r"outputs\[1\]: expected a sympy expression"):
        sg.compile([w, "x"], wrt=[w], backend="python")


def test_import_symgrad_does_not_load_sympy() -> None:
    import subprocess
    import sys

    heavy = ("numba", "sympy", "tqdm", "scipy", "graphviz")
    code = f"import symgrad, sys; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_symbol_lists_with_no_order_are_refused() -> None:
    # a set's (and a dict's keys') order changes between processes with the hash seed
    for bad in ({w, b}, frozenset({w, b}), {w: 1.0, b: 2.0}):
        kind = type(bad).__name__
        with pytest.raises(TypeError, match=rf"wrt: expected a list of sympy .* got a {kind}"):
            sg.compile(w * b * x, wrt=bad, inputs=[x], backend="python")
        with pytest.raises(TypeError, match=rf"inputs: expected a list .* got a {kind}"):
            sg.compile(w * b * x, wrt=[x], inputs=bad, backend="python")
    with pytest.raises(TypeError, match="which has no order; pass a list"):
        sg.hessian(w * x, wrt={w}, inputs=[x], backend="python")


def test_default_wrt_refuses_distinct_symbols_of_one_name() -> None:
    x_pos = sp.Symbol("x", positive=True)  # != x (real=True), same name
    with pytest.raises(ValueError, match=r"same name \('x': Symbol\('x', positive=True\), "
                                         r"Symbol\('x', real=True\)\).*pass wrt"):
        sg.compile(x * x_pos + w, backend="python")
    # listed by the user, their order is the user's
    f = sg.compile(x * x_pos + w, wrt=[x_pos, x], inputs=[w], backend="python")
    assert f([2.0, 3.0], [1.0]) == (7.0, pytest.approx([3.0, 2.0]))


CONSTANTS = [sp.sqrt(19), sp.exp(25), sp.cos(6), sp.exp(9) / 3, sp.Integer(13) ** sp.Rational(1, 3),
             sp.sqrt(22) / 7, sp.pi * 17, sp.log(3), sp.E, sp.Rational(1, 3), sp.Float(0.1),
             sp.tanh(sp.Rational(1, 2)) * sp.pi]


@pytest.mark.parametrize("c", CONSTANTS, ids=str)
def test_constants_are_the_nearest_double(c: Any) -> None:
    import mpmath

    with mpmath.workprec(400):  # mpmath's float() rounds to nearest
        want = float(mpmath.mpf(sp.N(c, 120)))
    assert from_sympy(c, wrt=[])[0].data == want
    f = sg.compile(w + c, wrt=[w], backend="python")
    assert f.forward([0.0]) == want  # the constant as the compiled code holds it
