"""What `check` compares: the subject under test, points, agreements, and the tiers' base class.

Imports from symgrad: `engine` (`Value`), `ir` (`Const`, `Func`, `Var`, `evaluate`, `instr_text`,
`names`), `ops` (`OPS`, for kinks), `oracles` and `symbolic`; `compiled` and `higher` to build the
object under test; numpy. A `Subject` is what one check is about: the graph, the compiled object
under test (a `Compiled`, or a `Hessian` for order 2), its leaves, and the engine's and the compiled
object's numbers at each `Point`. A `Tier` lists `Entry`s at a point: each a group of `Agreement`s
(a number or an array from a source, against an oracle) and the report raised, as the entry's
`CheckFailed` subclass, if one fails. The tiers themselves live in `symgrad.check_tiers`;
`symgrad.checking` runs the loop.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .engine import Value, topological_order
from .ir import Const, Func, Var, evaluate, instr_text, names
from .ops import OPS
from .oracles import HighPrecision, engine_at
from .symbolic import expressions, leaf_symbols

__all__ = [
    "Agreement", "CheckFailed", "Entry", "GradientMismatch", "ModelMismatch", "Point", "Subject",
    "Tier", "Tolerance", "ValueMismatch",
]


class CheckFailed(AssertionError):
    """Raised by `check`: something it compared disagrees (an `AssertionError`, for tests)."""


class GradientMismatch(CheckFailed):
    """A derivative (gradient, Jacobian, Hessian entry, or an op's local rule) disagrees."""


class ValueMismatch(CheckFailed):
    """A value disagrees with the engine's, or an entry point (forward, batch, batch_forward)
    disagrees with single calls."""


class ModelMismatch(CheckFailed):
    """The traced graph is not the function `expected` says it should be."""


for _error in (CheckFailed, GradientMismatch, ValueMismatch, ModelMismatch):
    _error.__module__ = "symgrad"  # reports read symgrad.ValueMismatch, where users import it


@dataclass(frozen=True)
class Tolerance:
    """``|a - b| <= atol + rtol * |b|`` (or ``rtol * scale``); equal infinities and two nans
    agree."""

    rtol: float
    atol: float

    def close(self, a: Any, b: Any, scale: Any = None) -> Any:
        """Whether `a` agrees with the reference `b`, elementwise for arrays."""
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        s = np.abs(b) if scale is None else np.asarray(scale, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            near = np.abs(a - b) <= self.atol + self.rtol * s
        return near | same(a, b)


def same(a: Any, b: Any) -> Any:
    """Equal numbers (0.0 and -0.0 alike), or two nans: elementwise."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a == b) | (np.isnan(a) & np.isnan(b))


def identical(a: Any, b: Any) -> Any:
    """Bit for bit, a nan's sign aside (the exactness contract): as `same`, but 0.0 and -0.0
    differ (1 / x tells them apart); elementwise."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return same(a, b) & (np.signbit(a) == np.signbit(b)) | (np.isnan(a) & np.isnan(b))


@dataclass(frozen=True)
class Agreement:
    """`got` (from `source`) must agree with `want` (from `oracle`), elementwise for arrays.

    `close` is the test (elementwise), else check's rtol and atol relative to `scale` (default
    ``|want|``); those comparisons are counted in ``max_rel_error``. `where` describes element
    ``i`` of an array for a report; `index` is set on the failed element handed to a report.
    """

    source: str
    got: Any
    oracle: str
    want: Any
    close: Callable[[Any, Any], Any] | None = None
    scale: Any = None
    where: Callable[[int], str] | None = None
    index: int | None = None

    def element(self) -> str:
        """Which element failed, for a report ("" for a single number)."""
        return "" if self.index is None or self.where is None else self.where(self.index)


@dataclass(frozen=True)
class Entry:
    """What must agree at a point, and the report if something does not (`report` is given the
    agreements that failed, each narrowed to its first failed element)."""

    agreements: tuple[Agreement, ...]
    report: Callable[[list[Agreement]], str]
    error: type[CheckFailed] = GradientMismatch


@dataclass(frozen=True)
class Point:
    """One point of a check: the wrt leaves' values, then the inputs' (index 0: their current
    ``.data``; then random points near them)."""

    index: int
    values: tuple[float, ...]
    names: tuple[str, ...]
    n_wrt: int

    @property
    def params(self) -> np.ndarray:
        """The wrt leaves' values."""
        return np.array(self.values[: self.n_wrt], dtype=np.float64)

    @property
    def inputs(self) -> np.ndarray:
        """The inputs' values."""
        return np.array(self.values[self.n_wrt:], dtype=np.float64)

    def as_dict(self) -> dict[str, float]:
        """``{name: value}`` in leaf order (names as `to_sympy` gives them)."""
        return dict(zip(self.names, self.values, strict=True))

    def text(self) -> str:
        """``at {a: 1.5, b: -0.3}`` (a few leaves) or ``at random point 2 (7 leaves: ...)``."""
        where = "the leaves' values" if self.index == 0 else f"random point {self.index}"
        items = [f"{n}: {v:.6g}" for n, v in zip(self.names, self.values, strict=True)]
        if len(items) <= 6:
            return f"at {{{', '.join(items)}}}" + (" (the leaves' values)" * (self.index == 0))
        return f"at {where} ({len(items)} leaves: {', '.join(items[:4])}, ...)"


class Subject:
    """What one check is about: the graph, the compiled object under test and its leaves, and,
    computed once per point, the engine's and the compiled object's numbers there."""

    def __init__(
        self, outs: tuple[Value, ...], wrt: Sequence[Value] | None, inputs: Sequence[Value],
        backend: str, order: int, tol: Tolerance,
    ) -> None:
        self.outs, self.order, self.tol = outs, order, tol
        self.program = _build(outs, wrt, inputs, backend, order)
        self.wrt = list(self.program.wrt)
        if not self.wrt:
            raise ValueError(
                "check: there is nothing to differentiate by: wrt is empty (the default takes "
                "every leaf that is not an input and was not made from a Python number)"
            )
        self.leaves = self.wrt + list(self.program.inputs)
        self.executor = self.program.executor
        self.size = len(self.program.traced_ir.body)
        self.symbols = leaf_symbols(outs, self.leaves)  # every leaf, named as to_sympy names it
        self._leaves = {id(v): v for v in topological_order(outs) if not v._prev}
        self._leaves.update((id(v), v) for v in self.leaves)
        self.names = tuple(str(self.symbols[id(v)]) for v in self.leaves)
        self._engine: dict[int, tuple[list[float], list[list[float]]]] = {}
        self._compiled: dict[int, dict[str, np.ndarray]] = {}
        self._hp: HighPrecision | None = None
        self._exprs: dict[int, Any] | None = None
        self.kinks: dict[int, str] = {}  # point index -> the instruction sitting on its kink

    def leaf(self, key: int) -> Value:
        """The leaf with this ``id`` (a key of `symbols`)."""
        return self._leaves[key]

    @property
    def backend(self) -> str:
        """How the program runs, for reports: ``backend "numba" (tape)``."""
        return f'backend "{self.program.backend}" ({self.executor.name})'

    def same(self, a: Any, b: Any) -> Any:
        """The test between two runs of symgrad: bit for bit (every executor is exact)."""
        return identical(a, b)

    def engine(self, pt: Point) -> tuple[list[float], list[list[float]]]:
        """The interpreted engine's values and gradients at `pt`."""
        if pt.index not in self._engine:
            self._engine[pt.index] = engine_at(self.outs, self.leaves, self.wrt, pt.values)
        return self._engine[pt.index]

    def compiled(self, pt: Point) -> dict[str, np.ndarray]:
        """The compiled object's single call at `pt`: "value" ``(n_out,)``, "gradient"
        ``(n_out, P)`` and, for order 2, "hessian" ``(P, P)``."""
        if pt.index not in self._compiled:
            self._compiled[pt.index] = self.call(pt.params, pt.inputs)
        return self._compiled[pt.index]

    def call(self, p: np.ndarray, x: np.ndarray) -> dict[str, np.ndarray]:
        """A single call, its results by name."""
        r = self.program(p, x)
        n, P = len(self.outs), len(self.wrt)
        parts = {"value": np.atleast_1d(np.asarray(r[0], dtype=np.float64)),
                 "gradient": np.asarray(r[1]).reshape(n, P)}
        if self.order == 2:
            parts["hessian"] = np.asarray(r[2])
        return parts

    def on_kink(self, pt: Point) -> str | None:
        """The first instruction that sits exactly on one of its op's kinks at `pt` (max of a
        tie, relu or abs of 0, a comparison of equals), as IR text; None if there is none.
        There the derivative is a convention (one-sided, or a chosen subgradient) that sympy
        and finite differences do not define alike, so the derivative tiers compare it with
        the engine only. Remembered in `kinks`, for the result."""
        if pt.index not in self.kinks:
            self.kinks[pt.index] = _first_on_kink(self.program.traced_ir, pt.values) or ""
        return self.kinks[pt.index] or None

    def high_precision(self) -> HighPrecision:
        """The graph as an mpmath program over the leaves (built once)."""
        if self._hp is None:
            self._hp = HighPrecision(self.outs, self.leaves)
        return self._hp

    def expressions(self) -> dict[int, Any]:
        """sympy expressions of every node, in the wrt and input leaves' symbols (every other
        leaf its number: frozen at compile time)."""
        if self._exprs is None:
            keep = {id(v) for v in self.leaves}
            varying = {k: s for k, s in self.symbols.items() if k in keep}
            self._exprs = expressions(self.outs, varying)
        return self._exprs

    def lowering_culprit(self, func: Func, args: Sequence[float]) -> str:
        """The first instruction of `func` whose compiled form (one op compiled alone on this
        executor) gives another number than its reference rule at `args`, as a report line;
        or why no instruction is to blame."""
        return _lowering_culprit(self, func, args)


def _first_on_kink(func: Func, values: Sequence[float]) -> str | None:
    env: dict[Var, float] = {}
    evaluate(func, list(values), env)
    steady: set[Var] = set()
    for ins in func.body:
        op = OPS[ins.op]
        if _flat(ins.op) or all(isinstance(a, Const) or a in steady for a in ins.args):
            steady.add(ins.out)
        # a kink whose coordinate reads only steady values cannot be crossed: where(x > 0, ...)
        # with x < 0 takes its second branch all around the point, no convention involved
        reads = ins.args[:1] if op.kink_coordinate is None else ins.args
        if op.kinks and any(isinstance(a, Var) and a not in steady for a in reads):
            vals = [a.value if isinstance(a, Const) else env[a] for a in ins.args]
            if 0.0 in op.kink_offsets(*vals):
                return instr_text(ins, names(func))
    return None


@functools.cache
def _flat(name: str) -> bool:
    """Whether op `name`'s derivative is zero by every operand (a comparison, step, sign): its
    result is constant near any point off its kinks (and on one it is itself the kink)."""
    op = OPS[name]
    ones = [1.0] * op.arity
    return all(c is None for c in op.vjp(1.0, 1.0, *ones, **dict.fromkeys(op.params, 1.0)))


def _build(outs: tuple[Value, ...], wrt: Sequence[Value] | None, inputs: Sequence[Value],
           backend: str, order: int) -> Any:
    if order == 1:
        from .compiled import compile as sg_compile

        return sg_compile(outs, wrt=wrt, inputs=inputs, backend=backend)
    from .higher import hessian as sg_hessian

    if len(outs) != 1:
        raise ValueError(f"check(order=2): takes a single output Value, got {len(outs)}")
    return sg_hessian(outs[0], wrt=wrt, inputs=inputs, backend=backend)


def _lowering_culprit(subject: Subject, func: Func, args: Sequence[float]) -> str:
    """See `Subject.lowering_culprit`: each op kind is compiled alone once, with the executor
    the program runs on, and run on every instruction's operands in order."""
    env: dict[Var, float] = {}
    evaluate(func, args, env)
    nm = names(func)
    kernels: dict[tuple[str, tuple[float, ...]], Any] = {}
    for i, ins in enumerate(func.body):
        vals = [a.value if isinstance(a, Const) else env[a] for a in ins.args]
        key = (ins.op, ins.params)
        if key not in kernels:
            kernels[key] = _one_op(ins.op, ins.params, subject.executor.name)
        got = kernels[key].forward(vals, [])
        if not bool(subject.same(got, env[ins.out])):
            shown = ", ".join(f"{a!r}" for a in vals)
            return (f"instruction {i} `{instr_text(ins, nm)}`: compiled alone it gives {got!r} "
                    f"from ({shown}); the op's reference rule gives {env[ins.out]!r}")
    return ""


def _one_op(op: str, params: tuple[float, ...], backend: str) -> Any:
    from .compiled import compile as sg_compile
    from .ops import OPS

    d = OPS[op]
    leaves = [Value(1.0, label=f"a{i}") for i in range(d.arity)]
    node = d(*leaves, **dict(zip(d.params, params, strict=True)))
    return sg_compile(node, wrt=leaves, backend=backend, optimize=False, name=f"check_{op}")


class Tier:
    """One kind of comparison of `check`. A subclass says at each point what must agree
    (`entries`: a list, empty or None where it cannot compare there, e.g. where sympy's
    derivative is undefined); `describe` says, for `CheckResult`, how it checked.

    Class attributes: `name` (the key in ``CheckResult.tiers``); `derivatives` (its entries are
    the derivatives the check is about: they count in ``compared`` and ``max_rel_error``, and a
    check where none could be compared fails).
    """

    name: ClassVar[str] = ""
    derivatives: ClassVar[bool] = False

    def __init__(self, subject: Subject) -> None:
        self.subject = subject

    def entries(self, pt: Point) -> list[Entry] | None:
        """What to compare at `pt`."""
        raise NotImplementedError

    def entries_at(self, pt: Point) -> list[Entry] | None:
        """`entries`, except where a derivative tier's point sits on a kink: there the
        compiled gradient against the engine's only (`engine_only`)."""
        kink = self.subject.on_kink(pt) if self.derivatives else None
        return self.engine_only(pt, kink) if kink else self.entries(pt)

    def describe(self) -> str:
        """How this tier checked, for ``CheckResult.tiers``' text."""
        return self.name

    def engine_only(self, pt: Point, kink: str) -> list[Entry]:
        """At a point on a kink: the compiled gradient against the engine's only (the
        convention both follow), each entry reporting the instruction on the kink."""
        s = self.subject
        g_comp = s.compiled(pt)["gradient"]
        g_int = np.asarray(s.engine(pt)[1], dtype=np.float64)
        if not (finite(g_comp) and finite(g_int)):
            return []

        def report(failed: list[Agreement]) -> str:
            ag = failed[0]
            return "\n".join([
                f"gradient mismatch at {ag.element()} ({s.backend}, against the engine):",
                f"  compiled    {fmt(ag.got)}",
                f"  interpreted {fmt(ag.want)}",
                f"  {pt.text()}, where `{kink}` sits on a kink of its op (there the "
                "derivative is a convention, compared with the engine only)",
            ])

        def where(i: int) -> str:
            k, j = np.unravel_index(i, g_comp.shape)
            return f"d/d({s.names[j]})" if len(s.outs) == 1 else \
                f"d(output {k})/d({s.names[j]})"

        return [Entry((Agreement("compiled", g_comp, "interpreted", g_int, where=where),),
                      report)]


def finite(xs: Any) -> bool:
    """Every number of `xs` (nested lists or arrays) is finite."""
    return bool(np.all(np.isfinite(np.asarray(xs, dtype=np.float64))))


def fmt(x: float) -> str:
    """A float for reports: its repr (every digit matters when two runs differ)."""
    return repr(float(x)) if not math.isnan(x) else "nan"
