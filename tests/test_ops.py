"""The op table, entry by entry, against sympy and against itself.

Every stage reads `symgrad.ops.OPS`, so each entry is checked on its own here: the numeric rule
(`impl`) against the entry's sympy counterpart, the derivative rule (`vjp`) against `sympy.diff`
of that counterpart, the source template against `impl`, and `impl` and `vjp` on IEEE special
values (never an exception). Sample points lie inside each op's domain and away from its kinks;
the kink conventions are pinned separately.
"""

from __future__ import annotations

import itertools
import math
import string

import numpy as np
import pytest
import sympy as sp

from symgrad.jit import template_globals
from symgrad.ops import OPS, OpDef
from tests.strategies import POW_EXPONENTS, same_float

ALL_OPS = [OPS[k] for k in sorted(OPS)]
SPECIAL = (0.0, -0.0, math.inf, -math.inf, math.nan, 1e308, -1e308)
# interior sample points; pow also gets exponents outside the strategies' set
SAMPLES = (-2.3, -0.7, -0.1, 0.4, 1.3, 2.9)
POS_SAMPLES = (0.3, 0.9, 1.7, 2.9, 7.5)
PARAM_VALUES = {"p": (*POW_EXPONENTS, -2.0, 1.5, -0.5, 2.5)}


def _param_sets(op: OpDef) -> list[dict[str, float]]:
    if not op.params:
        return [{}]
    grids = [PARAM_VALUES.get(p, (2.0, -1.0, 0.5)) for p in op.params]
    return [dict(zip(op.params, combo, strict=True)) for combo in itertools.product(*grids)]


def _points(op: OpDef, params: dict[str, float]) -> list[tuple[float, ...]]:
    """Operand tuples strictly inside the domain, off kinks, and off div's and pow's poles."""
    lo, hi = op.domain
    fractional = any(not float(v).is_integer() for v in params.values())
    base = POS_SAMPLES if (lo >= 0.0 or fractional) else SAMPLES
    pts = []
    for xs in itertools.product(base, repeat=op.arity):
        if any(not (lo < x < hi) for x in xs):
            continue
        if any(abs(d) < 1e-3 for d in op.kink_offsets(*xs)):
            continue
        if op.name == "div" and abs(xs[1]) < 0.2:
            continue
        pts.append(xs)
    assert pts, f"no sample points for {op.name}"
    return pts


def _sym_args(op: OpDef) -> list[sp.Symbol]:
    return list(sp.symbols(f"a0:{op.arity}", real=True))


def _exact(x: float) -> sp.Rational:
    return sp.Rational(x)  # the double's exact value: evalf then has all the digits it wants


def _sym_eval(expr: sp.Expr, syms: list[sp.Symbol], xs: tuple[float, ...]) -> float:
    val = expr.subs({s: _exact(x) for s, x in zip(syms, xs, strict=True)}).evalf(40)
    return float(val)


def _ids(op: OpDef) -> str:
    return op.name


# ---- the table itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("op", ALL_OPS, ids=_ids)
def test_entry_is_complete(op: OpDef) -> None:
    assert OPS[op.name] is op
    assert op.arity in (1, 2, 3)
    assert isinstance(op.symbol, str) and op.symbol
    lo, hi = op.domain
    assert lo < hi
    assert all(lo <= k <= hi for k in op.kinks)
    assert not op.commutative or op.arity == 2
    # the sympy counterpart builds an expression of the right symbols
    syms = _sym_args(op)
    for params in _param_sets(op):
        expr = sp.sympify(op.sympy(sp, *syms, **params))
        assert expr.free_symbols <= set(syms)


@pytest.mark.parametrize("op", ALL_OPS, ids=_ids)
def test_template_has_the_right_placeholders(op: OpDef) -> None:
    fields = [f for _, f, _, _ in string.Formatter().parse(op.py) if f is not None]
    positional = {f for f in fields if f.isdigit()}
    named = {f for f in fields if not f.isdigit()}
    assert positional == {str(i) for i in range(op.arity)}, op.py
    assert named == set(op.params), op.py


# ---- impl vs sympy, vjp vs sympy.diff ------------------------------------------------------------


