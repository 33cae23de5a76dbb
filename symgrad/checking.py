"""Checking derivatives: compiled ones against sympy's and the interpreted engine's (`check`).

Imports from symgrad: `engine` (`Value`, `topological_order`), `ir` (`Const`, `Func`,
`instr_text`, `names`), `ops` (`OPS`), `trace` (`as_outputs`) and `symbolic` (`expressions`,
`leaf_symbols`, `sympy_module`); `compiled` and `higher` when a check builds what it tests, and
mpmath lazily. One loop serves every order: it samples points, asks the order's *tier* for the
numbers to compare there (each an `Agreement` between a source and an oracle), keeps the score
in a `CheckResult` and raises `GradientMismatch` with the tier's report on the first
disagreement. A new kind of check is a new tier.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from .engine import Value, topological_order
from .ir import Const, Func, instr_text, names
from .ops import OPS
from .symbolic import expressions, leaf_symbols, sympy_module
from .trace import as_outputs

__all__ = [
    "TIERS", "Agreement", "CheckResult", "Entry", "GradientMismatch", "GradientTier", "HessianTier",
    "Tier", "Tolerance", "check", "first_bad_rule",
]


class GradientMismatch(AssertionError):
    """Raised by `check` when compiled, interpreted and sympy gradients disagree."""


@dataclass
class CheckResult:
    """What `check` compared: the points, and the largest relative disagreement seen."""

    points: list[dict[str, float]] = field(default_factory=list)
    max_rel_error: float = 0.0
    compared: int = 0


@dataclass(frozen=True)
class Agreement:
    """`got` (from `source`) must agree with `want` (from `oracle`): within `check`'s rtol and
    atol, and counted in ``max_rel_error``, unless the tier gives its own test `close`."""

    source: str
    got: float
    oracle: str
    want: float
    close: Callable[[float, float], bool] | None = None


@dataclass(frozen=True)
class Entry:
    """One derivative at one point: what must agree, and the report if something does not
    (`report` is given the agreements that failed)."""

    agreements: tuple[Agreement, ...]
    report: Callable[[list[Agreement]], str]


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
    if order not in TIERS:
        raise ValueError(f"order must be {' or '.join(map(str, TIERS))}, got {order!r}")
    tol = Tolerance(rtol, atol)
    tier = TIERS[order](as_outputs(out), wrt, inputs, backend, tol)
    result = CheckResult()
    for pt in _sample_points(tier.leaves, points, seed):
        point = dict(zip(tier.names, pt, strict=True))
        entries = tier.entries(pt, point)
        if entries is None:
            continue  # something is not finite here, or sympy's derivative is undefined
        result.points.append(point)
        for entry in entries:
            _compare(entry, result, tol)
    return _nonempty(result)


@dataclass(frozen=True)
class Tolerance:
    """``|a - b| <= atol + rtol * |b|``."""

    rtol: float
    atol: float

    def close(self, a: float, b: float) -> bool:
        """Whether `a` agrees with the reference `b`."""
        return abs(a - b) <= self.atol + self.rtol * abs(b)


def _compare(entry: Entry, result: CheckResult, tol: Tolerance) -> None:
    """Score one entry into `result`; raise with its report if an agreement fails."""
    result.compared += 1
    failed = []
    for ag in entry.agreements:
        if ag.close is None:
            result.max_rel_error = max(result.max_rel_error, _rel(ag.got, ag.want))
            ok = tol.close(ag.got, ag.want)
        else:
            ok = ag.close(ag.got, ag.want)
        if not ok:
            failed.append(ag)
    if failed:
        raise GradientMismatch(entry.report(failed))


def _nonempty(result: CheckResult) -> CheckResult:
    """A check that compared nothing must not pass silently."""
    if result.compared == 0:
        raise ValueError(
            "check: nothing was compared: at every point tried (the leaves' values and the random "
            "points) some value or derivative was nan or inf, or sympy's derivative undefined; "
            "move the leaves into the functions' domains or raise `points`"
        )
    return result


# ---- tiers: what one kind of check compares ------------------------------------------------------


class Tier:
    """What one order of `check` compares. A subclass builds the compiled object under test
    (`build`), says which sympy derivatives it is compared with (`targets`, rows of
    expressions, evaluated in 30-digit mpmath) and lists the entries at a point (`entries`)."""

    def __init__(
        self, outs: tuple[Value, ...], wrt: Sequence[Value] | None, inputs: Sequence[Value],
        backend: str, tol: Tolerance,
    ) -> None:
        self.outs, self.tol = outs, tol
        self.program = self.build(wrt, inputs, backend)
        self.wrt = list(self.program.wrt)
        self.leaves = self.wrt + list(self.program.inputs)
        syms = _varying_symbols(outs, self.leaves)
        self.exprs = expressions(outs, syms)
        self.wsyms = [syms[id(w)] for w in self.wrt]
        self.names = [str(syms[id(v)]) for v in self.leaves]
        self.oracle = _lambdify([syms[id(v)] for v in self.leaves], self.targets())

    def build(self, wrt: Sequence[Value] | None, inputs: Sequence[Value], backend: str) -> Any:
        """The compiled object under test, of `outs` (it has ``wrt`` and ``inputs``)."""
        raise NotImplementedError

    def targets(self) -> list[list[Any]]:
        """sympy's derivatives, rows of expressions in the leaves' symbols."""
        raise NotImplementedError

    def entries(self, pt: list[float], point: dict[str, float]) -> list[Entry] | None:
        """What to compare at `pt` (`point` names it), or None to skip the point."""
        raise NotImplementedError


class GradientTier(Tier):
    """order=1: the compiled Jacobian and the engine's ``backward()`` against ``sympy.diff``."""

    def build(self, wrt: Sequence[Value] | None, inputs: Sequence[Value], backend: str) -> Any:
        from .compiled import compile as sg_compile

        return sg_compile(self.outs, wrt=wrt, inputs=inputs, backend=backend)

    def targets(self) -> list[list[Any]]:
        sp = sympy_module()
        return [[sp.diff(self.exprs[id(o)], s) for s in self.wsyms] for o in self.outs]

    def entries(self, pt: list[float], point: dict[str, float]) -> list[Entry] | None:
        P = len(self.wrt)
        _, g = self.program(pt[:P], pt[P:])
        g_comp = g.reshape(len(self.outs), P)
        g_int = _interpreted_grads(self.outs, self.leaves, self.wrt, pt)
        g_sym = _mp_eval(self.oracle, pt)
        if g_sym is None or not all(math.isfinite(x) for r in g_int for x in r):
            return None
        return [
            Entry(
                (Agreement("compiled", float(g_comp[k, j]), "sympy", g_sym[k][j]),
                 Agreement("interpreted", g_int[k][j], "sympy", g_sym[k][j])),
                partial(self.report, k, self.names[j], float(g_comp[k, j]), g_int[k][j],
                        g_sym[k][j], point),
            )
            for k in range(len(self.outs)) for j in range(P)
        ]

    def report(
        self, k: int, pname: str, comp: float, interp: float, sym: float,
        point: dict[str, float], failed: list[Agreement],
    ) -> str:
        """The three numbers, and the first instruction whose local rule disagrees with sympy."""
        lines = [
            f"gradient mismatch for d(output {k})/d({pname}) at {point}:",
            f"  compiled    {comp!r}",
            f"  interpreted {interp!r}",
            f"  sympy       {sym!r}",
        ]
        culprit = first_bad_rule(self.program.traced_ir, list(point.values()), self.tol.rtol,
                                 self.tol.atol)
        if culprit:
            lines.append("  first instruction whose local derivative disagrees with sympy:")
            lines.append("    " + culprit)
        else:
            lines.append("  every instruction's local derivative agrees with sympy at this point")
        return "\n".join(lines)


