"""The sympy bridge: `to_sympy`'s naming rules, and `check`, which must pass on correct graphs and
fail loudly, naming the culprit, when a derivative rule is wrong.

Oracles: hand-written sympy expressions; a derivative rule broken on purpose inside a test.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import sympy as sp
from hypothesis import given, note, reject, settings

import symgrad as sg
from symgrad import ops
from symgrad.checking import first_bad_rule
from symgrad.trace import trace
from tests.strategies import Case, programs, to_values


def _by_name(expr: sp.Expr) -> dict[str, sp.Symbol]:
    return {s.name: s for s in expr.free_symbols}


# ---- to_sympy naming -----------------------------------------------------------------------------


def test_labelled_leaf_becomes_a_symbol_named_after_its_label() -> None:
    a, b = sg.Value(2.0, label="a"), sg.Value(3.0, label="weight 1")
    expr = sg.to_sympy(a * b + a)
    syms = _by_name(expr)
    assert set(syms) == {"a", "weight 1"}
    assert sp.simplify(expr - (syms["a"] * syms["weight 1"] + syms["a"])) == 0


def test_literal_from_an_operator_becomes_the_number() -> None:
    a = sg.Value(2.0, label="a")
    expr = sg.to_sympy(2.0 * a + a * 0.5 - 3)
    (s,) = expr.free_symbols
    assert s.name == "a"
    assert sp.expand(expr - (sp.Rational(5, 2) * s - 3)) == 0
    assert float(expr.subs(s, 4)) == 7.0


def test_unlabelled_leaves_get_unique_generated_names() -> None:
    u, v = sg.Value(1.0), sg.Value(2.0)
    x0 = sg.Value(3.0, label="x0")  # a label shaped like a generated name
    expr = sg.to_sympy(u * v + x0 + u)
    syms = expr.free_symbols
    assert len(syms) == 3  # u, v and x0 stay three different symbols
    assert "x0" in {s.name for s in syms}
    # u appears twice as the same symbol: d/du = v + 1
    su = next(s for s in syms if s.name != "x0" and sp.diff(expr, s) != 1)
    assert sp.diff(expr, su).free_symbols and sp.diff(expr, su, 2) == 0


def test_a_frozen_unlabelled_leaf_is_a_symbol_not_a_number() -> None:
    c = sg.Value(0.25)  # made directly (not from a literal), so it gets a name
    expr = sg.to_sympy(c * 4.0)
    assert len(expr.free_symbols) == 1


def test_clashing_labels_are_made_unique() -> None:
    a1, a2 = sg.Value(1.0, label="a"), sg.Value(2.0, label="a")
    a3 = sg.Value(5.0, label="a_2")  # the suffix the first clash would get
    expr = sg.to_sympy(a1 * a2 + a3)
    names = sorted(s.name for s in expr.free_symbols)
    assert len(names) == 3 and "a" in names and "a_2" in names
    assert expr != 2 * sp.Symbol("a")  # never merged into one symbol


def test_to_sympy_of_a_list_gives_a_list() -> None:
    x = sg.Value(1.0, label="x")
    exprs = sg.to_sympy([x.tanh(), x.exp()])
    (s,) = exprs[0].free_symbols
    assert exprs == [sp.tanh(s), sp.exp(s)]


def test_relu_derivative_at_zero_is_zero_in_sympy() -> None:
    x = sg.Value(0.0, label="x")
    expr = sg.to_sympy(x.relu())
    (s,) = expr.free_symbols
    d = sp.diff(expr, s)
    assert d.subs(s, 0) == 0  # micrograd's convention, not Heaviside(0) = 1/2
    assert d.subs(s, sp.Rational(1, 10**9)) == 1 and d.subs(s, -1) == 0


# ---- check passes on correct graphs --------------------------------------------------------------


def neuron() -> tuple[sg.Value, list[sg.Value], list[sg.Value]]:
    x1, x2 = sg.Value(2.0, label="x1"), sg.Value(0.0, label="x2")
    w1, w2 = sg.Value(-3.0, label="w1"), sg.Value(1.0, label="w2")
    b = sg.Value(6.8813735870195432, label="b")
    n = x1 * w1 + x2 * w2 + b
    return n.tanh(), [w1, w2, b], [x1, x2]


@pytest.mark.parametrize("backend", ["python", "numba"])
def test_check_passes_on_the_lecture_neuron(backend: str) -> None:
    o, wrt, inputs = neuron()
    result = sg.check(o, wrt=wrt, inputs=inputs, backend=backend)
    assert isinstance(result, sg.CheckResult)
    assert result.compared >= 3 and len(result.points) >= 1
    assert result.max_rel_error < 1e-12


def test_check_passes_with_hostile_labels_and_several_outputs() -> None:
    a, b = sg.Value(0.7, label="lambda"), sg.Value(-1.2, label='x"); import os #')
    c = sg.Value(0.3, label="a a")
    outs = [(a * b + c).sigmoid(), (a - c).exp() * b]
    result = sg.check(outs, wrt=[a, b], inputs=[c], backend="python")
    assert result.compared == 2 * 2 * len(result.points)


# relu and step make sympy gradients with zoo in their 0 branches, which check must cope with
# (see test_check_handles_zoo_in_an_untaken_branch below)
@settings(max_examples=max(5, settings.default.max_examples // 5))
@given(programs(max_ops=5))
def test_check_passes_on_random_programs(case: Case) -> None:
    note(str(case))
    leaves, outs, _ = to_values(case.program, case.inputs)
    try:
        sg.check(outs[0], wrt=leaves, backend="python", points=2)
    except TypeError as e:
        # sympy compares the value of a branch no point takes (log of where's other operand,
        # of relu's 0) with 0 and refuses: a limitation of the oracle, not of the code
        if "Invalid comparison" not in str(e):
            raise
        reject()


# ---- check fails, naming the op, when a rule is wrong --------------------------------------------


@pytest.fixture
def broken_tanh(monkeypatch: pytest.MonkeyPatch) -> None:
    """tanh' = 1 - out instead of 1 - out**2, in the table and in the engine, for one test.

    Value.tanh reads `ops.TANH` and the IR looks ops up by name in `ops.OPS`: patch both (the
    graph must be built after this fixture); monkeypatch puts the original back afterwards.
    """
    wrong = dataclasses.replace(ops.TANH, vjp=lambda ct, out, x: ((1.0 - out) * ct,))
    monkeypatch.setitem(ops.OPS, "tanh", wrong)
    monkeypatch.setattr(ops, "TANH", wrong)


def test_check_reports_a_wrong_rule(broken_tanh: None) -> None:
    o, wrt, inputs = neuron()
    with pytest.raises(sg.GradientMismatch) as info:
        sg.check(o, wrt=wrt, inputs=inputs, backend="python")
    msg = str(info.value)
    assert isinstance(info.value, AssertionError)
    note = msg.splitlines()
    # the parameter, then the three numbers: compiled and interpreted share the wrong rule
    assert "w1" in note[0]
    nums = {
        k: float(re.search(rf"{k}\s+(\S+)", msg).group(1))  # type: ignore[union-attr]
        for k in ("compiled", "interpreted", "sympy")
    }
    o_val = 1 / math.sqrt(2)
    assert nums["compiled"] == pytest.approx((1 - o_val) * 2.0, rel=1e-9)  # x1 * (1 - o)
    assert nums["interpreted"] == pytest.approx((1 - o_val) * 2.0, rel=1e-9)
    assert nums["sympy"] == pytest.approx(1.0, rel=1e-9)  # x1 * (1 - o**2)
    # and the culprit: the tanh instruction, with the rule's and sympy's local derivatives
    assert "tanh" in msg
    culprit = next(line for line in note if "tanh(" in line)
    rule, want = (float(x.rstrip(",")) for x in re.findall(r"gives (\S+)", culprit))
    assert rule == pytest.approx(1 - o_val, rel=1e-12)  # the broken 1 - o
    assert want == pytest.approx(0.5, rel=1e-12)  # sympy's 1 - o**2


def test_first_bad_rule_names_the_instruction(broken_tanh: None) -> None:
    o, wrt, inputs = neuron()
    func = trace(o, wrt, inputs).func
    args = [v.data for v in wrt + inputs]
    text = first_bad_rule(func, args)
    assert text.startswith("v4 = tanh(v3)"), text
    assert "'tanh'" in text


def test_first_bad_rule_is_silent_on_correct_rules() -> None:
    o, wrt, inputs = neuron()
    func = trace(o, wrt, inputs).func
    assert first_bad_rule(func, [v.data for v in wrt + inputs]) == ""


def test_gradient_mismatch_is_an_assertion_error() -> None:
    assert issubclass(sg.GradientMismatch, AssertionError)


# ---- sympy expressions check cannot print --------------------------------------------------------


def test_check_handles_zoo_in_an_untaken_branch() -> None:
    x = sg.Value(2.0, label="x")
    sg.check(x.relu().log(), wrt=[x], backend="python")
