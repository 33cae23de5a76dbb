"""`check` at every size and for every kind of wrong number: a broken compiled op, a broken batch
loop, a wrong derivative rule, the wrong model; and what it says when it fails.

Oracles: the op table's reference rules and the interpreted engine (what a broken lowering must be
caught against), sympy expressions written by hand (`expected=`), and sabotage: each test breaks
one thing on purpose and asserts that check names it.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, note, settings

import symgrad as sg
from symgrad import ops
from symgrad.checking import SYMBOLIC_LIMIT
from symgrad.nn import MLP
from tests.strategies import Case, programs, to_values

ROOT = Path(__file__).resolve().parents[1]


def neuron(op: str = "tanh") -> tuple[sg.Value, list[sg.Value], list[sg.Value]]:
    x1, x2 = sg.Value(2.0, label="x1"), sg.Value(0.5, label="x2")
    w1, w2 = sg.Value(-0.3, label="w1"), sg.Value(1.0, label="w2")
    b = sg.Value(0.7, label="b")
    n = x1 * w1 + x2 * w2 + b
    return getattr(n, op)(), [w1, w2, b], [x1, x2]


def mlp_loss(nin: int, hidden: int, seed: int = 0) -> tuple[sg.Value, list, list]:
    random.seed(seed)
    model = MLP(nin, [hidden, hidden, 1])
    x = [sg.Value(random.uniform(-1, 1), label=f"x{i}") for i in range(nin)]
    y = sg.Value(0.3, label="y")
    return (model(x) - y) ** 2, model.parameters(), [*x, y]


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch):
    """Replace fields of an op's table entry for one test (build graphs after calling it)."""

    def breaks(name: str, **fields) -> None:
        wrong = dataclasses.replace(ops.OPS[name], **fields)
        monkeypatch.setitem(ops.OPS, name, wrong)
        monkeypatch.setattr(ops, name.upper(), wrong)

    return breaks


# ---- passing checks say how they checked ---------------------------------------------------------


def test_a_small_graph_is_checked_symbolically_and_says_so() -> None:
    o, wrt, inputs = neuron()
    r = sg.check(o, wrt=wrt, inputs=inputs, backend="python")
    assert r.method == "symbolic" and r.directions == 0
    assert set(r.tiers) == {"entry points", "symbolic gradient", "rules"}
    assert all(n > 0 for n in r.tiers.values())
    assert r.compared == 3 * len(r.points)
    assert "symbolic" in str(r) and "rules (3 kinds of instruction" in str(r)


def test_a_graph_beyond_the_limit_is_checked_numerically_and_says_so() -> None:
    loss, wrt, inputs = mlp_loss(2, 4)
    f = sg.compile(loss, wrt=wrt, inputs=inputs, backend="python")
    assert len(f.traced_ir.body) > SYMBOLIC_LIMIT[1]
    r = sg.check(loss, wrt=wrt, inputs=inputs, backend="python", points=2, directions=3)
    assert r.method == "numeric"
    assert r.directions == 3 * 3 and r.compared == 3 * 3  # 3 points, 3 directions, one output
    assert set(r.tiers) == {"entry points", "numeric gradient", "rules"}
    assert "9 random directions" in r.details["numeric gradient"]
    assert r.max_rel_error < 1e-12


@pytest.mark.parametrize("backend", ["python", "numba", "tape"])
@pytest.mark.parametrize("method", ["symbolic", "numeric"])
def test_both_methods_pass_on_every_backend(backend: str, method: str) -> None:
    o, wrt, inputs = neuron()
    r = sg.check(o, wrt=wrt, inputs=inputs, backend=backend, method=method, points=1)
    assert r.method == method and r.compared > 0
    r2 = sg.check(o, wrt=wrt, inputs=inputs, backend=backend, method=method, order=2, points=1)
    assert r2.method == method and r2.compared > 0