# central differences of the gradient: a relative step near eps ** (1/3) balances rounding
# (eps * |g| / h) against truncation (h**2 * |f'''| / 6); their tolerance is relative to the scale
# of the gradient and Hessian, since rounding in g is amplified by 1 / h
FD_STEP = 6e-6
FD_RTOL = 1e-5


class HessianTier(Tier):
    """order=2: the compiled gradient against ``sympy.diff``, and the compiled Hessian against
    ``sympy.hessian`` and central differences of the compiled gradient."""

    def build(self, wrt: Sequence[Value] | None, inputs: Sequence[Value], backend: str) -> Any:
        from .higher import hessian as sg_hessian

        if len(self.outs) != 1:
            raise ValueError(f"check(order=2): takes a single output Value, got {len(self.outs)}")
        return sg_hessian(self.outs[0], wrt=wrt, inputs=inputs, backend=backend)

    def targets(self) -> list[list[Any]]:
        sp = sympy_module()
        expr = self.exprs[id(self.outs[0])]
        return [[sp.diff(expr, s) for s in self.wsyms], *sp.hessian(expr, self.wsyms).tolist()]

    def entries(self, pt: list[float], point: dict[str, float]) -> list[Entry] | None:
        P = len(self.wrt)
        p, x = np.array(pt[:P]), np.array(pt[P:])
        _, g, h = self.program(p, x)
        sym = _mp_eval(self.oracle, pt)
        if sym is None or not (np.all(np.isfinite(g)) and np.all(np.isfinite(h))):
            return None
        g_sym, h_sym = sym[0], sym[1:]
        fd, steps = _fd_hessian(self.program, p, x)
        scale = 1.0 + float(np.max(np.abs(g), initial=0.0)) + float(np.max(np.abs(h), initial=0.0))

        def near_fd(a: float, d: float) -> bool:
            return abs(a - d) <= FD_RTOL * (abs(d) + scale)

        grads = [
            Entry((Agreement("compiled", float(g[j]), "sympy", g_sym[j]),),
                  partial(_hessian_grad_report, self.names[j], float(g[j]), g_sym[j], point))
            for j in range(P)
        ]
        hess = [
            Entry((Agreement("compiled", float(h[j, k]), "sympy", h_sym[j][k]),
                   Agreement("compiled", float(h[j, k]), "finite differences", float(fd[j, k]),
                             near_fd)),
                  partial(self.report, j, k, h, g, g_sym, h_sym[j][k], float(fd[j, k]), steps[j],
                          point))
            for j in range(P) for k in range(P)
        ]
        return grads + hess

    def report(
        self, j: int, k: int, h: Any, g: Any, g_sym: Sequence[float], sym: float, fd: float,
        step: float, point: dict[str, float], failed: list[Agreement],
    ) -> str:
        """Every number of the entry and its transposed one, and whether the gradient is right."""
        a, b = self.names[j], self.names[k]
        bad = " and ".join(ag.oracle for ag in failed)
        lines = [
            f"hessian mismatch for d2(output)/d({a})d({b}) at {point}:",
            f"  compiled            {float(h[j, k])!r}   (disagrees with {bad})",
            f"  sympy               {sym!r}",
            f"  finite differences  {fd!r}   (central, of the compiled gradient d/d({b}), "
            f"step {step:.3g} in {a})",
        ]
        if j != k:
            lines.append(f"  compiled d2/d({b})d({a}) {float(h[k, j])!r}   (the transposed entry)")
        off = [i for i in range(len(g_sym)) if not self.tol.close(float(g[i]), g_sym[i])]
        if off:
            lines.append("  the compiled gradient disagrees with sympy too, in "
                         f"d/d({self.names[off[0]]})")
        else:
            lines.append("  the compiled gradient agrees with sympy here: look at the second-order "
                         "path (the tangents of the vjp rules' IR)")
        return "\n".join(lines)


