"""The optimisation passes: what each one does to a small function, and that none changes a result.

Each pass must compute bit for bit what its input computed under IEEE rules, nan, inf and -0.0
included (every nan counts as equal to every other: IEEE leaves the sign of a nan unspecified).
That rules out the tempting rewrites ``x + 0.0 -> x`` (wrong for x = -0.0) and ``x * 0 -> 0``
(wrong for inf and nan), which are pinned below as NOT done.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from symgrad import autodiff, ir, passes
from symgrad.ir import Builder, Const, Func
from symgrad.ops import OPS
from tests.strategies import Case, programs, same_float, to_ir

PASSES = {"fold": passes.fold, "simplify": passes.simplify, "cse": passes.cse, "dce": passes.dce}


def _check_same(before: Func, after: Func, args: list[float]) -> None:
    want = ir.evaluate(before, args)
    got = ir.evaluate(after, args)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        assert same_float(g, w), (
            f"result {k}: {g!r} != {w!r} at {args}\n{before}\n-- after --\n{after}"
        )


# ---- before / after, one pass at a time ----------------------------------------------------------


def test_fold() -> None:
    b = Builder()
    x = b.arg("x")
    t = b.emit("tanh", [b.emit("add", [2.0, 3.0])])
    xt = b.emit("mul", [x, t])
    y = b.emit("sub", [xt, b.emit("neg", [0.0])])
    nan = b.emit("mul", [b.emit("div", [1.0, 0.0]), 0.0])  # inf * 0
    f = b.build("g", [y, nan])
    assert str(f) == """\
g(x):
  v0 = add(2.0, 3.0)
  v1 = tanh(v0)
  v2 = mul(x, v1)
  v3 = neg(0.0)
  v4 = sub(v2, v3)
  v5 = div(1.0, 0.0)
  v6 = mul(v5, 0.0)
  return v4, v6"""
    # folded with each op's impl: tanh(5.0) as math.tanh gives it, -(0.0) is -0.0, inf * 0 is nan
    assert str(passes.fold(f)) == f"""\
g(x):
  v0 = mul(x, {math.tanh(5.0)!r})
  v1 = sub(v0, (-0.0))
  return v1, np.nan"""


@pytest.mark.parametrize("op", sorted(OPS))
def test_fold_equals_impl_on_special_values(op: str) -> None:
    d = OPS[op]
    specials = (0.0, -0.0, math.inf, -math.inf, math.nan, 1e308, -1e308, 2.5, -0.5)
    params = (2.0,) if d.params else ()
    for args in itertools.product(specials, repeat=d.arity):
        b = Builder()
        b.arg("unused")
        f = passes.fold(b.build("g", [b.emit(op, list(args), params)]))
        assert f.body == ()
        (r,) = f.results
        assert isinstance(r, Const)
        want = d.impl(*args, **dict(zip(d.params, params, strict=True)))
        assert same_float(r.value, want), (op, args)


def test_simplify() -> None:
    b = Builder()
    x, y = b.arg("x"), b.arg("y")
    a = b.emit("mul", [x, 1.0])  # -> x
    a = b.emit("mul", [-1.0, a])  # -> neg(x)
    a = b.emit("div", [a, 1.0])  # -> a
    a = b.emit("add", [a, -0.0])  # -> a
    a = b.emit("sub", [a, 0.0])  # -> a
    a = b.emit("pow", [a], [1.0])  # -> a
    a = b.emit("neg", [a])  # -(-x) -> x
    ny = b.emit("neg", [y])
    a = b.emit("add", [a, ny])  # x + (-y) -> x - y
    a = b.emit("sub", [a, ny])  # (x - y) - (-y) -> (x - y) + y, not x
    m = b.emit("mul", [ny, b.emit("neg", [x])])  # (-y) * (-x) -> y * x
    f = b.build("g", [a, m])
    assert str(f) == """\
g(x, y):
  v0 = mul(x, 1.0)
  v1 = mul((-1.0), v0)
  v2 = div(v1, 1.0)
  v3 = add(v2, (-0.0))
  v4 = sub(v3, 0.0)
  v5 = pow(v4, p=1.0)
  v6 = neg(v5)
  v7 = neg(y)
  v8 = add(v6, v7)
  v9 = sub(v8, v7)
  v10 = neg(x)
  v11 = mul(v7, v10)
  return v9, v11"""
    # the negations it went through are left for dce
    assert str(passes.simplify(f)) == """\