@settings(max_examples=max(5, settings.default.max_examples // 3))
@given(programs(n_inputs=(1, 3), max_ops=8, n_outputs=2))
def test_the_numeric_method_passes_on_random_programs(case: Case) -> None:
    note(str(case))
    leaves, outs, _ = to_values(case.program, case.inputs)
    r = sg.check(outs, wrt=leaves, backend="python", points=2, method="numeric")
    assert r.compared > 0


def test_kinks_within_the_stencil_are_skipped_not_failed() -> None:
    # relu's operand is exactly 0 at the leaves' values: the central difference straddles it
    w, x = sg.Value(0.0, label="w"), sg.Value(1.5, label="x")
    v = sg.Value(0.4, label="v")
    out = (w * x).relu() + v * w
    r = sg.check(out, wrt=[w, v], inputs=[x], backend="python", method="numeric")
    # the leaves' values are on the kink: compared with the engine only, and said so
    at = {"w": 0.0, "v": 0.4, "x": 1.5}
    assert r.kinks == [(at, "v0 = relu(v1)")] or [k[0] for k in r.kinks] == [at]
    assert r.directions > 0  # the random points were compared in high precision
    assert "1 point(s) on a kink" in str(r)


def test_a_stencil_across_the_kink_of_max_is_undefined_not_a_difference() -> None:
    # max's kink is where its operands are equal, whatever their size: a central difference
    # across it is neither one-sided derivative
    from symgrad.oracles import HighPrecision

    x, y = sg.Value(1.0, label="x"), sg.Value(1.0, label="y")
    hp = HighPrecision([sg.maximum(x, y) * 3.0], [x, y])
    assert hp.directional((1.0, 1.0 + 1e-14), np.array([1.0, 0.0])) is None
    d = hp.directional((1.0, 0.5), np.array([1.0, 0.0]))
    assert d is not None and abs(float(d[0]) - 3.0) < 1e-12


# ---- wrong numbers of every kind -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["python", "numba"])
@pytest.mark.parametrize("order", [1, 2])
def test_a_broken_compiled_op_is_a_value_mismatch_naming_the_instruction(
    broken, backend: str, order: int
) -> None:
    broken("sin", py="np.cos({0})")  # the engine and folding keep sin's own rule
    o, wrt, inputs = neuron("sin")
    with pytest.raises(sg.ValueMismatch) as info:
        sg.check(o, wrt=wrt, inputs=inputs, backend=backend, order=order)
    msg = str(info.value)
    assert msg.startswith("value mismatch") and f'backend "{backend}"' in msg
    culprit = msg.splitlines()[-1]
    assert "= sin(" in culprit and "compiled alone" in culprit
    got, want = (float(re.search(rf"^  {k}\s+(\S+)$", msg, re.M).group(1))  # type: ignore[union-attr]
                 for k in ("single call", "the engine"))
    n = -0.3 * 2.0 + 0.5 * 1.0 + 0.7
    assert got == pytest.approx(np.cos(n), rel=1e-12) and want == np.sin(n)


def _sabotage(monkeypatch, method: str, mutate) -> None:
    """Wrap Compiled.`method` so that its result is changed by `mutate` (in place)."""
    real = getattr(sg.Compiled, method)

    def wrong(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        mutate(result, *args, **kwargs)
        return result

    monkeypatch.setattr(sg.Compiled, method, wrong)


def _bump(a: np.ndarray, index: tuple) -> None:
    a[index] = np.nextafter(a[index], np.inf)  # one ulp: an exact backend must catch it


@pytest.mark.parametrize(("method", "reduce", "part", "what"), [
    ("batch", "none", 1, "gradient mismatch"),
    ("batch", "sum", 1, "gradient mismatch"),
    ("batch", "mean", 0, "value mismatch"),
    ("batch_forward", None, None, "value mismatch"),
])
def test_a_broken_batch_path_names_the_entry_point_and_row(
    monkeypatch, method: str, reduce: str | None, part: int | None, what: str
) -> None:
    def mutate(result, params, X, reduce_=None, **kw):
        r = kw.get("reduce", reduce_ if reduce_ is not None else "sum")
        if method == "batch_forward":
            _bump(result, (1,))
        elif r == reduce:
            _bump(result[part], (1, 2) if r == "none" else (1,) if part == 0 else (2,))

    _sabotage(monkeypatch, method, mutate)
    o, wrt, inputs = neuron()
    with pytest.raises(sg.CheckFailed) as info:
        sg.check(o, wrt=wrt, inputs=inputs, backend="python")
    msg = str(info.value)
    head = msg.splitlines()[0]
    assert head.startswith(what), msg
    assert method in head
    if reduce != "sum":  # a sum has no rows
        assert "row 1" in head
    if reduce is not None:
        assert f"reduce={reduce!r}" in head
    if reduce == "none":
        assert "d/d(b)" in head  # column 2 of the gradient: the third parameter
    assert "batch loop is at fault" in msg


def test_a_wrong_rule_is_caught_numerically_on_a_big_graph_and_narrowed(broken) -> None:
    broken("tanh", vjp=lambda ct, out, x: ((1.0 - out) * ct,))
    loss, wrt, inputs = mlp_loss(3, 8)
    with pytest.raises(sg.GradientMismatch) as info:
        sg.check(loss, wrt=wrt, inputs=inputs, backend="tape", points=0)
    msg = str(info.value)
    lines = msg.splitlines()
    assert lines[0].startswith("gradient mismatch") and "numeric" in lines[0]
    assert len(lines) <= 15
    narrowed = next(line for line in lines if "narrowed to d/d(" in line)
    name = re.search(r"d/d\(([^)]+)\)", narrowed).group(1)  # type: ignore[union-attr]
    assert name in {v.label for v in wrt}
    # the narrowed parameter really is wrong: compare with sympy's derivative of its own
    assert "tanh(" in lines[-1] and "sympy.diff gives" in lines[-1]


def test_a_wrong_rule_of_an_op_the_graph_barely_uses_is_caught_by_the_rules_tier(broken) -> None:
    # exp's rule is wrong, but exp's derivative is multiplied by zero in this graph
    broken("exp", vjp=lambda ct, out, x: ((2.0 * out) * ct,))
    a, b = sg.Value(0.5, label="a"), sg.Value(0.0, label="b")
    out = a * a + b * a.exp()
    with pytest.raises(sg.GradientMismatch) as info:
        sg.check(out, wrt=[a], inputs=[b], backend="python", points=0)
    msg = str(info.value)
    assert msg.startswith("derivative rule mismatch: op 'exp'"), msg
    assert "`v1 = exp(a)`" in msg or "exp(a)" in msg


def test_a_zero_of_the_wrong_sign_on_an_exact_backend_fails(monkeypatch) -> None:
    # x + 0.0 -> x is not exact (-0.0 + 0.0 is 0.0): a pass that used it gives -0.0 where the
    # engine gives 0.0, which 1 / x tells apart; bit for bit means the sign of zero too
    from symgrad import passes

    wrong = (*passes.SIMPLIFY_RULES, passes.Rule("x+0.0", "x", "wrong for x = -0.0"))
    monkeypatch.setattr(passes, "_RULES", passes._compile(wrong))
    a = sg.Value(-0.0, label="a")
    with pytest.raises(sg.ValueMismatch, match=r"(?s)single call +-0\.0\n +the engine +0\.0"):
        sg.check((a + 0.0) * 2.0, wrt=[a], backend="python")


# ---- expected= -----------------------------------------------------------------------------------


def test_expected_passes_for_the_right_formula_and_says_it_was_proved() -> None:
    o, wrt, inputs = neuron()
    w1, w2, b, x1, x2 = sp.symbols("w1 w2 b x1 x2")
    r = sg.check(o, wrt=wrt, inputs=inputs, backend="python",
                 expected=sp.tanh(x1 * w1 + x2 * w2 + b))
    assert r.tiers["expected"] == len(r.points)
    assert "proved equal symbolically" in r.details["expected"]


def test_expected_catches_the_wrong_model() -> None:
    o, wrt, inputs = neuron("sigmoid")  # sigmoid where tanh was meant
    w1, w2, b, x1, x2 = sp.symbols("w1 w2 b x1 x2")
    with pytest.raises(sg.ModelMismatch) as info:
        sg.check(o, wrt=wrt, inputs=inputs, backend="python",
                 expected=sp.tanh(x1 * w1 + x2 * w2 + b))
    msg = str(info.value)
    assert msg.startswith("model mismatch: the traced graph is not the expected formula")
    assert "expected: tanh(b + w1*x1 + w2*x2)" in msg and "exp(" in msg
    graph, want = (float(re.search(rf"^  {k}\s+(\S+)", msg, re.M).group(1))  # type: ignore[union-attr]
                   for k in ("traced graph", "expected"))
    n = -0.3 * 2.0 + 0.5 * 1.0 + 0.7
    assert graph == pytest.approx(1 / (1 + np.exp(-n)), rel=1e-12)
    assert want == pytest.approx(np.tanh(n), rel=1e-12)


def test_expected_on_a_big_graph_is_compared_at_points() -> None:
    loss, wrt, inputs = mlp_loss(2, 4)
    expr = sg.to_sympy(loss)
    r = sg.check(loss, wrt=wrt, inputs=inputs, backend="python", points=1, expected=expr)
    assert r.tiers["expected"] == 2 and "proved" not in r.details["expected"]
    y = next(s for s in expr.free_symbols if s.name == "y")
    with pytest.raises(sg.ModelMismatch):
        sg.check(loss, wrt=wrt, inputs=inputs, backend="python", points=1,
                 expected=expr.subs(y, 1.01 * y))


def test_expected_may_name_frozen_leaves_and_use_exact_constants() -> None:
    a, c = sg.Value(0.3, label="a"), sg.Value(2.0, label="c")  # c: frozen, not in wrt/inputs
    out = (a * c + 0.1).exp()
    A, C = sp.symbols("a c")
    sg.check(out, wrt=[a], backend="python", expected=sp.exp(A * C + sp.Rational(1, 10)))


def test_expected_with_unknown_symbols_or_the_wrong_count_is_refused() -> None:
    o, wrt, inputs = neuron()
    z = sp.Symbol("z")
    with pytest.raises(ValueError, match=r"symbol\(s\) z .*leaves are named.*w1"):
        sg.check(o, wrt=wrt, inputs=inputs, backend="python", expected=z)
    with pytest.raises(ValueError, match="2 formula"):
        sg.check(o, wrt=wrt, inputs=inputs, backend="python", expected=[z, z])
    with pytest.raises(TypeError, match="sympy"):
        sg.check(o, wrt=wrt, inputs=inputs, backend="python", expected=object())


@pytest.mark.parametrize("wrong", ["log(-a)", "a*b + I", "nan", "zoo", "oo", "a*b/(a - a)"])
def test_expected_undefined_where_the_graph_is_defined_is_the_wrong_model(wrong) -> None:
    # a formula that is complex, infinite or nan where the traced graph has a real value is not
    # that graph: it must not be skipped at every point and pass
    a, b = sg.Value(1.5, label="a"), sg.Value(-0.5, label="b")
    A, B = sp.symbols("a b")
    expected = sp.sympify(wrong, locals={"a": A, "b": B})
    out = a.log() if "log" in wrong else a * b
    with pytest.raises(sg.ModelMismatch, match=r"(?m)^  expected +undefined here"):
        sg.check(out, wrt=[a, b], backend="python", expected=expected)


def test_expected_the_graph_leaves_undefined_everywhere_is_refused(monkeypatch) -> None:
    from symgrad.oracles import HighPrecision

    a, b = sg.Value(1.5, label="a"), sg.Value(-0.5, label="b")
    A, B = sp.symbols("a b")
    monkeypatch.setattr(HighPrecision, "values", lambda self, xs: None)
    with pytest.raises(ValueError, match="expected was compared at no point"):
        sg.check(a * b, wrt=[a, b], backend="python", expected=A + B)
    # a proof settles it without points
    assert "proved" in sg.check(a * b, wrt=[a, b], backend="python",
                                expected=A * B).details["expected"]


@pytest.mark.parametrize("expected", [sp.Matrix([sp.Symbol("a")]), {"a": 1}])
def test_expected_that_is_no_expression_is_a_type_error(expected) -> None:
    a = sg.Value(1.5, label="a")
    with pytest.raises(TypeError, match="expected must be sympy expressions, one per output"):
        sg.check(a * a, wrt=[a], backend="python", expected=expected)


@pytest.mark.parametrize("order", [1, 2])
def test_a_nan_leaf_is_named_and_is_no_false_gradient_mismatch(order) -> None:
    # b*b + n with n frozen at nan: the engine's d/db is 2b, but sympy's b**2 + nan is nan and
    # its derivative 0; with every value nan nothing can be compared, and the message says why
    b, n = sg.Value(2.0, label="b"), sg.Value(math.nan, label="n")
    for out, wrt in ((b * b + n, [b]), (n * b, [n, b])):
        with pytest.raises(ValueError, match=r"nothing was compared.*not finite: n = nan"):
            sg.check(out, wrt=wrt, backend="python", order=order)


@pytest.mark.parametrize("expected", [
    sp.Function("f")(sp.Symbol("a")),
    sp.Derivative(sp.Symbol("a") ** 3 / 3, sp.Symbol("a")),
    sp.Sum(sp.Symbol("a") ** 2, (sp.Symbol("k"), 1, 1)),
])
def test_expected_that_mpmath_cannot_evaluate_is_a_type_error(expected) -> None:
    a = sg.Value(1.5, label="a")
    with pytest.raises(TypeError, match=r"expected cannot be evaluated numerically .*\.doit\(\)"):
        sg.check(a * a, wrt=[a], backend="python", expected=expected)
    if not isinstance(expected, sp.core.function.AppliedUndef):  # what the message advises
        sg.check(a * a, wrt=[a], backend="python", expected=expected.doit())


# ---- arguments -----------------------------------------------------------------------------------


def test_nothing_to_differentiate_by_is_said_as_such() -> None:
    a, b = sg.Value(1.0, label="a"), sg.Value(2.0, label="b")
    with pytest.raises(ValueError, match="nothing to differentiate by: wrt is empty"):
        sg.check(a * b, wrt=[])
    with pytest.raises(ValueError, match="nothing to differentiate by"):
        sg.check(a * b, inputs=[a, b])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "exact"}, "method must be one of"),
    ({"points": -1}, "points must be an int >= 0"),
    ({"directions": 0}, "directions must be an int >= 1"),
    ({"order": 3}, "order must be 1 or 2"),
    ({"order": True}, "order must be 1 or 2"),
    ({"seed": "x"}, "seed must be an int >= 0"),
    ({"seed": 1.5}, "seed must be an int >= 0"),
    ({"rtol": "1e-7"}, "rtol must be a number >= 0"),
    ({"rtol": float("nan")}, "rtol must be a number >= 0"),
    ({"atol": -1.0}, "atol must be a number >= 0"),
])
def test_bad_check_arguments(kwargs: dict, match: str) -> None:
    a = sg.Value(1.0, label="a")
    with pytest.raises(ValueError, match=match):
        sg.check(a * a, backend="python", **kwargs)


