"""The tiers of `check` that run at every size: entry points, local rules, the expected model.

Imports from symgrad: `tiers` (the framework), `oracles` (`rule_values`), `ir`, `layout` (the
order batches are summed in), `ops` and `symbolic` (`sympy_module`); numpy; sympy and mpmath
lazily. (The derivative tiers are in `symgrad.symbolic_tiers` and `symgrad.numeric_tiers`.)

- `EntryPointTier`: values and every entry point (single call, ``forward``, ``batch`` with each
  reduce, ``batch_forward``; the Hessian's too) against the engine and against single calls,
  row by row: bit for bit.
- `RulesTier`: each kind of instruction's local derivative rule against ``sympy.diff``, once.
- `ExpectedTier`: the traced graph against the formula the user says it is.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from .ir import Const, Var, evaluate, instr_text, names
from .layout import chunk_rows, n_chunks
from .ops import OPS
from .oracles import DPS, rule_values, sympy_evaluator
from .symbolic import sympy_module
from .tiers import (
    Agreement,
    Entry,
    GradientMismatch,
    ModelMismatch,
    Point,
    Subject,
    Tier,
    ValueMismatch,
    finite,
    fmt,
)

__all__ = ["EntryPointTier", "ExpectedTier", "RulesTier", "ordered_sum"]


# ---- values and entry points ---------------------------------------------------------------------


class EntryPointTier(Tier):
    """Values and every entry point against the engine and single calls (`ROWS` rows a point:
    the point's inputs and two random rows near them)."""

    name = "entry points"
    ROWS = 3

    def __init__(self, subject: Subject, seed: int) -> None:
        super().__init__(subject)
        self.rng = random.Random(seed + 1)

    def _rows(self, pt: Point) -> np.ndarray:
        x = pt.inputs
        rows = [x] + [x + np.array([self.rng.gauss(0.0, 0.25) for _ in x]) * (1 + np.abs(x))
                      for _ in range(self.ROWS - 1)]
        return np.array(rows, dtype=np.float64).reshape(self.ROWS, len(x))

    def entries(self, pt: Point) -> list[Entry]:
        """The engine against a single call; forward, batch and batch_forward against single
        calls on a batch of `ROWS` rows."""
        s = self.subject
        p, X = pt.params, self._rows(pt)
        singles = [s.compiled(pt)] + [s.call(p, X[r]) for r in range(1, self.ROWS)]
        ev, eg = s.engine(pt)
        out = [
            self._entry("value", "single call", singles[0]["value"], "the engine", ev, pt),
            self._entry("gradient", "single call", singles[0]["gradient"], "the engine", eg, pt),
        ]
        stacked = {k: np.stack([r[k] for r in singles]) for k in singles[0]}
        if s.order == 1:
            fwd = np.atleast_1d(s.program.forward(p, X[0]))
            out.append(self._entry("value", "forward", fwd, "single call", singles[0]["value"], pt))
            bf = np.asarray(s.program.batch_forward(p, X)).reshape(stacked["value"].shape)
            out.append(self._entry("value", "batch_forward", bf, "single calls", stacked["value"],
                                   pt, rows=True))
        for reduce in ("none", "sum", "mean"):
            got = self._batch(p, X, reduce)
            for part, arr in got.items():
                src = f"batch(reduce={reduce!r})"
                if part == "value" or reduce == "none":
                    out.append(self._entry(part, src, arr, "single calls", stacked[part], pt,
                                           rows=True))
                else:
                    want = ordered_sum(list(stacked[part])) / (len(X) if reduce == "mean" else 1)
                    out.append(self._entry(part, src, arr, "single calls summed in order", want,
                                           pt))
        return out

    def _batch(self, p: np.ndarray, X: np.ndarray, reduce: str) -> dict[str, np.ndarray]:
        s = self.subject
        n, k, P = len(X), len(s.outs), len(s.wrt)
        r = s.program.batch(p, X, reduce)
        lead = (n,) if reduce == "none" else ()
        parts = {"value": np.asarray(r[0]).reshape(n, k),
                 "gradient": np.asarray(r[1]).reshape(*lead, k, P)}
        if s.order == 2:
            parts["hessian"] = np.asarray(r[2]).reshape(*lead, P, P)
        return parts

    def _entry(self, part: str, source: str, got: Any, oracle: str, want: Any, pt: Point,
               rows: bool = False) -> Entry:
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        where = partial(_element_name, self.subject, part, got.shape, rows)
        ag = Agreement(source, got.ravel(), oracle, want.ravel(), close=self.subject.same,
                       where=where)
        error = ValueMismatch if part == "value" else GradientMismatch
        return Entry((ag,), partial(self._report, part, pt), error)

    def _report(self, part: str, pt: Point, failed: list[Agreement]) -> str:
        s = self.subject
        ag = failed[0]
        elem = ag.element()
        width = max(len(ag.source), len(ag.oracle)) + 2
        rows = "row" in elem
        lines = [
            f"{part} mismatch ({s.backend}) in {ag.source}{', ' + elem if elem else ''}:",
            f"  {ag.source:<{width}}{fmt(ag.got)}",
            f"  {ag.oracle:<{width}}{fmt(ag.want)}",
            f"  {pt.text()}" + ("; row 0 is its inputs, the other rows random inputs near them"
                                 if rows else ""),
        ]
        lines.append("  (every backend must give the engine's numbers bit for bit)")
        lines += ["  " + line for line in self._culprit(part, ag, pt)]
        return "\n".join(lines)

    def _culprit(self, part: str, ag: Agreement, pt: Point) -> list[str]:
        s = self.subject
        if ag.source not in ("single call", "forward"):
            return [f"single calls agree with the engine here; {ag.source} does not agree with "
                    f"them: the {s.executor.name} executor's batch loop is at fault"]
        func = s.program.forward_ir if ag.source == "forward" else s.program.ir
        culprit = s.lowering_culprit(func, list(pt.values))
        if culprit:
            return ["the first instruction whose compiled form disagrees:", "  " + culprit]
        # which result of the IR the failed number is: values, then gradients, then Hessian
        n, P = len(s.outs), len(s.wrt)
        index = (ag.index or 0) + {"value": 0, "gradient": n, "hessian": n + n * P}[part]
        ir_value = evaluate(func, list(pt.values))[index]
        if bool(s.same(ir_value, ag.want)):
            return ["every op compiled alone gives its reference rule's number, and the IR run "
                    "with those rules gives the engine's: the lowering combines them otherwise"]
        return [f"the optimised IR, run with the reference rules, gives {fmt(ir_value)}: the IR "
                "itself differs from the engine (a pass, or autodiff's order of sums)"]


def _element_name(s: Subject, part: str, shape: tuple[int, ...], rows: bool, i: int) -> str:
    """Element `i` of a flattened `part` array of `shape`: ``row 1, d/d(w2)``."""
    idx = np.unravel_index(i, shape)
    head = [f"row {idx[0]}"] if rows else []
    idx = idx[1:] if rows else idx
    one = len(s.outs) == 1
    if part == "value":
        tail = [] if one else [f"output {idx[-1]}"]
    elif part == "gradient":
        k, j = idx[-2], idx[-1]
        tail = [f"d/d({s.names[j]})" if one else f"d(output {k})/d({s.names[j]})"]
    else:
        tail = [f"d2/d({s.names[idx[-2]]})d({s.names[idx[-1]]})"]
    return ", ".join(head + tail)


def ordered_sum(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Rows summed in the order every exact executor sums a batch (`symgrad.layout`): each chunk
    of consecutive rows from 0.0 in row order, then the chunks in chunk order."""
    n = len(rows)
    chunks = n_chunks(n)
    total = np.zeros_like(rows[0])
    for c in range(chunks):
        buf = np.zeros_like(rows[0])
        for r in chunk_rows(c, n, chunks):
            buf += rows[r]
        total += buf
    return total


# ---- local derivative rules ----------------------------------------------------------------------


class RulesTier(Tier):
    """Each kind of instruction's local derivative rule (op and static parameters) against
    ``sympy.diff`` of its sympy form, once: at operand values the graph has at the first point
    (up to `PER_KIND` instructions of each kind) and at a few fixed values in the op's domain.
    Its cost depends on the kinds of op present, not on the size of the graph. For order 2 the
    kinds of the Hessian program count too: its forward sweep runs their rules."""

    name = "rules"
    PER_KIND = 3
    FIXED = (0.7, -1.3, 2.1)

    def __init__(self, subject: Subject) -> None:
        super().__init__(subject)
        self.funcs = [subject.program.traced_ir]
        if subject.order == 2:
            self.funcs.append(subject.program.ir)
        self.done = False
        self.kinds = 0

    def describe(self) -> str:
        """How many kinds of instruction were checked."""
        return f"{self.name} ({self.kinds} kinds of instruction vs sympy.diff)"

    def entries(self, pt: Point) -> list[Entry] | None:
        """At the first point only: each kind of instruction at the graph's operand values and
        at fixed ones."""
        if self.done:
            return None
        self.done = True
        samples: dict[tuple[str, tuple[float, ...]], list[tuple[str, list[float]]]] = {}
        for func in self.funcs:
            env: dict[Var, float] = {}
            evaluate(func, list(pt.values), env)
            nm = names(func)
            for ins in func.body:
                got = samples.setdefault((ins.op, ins.params), [])
                vals = [a.value if isinstance(a, Const) else env[a] for a in ins.args]
                # on a kink the rule's convention is not sympy's to judge
                if len(got) < self.PER_KIND and finite(vals) and _off_kinks(ins.op, vals):
                    got.append((f"`{instr_text(ins, nm)}`", vals))
        self.kinds = len(samples)
        out = []
        for (op, params), uses in samples.items():
            first = uses[0][0] if uses else "(none at finite values)"
            for where, vals in uses + [("a fixed sample", v) for v in _fixed(op, self.FIXED)]:
                for i, got, want in rule_values(op, params, vals):
                    ag = Agreement("the op table's rule", got, "sympy.diff", want)
                    out.append(Entry((ag,), partial(self.report, op, params, vals, i, where,
                                                    first)))
        return out

    def report(self, op: str, params: tuple[float, ...], vals: list[float], i: int, where: str,
               first: str, failed: list[Agreement]) -> str:
        """The rule's and sympy's numbers, where the operands came from, who uses the op."""
        ag = failed[0]
        shown = ", ".join(repr(v) for v in vals)
        ps = "".join(f", {k}={v!r}" for k, v in zip(OPS[op].params, params, strict=True))
        return "\n".join([
            f"derivative rule mismatch: op {op!r}{ps}, d/d(operand {i}) at ({shown}):",
            f"  the op table's rule  {fmt(ag.got)}",
            f"  sympy.diff           {fmt(ag.want)}",
            f"  operands from {where}; the first instruction of this kind: {first}",
            f"  every derivative symgrad computes through {op!r} inherits this",
        ])


def _fixed(op: str, values: Sequence[float]) -> list[list[float]]:
    """Operand tuples for `op` from `values`, inside its domain and away from its kinks."""
    d = OPS[op]
    lo, hi = d.domain
    ok = [v for v in values if lo < v < hi]
    tuples = [[ok[(j + i) % len(ok)] for i in range(d.arity)] for j in range(len(ok))]
    return [t for t in tuples if _off_kinks(op, t, 0.1)]


def _off_kinks(op: str, vals: Sequence[float], margin: float = 0.0) -> bool:
    """Whether operands `vals` of `op` are farther than `margin` from each of its kinks."""
    return all(abs(d) > margin for d in OPS[op].kink_offsets(*vals))


# ---- the model the user says it is ---------------------------------------------------------------


class ExpectedTier(Tier):
    """The traced graph against `expected`, sympy expressions (one per output) in symbols named
    after the leaves (as `to_sympy` names them; a frozen leaf's symbol is its value): compared
    in 40-digit mpmath at every point; when they agree and the graph has at most `PROOF_LIMIT`
    instructions, ``sympy.simplify`` is asked for a proof (one that fails is no verdict: the
    points are)."""

    name = "expected"
    PROOF_LIMIT = 40

    def __init__(self, subject: Subject, expected: Any) -> None:
        super().__init__(subject)
        sp = sympy_module()
        self.exprs = _expected_exprs(subject, expected, sp)
        self.lams = _evaluators(self.exprs, [subject.symbols[id(v)] for v in subject.leaves])
        self.hp = subject.high_precision()
        self.compared = 0
        self._proved: bool | None = None

    def proved(self) -> bool:
        """Whether sympy proves the graph equal to `expected` (small graphs only; tried after
        the points agreed, so a wrong model never waits for simplify)."""
        if self._proved is None:
            sp = sympy_module()
            exprs = self.subject.expressions()
            self._proved = self.subject.size <= self.PROOF_LIMIT and all(
                sp.simplify(exprs[id(o)] - e) == 0
                for o, e in zip(self.subject.outs, self.exprs, strict=True))
        return self._proved

    def describe(self) -> str:
        """Whether a proof was found, and at how many points the values were compared."""
        how = "proved equal symbolically and " if self.proved() else ""
        return f"{self.name} ({how}compared at {self.compared} points)"

    def entries(self, pt: Point) -> list[Entry] | None:
        """The graph's outputs against `expected`'s at `pt`, in high precision. Where the graph
        is undefined there is nothing to compare; where it is defined and `expected` is not
        (complex, infinite, nan), they are not the same function."""
        import mpmath

        got = self.hp.values(pt.values)
        if got is None:
            return None
        with mpmath.workdps(self.hp.dps):
            want = [lam(*map(mpmath.mpf, pt.values)) for lam in self.lams]
        self.compared += 1
        return [Entry((Agreement("the traced graph", float(g),
                                 "expected", math.nan if w is None else float(w[0])),),
                      partial(self.report, k, pt), ModelMismatch)
                for k, (g, w) in enumerate(zip(got, want, strict=True))]

    def report(self, k: int, pt: Point, failed: list[Agreement]) -> str:
        """Both numbers, and both formulas when they are short."""
        s = self.subject
        ag = failed[0]
        of = "" if len(s.outs) == 1 else f"output {k} of "
        graph = str(s.expressions()[id(s.outs[k])]) if s.size <= 60 else (
            f"({s.size} instructions: see sg.to_sympy)")
        return "\n".join([
            f"model mismatch: {of}the traced graph is not the expected formula:",
            f"  traced graph  {fmt(ag.got)}",
            f"  expected      {fmt(ag.want) if not math.isnan(ag.want) else 'undefined here'}"
            + (" (complex, infinite or nan)" if math.isnan(ag.want) else ""),
            f"  {pt.text()}",
            f"  graph:    {_short(graph)}",
            f"  expected: {_short(str(self.exprs[k]))}",
        ])


def _evaluators(exprs: list[Any], args: list[Any]) -> list[Any]:
    """One evaluator an output (each says alone where it is undefined), tried once at the origin:
    a formula mpmath cannot evaluate (an undefined function, an unevaluated Derivative) is a
    TypeError here, not a traceback from sympy's printer at the first point."""
    import mpmath

    try:
        lams = [sympy_evaluator([e], args) for e in exprs]
        with mpmath.workdps(DPS):
            for lam in lams:
                lam(*[mpmath.mpf(0)] * len(args))
    except Exception as e:  # sympy's printer and lambdify raise many kinds
        why = (str(e).splitlines() or [""])[0]
        raise TypeError(
            f"check: expected cannot be evaluated numerically ({type(e).__name__}: {why}); use "
            "functions with a numeric value (call .doit() on a Derivative, Integral or Sum)"
        ) from None
    return lams


def _short(text: str, width: int = 160) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _expected_exprs(subject: Subject, expected: Any, sp: Any) -> list[Any]:
    """`expected` as one sympy expression per output, in the subject's symbols."""
    n = len(subject.outs)
    items = list(expected) if isinstance(expected, (list, tuple)) else [expected]
    if len(items) != n:
        raise ValueError(f"check: expected has {len(items)} formula(s), the graph {n} output(s)")
    try:
        exprs = [sp.sympify(e, strict=True) for e in items]
    except (sp.SympifyError, TypeError) as e:
        raise TypeError(f"check: expected must be sympy expressions ({e})") from None
    for e in exprs:
        if isinstance(e, sp.MatrixBase) or not isinstance(e, (sp.Expr, sp.logic.boolalg.Boolean)):
            raise TypeError("check: expected must be sympy expressions, one per output (a list "
                            f"for several outputs), got {type(e).__name__}")
    varying = {id(v) for v in subject.leaves}
    by_name: dict[str, Any] = {}
    for key, sym in subject.symbols.items():
        # a frozen leaf is the number it was compiled as (its double, exactly)
        by_name[str(sym)] = sym if key in varying else sp.Float(subject.leaf(key).data)
    unknown = sorted({str(x) for e in exprs for x in e.free_symbols} - set(by_name))
    if unknown:
        raise ValueError(
            f"check: expected uses symbol(s) {', '.join(unknown)} that name no leaf of the graph; "
            f"the leaves are named (as to_sympy names them): {', '.join(sorted(by_name)[:20])}"
        )
    return [e.xreplace({x: by_name[str(x)] for x in e.free_symbols}) for e in exprs]
