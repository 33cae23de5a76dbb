"""The symbolic tiers of `check`, for small graphs: whole-graph ``sympy.diff``, ``sympy.hessian``.

Imports from symgrad: `tiers` (the framework), `oracles` (`first_bad_rule`) and `symbolic`
(`sympy_module`); numpy; mpmath lazily. Their cost grows faster than the graph (the expression
of every parameter's derivative is built and printed), so `check` uses them up to a size and the
numeric tiers beyond it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from .ir import Func
from .oracles import first_bad_rule, sympy_evaluator
from .symbolic import sympy_module
from .tiers import Agreement, Entry, Point, Subject, Tier, finite

__all__ = ["GradientTier", "HessianTier", "rule_culprit"]


class GradientTier(Tier):
    """The compiled Jacobian and the engine's ``backward()`` against ``sympy.diff`` of the whole
    graph, evaluated in 30-digit mpmath (small graphs: its cost grows faster than the graph)."""

    name = "symbolic gradient"
    derivatives = True

    def __init__(self, subject: Subject) -> None:
        super().__init__(subject)
        sp = sympy_module()
        exprs = subject.expressions()
        wsyms = [subject.symbols[id(w)] for w in subject.wrt]
        targets = [[sp.diff(exprs[id(o)], w) for w in wsyms] for o in subject.outs]
        self.oracle = _evaluator([subject.symbols[id(v)] for v in subject.leaves], targets)

    def entries(self, pt: Point) -> list[Entry] | None:
        """Each compiled and interpreted derivative against sympy's at `pt`."""
        s = self.subject
        g_comp = s.compiled(pt)["gradient"]
        v_int, g_int = s.engine(pt)
        # a nan or inf value (a frozen leaf's nan) makes sympy's expression nan, its diff 0
        if not (finite(v_int) and finite(g_int)):
            return None
        g_sym = _mp_eval(self.oracle, pt.values)
        if g_sym is None:
            return None
        return [
            Entry(
                (Agreement("compiled", float(g_comp[k, j]), "sympy", g_sym[k][j]),
                 Agreement("interpreted", g_int[k][j], "sympy", g_sym[k][j])),
                partial(self.report, k, j, float(g_comp[k, j]), g_int[k][j], g_sym[k][j], pt),
            )
            for k in range(len(s.outs)) for j in range(len(s.wrt))
        ]

    def report(self, k: int, j: int, comp: float, interp: float, sym: float, pt: Point,
               failed: list[Agreement]) -> str:
        """The three numbers, and the first instruction whose local rule disagrees with sympy."""
        s = self.subject
        return "\n".join([
            f"gradient mismatch for d(output {k})/d({s.names[j]}) ({s.backend}, symbolic):",
            f"  compiled    {comp!r}",
            f"  interpreted {interp!r}",
            f"  sympy       {sym!r}",
            f"  {pt.text()}",
            *rule_culprit(s, s.program.traced_ir, pt),
        ])


def rule_culprit(s: Subject, func: Func, pt: Point) -> list[str]:
    """Report lines: the first instruction of `func` whose local rule disagrees with sympy."""
    culprit = first_bad_rule(func, list(pt.values), s.tol.rtol, s.tol.atol)
    if culprit:
        return ["  first instruction whose local derivative disagrees with sympy:",
                "    " + culprit]
    return ["  every instruction's local derivative agrees with sympy at this point"]


# central differences of the gradient: a relative step near eps ** (1/3) balances rounding
# (eps * |g| / h) against truncation (h**2 * |f'''| / 6); their tolerance is relative to the scale
# of the gradient and Hessian, since rounding in g is amplified by 1 / h
FD_STEP = 6e-6
FD_RTOL = 1e-5