@pytest.mark.parametrize("op", ALL_OPS, ids=_ids)
def test_impl_matches_sympy_counterpart(op: OpDef) -> None:
    syms = _sym_args(op)
    for params in _param_sets(op):
        expr = op.sympy(sp, *syms, **params)
        for xs in _points(op, params):
            want = _sym_eval(sp.sympify(expr), syms, xs)
            got = op.impl(*xs, **params)
            assert got == pytest.approx(want, rel=1e-14, abs=1e-300), (op.name, xs, params)


@pytest.mark.parametrize("op", ALL_OPS, ids=_ids)
def test_vjp_matches_sympy_diff(op: OpDef) -> None:
    syms = _sym_args(op)
    for params in _param_sets(op):
        expr = sp.sympify(op.sympy(sp, *syms, **params))
        derivs = [sp.diff(expr, s) for s in syms]
        for xs in _points(op, params):
            out = op.impl(*xs, **params)
            rule = op.vjp(1.0, out, *xs, **params)
            assert len(rule) == op.arity
            for i, (r, d) in enumerate(zip(rule, derivs, strict=True)):
                want = _sym_eval(d, syms, xs)
                got = 0.0 if r is None else r
                assert isinstance(got, float), (op.name, type(got))
                assert got == pytest.approx(want, rel=1e-12, abs=1e-300), (op.name, i, xs, params)


@pytest.mark.parametrize("op", ALL_OPS, ids=_ids)
def test_vjp_is_linear_in_the_cotangent(op: OpDef) -> None:
    # scaling by -1 or a power of two is exact in floating point, and a vjp is linear in ct,
    # so any rule of the form ct * (...) or (...) / ... scales bit for bit; a rule that ignores
    # ct (or adds to it) does not
    for params in _param_sets(op):
        for xs in _points(op, params):
            out = op.impl(*xs, **params)
            base = op.vjp(1.0, out, *xs, **params)
            for ct in (2.0, -1.0, 0.25):
                scaled = op.vjp(ct, out, *xs, **params)
                for b, s in zip(base, scaled, strict=True):
                    if b is None:
                        assert s is None
                    elif b == 0.0 == s:
                        # a selecting rule (where, max) gives the operand it does not select a
                        # literal 0.0, whatever ct is: a zero's sign does not scale
                        pass
                    else:
                        assert same_float(s, ct * b), (op.name, ct, xs, params)


@pytest.mark.parametrize("op", [op for op in ALL_OPS if op.commutative], ids=_ids)
def test_commutative_ops_commute(op: OpDef) -> None:
    for x, y in itertools.product((*SAMPLES, *SPECIAL), repeat=2):
        assert same_float(op.impl(x, y), op.impl(y, x)), (x, y)


# ---- the source template -------------------------------------------------------------------------


def _run_template(op: OpDef, xs: tuple[float, ...], params: dict[str, float]) -> float:
    names = [f"a{i}" for i in range(op.arity)]
    from symgrad.ops import format_literal

    src = op.py.format(*names, **{k: format_literal(v) for k, v in params.items()})
    env = {n: np.float64(x) for n, x in zip(names, xs, strict=True)}
    with np.errstate(all="ignore"):
        # pow_libm in plain Python is the rule itself; Numba's is tested in test_vecmath.py and
        # through the backends in test_lowering.py
        namespace = {"np": np, "math": math, **template_globals(numba=False)}
        return float(eval(src, namespace, env))


@pytest.mark.parametrize("op", ALL_OPS, ids=_ids)
def test_template_matches_impl(op: OpDef) -> None:
    for params in _param_sets(op):
        for xs in _points(op, params):
            want = op.impl(*xs, **params)
            got = _run_template(op, xs, params)
            ok = same_float(got, want) or got == pytest.approx(want, rel=1e-15, abs=0.0)
            assert ok, (op.name, xs, got, want)


@pytest.mark.parametrize("op", ALL_OPS, ids=_ids)
def test_template_matches_impl_on_special_values(op: OpDef) -> None:
    # IEEE rules the same way in both: nan where impl gives nan, the same inf, the same zero sign
    for params in _param_sets(op):
        for xs in itertools.product(SPECIAL, repeat=op.arity):
            if _pow_overflow_bug(op, xs, params):
                continue  # pinned by test_pow_of_negative_base_that_overflows_is_nan
            want = op.impl(*xs, **params)
            got = _run_template(op, xs, params)
            assert same_float(got, want), (op.name, xs, params, got, want)