g(x, y):
  v0 = neg(x)
  v1 = neg(y)
  v2 = sub(x, y)
  v3 = add(v2, y)
  v4 = neg(x)
  v5 = mul(y, x)
  return v3, v5"""


def test_simplify_leaves_inexact_identities_alone() -> None:
    b = Builder()
    x = b.arg("x")
    rs = [
        b.emit("add", [x, 0.0]),  # -0.0 + 0.0 is 0.0, not -0.0
        b.emit("add", [0.0, x]),
        b.emit("mul", [x, 0.0]),  # inf * 0 is nan
        b.emit("mul", [0.0, x]),
        b.emit("sub", [x, x]),  # inf - inf is nan
        b.emit("div", [x, x]),  # 0 / 0 is nan
        b.emit("sub", [x, -0.0]),  # -0.0 - -0.0 is 0.0
        b.emit("pow", [x], [0.0]),
    ]
    f = b.build("g", rs)
    assert str(passes.simplify(f)) == str(f)
    for bad in (-0.0, math.inf, -math.inf, math.nan, 0.0):
        _check_same(f, passes.optimize(f)[0], [bad])


# ---- the rules table -----------------------------------------------------------------------------


def _agree(f: Func, g: Func, args: list[float]) -> bool:
    return all(same_float(a, b) for a, b in
               zip(ir.evaluate(f, args), ir.evaluate(g, args), strict=True))


SPECIALS = [0.0, -0.0, math.inf, -math.inf, math.nan, 1.0, -1.0, 5e-324, 1.7976931348623157e308]


@pytest.mark.parametrize("rule", passes.SIMPLIFY_RULES, ids=str)
@given(data=st.data())
def test_every_rule_is_exact_for_every_float(rule: passes.Rule, data: st.DataObject) -> None:
    # pattern and replacement evaluated with the op table's impl, on any floats at all (the
    # special values mixed in, so that each example run meets them)
    pattern, replacement = rule.as_funcs()
    floats = st.floats() | st.sampled_from(SPECIALS)
    args = data.draw(st.lists(floats, min_size=len(pattern.args), max_size=len(pattern.args)))
    assert _agree(pattern, replacement, args), f"{rule} at {args}: {rule.why}"


@pytest.mark.parametrize("rule", passes.SIMPLIFY_RULES, ids=str)
def test_every_rule_is_exact_at_the_special_values(rule: passes.Rule) -> None:
    pattern, replacement = rule.as_funcs()
    for args in itertools.product(SPECIALS, repeat=len(pattern.args)):
        assert _agree(pattern, replacement, list(args)), f"{rule} at {args}"


@pytest.mark.parametrize("rule", passes.SIMPLIFY_RULES, ids=str)
def test_every_rule_fires_and_gives_its_replacement(rule: passes.Rule) -> None:
    # the matcher reads the row as written, in both operand orders for a commutative op
    pattern, replacement = rule.as_funcs()
    assert str(passes.dce(passes.simplify(pattern))).splitlines()[1:] == \
        str(replacement).splitlines()[1:]
    (ins,) = [i for i in pattern.body if i.out == pattern.results[0]]
    if ins.opdef.commutative:
        b = Builder()
        args = [b.arg(a.hint) for a in pattern.args]
        env = dict(zip(pattern.args, args, strict=True))
        for i in pattern.body:
            ops_ = [env.get(a, a) for a in i.args]
            env[i.out] = b.emit(i.op, ops_[::-1] if i is ins else ops_, i.params)
        mirrored = b.build("pattern", [env[ins.out]])
        assert len(passes.dce(passes.simplify(mirrored)).body) == len(replacement.body), rule


@pytest.mark.parametrize("rule", passes.NOT_SIMPLIFIED, ids=str)
def test_every_left_out_identity_is_wrong_somewhere_and_left_alone(rule: passes.Rule) -> None:
    pattern, replacement = rule.as_funcs()
    wrong = [a for a in SPECIALS if not _agree(pattern, replacement, [a])]
    assert wrong, f"{rule} holds at every special value; why was it left out? ({rule.why})"
    assert str(passes.simplify(pattern)) == str(pattern)


def test_the_rules_table_rejects_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="cannot read"):
        passes.Rule("x @ y", "x", "").as_funcs()
    with pytest.raises(ValueError, match="cannot read"):
        passes.Rule("x ** y", "x", "").as_funcs()


def test_x_plus_zero_is_not_x() -> None:
    # the reason for the rule above, in numbers
    b = Builder()
    x = b.arg("x")
    f = b.build("g", [b.emit("add", [x, 0.0]), b.emit("mul", [x, 0.0])])
    opt, _ = passes.optimize(f)
    assert len(opt.body) == 2
    at_minus_zero = ir.evaluate(opt, [-0.0])
    assert same_float(at_minus_zero[0], 0.0) and same_float(at_minus_zero[1], -0.0)
    inf_plus_0, inf_times_0 = ir.evaluate(opt, [math.inf])
    assert inf_plus_0 == math.inf and math.isnan(inf_times_0)


def test_cse() -> None:
    b = Builder()
    x, y = b.arg("x"), b.arg("y")
    t1 = b.emit("tanh", [b.emit("mul", [x, y])])
    t2 = b.emit("tanh", [b.emit("mul", [y, x])])  # commutative: the same as t1
    rs = [
        b.emit("add", [t1, t2]),
        b.emit("sub", [x, y]),
        b.emit("sub", [y, x]),  # not commutative: kept
        b.emit("add", [x, 0.0]),
        b.emit("add", [x, -0.0]),  # a different literal: kept
        b.emit("pow", [x], [2.0]),
        b.emit("pow", [x], [3.0]),  # a different parameter: kept
        b.emit("pow", [x], [2.0]),  # the same as the first pow
    ]
    f = b.build("g", rs)
    assert str(passes.cse(f)) == """\
