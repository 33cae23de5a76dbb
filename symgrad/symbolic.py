"""The sympy bridge: Value graphs as sympy expressions, and `check`, the one-line gradient test.

Imports `engine`, `ir`, `trace`, `compiled`; the only library module that imports sympy (lazily).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .engine import Value, topological_order
from .ir import Const, Func, instr_text, names
from .ops import OPS
from .trace import as_outputs

__all__ = ["CheckResult", "GradientMismatch", "check", "to_sympy"]


def _sympy() -> Any:
    import sympy

    return sympy


def _number(sp: Any, x: float) -> Any:
    if math.isfinite(x) and x.is_integer():
        return sp.Integer(int(x))
    if math.isnan(x):
        return sp.nan
    if math.isinf(x):
        return sp.oo if x > 0 else -sp.oo
    return sp.Float(x)  # the exact binary value of the double


def leaf_symbols(outputs: Iterable[Value], extra: Sequence[Value] = ()) -> dict[int, Any]:
    """A sympy Symbol for every non-literal leaf, by ``id``: named after labels, made unique.

    Labelled leaves get their label (a clash gets ``_2``, ``_3``...); unlabelled ones ``x0``,
    ``x1``...; leaves made from Python numbers by an operator get no symbol (they are numbers).
    `extra` leaves (e.g. ``wrt`` leaves absent from the graph) get symbols too.
    """
    sp = _sympy()
    leaves = [v for v in topological_order(outputs) if not v._prev and not v._lit]
    seen = {id(v) for v in leaves}
    leaves += [v for v in extra if id(v) not in seen and not v._prev]
    taken = {v.label for v in leaves if v.label}
    counts: dict[str, int] = {}
    syms: dict[int, Any] = {}
    n = 0
    for v in leaves:
        if v.label:
            k = counts.get(v.label, 0) + 1
            counts[v.label] = k
            name = v.label if k == 1 else f"{v.label}_{k}"
            while k > 1 and name in taken:
                k += 1
                name = f"{v.label}_{k}"
            taken.add(name)
        else:
            while f"x{n}" in taken:
                n += 1
            name = f"x{n}"
            taken.add(name)
        syms[id(v)] = sp.Symbol(name, real=True)
    return syms


def to_sympy(outputs: Value | Iterable[Value]) -> Any:
    """The sympy expression of a Value (or a list of expressions for a list of Values).

    A labelled leaf becomes a real Symbol named after its label (made unique on clashes), a leaf
    made from a Python number by an operator becomes that number, and any other unlabelled leaf a
    generated name ``x0``, ``x1``.... relu is ``Piecewise((x, x > 0), (0, True))``, whose
    derivative at 0 is 0 (micrograd's convention).
    """
    outs = as_outputs(outputs)
    exprs = _expressions(outs, leaf_symbols(outs))
    res = [exprs[id(o)] for o in outs]
    return res[0] if isinstance(outputs, Value) else res


def _nonempty(result: CheckResult) -> CheckResult:
    """A check that compared nothing must not pass silently."""
    if result.compared == 0:
        raise ValueError(
            "check: nothing was compared: at every point tried (the leaves' values and the random "
            "points) some value or derivative was nan or inf, or sympy's derivative undefined; "
            "move the leaves into the functions' domains or raise `points`"
        )
    return result


def _varying_symbols(outs: Sequence[Value], leaves: Sequence[Value]) -> dict[int, Any]:
    """Symbols for the wrt and input `leaves` only: every other leaf is a frozen constant, so
    in `check` it stays its number (named as `to_sympy` would name it otherwise)."""
    keep = {id(v) for v in leaves}
    return {k: s for k, s in leaf_symbols(outs, leaves).items() if k in keep}


def _expressions(outs: Sequence[Value], syms: dict[int, Any]) -> dict[int, Any]:
    sp = _sympy()
    env: dict[int, Any] = {}
    for node in topological_order(outs):
        if not node._prev:
            env[id(node)] = syms[id(node)] if id(node) in syms else _number(sp, node.data)
        else:
            op = node._opdef
            assert op is not None
            env[id(node)] = op.sympy(sp, *(env[id(c)] for c in node._prev), **node._params)
    return env


# ---- check ---------------------------------------------------------------------------------------


class GradientMismatch(AssertionError):
    """Raised by `check` when compiled, interpreted and sympy gradients disagree."""


@dataclass
class CheckResult:
    """What `check` compared: the points, and the largest relative disagreement seen."""

    points: list[dict[str, float]] = field(default_factory=list)
    max_rel_error: float = 0.0
    compared: int = 0


def check(
    out: Value | Sequence[Value],
    wrt: Sequence[Value] | None = None,
    inputs: Sequence[Value] = (),
    *,
    rtol: float = 1e-7,
    atol: float = 1e-10,
    points: int = 3,
    seed: int = 0,
    backend: str = "numba",
    order: int = 1,
) -> CheckResult:
    """Check the compiled gradient against sympy's derivative and the interpreted engine.

    Compares at the leaves' current values and at `points` random points near them (points where
    anything is not finite are skipped). Passes silently (returning a `CheckResult`); on a
    mismatch raises `GradientMismatch` with a report naming the parameter, the three numbers and
    the first IR instruction whose local derivative (the op table's rule) disagrees with sympy.

    Args:
        out: the Value (or Values) to differentiate.
        wrt: leaves to differentiate by (default as in `compile`).
        inputs: leaves treated as inputs; they are varied at the random points too.
        rtol, atol: tolerance of every comparison, ``|a - b| <= atol + rtol * |b|``.
        points: how many random points besides the current values.
        seed: seed of the random points.
        backend: the compiled backend to test.
        order: 1 checks the gradient; 2 checks the compiled Hessian (`symgrad.hessian`, single
            output) against ``sympy.hessian`` (to rtol/atol) and against central differences
            of the compiled gradient (to a looser, step-size-aware tolerance), and the gradient
            it returns against sympy's. A mismatch names the entry and gives every number.
    """
    if order == 2:
        return _check_hessian(out, wrt, inputs, rtol=rtol, atol=atol, points=points, seed=seed,
                              backend=backend)
    if order != 1:
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    from .compiled import compile as sg_compile

    sp = _sympy()
    outs = as_outputs(out)
    f = sg_compile(outs, wrt=wrt, inputs=inputs, backend=backend)
    wrt_l, inp_l = list(f.wrt), list(f.inputs)
    leaves = wrt_l + inp_l
    syms = _varying_symbols(outs, leaves)
    exprs = _expressions(outs, syms)
    wsyms = [syms[id(w)] for w in wrt_l]
    lsyms = [syms[id(v)] for v in leaves]
    grads = [[sp.diff(exprs[id(o)], s) for s in wsyms] for o in outs]
    lam = _lambdify(sp, lsyms, grads)
    names_ = _leaf_names(leaves, syms)

    result = CheckResult()
    pts = _sample_points(leaves, points, seed)
    for pt in pts:
        _, g_comp = f(pt[: len(wrt_l)], pt[len(wrt_l):])
        g_comp = g_comp.reshape(len(outs), len(wrt_l))
        g_int = _interpreted_grads(outs, leaves, wrt_l, pt)
        g_sym = _mp_eval(lam, pt)
        if g_sym is None or not _all_finite(g_int):
            continue
        result.points.append(dict(zip(names_, pt, strict=True)))
        for k in range(len(outs)):
            for j in range(len(wrt_l)):
                a, b, c = float(g_comp[k, j]), g_int[k][j], g_sym[k][j]
                result.compared += 1
                for x in (a, b):
                    err = abs(x - c) / max(abs(c), 1e-300)
                    result.max_rel_error = max(result.max_rel_error, err)
                ok = _close(a, c, rtol, atol) and _close(b, c, rtol, atol)
                if not ok:
                    raise GradientMismatch(
                        _report(f, outs, k, names_[j], a, b, c, dict(zip(names_, pt, strict=True)),
                                rtol, atol)
                    )
    return _nonempty(result)


# central differences of the gradient: a relative step near eps ** (1/3) balances rounding
# (eps * |g| / h) against truncation (h**2 * |f'''| / 6); their tolerance is relative to the scale
# of the gradient and Hessian, since rounding in g is amplified by 1 / h
FD_STEP = 6e-6
FD_RTOL = 1e-5


def _check_hessian(
    out: Value | Sequence[Value], wrt: Sequence[Value] | None, inputs: Sequence[Value], *,
    rtol: float, atol: float, points: int, seed: int, backend: str,
) -> CheckResult:
    """`check` with ``order=2``: the compiled Hessian vs sympy.hessian and central differences."""
    import numpy as np

    from .higher import hessian as sg_hessian

    sp = _sympy()
    outs = as_outputs(out)
    if len(outs) != 1:
        raise ValueError(f"check(order=2): takes a single output Value, got {len(outs)}")
    H = sg_hessian(outs[0], wrt=wrt, inputs=inputs, backend=backend)
    wrt_l, inp_l = list(H.wrt), list(H.inputs)
    leaves = wrt_l + inp_l
    P = len(wrt_l)
    syms = _varying_symbols(outs, leaves)
    expr = _expressions(outs, syms)[id(outs[0])]
    wsyms = [syms[id(w)] for w in wrt_l]
    grad_expr = [sp.diff(expr, s) for s in wsyms]
    hess_expr = sp.hessian(expr, wsyms).tolist()
    lam = _lambdify(sp, [syms[id(v)] for v in leaves], [grad_expr, *hess_expr])
    names_ = _leaf_names(leaves, syms)

    result = CheckResult()
    pts = _sample_points(leaves, points, seed)
    for pt in pts:
        p, x = np.array(pt[:P]), np.array(pt[P:])
        _, g, h = H(p, x)
        sym = _mp_eval(lam, pt)
        if sym is None or not (np.all(np.isfinite(g)) and np.all(np.isfinite(h))):
            continue
        g_sym, h_sym = sym[0], sym[1:]
        fd, steps = _fd_hessian(H, p, x)
        point = dict(zip(names_, pt, strict=True))
        result.points.append(point)
        for j in range(P):
            result.compared += 1
            result.max_rel_error = max(result.max_rel_error, _rel(g[j], g_sym[j]))
            if not _close(float(g[j]), g_sym[j], rtol, atol):
                raise GradientMismatch(
                    f"gradient mismatch for d(output)/d({names_[j]}) at {point} (check, order=2):"
                    f"\n  compiled {float(g[j])!r}\n  sympy    {g_sym[j]!r}"
                )
        scale = 1.0 + float(np.max(np.abs(g), initial=0.0)) + float(np.max(np.abs(h), initial=0.0))
        for j in range(P):
            for k in range(P):
                a, c, d = float(h[j, k]), h_sym[j][k], float(fd[j, k])
                result.compared += 1
                result.max_rel_error = max(result.max_rel_error, _rel(a, c))
                bad = []
                if not _close(a, c, rtol, atol):
                    bad.append("sympy")
                if abs(a - d) > FD_RTOL * (abs(d) + scale):
                    bad.append("finite differences")
                if bad:
                    raise GradientMismatch(_hessian_report(
                        names_, j, k, h, c, d, steps[j], g, g_sym, point, bad, rtol, atol
                    ))
    return _nonempty(result)


def _lambdify(sp: Any, args: list[Any], exprs: Any) -> Any:
    """``sympy.lambdify`` to mpmath of nested lists of expressions, made printable first."""
    import mpmath

    zoo = sp.Dummy("zoo")  # stands for sympy's zoo, which lambdify cannot print; passed nan

    def printable(e: Any) -> Any:
        return [printable(x) for x in e] if isinstance(e, list) else _printable(sp, e, zoo)

    lam_z = sp.lambdify([*args, zoo], printable(exprs), modules="mpmath")

    def lam(*xs: Any) -> Any:
        return lam_z(*xs, mpmath.nan)

    return lam


def _printable(sp: Any, e: Any, zoo: Any) -> Any:
    """`e` as mpmath can evaluate it: DiracDelta (from sqrt(x**2) = |x|) is 0 off its kink, and
    zoo (log or 1/x of relu's 0 branch) becomes the Symbol `zoo`. Both sit at kinks or in
    Piecewise branches that the sample points do not reach.
    """
    return e.replace(sp.DiracDelta, lambda *a: sp.S.Zero).xreplace({sp.zoo: zoo})


def _rel(a: float, b: float) -> float:
    return abs(float(a) - b) / max(abs(b), 1e-300)


def _fd_hessian(H: Any, p: Any, x: Any) -> tuple[Any, list[float]]:
    """Central differences of `H`'s gradient, one row per parameter, and the steps taken."""
    import numpy as np

    P = len(p)
    fd = np.zeros((P, P))
    steps = []
    for j in range(P):
        up, down = p.copy(), p.copy()
        up[j] += FD_STEP * (1.0 + abs(p[j]))
        down[j] -= FD_STEP * (1.0 + abs(p[j]))
        width = up[j] - down[j]  # the step actually taken, after rounding
        fd[j] = (H(up, x)[1] - H(down, x)[1]) / width
        steps.append(width / 2)
    return fd, steps


def _hessian_report(
    names_: Sequence[str], j: int, k: int, h: Any, sym: float, fd: float, step: float,
    g: Any, g_sym: Sequence[float], point: dict[str, float], bad: list[str],
    rtol: float, atol: float,
) -> str:
    a, b = names_[j], names_[k]
    lines = [
        f"hessian mismatch for d2(output)/d({a})d({b}) at {point}:",
        f"  compiled            {float(h[j, k])!r}   (disagrees with {' and '.join(bad)})",
        f"  sympy               {sym!r}",
        f"  finite differences  {fd!r}   (central, of the compiled gradient d/d({b}), "
        f"step {step:.3g} in {a})",
    ]
    if j != k:
        lines.append(f"  compiled d2/d({b})d({a}) {float(h[k, j])!r}   (the transposed entry)")
    off = [i for i in range(len(g_sym)) if not _close(float(g[i]), g_sym[i], rtol, atol)]
    if off:
        lines.append(f"  the compiled gradient disagrees with sympy too, in d/d({names_[off[0]]})")
    else:
        lines.append("  the compiled gradient agrees with sympy here: look at the second-order "
                     "path (the tangents of the vjp rules' IR)")
    return "\n".join(lines)


def _sample_points(leaves: Sequence[Value], points: int, seed: int) -> list[list[float]]:
    """The leaves' current values, then `points` random points around them."""
    rng = random.Random(seed)
    base = [v.data for v in leaves]
    return [base] + [
        [x + rng.gauss(0.0, 0.5) * (1.0 + abs(x)) for x in base] for _ in range(points)
    ]


def _leaf_names(leaves: Sequence[Value], syms: dict[int, Any]) -> list[str]:
    return [str(syms[id(v)]) for v in leaves]


def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    return abs(a - b) <= atol + rtol * abs(b)


def _all_finite(rows: list[list[float]]) -> bool:
    return all(math.isfinite(x) for r in rows for x in r)


def _mp_eval(lam: Any, pt: Sequence[float]) -> list[list[float]] | None:
    """sympy's gradient at `pt` in 30-digit mpmath, or None where it is undefined or infinite."""
    import mpmath

    with mpmath.workdps(30):
        try:
            rows = lam(*[mpmath.mpf(x) for x in pt])
        except (ZeroDivisionError, ValueError, TypeError, OverflowError):
            return None
    out: list[list[float]] = []
    for r in rows:
        row = []
        for x in r:
            if isinstance(x, mpmath.mpc) or not hasattr(x, "__float__"):
                return None
            v = float(x)
            if not math.isfinite(v):
                return None
            row.append(v)
        out.append(row)
    return out


def replay(
    outs: Sequence[Value], leaf_values: dict[int, float]
) -> tuple[list[Value], dict[int, Value]]:
    """A fresh copy of the graph with some leaves' data replaced (by ``id``).

    Returns the copied outputs and the map from original node ``id`` to its copy; the user's
    graph (its ``.data`` and ``.grad``) is left untouched.
    """
    env: dict[int, Value] = {}
    for node in topological_order(outs):
        if not node._prev:
            v = Value(leaf_values.get(id(node), node.data), label=node.label)
            v._lit = node._lit
        else:
            op = node._opdef
            assert op is not None
            v = Value._symgrad_apply(op, tuple(env[id(c)] for c in node._prev), node._params)
            v.label = node.label
        env[id(node)] = v
    return [env[id(o)] for o in outs], env


def _interpreted_grads(
    outs: Sequence[Value], leaves: Sequence[Value], wrt: Sequence[Value], pt: Sequence[float]
) -> list[list[float]]:
    rows = []
    for k in range(len(outs)):
        copies, env = replay(outs, {id(v): x for v, x in zip(leaves, pt, strict=True)})
        copies[k].backward()
        rows.append([env[id(w)].grad if id(w) in env else 0.0 for w in wrt])
    return rows


def _report(
    f: Any, outs: Sequence[Value], k: int, pname: str, comp: float, interp: float, sym: float,
    point: dict[str, float], rtol: float, atol: float,
) -> str:
    lines = [
        f"gradient mismatch for d(output {k})/d({pname}) at {point}:",
        f"  compiled    {comp!r}",
        f"  interpreted {interp!r}",
        f"  sympy       {sym!r}",
    ]
    culprit = first_bad_rule(f.traced_ir, list(point.values()), rtol, atol)
    if culprit:
        lines.append("  first instruction whose local derivative disagrees with sympy:")
        lines.append("    " + culprit)
    else:
        lines.append("  every instruction's local derivative agrees with sympy at this point")
    return "\n".join(lines)


def first_bad_rule(
    func: Func, args: Sequence[float], rtol: float = 1e-7, atol: float = 1e-10
) -> str:
    """Walk `func` at `args`; describe the first instruction whose vjp rule disagrees with sympy.

    Each op's rule (evaluated with ct = 1) is compared with ``sympy.diff`` of its sympy
    counterpart at the instruction's operand values. Returns "" when all agree.
    """
    import mpmath

    sp = _sympy()
    nm = names(func)
    env = dict(zip(func.args, map(float, args), strict=True))
    for ins in func.body:
        vals = [a.value if isinstance(a, Const) else env[a] for a in ins.args]
        op = OPS[ins.op]
        params = ins.param_dict()
        out = op.impl(*vals, **params)
        env[ins.out] = out
        rule = op.vjp(1.0, out, *vals, **params)
        xs = sp.symbols(f"a0:{op.arity}", real=True)
        expr = op.sympy(sp, *xs, **params)
        for i, r in enumerate(rule):
            want_expr = sp.diff(expr, xs[i])
            with mpmath.workdps(30):
                try:
                    w = complex(sp.lambdify(xs, want_expr, "mpmath")(*map(mpmath.mpf, vals)))
                except (ZeroDivisionError, ValueError, TypeError, OverflowError):
                    continue
            if w.imag != 0.0 or not math.isfinite(w.real):
                continue
            got = 0.0 if r is None else float(r)
            if not math.isfinite(got):
                continue
            if not _close(got, w.real, rtol, atol):
                return (
                    f"{instr_text(ins, nm)}  (op {ins.op!r}, operand {i} = {vals[i]!r}): "
                    f"the op table's rule gives {got!r}, sympy.diff gives {w.real!r}"
                )
    return ""