def _pow_overflow_bug(op: OpDef, xs: tuple[float, ...], params: dict[str, float]) -> bool:
    return op.name == "pow" and xs[0] == -1e308 and not float(params["p"]).is_integer()


def test_pow_of_negative_base_that_overflows_is_nan() -> None:
    # numpy, numba (the compiled code) and C's pow all say nan; the interpreter must agree
    for x, p in ((-1e308, 1.5), (-1e308, 2.5), (-1e200, 2.5)):
        with np.errstate(all="ignore"):
            assert math.isnan(float(np.float64(x) ** p))
        assert math.isnan(OPS["pow"].impl(x, p=p)), (x, p)


# ---- special values never raise ------------------------------------------------------------------


@pytest.mark.parametrize("op", ALL_OPS, ids=_ids)
def test_impl_and_vjp_never_raise_on_special_values(op: OpDef) -> None:
    values = (*SPECIAL, 1.0, -2.5)
    for params in _param_sets(op):
        for xs in itertools.product(values, repeat=op.arity):
            out = op.impl(*xs, **params)
            assert isinstance(out, float), (op.name, xs, type(out))
            for ct in (1.0, 0.0, -0.0, math.inf, math.nan):
                rule = op.vjp(ct, out, *xs, **params)
                assert len(rule) == op.arity
                for r in rule:
                    assert r is None or isinstance(r, float), (op.name, xs, ct, r)


# ---- kink conventions ----------------------------------------------------------------------------


def test_relu_derivative_at_zero_is_zero() -> None:
    relu = OPS["relu"]
    for zero in (0.0, -0.0):
        (g,) = relu.vjp(1.0, relu.impl(zero), zero)
        assert g == 0.0, zero
    # and one ulp either side: the convention is at the kink only
    assert relu.vjp(1.0, 5e-324, 5e-324) == (1.0,)
    assert relu.vjp(1.0, relu.impl(-5e-324), -5e-324) == (0.0,)


def test_step_has_no_derivative() -> None:
    step = OPS["step"]
    for x in (-1.0, 0.0, 2.0):
        assert step.vjp(1.0, step.impl(x), x) == (None,)
    assert (step.impl(0.0), step.impl(-0.0), step.impl(1e-300)) == (0.0, 0.0, 1.0)


def test_abs_derivative_at_zero_is_zero_and_follows_the_sign_elsewhere() -> None:
    abs_ = OPS["abs"]
    for zero in (0.0, -0.0):
        (g,) = abs_.vjp(1.0, abs_.impl(zero), zero)
        assert g == 0.0, zero
    assert abs_.impl(-0.0) == 0.0 and math.copysign(1.0, abs_.impl(-0.0)) == 1.0
    assert abs_.vjp(1.0, 5e-324, 5e-324) == (1.0,)
    assert abs_.vjp(1.0, 5e-324, -5e-324) == (-1.0,)
    # nan in, nan derivative out: sign(nan) is nan
    assert all(math.isnan(v) for v in (abs_.impl(math.nan), abs_.vjp(1.0, math.nan, math.nan)[0]))