def _hessian_grad_report(
    pname: str, comp: float, sym: float, point: dict[str, float], failed: list[Agreement]
) -> str:
    return (f"gradient mismatch for d(output)/d({pname}) at {point} (check, order=2):"
            f"\n  compiled {comp!r}\n  sympy    {sym!r}")


TIERS: dict[int, type[Tier]] = {1: GradientTier, 2: HessianTier}


# ---- points, oracles, the interpreted engine -----------------------------------------------------


def _varying_symbols(outs: Sequence[Value], leaves: Sequence[Value]) -> dict[int, Any]:
    """Symbols for the wrt and input `leaves` only: every other leaf is a frozen constant, so
    in `check` it stays its number (named as `to_sympy` would name it otherwise)."""
    keep = {id(v) for v in leaves}
    return {k: s for k, s in leaf_symbols(outs, leaves).items() if k in keep}


def _lambdify(args: list[Any], exprs: Any) -> Any:
    """``sympy.lambdify`` to mpmath of nested lists of expressions, made printable first."""
    import mpmath

    sp = sympy_module()
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


def _sample_points(leaves: Sequence[Value], points: int, seed: int) -> list[list[float]]:
    """The leaves' current values, then `points` random points around them."""
    rng = random.Random(seed)
    base = [v.data for v in leaves]
    return [base] + [
        [x + rng.gauss(0.0, 0.5) * (1.0 + abs(x)) for x in base] for _ in range(points)
    ]


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


def _copy_graph(
    outs: Sequence[Value], leaf_values: dict[int, float]
) -> tuple[list[Value], dict[int, Value]]:
    """A fresh copy of the graph with some leaves' data replaced (by ``id``), for ``backward()``.

    Returns the copied outputs and the map from original node ``id`` to its copy; the user's
    graph (its ``.data`` and ``.grad``) is left untouched.
    """
    env: dict[int, Value] = {}
    for node in topological_order(outs):
        op = node.opdef
        if op is None:
            v = Value(leaf_values.get(id(node), node.data), label=node.label)
        else:
            v = op(*(env[id(c)] for c in node._prev), **node.op_params)
            v.label = node.label
        env[id(node)] = v
    return [env[id(o)] for o in outs], env


def _interpreted_grads(
    outs: Sequence[Value], leaves: Sequence[Value], wrt: Sequence[Value], pt: Sequence[float]
) -> list[list[float]]:
    rows = []
    for k in range(len(outs)):
        copies, env = _copy_graph(outs, {id(v): x for v, x in zip(leaves, pt, strict=True)})
        copies[k].backward()
        rows.append([env[id(w)].grad if id(w) in env else 0.0 for w in wrt])
    return rows


def first_bad_rule(
    func: Func, args: Sequence[float], rtol: float = 1e-7, atol: float = 1e-10
) -> str:
    """Walk `func` at `args`; describe the first instruction whose vjp rule disagrees with sympy.

    Each op's rule (evaluated with ct = 1) is compared with ``sympy.diff`` of its sympy
    counterpart at the instruction's operand values. Returns "" when all agree.
    """
    import mpmath

    sp = sympy_module()
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
            if not Tolerance(rtol, atol).close(got, w.real):
                return (
                    f"{instr_text(ins, nm)}  (op {ins.op!r}, operand {i} = {vals[i]!r}): "
                    f"the op table's rule gives {got!r}, sympy.diff gives {w.real!r}"
                )
    return ""