# ---- what a failure looks like under pytest ------------------------------------------------------


def test_a_failure_under_pytest_shows_the_message_not_symgrad_source(tmp_path) -> None:
    test = tmp_path / "test_model.py"
    test.write_text(textwrap.dedent('''
        import sympy as sp
        import symgrad as sg

        def test_neuron_is_tanh():
            x, w, b = sg.Value(0.5, label="x"), sg.Value(-1.2, label="w"), sg.Value(0.3, label="b")
            o = (x * w + b).sigmoid()
            X, W, B = sp.symbols("x w b")
            sg.check(o, wrt=[w, b], inputs=[x], backend="python", expected=sp.tanh(X * W + B))
    '''))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(test)], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(ROOT), "PATH": "", "SYMGRAD_CACHE": "0"},
                         timeout=600, check=False)
    out = res.stdout
    assert res.returncode == 1, out + res.stderr
    errors = [line for line in out.splitlines() if line.startswith("E ")]
    assert errors[0].startswith("E       symgrad.ModelMismatch: model mismatch"), out
    assert len(errors) <= 15
    assert "checking.py" not in out and "tiers.py" not in out and "def check(" not in out


def test_a_broken_hessian_batch_names_the_entry(monkeypatch) -> None:
    from symgrad.higher import Hessian

    real = Hessian.batch

    def wrong(self, params, X, reduce="sum"):
        values, grad, hess = real(self, params, X, reduce)
        if reduce == "none":
            _bump(hess, (2, 0, 1))
        return values, grad, hess

    monkeypatch.setattr(Hessian, "batch", wrong)
    o, wrt, inputs = neuron()
    with pytest.raises(sg.GradientMismatch) as info:
        sg.check(o, wrt=wrt, inputs=inputs, backend="python", order=2)
    head = str(info.value).splitlines()[0]
    assert head.startswith("hessian mismatch")
    assert "batch(reduce='none'), row 2, d2/d(w1)d(w2)" in head


