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
        if any(abs(x - k) < 1e-3 for x in xs for k in op.kinks):
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
    assert op.arity in (1, 2)
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
