"""`check`: compiled values and derivatives against the interpreted engine and independent oracles.

Imports from symgrad: `tiers` (the framework), `check_tiers`, `symbolic_tiers`, `numeric_tiers`,
`oracles` (`first_bad_rule`) and `trace` (`as_outputs`). One loop serves every kind of check: it
samples points, asks each *tier* for the numbers to compare there (each an `Agreement` between a
source and an oracle), keeps the score in a `CheckResult` and raises the entry's `CheckFailed`
subclass with the tier's report on the first disagreement. A new kind of check is a new tier.

Which tiers run (`plan`): the entry points (values, ``forward``, ``batch``, ``batch_forward``)
always; for the derivatives either whole-graph sympy (``method="symbolic"``: small graphs, the
default up to `SYMBOLIC_LIMIT` instructions) or random directional derivatives against a 40-digit
oracle (``"numeric"``: any size, linear in it); each kind of instruction's local rule against
``sympy.diff``; and, given ``expected=``, the traced graph against that formula.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .check_tiers import EntryPointTier, ExpectedTier, RulesTier
from .engine import Value
from .numeric_tiers import NumericGradientTier, NumericHessianTier
from .oracles import first_bad_rule
from .symbolic import NoSympyForm
from .symbolic_tiers import GradientTier, HessianTier
from .tiers import (
    Agreement,
    CheckFailed,
    Entry,
    GradientMismatch,
    ModelMismatch,
    Point,
    Subject,
    Tier,
    Tolerance,
    ValueMismatch,
)
from .trace import as_outputs

__all__ = [
    "METHODS", "SYMBOLIC_LIMIT", "Agreement", "CheckFailed", "CheckResult", "Entry",
    "GradientMismatch", "GradientTier", "HessianTier", "ModelMismatch", "NumericGradientTier",
    "NumericHessianTier", "Tier", "Tolerance", "ValueMismatch", "check", "first_bad_rule", "plan",
]

METHODS = ("auto", "symbolic", "numeric")
# traced instructions up to which method="auto" differentiates the whole graph with sympy, by
# order: beyond them sympy's expressions (one per parameter, each as long as the graph) cost more
# than the numeric tier's few evaluations of the graph
SYMBOLIC_LIMIT = {1: 40, 2: 15}


@dataclass
class CheckResult:
    """What `check` compared and how.

    Attributes:
        points: the points where derivatives were compared (leaf name -> value).
        max_rel_error: the largest relative disagreement of a derivative with its oracle.
        compared: how many derivatives were compared with an oracle (entries of the sympy
            gradient or Hessian, or directional derivatives).
        method: "symbolic" or "numeric": how the derivatives were checked.
        directions: random directions compared (numeric), over all points.
        tiers: how many numbers each tier compared, by tier name ("entry points", "symbolic
            gradient" or "numeric gradient" (or hessian), "rules", "expected").
        details: how each tier checked, by tier name, in words.
        kinks: the points (leaf name -> value) where an instruction sits exactly on a kink of
            its op (max of a tie, relu or abs of 0), with that instruction: there the
            derivative is a convention, so it was compared with the engine's only.
    """

    points: list[dict[str, float]] = field(default_factory=list)
    max_rel_error: float = 0.0
    compared: int = 0
    method: str = ""
    directions: int = 0
    tiers: dict[str, int] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    kinks: list[tuple[dict[str, float], str]] = field(default_factory=list)

    def __str__(self) -> str:
        how = "; ".join(f"{self.details.get(name, name)}: {n} numbers"
                        for name, n in self.tiers.items())
        kinks = (f"; {len(self.kinks)} point(s) on a kink (`{self.kinks[0][1]}`...), their "
                 "derivatives compared with the engine only") if self.kinks else ""
        return (f"check passed ({self.method}): {len(self.points)} point(s), {self.compared} "
                f"derivatives compared, max relative error {self.max_rel_error:.2g}; {how}{kinks}")


def check(
    out: Value | Sequence[Value],
    wrt: Sequence[Value] | None = None,
    inputs: Sequence[Value] = (),
    *,
    expected: Any = None,
    rtol: float = 1e-7,
    atol: float = 1e-10,
    points: int = 3,
    directions: int = 2,
    seed: int = 0,
    backend: str = "numba",
    order: int = 1,
    method: str = "auto",
) -> CheckResult:
    """Check the compiled values and derivatives against the engine and independent oracles.

    Compares at the leaves' current values and at `points` random points near them: the values
    and every entry point (single call, ``forward``, ``batch`` with each reduce, ``batch_forward``)
    against the interpreted engine and single calls (bit for bit: every backend is exact); the
    derivatives against sympy's (small graphs) or against high-precision central differences
    along `directions` random directions (any size); each kind of instruction's local derivative
    rule against ``sympy.diff``; and, given `expected`, the traced graph against that formula.
    Passes silently, returning a `CheckResult` that says how it checked. On a mismatch raises a
    `CheckFailed` (an `AssertionError`): `ValueMismatch`, `GradientMismatch` or `ModelMismatch`,
    whose message names what differed, where, on which backend, and the first IR instruction
    responsible.

    Args:
        out: the Value (or Values) to check.
        wrt: leaves to differentiate by (default as in `compile`); must not be empty.
        inputs: leaves treated as inputs; they are varied at the random points too.
        expected: what the graph should be: a sympy expression (a list, one per output) in
            symbols named after the leaves' labels, as `to_sympy` names them.
        rtol, atol: tolerance of comparisons with oracles, ``|a - b| <= atol + rtol * |b|``.
        points: how many random points besides the current values.
        directions: random directions per point for the numeric method.
        seed: seed of the random points, rows and directions.
        backend: the compiled backend to test.
        order: 1 checks the gradient (`compile`); 2 the Hessian (`hessian`, single output).
        method: "auto" (symbolic up to `SYMBOLIC_LIMIT` traced instructions, else numeric),
            "symbolic" or "numeric".
    """
    __tracebackhide__ = True  # pytest: the report, not this function's source
    try:
        return _check(out, wrt, inputs, expected, Tolerance(rtol, atol), points, directions, seed,
                      backend, order, method)
    except CheckFailed as failure:
        raise failure.with_traceback(None) from None


def _check(out: Value | Sequence[Value], wrt: Sequence[Value] | None, inputs: Sequence[Value],
           expected: Any, tol: Tolerance, points: int, directions: int, seed: int, backend: str,
           order: int, method: str) -> CheckResult:
    _validate(order, method, points, directions, seed, tol)
    subject = Subject(as_outputs(out), wrt, inputs, backend, order, tol)
    tiers = plan(subject, method, directions, seed, expected)
    result = _run(subject, tiers, points, seed, tol)
    if result.compared == 0 and method == "auto" and result.method == "symbolic":
        # sympy's derivative was undefined at every point (a form mpmath cannot evaluate, a
        # nan it folded in): the numeric tier needs no sympy form of the derivative
        tiers = plan(subject, "numeric", directions, seed, expected)
        result = _run(subject, tiers, points, seed, tol)
    _compared_expected(tiers)
    return _nonempty(result, subject)


def _run(subject: Subject, tiers: list[Tier], points: int, seed: int,
         tol: Tolerance) -> CheckResult:
    """Every tier at every point; the score."""
    result = CheckResult(method="symbolic" if any(isinstance(t, (GradientTier, HessianTier))
                                                  for t in tiers) else "numeric")
    counts = dict.fromkeys(tiers, 0)
    for pt in _sample_points(subject, points, seed):
        derivatives_here = False
        for tier in tiers:
            for entry in tier.entries_at(pt) or ():
                counts[tier] += _compare(entry, result, tol, tier.derivatives)
                derivatives_here |= tier.derivatives
        if derivatives_here:
            result.points.append(pt.as_dict())
            if subject.kinks.get(pt.index):
                result.kinks.append((pt.as_dict(), subject.kinks[pt.index]))
    result.directions = sum(getattr(t, "used", 0) for t in tiers)
    result.tiers = {t.name: n for t, n in counts.items()}
    result.details = {t.name: t.describe() for t in tiers}
    return result


def plan(subject: Subject, method: str, directions: int, seed: int, expected: Any) -> list[Tier]:
    """The tiers a check runs, in the order they compare at each point."""
    symbolic = method == "symbolic" or (
        method == "auto" and subject.size <= SYMBOLIC_LIMIT[subject.order])
    deriv = _symbolic_tier(subject, method) if symbolic else None
    if deriv is None:
        deriv = (NumericGradientTier(subject, directions, seed) if subject.order == 1
                 else NumericHessianTier(subject, directions, seed))
    tiers = [EntryPointTier(subject, seed), deriv, RulesTier(subject)]
    if expected is not None:
        tiers.append(ExpectedTier(subject, expected))
    return tiers


def _symbolic_tier(subject: Subject, method: str) -> Tier | None:
    """The whole-graph sympy tier, or None where sympy cannot differentiate the graph (its
    simplification of some piecewise conditions recurses without end) and `method` is "auto":
    the numeric tier checks it instead."""
    try:
        return GradientTier(subject) if subject.order == 1 else HessianTier(subject)
    except (RecursionError, NoSympyForm) as e:
        if method == "auto":
            return None
        why = (str(e) if isinstance(e, NoSympyForm) else
               "RecursionError while it simplified a piecewise condition")
        raise ValueError(
            f"check(method='symbolic'): sympy could not differentiate this graph ({why}); "
            "method='numeric' checks it against high-precision central differences instead"
        ) from None


def _validate(order: int, method: str, points: int, directions: int, seed: int,
              tol: Tolerance) -> None:
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    for name, n, least in (("points", points, 0), ("directions", directions, 1),
                           ("seed", seed, 0)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < least:
            raise ValueError(f"{name} must be an int >= {least}, got {n!r}")
    for name, x in (("rtol", tol.rtol), ("atol", tol.atol)):
        # a nan or negative tolerance fails every comparison that is not bit for bit
        if isinstance(x, bool) or not isinstance(x, (int, float, np.floating)) or not x >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {x!r}")


def _compare(entry: Entry, result: CheckResult, tol: Tolerance, scored: bool) -> int:
    """Score one entry into `result` (derivatives only); raise with its report if an agreement
    fails. Returns how many numbers were compared."""
    __tracebackhide__ = True
    failed = []
    n = 0
    for ag in entry.agreements:
        got, want = np.asarray(ag.got, dtype=np.float64), np.asarray(ag.want, dtype=np.float64)
        n += got.size
        ok = np.asarray(ag.close(got, want) if ag.close is not None
                        else tol.close(got, want, ag.scale))
        if ag.close is None and scored:
            scale = np.abs(want) if ag.scale is None else np.asarray(ag.scale)
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.abs(got - want) / np.maximum(scale, 1e-300)
            rel = rel[np.isfinite(rel)]
            result.max_rel_error = max(result.max_rel_error, float(np.max(rel, initial=0.0)))
        if not ok.all():
            i = int(np.flatnonzero(~ok.ravel())[0])
            index = i if got.ndim else None
            failed.append(Agreement(ag.source, float(got.ravel()[i]), ag.oracle,
                                    float(want.ravel()[i]), ag.close, ag.scale, ag.where, index))
    if scored:
        result.compared += 1
    if failed:
        raise entry.error(entry.report(failed))
    return n


def _nonempty(result: CheckResult, subject: Subject) -> CheckResult:
    """A check that compared no derivative must not pass silently."""
    if result.compared == 0:
        bad = [f"{name} = {subject.leaf(k).data!r}" for k, name in subject.symbols.items()
               if not math.isfinite(subject.leaf(k).data)]
        raise ValueError(
            "check: nothing was compared: at every point tried (the leaves' values and the random "
            "points) some value or derivative was nan or inf, or the oracle undefined there; "
            + (f"leaves that are not finite: {', '.join(bad)} (the random points are drawn "
               "around the leaves' values; a frozen leaf keeps its own)" if bad else
               "move the leaves into the functions' domains or raise `points`")
        )
    return result


def _compared_expected(tiers: list[Tier]) -> None:
    """`expected` that no point compared and no proof settled must not pass silently."""
    for t in tiers:
        if isinstance(t, ExpectedTier) and t.compared == 0 and not t.proved():
            raise ValueError(
                "check: expected was compared at no point: the traced graph is undefined "
                "(complex, nan or inf in high precision) at every point tried; move the leaves "
                "into its domain or raise `points`"
            )


def _sample_points(subject: Subject, points: int, seed: int) -> list[Point]:
    """The leaves' current values, then `points` random points around them."""
    rng = random.Random(seed)
    base = [v.data for v in subject.leaves]
    rows = [base] + [
        [x + rng.gauss(0.0, 0.5) * (1.0 + abs(x)) for x in base] for _ in range(points)
    ]
    n = len(subject.wrt)
    return [Point(i, tuple(r), subject.names, n) for i, r in enumerate(rows)]