def test_sqrt_derivative_at_zero_is_the_one_sided_limit() -> None:
    sqrt = OPS["sqrt"]
    assert sqrt.vjp(1.0, 0.0, 0.0) == (math.inf,)
    # IEEE: sqrt(-0.0) is -0.0, and 1 / (2 * -0.0) is -inf (PyTorch and JAX give the same)
    assert same_float(sqrt.impl(-0.0), -0.0)
    assert sqrt.vjp(1.0, -0.0, -0.0) == (-math.inf,)
    assert math.isnan(sqrt.impl(-1e-300)) and math.isnan(sqrt.impl(-math.inf))
    assert sqrt.impl(math.inf) == math.inf and sqrt.vjp(1.0, math.inf, math.inf) == (0.0,)
    # and sympy's derivative tends to +inf there
    x = sp.Symbol("x", positive=True)
    assert sp.limit(sp.diff(sp.sqrt(x), x), x, 0, "+") == sp.oo


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_max_and_min_give_ties_to_the_first_operand(name: str) -> None:
    op = OPS[name]
    for x in (2.0, -1.5, 0.0, math.inf):
        assert op.vjp(1.0, op.impl(x, x), x, x) == (1.0, 0.0), x
    # the value at a tie is the first operand too: the sign of a zero shows it
    assert same_float(op.impl(-0.0, 0.0), -0.0) and same_float(op.impl(0.0, -0.0), 0.0)
    # off the tie, the chosen operand gets the whole derivative, as sympy's Heaviside says
    big, small = (3.0, -1.0) if name == "maximum" else (-1.0, 3.0)
    assert op.vjp(1.0, big, big, small) == (1.0, 0.0)
    assert op.vjp(1.0, big, small, big) == (0.0, 1.0)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_max_and_min_propagate_nan(name: str) -> None:
    op = OPS[name]
    for xs in ((math.nan, 1.0), (1.0, math.nan), (math.nan, math.nan), (math.nan, math.inf)):
        assert math.isnan(op.impl(*xs)), xs
        # the value is nan; the derivative goes to the first operand (documented)
        assert op.vjp(1.0, math.nan, *xs) == (1.0, 0.0), xs
    ref = np.maximum if name == "maximum" else np.minimum
    for x, y in itertools.product((*SPECIAL, 1.0, -2.0), repeat=2):
        # numpy's rule, value for value (ties: numpy's scalar loop keeps the first operand)
        assert same_float(op.impl(x, y), float(ref(np.float64(x), np.float64(y)))) or (
            x == y == 0.0), (x, y)


@pytest.mark.parametrize("name", ["lt", "le", "gt", "ge"])
def test_comparisons_are_conditions_with_zero_derivative(name: str) -> None:
    import operator

    op = OPS[name]
    ref = getattr(operator, name)
    values = (*SPECIAL, 1.0, -2.0, 5e-324)
    for x, y in itertools.product(values, repeat=2):
        assert op.impl(x, y) == (1.0 if ref(x, y) else 0.0), (x, y)  # nan compares false
        assert op.vjp(1.0, op.impl(x, y), x, y) == (None, None)
    # sympy agrees at the kink too (x == y): Piecewise((1, x < y), (0, True)) is 0 there
    a, b = sp.symbols("a b", real=True)
    for x, y in ((1.0, 1.0), (0.5, 2.0), (2.0, 0.5)):
        want = op.sympy(sp, a, b).subs({a: x, b: y})
        assert op.impl(x, y) == float(want), (x, y)


def test_where_selects_and_gives_the_cotangent_to_the_chosen_operand_only() -> None:
    where = OPS["where"]
    assert where.impl(1.0, 2.0, 3.0) == 2.0 and where.impl(0.0, 2.0, 3.0) == 3.0
    assert where.impl(-0.0, 2.0, 3.0) == 3.0  # -0.0 is false, as 0.0
    assert where.impl(math.nan, 2.0, 3.0) == 2.0  # nan is true, as bool(nan)
    assert where.impl(-2.5, 2.0, 3.0) == 2.0  # any nonzero number is true
    assert where.vjp(5.0, 2.0, 1.0, 2.0, 3.0) == (None, 5.0, 0.0)
    assert where.vjp(5.0, 3.0, 0.0, 2.0, 3.0) == (None, 0.0, 5.0)
    # the unchosen operand's nan never leaks into the value
    assert where.impl(1.0, 2.0, math.nan) == 2.0
    # sympy agrees on both branches, value and derivative
    c, x, y = sp.symbols("c x y", real=True)
    expr = where.sympy(sp, c, x, y)
    for cv in (0.0, 1.0, -3.0):
        pt = {c: cv, x: 2.0, y: 3.0}
        assert where.impl(cv, 2.0, 3.0) == float(expr.subs(pt))
        rule = where.vjp(1.0, 0.0, cv, 2.0, 3.0)
        assert [float(sp.diff(expr, s).subs(pt)) for s in (x, y)] == list(rule[1:])


def test_where_of_a_comparison_exports_its_relation() -> None:
    # where(lt(a, b), x, y) becomes Piecewise((x, a < b), (y, True)), not a nested Piecewise
    a, b, x, y = sp.symbols("a b x y", real=True)
    cond = OPS["lt"].sympy(sp, a, b)
    assert OPS["where"].sympy(sp, cond, x, y) == sp.Piecewise((x, a < b), (y, True))
    assert OPS["where"].sympy(sp, a, x, y) == sp.Piecewise((x, sp.Ne(a, 0)), (y, True))