def test_a_single_call_off_with_every_op_right_blames_the_combination(monkeypatch) -> None:
    # every op compiles right, and the IR computes the engine's numbers: what is left is how
    # the lowering combines them (simulated: the kernel's gradient is one ulp off)
    _sabotage(monkeypatch, "__call__", lambda result, *a, **k: _bump(result[1], (0,)))
    o, wrt, inputs = neuron()
    with pytest.raises(sg.GradientMismatch) as info:
        sg.check(o, wrt=wrt, inputs=inputs, backend="python")
    msg = str(info.value)
    assert msg.splitlines()[0].endswith("in single call, d/d(w1):")
    assert "the lowering combines them otherwise" in msg


def test_a_wrong_second_order_rule_is_caught_numerically_and_narrowed() -> None:
    step = ops.OPS["step"]
    good = step.vjp
    x, y = sg.Value(0.8, label="x"), sg.Value(0.6, label="y")
    f = (x * y).relu() * x
    object.__setattr__(step, "vjp", lambda ct, out, x: (ct,))
    try:
        sg.check(f, order=1, backend="python", method="numeric")  # first order: still right
        with pytest.raises(sg.GradientMismatch) as info:
            sg.check(f, order=2, backend="python", method="numeric")
    finally:
        object.__setattr__(step, "vjp", good)
    lines = str(info.value).splitlines()
    assert lines[0].startswith("hessian mismatch") and "numeric" in lines[0]
    assert any(re.search(r"narrowed to d2/d\(\w\)d\(\w\)", line) for line in lines)
    assert "step" in lines[-1]  # the rule that is wrong


@pytest.mark.slow
def test_check_times_benchmark_prints_its_table() -> None:
    """benchmarks/check_times.py (the README's table) runs and reports; times are not judged."""
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "check_times.py"),
                          "--models", "2x2,2x4", "--rounds", "1", "--symbolic"],
                         capture_output=True, text=True, cwd=ROOT, timeout=900, check=False)
    assert res.returncode == 0, res.stderr
    rows = [line for line in res.stdout.splitlines() if line.startswith("| MLP(")]
    assert [r.split(" | ")[3] for r in rows] == ["symbolic", "numeric", "symbolic (forced)"]
    assert rows[1].startswith("| MLP(2,[4,4,1]) | 37 | 67 | numeric | 4 x 2 | ")