g(x, y):
  v0 = mul(x, y)
  v1 = tanh(v0)
  v2 = add(v1, v1)
  v3 = sub(x, y)
  v4 = sub(y, x)
  v5 = add(x, 0.0)
  v6 = add(x, (-0.0))
  v7 = pow(x, p=2.0)
  v8 = pow(x, p=3.0)
  return v2, v3, v4, v5, v6, v7, v8, v7"""


def test_cse_keeps_nan_literals_together() -> None:
    # Const equality is bitwise, so nan == nan and two nan-literal adds are one instruction
    b = Builder()
    x = b.arg("x")
    f = b.build("g", [b.emit("add", [x, math.nan]), b.emit("add", [x, math.nan])])
    assert len(passes.cse(f).body) == 1


def test_dce() -> None:
    b = Builder()
    x, y = b.arg("x"), b.arg("y")
    b.emit("log", [b.emit("exp", [y])])  # dead
    w = b.emit("mul", [b.emit("tanh", [x]), x])
    f = b.build("g", [w, x, Const(2.0)])
    assert str(passes.dce(f)) == """\
g(x, y):
  v0 = tanh(x)
  v1 = mul(v0, x)
  return v1, x, 2.0"""


def test_optimize_reports_each_pass() -> None:
    b = Builder()
    x = b.arg("x")
    f = b.build("g", [b.emit("mul", [b.emit("add", [1.0, 1.0]), x])])
    opt, log = passes.optimize(f)
    assert [name for name, _, _ in log[:4]] == ["fold", "simplify", "cse", "dce"]
    assert all(n >= 0 and sec >= 0.0 for _, n, sec in log)
    assert str(opt) == "g(x):\n  v0 = mul(2.0, x)\n  return v0"


# ---- every pass preserves results, on random programs and any floats -----------------------------


def _grad_ir(case: Case) -> Func:
    func = to_ir(case.program)
    return autodiff.value_and_grad(func, case.program.n_inputs)


raw_cases = programs(safe=False, max_ops=10, n_outputs=2)


@given(raw_cases, st.data())
def test_each_pass_preserves_results(case: Case, data: st.DataObject) -> None:
    note(str(case))
    for func in (to_ir(case.program), _grad_ir(case)):
        for name, p in PASSES.items():
            after = ir.verify(p(func))
            assert len(after.body) <= len(func.body), name
            _check_same(func, after, list(case.inputs))
            # and at special points, independent of the drawn ones
            special = data.draw(
                st.lists(st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 1e308]),
                         min_size=len(func.args), max_size=len(func.args))
            )
            _check_same(func, after, special)


@given(raw_cases)
def test_optimize_preserves_results_and_is_idempotent(case: Case) -> None:
    note(str(case))
    func = _grad_ir(case)
    opt, _ = passes.optimize(func)
    ir.verify(opt)
    _check_same(func, opt, list(case.inputs))
    again, _ = passes.optimize(opt)
    assert str(again) == str(opt)


@given(programs(safe=False, max_ops=6, leaf_values=st.floats()))
def test_fold_of_a_fully_constant_program_equals_evaluate(case: Case) -> None:
    # substitute the leaves as literals: fold must compute every value with impl, bit for bit
    note(str(case))
    func = to_ir(case.program)
    b = Builder(fold=False)
    env = {a: Const(x) for a, x in zip(func.args, case.inputs, strict=True)}
    for ins in func.body:
        env[ins.out] = b.emit(ins.op, [env.get(a, a) for a in ins.args], ins.params)
    closed = b.build("g", [env.get(r, r) for r in func.results])
    folded = passes.fold(closed)
    assert folded.body == ()
    want = ir.evaluate(func, list(case.inputs))
    for r, w in zip(folded.results, want, strict=True):
        assert isinstance(r, Const)
        assert same_float(r.value, w)