class HessianTier(Tier):
    """order=2, small graphs: the compiled gradient against ``sympy.diff``, and the compiled
    Hessian against ``sympy.hessian`` and central differences of the compiled gradient."""

    name = "symbolic hessian"
    derivatives = True

    def __init__(self, subject: Subject) -> None:
        super().__init__(subject)
        sp = sympy_module()
        expr = subject.expressions()[id(subject.outs[0])]
        wsyms = [subject.symbols[id(w)] for w in subject.wrt]
        targets = [[sp.diff(expr, w) for w in wsyms], *sp.hessian(expr, wsyms).tolist()]
        self.oracle = _evaluator([subject.symbols[id(v)] for v in subject.leaves], targets)

    def entries(self, pt: Point) -> list[Entry] | None:
        """The gradient against sympy; each Hessian entry against sympy and central
        differences of the compiled gradient."""
        s = self.subject
        r = s.compiled(pt)
        g, h = r["gradient"][0], r["hessian"]
        if not (finite(s.engine(pt)[0]) and finite(g) and finite(h)):
            return None  # as for the gradient: sympy's expression of a nan value is nan
        sym = _mp_eval(self.oracle, pt.values)
        if sym is None:
            return None
        g_sym, h_sym = sym[0], sym[1:]
        fd, steps = _fd_hessian(s.program, pt.params, pt.inputs)
        scale = 1.0 + float(np.max(np.abs(g), initial=0.0)) + float(np.max(np.abs(h), initial=0.0))

        def near_fd(a: Any, d: Any) -> Any:
            return np.abs(np.asarray(a) - d) <= FD_RTOL * (np.abs(d) + scale)

        P = len(s.wrt)
        grads = [
            Entry((Agreement("compiled", float(g[j]), "sympy", g_sym[j]),),
                  partial(self._grad_report, j, float(g[j]), g_sym[j], pt))
            for j in range(P)
        ]
        hess = [
            Entry((Agreement("compiled", float(h[j, k]), "sympy", h_sym[j][k]),
                   Agreement("compiled", float(h[j, k]), "finite differences", float(fd[j, k]),
                             near_fd)),
                  partial(self.report, j, k, h, g, g_sym, h_sym[j][k], float(fd[j, k]), steps[j],
                          pt))
            for j in range(P) for k in range(P)
        ]
        return grads + hess

    def report(
        self, j: int, k: int, h: Any, g: Any, g_sym: Sequence[float], sym: float, fd: float,
        step: float, pt: Point, failed: list[Agreement],
    ) -> str:
        """Every number of the entry and its transposed one, and whether the gradient is right."""
        s = self.subject
        a, b = s.names[j], s.names[k]
        bad = " and ".join(ag.oracle for ag in failed)
        lines = [
            f"hessian mismatch for d2(output)/d({a})d({b}) ({s.backend}, symbolic):",
            f"  compiled            {float(h[j, k])!r}   (disagrees with {bad})",
            f"  sympy               {sym!r}",
            f"  finite differences  {fd!r}   (central, of the compiled gradient d/d({b}), "
            f"step {step:.3g} in {a})",
        ]
        if j != k:
            lines.append(f"  compiled d2/d({b})d({a}) {float(h[k, j])!r}   (the transposed entry)")
        lines.append(f"  {pt.text()}")
        off = [i for i in range(len(g_sym)) if not s.tol.close(float(g[i]), g_sym[i])]
        if off:
            lines.append("  the compiled gradient disagrees with sympy too, in "
                         f"d/d({s.names[off[0]]})")
        else:
            lines.append("  the compiled gradient agrees with sympy here: look at the second-order "
                         "path (the tangents of the vjp rules' IR)")
        return "\n".join(lines)

    def _grad_report(self, j: int, comp: float, sym: float, pt: Point,
                     failed: list[Agreement]) -> str:
        s = self.subject
        return "\n".join([
            f"gradient mismatch for d(output)/d({s.names[j]}) ({s.backend}, symbolic, order=2):",
            f"  compiled {comp!r}", f"  sympy    {sym!r}", f"  {pt.text()}",
            *rule_culprit(s, s.program.traced_ir, pt),
        ])


def _fd_hessian(H: Any, p: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, list[float]]:
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


def _evaluator(args: list[Any], exprs: list[list[Any]]) -> Any:
    """Rows of expressions as one function of `args` on mpmath numbers (`sympy_evaluator`: each
    shared node once, linear in their size; lambdify's printer can take minutes on nested Max
    and Piecewise forms, and evaluate branches no condition takes)."""
    sp = sympy_module()
    widths = [len(row) for row in exprs]
    flat = [_printable(sp, e) for row in exprs for e in row]
    run = sympy_evaluator(flat, args)

    def lam(*xs: Any) -> Any:
        vals = run(*xs)
        if vals is None:
            return None
        rows, k = [], 0
        for w in widths:
            rows.append(vals[k:k + w])
            k += w
        return rows

    return lam


def _printable(sp: Any, e: Any) -> Any:
    """`e` as mpmath can evaluate it: DiracDelta (from sqrt(x**2) = |x|) is 0 off its kink,
    where the sample points are (zoo, of log or 1/x in relu's 0 branch, is undefined)."""
    return e.replace(sp.DiracDelta, lambda *a: sp.S.Zero)


def _mp_eval(lam: Any, pt: Sequence[float]) -> list[list[float]] | None:
    """`lam` at `pt` in 30-digit mpmath, as floats, or None where anything is undefined,
    complex or infinite."""
    import mpmath

    with mpmath.workdps(30):
        rows = lam(*[mpmath.mpf(x) for x in pt])
    if rows is None:
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
