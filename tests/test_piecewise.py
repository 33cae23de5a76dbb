"""abs, sqrt, maximum, minimum, comparisons and where, end to end.

Oracles: the original micrograd package (which spells sqrt as ``x**0.5`` and builds abs and max
from relu, with the same conventions at the kinks), sympy (`sg.check`), hand-derived values, and
the interpreted engine, which every exact backend must equal bit for bit, on IEEE special values
too. The op table's rows themselves are checked in test_ops.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from micrograd.engine import Value as MgValue

import symgrad as sg
from symgrad import ops
from symgrad.engine import Value
from tests.strategies import same_float

EXACT = ["python", "numba", "tape"]
SPECIAL = (0.0, -0.0, math.inf, -math.inf, math.nan, 2.5, -1.5, 1.0)


# ---- the Value API -------------------------------------------------------------------------------


def test_comparisons_are_traced_conditions() -> None:
    a, b = Value(2.0), Value(3.0)
    reflected = 1.0 < a  # noqa: SIM300 (float.__lt__ gives way to Value.__gt__)
    for cond, want, op in ((a < b, 1.0, "<"), (a <= b, 1.0, "<="), (a > b, 0.0, ">"),
                           (a >= b, 0.0, ">="), (a < 2.0, 0.0, "<"), (reflected, 1.0, ">")):
        assert isinstance(cond, Value)
        assert cond.data == want and cond._op == op
    # == and != stay identity: Values are dict keys
    assert (a == Value(2.0)) is False and a != b and len({a, b, a}) == 2


def test_bool_of_a_condition_points_to_where() -> None:
    x = Value(2.0)
    with pytest.raises(TypeError, match=r"traced condition \(>\).*sg\.where"):
        if x > 0:
            pass
    with pytest.raises(TypeError, match=r"not traced.*sg\.where"):
        bool(x)
    with pytest.raises(TypeError, match=r"sg\.where"):
        max(x, Value(1.0))  # builtins compare, then branch on the result


def test_a_chained_comparison_says_how_to_write_it() -> None:
    x = Value(1.5, label="x")
    with pytest.raises(TypeError, match=r"chained comparison \(0 < x < 2\).*\(x > 0\) \* "
                                        r"\(x < 2\).*sg\.maximum\(c1, c2\).*sg\.where"):
        0 < x < 2  # noqa: B015 (the comparison is the point)
    # what the message says to write: the product of conditions is their `and`
    inside = sg.where((x > 0) * (x < 2), x, 0.0)
    f = sg.compile(inside, wrt=[x], backend="python")
    assert [f.forward([v]) for v in (-1.0, 1.5, 2.0, 3.0)] == [0.0, 1.5, 0.0, 0.0]
    assert [f.forward([v]) for v in (-1.0, 1.5)] == [
        sg.where((Value(v) > 0) * (Value(v) < 2), Value(v), 0.0).data for v in (-1.0, 1.5)]


def test_sg_abs_is_the_abs_op() -> None:
    x = Value(-2.5, label="x")
    y = sg.abs(x)
    assert y.opdef is sg.OPS["abs"] and y.data == abs(x).data == 2.5
    y.backward()
    assert x.grad == -1.0
    assert sg.abs(-3) == 3.0 and sg.abs(-0.0) == 0.0 and math.copysign(1, sg.abs(-0.0)) == 1.0
    assert "abs" not in sg.__all__  # `from symgrad import *` keeps the builtin


def test_a_python_if_on_data_is_frozen_and_where_is_not() -> None:
    # the trap: `if u.data > 0` is decided once, at trace time
    u = Value(2.0, label="u")
    frozen = u * 3 if u.data > 0 else -u
    f = sg.compile(frozen, wrt=[], inputs=[u], backend="python")
    assert f.forward(None, [-5.0]) == -15.0  # still the u > 0 branch: wrong at u = -5
    traced = sg.where(u > 0, u * 3, -u)
    g = sg.compile(traced, wrt=[u], backend="python")
    assert g.forward([-5.0]) == 5.0 and g.forward([2.0]) == 6.0
    assert g([-5.0])[1][0] == -1.0 and g([2.0])[1][0] == 3.0


def test_where_accepts_values_and_numbers_and_refuses_python_bools() -> None:
    c, x = Value(1.0), Value(4.0)
    assert sg.where(c, x, 0.0).data == 4.0
    assert sg.where(0.0, 1.0, 2.0) == 2.0  # floats: evaluated eagerly
    with pytest.raises(TypeError, match="bool"):
        sg.where(x.data > 0, x, 0.0)


def test_abs_sqrt_maximum_minimum_on_values() -> None:
    x, y = Value(-4.0), Value(9.0)
    out = abs(x) + y.sqrt() + sg.maximum(x, y) + sg.minimum(x, y)
    out.backward()
    assert out.data == 4.0 + 3.0 + 9.0 - 4.0
    # d/dx: sign(x) + 1 (x is the minimum); d/dy: 1/(2*3) + 1 (y is the maximum)
    assert x.grad == -1.0 + 1.0 and y.grad == 1 / 6 + 1.0
    assert sg.sqrt(4.0) == 2.0 and math.isnan(sg.sqrt(-1.0)) and abs(Value(-0.0)).data == 0.0


# ---- against the original micrograd --------------------------------------------------------------


def _both(build: object, xs: tuple[float, ...]) -> tuple[list[float], list[float], float, float]:
    ours = [Value(x) for x in xs]
    theirs = [MgValue(x) for x in xs]
    o, t = build(ours, "ours"), build(theirs, "micrograd")  # type: ignore[operator]
    o.backward()
    t.backward()
    return [v.grad for v in ours], [v.grad for v in theirs], o.data, t.data


def _sqrt(v: list, who: str):  # type: ignore[no-untyped-def]
    return (v[0] * v[1]).sqrt() if who == "ours" else (v[0] * v[1]) ** 0.5


def _abs(v: list, who: str):  # type: ignore[no-untyped-def]
    d = v[0] - v[1]
    return abs(d) if who == "ours" else d.relu() + (-d).relu()


def _max(v: list, who: str):  # type: ignore[no-untyped-def]
    # micrograd: a + relu(b - a), whose derivative at a tie goes to a (relu'(0) = 0), like ours
    return sg.maximum(v[0], v[1]) if who == "ours" else v[0] + (v[1] - v[0]).relu()


def _min(v: list, who: str):  # type: ignore[no-untyped-def]
    return sg.minimum(v[0], v[1]) if who == "ours" else v[0] - (v[0] - v[1]).relu()


@pytest.mark.parametrize("build", [_sqrt, _abs, _max, _min], ids=["sqrt", "abs", "max", "min"])
@pytest.mark.parametrize("xs", [(2.0, 3.0), (3.0, 2.0), (1.5, 1.5), (-2.0, 0.5), (0.0, 0.0)])
def test_matches_micrograd_spelled_with_its_own_ops(build: object, xs: tuple[float, ...]) -> None:
    if build is _sqrt and xs[0] * xs[1] <= 0.0:
        return  # sqrt of a negative is nan, micrograd's x**0.5 raises or goes complex
    ours, theirs, vo, vt = _both(build, xs)
    assert math.isclose(vo, vt, rel_tol=1e-15, abs_tol=1e-300)
    for a, b in zip(ours, theirs, strict=True):
        assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300), (ours, theirs)


# ---- every exact backend equals the engine, bit for bit, special values included -----------------

NEW_OPS = ["abs", "sqrt", "sign", "maximum", "minimum", "lt", "le", "gt", "ge", "where"]


def _graph(name: str) -> tuple[list[Value], list[Value], Value]:
    """``op(w0*x0, w1*x1, ...)``: at w = 1 the operands are the inputs, bits and all."""
    n = ops.OPS[name].arity
    w = [Value(1.0, label=f"w{i}") for i in range(n)]
    x = [Value(0.0, label=f"x{i}") for i in range(n)]
    return w, x, ops.OPS[name](*(wi * xi for wi, xi in zip(w, x, strict=True)))


def _engine(name: str, row: tuple[float, ...]) -> tuple[float, list[float]]:
    w, x, out = _graph(name)
    for xi, v in zip(x, row, strict=True):
        xi.data = v
    # rebuild at these data: the graph's values were computed when it was built
    out = ops.OPS[name](*(wi * xi for wi, xi in zip(w, x, strict=True)))
    out.backward()
    return out.data, [wi.grad for wi in w]


@pytest.mark.slow
@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("name", NEW_OPS)
def test_backends_equal_the_engine_on_special_values(name: str, backend: str) -> None:
    w, x, out = _graph(name)
    f = sg.compile(out, wrt=w, inputs=x, backend=backend, name=f"special_{name}")
    rows = list(itertools.product(SPECIAL, repeat=len(x)))
    values, grads = f.batch(None, np.array(rows), reduce="none")
    for r, row in enumerate(rows):
        value, grad = _engine(name, row)
        assert same_float(values[r], value), (name, row, values[r], value)
        for a, b in zip(grads[r], grad, strict=True):
            assert same_float(a, b), (name, row, grads[r], grad)
        v1, g1 = f(None, list(row))  # one call: the single-row kernel
        assert same_float(v1, value) and all(map(same_float, g1, grad)), (name, row)


@pytest.mark.parametrize("backend", EXACT)
def test_a_relu_network_with_where_and_max_on_every_backend(backend: str) -> None:
    rng = np.random.default_rng(0)
    x = [Value(0.0, label=f"x{i}") for i in range(2)]
    w = [Value(float(v), label=f"w{i}") for i, v in enumerate(rng.normal(size=4))]
    h = sg.maximum(w[0] * x[0] + w[1], 0.0) + abs(w[2] * x[1])
    out = sg.where(h > 1.0, (h + 1.0).sqrt(), sg.minimum(h, w[3] * x[0]))
    f = sg.compile(out, wrt=w, inputs=x, backend=backend, name="pw_net")
    X = rng.normal(size=(200, 2)) * 2
    values, grads = f.batch(None, X, reduce="none")
    for r in range(len(X)):
        for xi, v in zip(x, X[r], strict=True):
            xi.data = float(v)
        xs = [Value(float(v)) for v in X[r]]
        ws = [Value(v.data) for v in w]
        h = sg.maximum(ws[0] * xs[0] + ws[1], 0.0) + abs(ws[2] * xs[1])
        o = sg.where(h > 1.0, (h + 1.0).sqrt(), sg.minimum(h, ws[3] * xs[0]))
        o.backward()
        assert same_float(values[r], o.data)
        assert all(same_float(a, v.grad) for a, v in zip(grads[r], ws, strict=True))


# ---- where: the derivative of the branch not taken -----------------------------------------------


def test_where_poisons_the_gradient_through_the_unchosen_branch_and_the_safe_pattern_does_not(
) -> None:
    # JAX's known consequence: the unchosen branch gets a 0.0 cotangent, and 0 * inf is nan
    x = Value(0.0, label="x")
    naive = sg.where(x > 0, x.sqrt(), 0.0)
    f = sg.compile(naive, wrt=[x], backend="python")
    value, grad = f([0.0])
    assert value == 0.0 and math.isnan(grad[0])  # sqrt'(0) = inf, times the 0.0 it was given
    # the safe pattern: feed the risky branch a harmless operand where it is not taken
    safe_x = sg.where(x > 0, x, 1.0)
    safe = sg.where(x > 0, safe_x.sqrt(), 0.0)
    g = sg.compile(safe, wrt=[x], backend="python")
    assert g([0.0]) == (0.0, pytest.approx([0.0]))
    assert g([4.0])[0] == 2.0 and g([4.0])[1][0] == 0.25
    # the engine does the same, so compiled and interpreted agree either way
    naive.backward()
    assert math.isnan(x.grad)


# ---- sympy ---------------------------------------------------------------------------------------


def test_check_passes_through_every_new_op() -> None:
    a, b, c = Value(0.7, label="a"), Value(-1.3, label="b"), Value(2.2, label="c")
    out = (sg.maximum(a * b, c - 3.0) + sg.minimum(a, c) * abs(b)
           + sg.where(a < c, (c * c + 1.0).sqrt(), b) + (b >= a) * a)
    sg.check(out, wrt=[a, b, c], backend="python")
    assert sg.check(out, wrt=[a, b, c], order=2, points=1, backend="python").compared > 0


@pytest.mark.parametrize("method", ["symbolic", "numeric"])
@pytest.mark.parametrize("order", [1, 2])
def test_check_at_a_tie_or_a_kink_compares_with_the_engine_and_says_so(method, order) -> None:
    # the leaves' values tie max and min and put abs and relu at 0: the derivative there is a
    # convention (sympy's Heaviside(0) = 1/2 would halve max's), so check compares it with the
    # engine only, names the instruction, and still checks the random points against sympy
    a, b, c = Value(1.5, label="a"), Value(1.5, label="b"), Value(0.0, label="c")
    out = sg.maximum(a, b) * a + sg.minimum(b, a) + abs(c) * b + (c * a).relu() + (a <= b) * c
    r = sg.check(out, wrt=[a, b, c], backend="python", order=order, method=method)
    assert [k[0] for k in r.kinks] == [{"a": 1.5, "b": 1.5, "c": 0.0}]
    assert "maximum(a, b)" in r.kinks[0][1] and "on a kink" in str(r)
    assert len(r.points) > 1 and r.compared > len(r.points)


def test_a_wrong_gradient_on_a_kink_still_fails_against_the_engine(monkeypatch) -> None:
    from symgrad.tiers import Subject

    a, b = Value(2.0, label="a"), Value(2.0, label="b")
    out = sg.maximum(a, b) * a
    real = Subject.compiled

    def off_by_one(self, pt):
        r = dict(real(self, pt))
        r["gradient"] = r["gradient"] + 1.0
        return r

    monkeypatch.setattr(Subject, "compiled", off_by_one)
    # the engine's d/da = max + a * 1 (the tie's derivative goes to a) = 4.0
    with pytest.raises(sg.GradientMismatch, match=r"(?s)d/d\(a\).*5\.0.*4\.0"):
        sg.check(out, wrt=[a, b], backend="python", points=0)


def test_comparisons_that_sympy_would_simplify_forever_export_and_check() -> None:
    # sympy's Piecewise, left to simplify the condition log(1/(x**2+1) + 0.5) >= ..., recursed
    # until RecursionError; the op table's forms are left as written
    import sympy as sp

    x = Value(-1.0, label="x")
    u = (x * x + 1.0) ** -1.0 + 0.5
    cond = u.log() >= u - 1.5
    X = sp.Symbol("x", real=True)
    U = 1 / (X**2 + 1) + sp.Float(0.5)
    assert sg.to_sympy(cond).subs(X, -1.0) == (1 if math.log(1.0) >= -0.5 else 0)
    assert sg.to_sympy(cond).args[0].cond == sp.Ge(sp.log(U), U - sp.Float(1.5))
    # (sympy 1.14 still recurses differentiating where(cond, ...): then auto checks numerically)
    assert sg.check(sg.where(cond, x * x, -x), wrt=[x], backend="python").compared > 0


def test_a_graph_sympy_cannot_differentiate_is_checked_numerically(monkeypatch) -> None:
    from symgrad import symbolic_tiers

    def recurses(self, subject):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(symbolic_tiers.GradientTier, "__init__", recurses)
    x = Value(0.3, label="x")
    out = sg.where(x < 1.0, x * x, -x)
    r = sg.check(out, wrt=[x], backend="python")
    assert r.method == "numeric" and r.directions > 0
    with pytest.raises(ValueError, match=r"sympy could not differentiate.*method='numeric'"):
        sg.check(out, wrt=[x], backend="python", method="symbolic")


@pytest.mark.parametrize("method", ["symbolic", "numeric"])
def test_a_false_condition_is_no_kink_and_a_wrong_branch_is_caught(method, monkeypatch) -> None:
    # where(a > 0, ...) at a < 0 takes its second branch all around the point: the condition is
    # 0.0 but cannot move, so the derivative there has an oracle; a rule that doubles the second
    # branch's derivative must fail against it, not pass against the engine that shares it
    a, c = Value(-1.5, label="a"), Value(0.4, label="c")
    leaky = sg.where(a > 0, a, 0.01 * a) + sg.where((a > -9.0) * (c < 0.0), a, c * a)
    r = sg.check(leaky, wrt=[a, c], backend="python", method=method)
    assert r.kinks == [] and "on a kink" not in str(r)
    where = ops.OPS["where"]
    doubled = dataclasses.replace(
        where, vjp=lambda ct, out, c, x, y: (None, where(c, ct, 0.0), where(c, 0.0, 2.0 * ct)))
    monkeypatch.setitem(ops.OPS, "where", doubled)
    monkeypatch.setattr(ops, "WHERE", doubled)
    a = Value(-1.5, label="a")
    with pytest.raises(sg.GradientMismatch, match=r"(?s)/d\(a\).*where\(v0, a, v1\)"):
        sg.check(doubled(a > 0, a, 0.01 * a), wrt=[a], backend="python", method=method)


@pytest.mark.parametrize("method", ["symbolic", "numeric"])
def test_check_of_a_branch_guarded_by_where_where_the_other_is_undefined(method) -> None:
    # where(a > 0, log(a), a*a) at a < 0: log's nan is never taken, so the model is defined
    # there; the high-precision oracle must not call it undefined (nothing compared, or a wrong
    # expected skipped)
    import sympy as sp

    a = Value(-1.5, label="a")
    out = sg.where(a > 0, a.log(), a * a)
    A = sp.Symbol("a")
    r = sg.check(out, wrt=[a], backend="python", method=method, points=2,
                 expected=sp.Piecewise((sp.log(A), A > 0), (A**2, True)))
    assert r.tiers["expected"] == 3 and len(r.points) == 3
    with pytest.raises(sg.ModelMismatch, match=r"(?m)^  expected +-3\.375"):
        sg.check(out, wrt=[a], backend="python", method=method,
                 expected=sp.Piecewise((sp.log(A), A > 0), (A**3, True)))


def test_check_of_nested_max_sqrt_and_where_is_symbolic_and_quick(monkeypatch) -> None:
    # sympy's derivative of this 30-instruction graph nests Heaviside, Max and Piecewise:
    # lambdify's printer took about a minute on it and its code compared complex numbers at
    # every point, so nothing was compared; each node evaluated once agrees with the engine
    a, b, c = Value(0.7, label="a"), Value(-1.2, label="b"), Value(0.4, label="c")
    h = a
    for _ in range(2):
        h = (sg.maximum(h * b + c, abs(h - c + 0.1).sqrt())
             + sg.where(h > c, (h * h + 1.0).log(), (b * h).tanh()))
    r = sg.check(h, wrt=[a, b, c], backend="python")
    assert r.method == "symbolic" and len(r.points) == 4 and r.compared == 12
    # and were sympy's form undefined everywhere, method="auto" falls back to the numeric tier
    from symgrad import symbolic_tiers

    monkeypatch.setattr(symbolic_tiers, "_mp_eval", lambda lam, pt: None)
    assert sg.check(h, wrt=[a, b, c], backend="python").method == "numeric"
    with pytest.raises(ValueError, match="nothing was compared"):
        sg.check(h, wrt=[a, b, c], backend="python", method="symbolic")


def test_to_sympy_of_the_new_ops() -> None:
    import sympy as sp

    a, b = Value(0.5, label="a"), Value(2.0, label="b")
    out = sg.where(a < b, sg.maximum(a, b), abs(a).sqrt()) + sg.minimum(a, b)
    A, B = sp.symbols("a b", real=True)
    # abs as Max(a, -a): sympy differentiates Abs(f) only where it can prove f real
    want = sp.Piecewise((sp.Max(A, B), A < B), (sp.sqrt(sp.Max(A, -A)), True)) + sp.Min(A, B)
    assert sg.to_sympy(out) == want
    assert sp.Max(A, -A).rewrite(sp.Abs) == sp.Abs(A) or sp.simplify(sp.Max(A, -A) - sp.Abs(A)) == 0
    # the derivative at the kink is abs'(0) = 0 in sympy's form too (Heaviside(0) = 1/2)
    assert sp.diff(sp.Max(A, -A), A).subs(A, 0) == 0
    assert sp.diff(sg.to_sympy(abs(a.log())), A).subs(A, 2) == sp.Rational(1, 2)
