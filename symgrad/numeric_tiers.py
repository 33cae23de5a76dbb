"""The numeric tiers of `check`, for graphs of any size: random directional derivatives against a
high-precision oracle that shares nothing with symgrad's autodiff.

Imports from symgrad: `tiers` (the framework), `oracles` (`HighPrecision`, `first_bad_rule`) and
`symbolic_tiers` (`rule_culprit`); numpy. At each point and along each of a few random directions
u in parameter space, the compiled gradient's ``g . u`` (and the engine's) must agree with the
central difference of the graph along u, evaluated in 40-digit mpmath from each op's sympy form;
order 2 compares ``u . H . v`` with the mixed central difference. The cost is a few evaluations
of the graph per direction, linear in its size. On a mismatch the direction is halved until one
parameter is left (a few more evaluations per halving), so the report names the derivative.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from .oracles import HighPrecision
from .symbolic_tiers import rule_culprit
from .tiers import Agreement, Entry, Point, Subject, Tier, finite, fmt

__all__ = ["NumericGradientTier", "NumericHessianTier"]


class NumericGradientTier(Tier):
    """order=1, any size: ``g . u`` along `directions` random directions a point against the
    high-precision central difference, for the compiled gradient and the engine's."""

    name = "numeric gradient"
    derivatives = True

    def __init__(self, subject: Subject, directions: int, seed: int) -> None:
        super().__init__(subject)
        self.hp: HighPrecision = subject.high_precision()
        self.directions = directions
        self.rng = np.random.default_rng(seed)
        self.used = 0  # directions compared (points x directions)

    def describe(self) -> str:
        """How many directions were compared."""
        return f"{self.name} ({self.used} random directions, 40-digit central differences)"

    def gradients(self, pt: Point) -> tuple[np.ndarray, np.ndarray]:
        """The compiled and the interpreted Jacobians at `pt`, ``(n_out, P)`` each."""
        return self.subject.compiled(pt)["gradient"], np.asarray(self.subject.engine(pt)[1])

    def entries(self, pt: Point) -> list[Entry] | None:
        """``g . u`` along `directions` random u, compiled and interpreted, against the
        high-precision central difference."""
        g_comp, g_int = self.gradients(pt)
        if not (finite(g_comp) and finite(g_int)):
            return None
        out = []
        for _ in range(self.directions):
            u = self.rng.standard_normal(len(self.subject.wrt))
            d = self.hp.directional(pt.values, u)
            if d is None:
                continue  # undefined in high precision, or a kink within the stencil
            self.used += 1
            for k, want in enumerate(d):
                out.append(self._entry(pt, k, u, float(want), g_comp[k], g_int[k]))
        return out

    def _entry(self, pt: Point, k: int, u: np.ndarray, want: float, gc: np.ndarray,
               gi: np.ndarray) -> Entry:
        scale = float(np.abs(gi) @ np.abs(u))  # cancellation-aware: the sum's own size
        return Entry(
            (Agreement("compiled", float(gc @ u), "high precision", want, scale=scale),
             Agreement("interpreted", float(gi @ u), "high precision", want, scale=scale)),
            partial(self.report, pt, k, u, gc, gi),
        )

    def report(self, pt: Point, k: int, u: np.ndarray, gc: np.ndarray, gi: np.ndarray,
               failed: list[Agreement]) -> str:
        """The directional numbers, the one derivative they narrow down to, and the culprit."""
        s = self.subject
        ag = failed[0]
        of = "" if len(s.outs) == 1 else f" of output {k}"
        lines = [
            f"gradient mismatch ({s.backend}, numeric): the derivative{of} along a random "
            f"direction u",
            f"  compiled g.u     {fmt(float(gc @ u))}",
            f"  interpreted g.u  {fmt(float(gi @ u))}",
            f"  high precision   {fmt(ag.want)}   (central difference in 40-digit mpmath)",
        ]
        j = self._narrow(lambda w: self._disagrees(pt, k, w, gc, gi), u)
        if j is not None:
            exact = self.hp.directional(pt.values, np.eye(len(u))[j])
            hp = fmt(float(exact[k])) if exact is not None else "undefined"
            name = s.names[j] if len(s.outs) == 1 else f"output {k})/d({s.names[j]}"
            lines.append(f"  narrowed to d/d({name}): compiled {fmt(gc[j])}, interpreted "
                         f"{fmt(gi[j])}, high precision {hp}")
        lines.append(f"  {pt.text()}")
        return "\n".join(lines + rule_culprit(s, s.program.traced_ir, pt))

    def _disagrees(self, pt: Point, k: int, w: np.ndarray, gc: np.ndarray,
                   gi: np.ndarray) -> bool | None:
        d = self.hp.directional(pt.values, w)
        if d is None:
            return None
        scale = float(np.abs(gi) @ np.abs(w))
        tol = self.subject.tol
        return not (tol.close(gc @ w, float(d[k]), scale) and tol.close(gi @ w, float(d[k]), scale))

    @staticmethod
    def _narrow(disagrees: Callable[[np.ndarray], bool | None], u: np.ndarray) -> int | None:
        """Halve the support of `u` while one half still disagrees; the parameter left, or None
        (both halves agree: the error cancels between them, or the oracle is undefined)."""
        idx = np.flatnonzero(u)
        while len(idx) > 1:
            for half in (idx[: len(idx) // 2], idx[len(idx) // 2:]):
                w = np.zeros_like(u)
                w[half] = u[half]
                if disagrees(w):
                    idx = half
                    break
            else:
                return None
        return int(idx[0]) if len(idx) == 1 else None


class NumericHessianTier(NumericGradientTier):
    """order=2, any size: the gradient as in `NumericGradientTier`, and ``u . H . v`` along
    random pairs of directions against the mixed central difference in high precision."""

    name = "numeric hessian"

    def __init__(self, subject: Subject, directions: int, seed: int) -> None:
        super().__init__(subject, directions, seed)
        self.pairs = 0  # pairs of directions compared for the Hessian

    def describe(self) -> str:
        """How many directions and pairs were compared."""
        return (f"{self.name} ({self.used} random directions for the gradient, {self.pairs} pairs "
                "for the Hessian, 40-digit central differences)")

    def entries(self, pt: Point) -> list[Entry] | None:
        """The gradient as the parent does, then ``u . H . v`` along random pairs."""
        grads = super().entries(pt)
        H = self.subject.compiled(pt)["hessian"]
        if grads is None or not finite(H):
            return None
        P = len(self.subject.wrt)
        for _ in range(self.directions):
            u, v = self.rng.standard_normal(P), self.rng.standard_normal(P)
            d = self.hp.second_directional(pt.values, u, v)
            if d is None:
                continue
            self.pairs += 1
            scale = float(np.abs(u) @ np.abs(H) @ np.abs(v))
            grads.append(Entry(
                (Agreement("compiled", float(u @ H @ v), "high precision", float(d[0]),
                           scale=scale),),
                partial(self.hessian_report, pt, u, v, H, float(d[0]))))
        return grads

    def hessian_report(self, pt: Point, u: np.ndarray, v: np.ndarray, H: np.ndarray,
                       want: float, failed: list[Agreement]) -> str:
        """The numbers along (u, v), the entry they narrow down to, and the culprit."""
        s = self.subject

        def off(a: np.ndarray, b: np.ndarray) -> bool | None:
            d = self.hp.second_directional(pt.values, a, b)
            if d is None:
                return None
            return not s.tol.close(a @ H @ b, float(d[0]), float(np.abs(a) @ np.abs(H) @ np.abs(b)))

        lines = [
            f"hessian mismatch ({s.backend}, numeric): the second derivative along random "
            "directions u, v",
            f"  compiled u.H.v   {fmt(float(u @ H @ v))}",
            f"  high precision   {fmt(want)}   (mixed central difference in 40-digit mpmath)",
        ]
        j = self._narrow(lambda a: off(a, v), u)
        if j is not None:
            e = np.eye(len(u))[j]
            k = self._narrow(lambda b: off(e, b), v)
            if k is not None:
                exact = self.hp.second_directional(pt.values, e, np.eye(len(u))[k])
                hp = fmt(float(exact[0])) if exact is not None else "undefined"
                lines.append(f"  narrowed to d2/d({s.names[j]})d({s.names[k]}): compiled "
                             f"{fmt(H[j, k])}, high precision {hp}")
        lines.append(f"  {pt.text()}")
        return "\n".join(lines + rule_culprit(s, s.program.ir, pt))
