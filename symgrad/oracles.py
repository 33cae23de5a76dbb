"""Oracles for `check` that share nothing with symgrad's autodiff or code generation.

Imports from symgrad: `engine` (`Value`, `topological_order`), `ir` (`Const`, `Func`, `Var`,
`evaluate`, `instr_text`, `names`), `ops` (`OPS`) and `symbolic` (`sympy_module`); mpmath and
sympy lazily. Three oracles:

- `HighPrecision`: a `Value` graph evaluated in mpmath at 40 digits, each op through its sympy
  form (``OpDef.sympy`` lambdified to mpmath), never through the op table's float rules, and
  directional derivatives of it by central differences in that precision (their error is far
  below any float tolerance, and no derivative rule is involved);
- `rule_disagreement` / `first_bad_rule`: an op's local derivative rule (``OpDef.vjp`` at
  ct = 1) against ``sympy.diff`` of its sympy form, at given operand values;
- `engine_at`: the interpreted engine's values and ``backward()`` gradients at a point, on a copy
  of the graph (the user's ``.data`` and ``.grad`` are left alone).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .engine import Value, topological_order
from .ir import Const, Func, Var, evaluate, instr_text, names
from .ops import OPS, WHERE, OpDef
from .symbolic import sympy_module

__all__ = [
    "DPS", "HighPrecision", "engine_at", "first_bad_rule", "mp_function", "rule_disagreement",
    "rule_values", "sympy_evaluator",
]

DPS = 40  # digits of the high-precision evaluation
_MP_ERRORS = (ZeroDivisionError, ValueError, TypeError, OverflowError, ArithmeticError)

_lock = threading.Lock()
_functions: dict[tuple[Any, ...], Callable[..., Any]] = {}


def mp_function(op: str, params: tuple[float, ...], derivative: int | None = None) -> Any:
    """Op `op`'s sympy form (or its ``sympy.diff`` by operand `derivative`), lambdified to
    mpmath over fresh real symbols; built once per op, parameters and operand."""
    key = (op, params, derivative)
    with _lock:
        fn = _functions.get(key)
    if fn is None:
        sp = sympy_module()
        d = OPS[op]
        xs = sp.symbols(f"a0:{d.arity}", real=True)
        expr = d.sympy(sp, *xs, **dict(zip(d.params, params, strict=True)))
        if derivative is not None:
            expr = sp.diff(expr, xs[derivative])
        # DiracDelta (the derivative of a kink) is 0 away from its kink, where it is used
        expr = expr.replace(sp.DiracDelta, lambda *a: sp.S.Zero)
        fn = sp.lambdify(xs, expr, modules="mpmath")
        with _lock:
            _functions[key] = fn
    return fn


def _real(x: Any) -> Any:
    """`x` as a finite mpf, or None (complex, infinite, nan or not a number)."""
    import mpmath

    if not isinstance(x, mpmath.mpf):
        try:
            x = mpmath.mpf(x)
        except _MP_ERRORS:
            return None
    return x if mpmath.isfinite(x) else None


class HighPrecision:
    """A Value graph as a flat program over mpmath numbers: the `leaves` vary, every other leaf
    is its ``.data`` (a double, exactly), each op is `mp_function` of its sympy form."""

    def __init__(self, outs: Sequence[Value], leaves: Sequence[Value], dps: int = DPS) -> None:
        self.dps = dps
        slot: dict[int, int] = {id(v): i for i, v in enumerate(leaves)}
        self.n_leaves = len(leaves)
        self.consts: list[float] = []
        self.steps: list[tuple[Callable[..., Any], tuple[int, ...], bool]] = []
        self.kinked: list[tuple[OpDef, tuple[int, ...]]] = []  # (op, operand slots)
        nodes = [v for v in topological_order(outs) if id(v) not in slot]
        consts = [v for v in nodes if not v._prev]
        for v in consts:
            slot[id(v)] = len(slot)
            self.consts.append(v.data)
        for v in nodes:
            if not v._prev:
                continue
            op = v.opdef
            if op is None:
                raise ValueError(f"a Value with operands but no op-table entry (op {v._op!r})")
            params = tuple(float(v.op_params[p]) for p in op.params)
            args = tuple(slot[id(c)] for c in v._prev)
            if op.kinks:
                self.kinked.append((op, args))
            self.steps.append((mp_function(op.name, params), args, op is WHERE))
            slot[id(v)] = len(slot)
        self.outs = [slot[id(o)] for o in outs]
        self._center: tuple[tuple[float, ...] | None, tuple[int, ...] | None] = (None, None)

    def run(self, xs: Sequence[Any]) -> list[Any] | None:
        """Every slot's value at leaf values `xs` (floats or mpf), None for a slot that is
        undefined, complex or not finite; None where an output is. An op reading an undefined
        slot is undefined, except `where`, which reads its condition and the branch it takes
        only (``where(x > 0, log(x), 0)`` is defined at x < 0)."""
        import mpmath

        with mpmath.workdps(self.dps):
            env: list[Any] = [mpmath.mpf(x) for x in xs] + [mpmath.mpf(c) for c in self.consts]
            for fn, args, select in self.steps:
                vals = [env[a] for a in args]
                if select and vals[0] is not None:
                    # its lambdified Piecewise evaluates the branch it takes only
                    vals = [vals[0], *(mpmath.nan if v is None else v for v in vals[1:])]
                r = None
                if all(v is not None for v in vals):
                    try:
                        r = _real(fn(*vals))
                    except _MP_ERRORS:
                        r = None
                env.append(r)
        return None if any(env[o] is None for o in self.outs) else env

    def values(self, xs: Sequence[Any]) -> list[Any] | None:
        """The outputs at `xs`, or None."""
        env = self.run(xs)
        return None if env is None else [env[o] for o in self.outs]

    def sides(self, env: list[Any]) -> tuple[int, ...]:
        """Where each kinked op is relative to its kinks (below, at, above), by its kink
        coordinate (the operand, or e.g. the difference of max's operands)."""
        out: list[int] = []
        for op, args in self.kinked:
            vals = [env[a] for a in args]
            if any(v is None for v in vals):  # undefined: a side of its own
                out.append(2)
                continue
            out += [(d > 0) - (d < 0) for d in op.kink_offsets(*vals)]
        return tuple(out)

    def _center_sides(self, xs: Sequence[float]) -> tuple[int, ...] | None:
        """`sides` at `xs` (None where undefined), remembered for the last point asked about:
        every direction at a point shares it."""
        key = tuple(xs)
        if self._center[0] != key:
            env = self.run(xs)
            self._center = (key, None if env is None else self.sides(env))
        return self._center[1]

    def _step(self, xs: Sequence[float], u: Sequence[float], root: int) -> Any:
        """A central-difference step: ``10 ** -(dps / root)`` relative to the point, so that
        truncation (h**2 or h**2 times a derivative) and rounding (``10 ** -dps / h``, or over
        h**2) both stay far below any float tolerance."""
        import mpmath

        scale = 1 + max((abs(x) for x in xs[: len(u)]), default=0.0)
        size = max((abs(a) for a in u), default=0.0) or 1.0
        return mpmath.mpf(10) ** (-(self.dps // root)) * scale / size

    def directional(self, xs: Sequence[float], u: Sequence[float]) -> list[Any] | None:
        """d(outputs)/dt at t = 0 along ``xs + t * u`` (`u` may be shorter than `xs`: the rest
        stays), by central differences at `dps` digits; None where undefined or where a kink lies
        within the stencil (there the one-sided slopes differ)."""
        import mpmath

        with mpmath.workdps(self.dps):
            h = self._step(xs, u, 3)
            center = self._center_sides(xs)
            ends = []
            for sign in (1, -1):
                moved = [mpmath.mpf(x) + sign * h * ui for x, ui in zip(xs, u, strict=False)]
                env = self.run(moved + [mpmath.mpf(x) for x in xs[len(u):]])
                if env is None or center is None or self.sides(env) != center:
                    return None
                ends.append(env)
            return [(ends[0][o] - ends[1][o]) / (2 * h) for o in self.outs]

    def second_directional(
        self, xs: Sequence[float], u: Sequence[float], v: Sequence[float]
    ) -> list[Any] | None:
        """d2(outputs)/ds dt at 0 along ``xs + s * u + t * v``: the mixed central difference."""
        import mpmath

        with mpmath.workdps(self.dps):
            h = self._step(xs, [max(abs(a), abs(b)) for a, b in zip(u, v, strict=True)], 4)
            center = self._center_sides(xs)
            corners = []
            for su, sv in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                moved = [mpmath.mpf(x) + h * (su * a + sv * b)
                         for x, a, b in zip(xs, u, v, strict=False)]
                env = self.run(moved + [mpmath.mpf(x) for x in xs[len(u):]])
                if env is None or center is None or self.sides(env) != center:
                    return None
                corners.append(env)
            return [(corners[0][o] - corners[1][o] - corners[2][o] + corners[3][o]) / (4 * h * h)
                    for o in self.outs]


def sympy_evaluator(exprs: Sequence[Any], args: Sequence[Any]) -> Callable[..., list[Any] | None]:
    """`exprs` as a function of `args` (symbols) on mpmath numbers, or None where undefined.

    A walk over the expressions' nodes, each shared node once, each kind of function lambdified
    once over fresh symbols: linear in the expressions' size, where lambdify of a large
    expression costs seconds.
    """

    sp = sympy_module()
    slot: dict[Any, int] = {a: i for i, a in enumerate(args)}
    steps: list[tuple[Callable[..., Any] | None, tuple[int, ...]]] = []
    consts: dict[int, Any] = {}

    def visit(node: Any) -> int:
        stack = [node]
        while stack:
            e = stack[-1]
            if e in slot:
                stack.pop()
                continue
            todo = [a for a in _operands(sp, e) if a not in slot]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            slot[e] = len(args) + len(steps)
            if (e.is_Atom and e.is_number) or e is sp.true or e is sp.false:
                consts[slot[e]] = _mp_constant(sp, e)
                steps.append((None, ()))
            else:
                steps.append((_node_function(sp, e), tuple(slot[a] for a in _operands(sp, e))))
        return slot[node]

    outs = [visit(e) for e in exprs]

    def run(*xs: Any) -> list[Any] | None:
        # an undefined node is None; it makes undefined what reads it, but a Piecewise reads
        # its conditions in order and the branch it takes only
        env = list(xs)
        for i, (fn, ops_) in enumerate(steps, len(xs)):
            if fn is None:
                env.append(consts[i])
                continue
            vals = [env[a] for a in ops_]
            if fn is not _piecewise and any(v is None for v in vals):
                env.append(None)
                continue
            try:
                env.append(fn(*vals))
            except _MP_ERRORS:
                env.append(None)
        if any(env[o] is None for o in outs):
            return None
        vals = [_real(env[o]) if not isinstance(env[o], bool) else env[o] for o in outs]
        return None if any(v is None for v in vals) else vals

    return run


def _operands(sp: Any, e: Any) -> tuple[Any, ...]:
    if isinstance(e, sp.Piecewise):
        return tuple(x for pair in e.args for x in pair)  # value, condition, value, ...
    return tuple(e.args)


def _mp_constant(sp: Any, e: Any) -> Any:
    import mpmath

    if e is sp.true or e is sp.false:
        return bool(e)
    if not (e.is_finite and e.is_extended_real):  # oo, zoo, nan, I: undefined where read
        return mpmath.nan
    with mpmath.workdps(DPS + 10):  # built once, used at any precision up to DPS
        if e.is_Rational:
            return mpmath.mpf(int(e.p)) / int(e.q)
        return mpmath.mpf(sp.Float(e.evalf(DPS + 10), DPS + 10)._mpf_)


def _node_function(sp: Any, e: Any) -> Callable[..., Any]:
    """How to compute node `e` from its operands' values."""
    if isinstance(e, sp.Add):
        return lambda *xs: sum(xs[1:], xs[0])
    if isinstance(e, sp.Mul):
        return _product
    if isinstance(e, sp.Pow):
        return lambda a, b: a**b
    if isinstance(e, sp.Piecewise):
        return _piecewise
    key = (e.func, len(e.args))
    with _lock:
        fn = _functions.get(key)
    if fn is None:
        xs = sp.symbols(f"a0:{len(e.args)}", real=True)
        fn = sp.lambdify(xs, e.func(*xs), modules="mpmath")
        with _lock:
            _functions[key] = fn
    return fn


def _product(*xs: Any) -> Any:
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


def _piecewise(*xs: Any) -> Any:
    for value, cond in zip(xs[::2], xs[1::2], strict=True):
        if cond is None:
            return None
        if cond:
            return value
    return None  # no branch applies


# ---- local derivative rules against sympy.diff ---------------------------------------------------


def rule_values(
    op: str, params: tuple[float, ...], vals: Sequence[float]
) -> list[tuple[int, float, float]]:
    """``(operand, rule's value, sympy.diff's value)`` for each operand of op `op` at `vals`: its
    vjp rule at ct = 1 against ``sympy.diff`` of its sympy form, in 30-digit mpmath. Operands
    where sympy's derivative is undefined, complex or infinite, or the rule's is not finite,
    are left out."""
    import mpmath

    d = OPS[op]
    named = dict(zip(d.params, params, strict=True))
    out = d.impl(*vals, **named)
    rule = d.vjp(1.0, out, *vals, **named)
    pairs = []
    for i, r in enumerate(rule):
        with mpmath.workdps(30):
            try:
                w = _real(mp_function(op, params, i)(*map(mpmath.mpf, vals)))
            except _MP_ERRORS:
                continue
        got = 0.0 if r is None else float(r)
        if w is not None and math.isfinite(got):
            pairs.append((i, got, float(w)))
    return pairs


def rule_disagreement(
    op: str, params: tuple[float, ...], vals: Sequence[float], close: Callable[[float, float], bool]
) -> tuple[int, float, float] | None:
    """The first ``(operand, rule's value, sympy.diff's value)`` of `rule_values` that is not
    `close`, or None."""
    return next(((i, got, want) for i, got, want in rule_values(op, params, vals)
                 if not close(got, want)), None)


def first_bad_rule(
    func: Func, args: Sequence[float], rtol: float = 1e-7, atol: float = 1e-10
) -> str:
    """Walk `func` at `args`; describe the first instruction whose vjp rule disagrees with sympy.

    Each op's rule (evaluated with ct = 1) is compared with ``sympy.diff`` of its sympy
    counterpart at the instruction's operand values. Returns "" when all agree.
    """
    env: dict[Var, float] = {}
    evaluate(func, args, env)
    nm = names(func)

    def close(a: float, b: float) -> bool:
        return abs(a - b) <= atol + rtol * abs(b)

    for ins in func.body:
        vals = [a.value if isinstance(a, Const) else env[a] for a in ins.args]
        bad = rule_disagreement(ins.op, ins.params, vals, close)
        if bad is not None:
            i, got, want = bad
            return (
                f"{instr_text(ins, nm)}  (op {ins.op!r}, operand {i} = {vals[i]!r}): "
                f"the op table's rule gives {got!r}, sympy.diff gives {want!r}"
            )
    return ""


# ---- the interpreted engine ----------------------------------------------------------------------


def _copy_graph(
    outs: Sequence[Value], leaf_values: dict[int, float]
) -> tuple[list[Value], dict[int, Value]]:
    """A fresh copy of the graph with some leaves' data replaced (by ``id``), for ``backward()``.

    Returns the copied outputs and the map from original node ``id`` to its copy.
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


def engine_at(
    outs: Sequence[Value], leaves: Sequence[Value], wrt: Sequence[Value], pt: Sequence[float]
) -> tuple[list[float], list[list[float]]]:
    """The interpreted engine at leaf values `pt`: each output's value and its ``backward()``
    gradient by the `wrt` leaves (one fresh copy of the graph per output)."""
    values, rows = [], []
    given = {id(v): x for v, x in zip(leaves, pt, strict=True)}
    for k in range(len(outs)):
        copies, env = _copy_graph(outs, given)
        values.append(copies[k].data)
        copies[k].backward()
        rows.append([float(env[id(w)].grad) if id(w) in env else 0.0 for w in wrt])
    return values, rows
