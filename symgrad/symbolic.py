"""sympy and Value graphs, both ways: `to_sympy` exports a graph, `from_sympy` imports one.

Imports from symgrad: `engine` (`Value`, `topological_order`), `ops` (the op table) and `trace`
(`as_outputs`); sympy lazily, when an expression is made or read. `symgrad.checking` compares
derivatives with exported expressions; `symgrad.compile` compiles imported ones.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from . import ops
from .engine import Value, topological_order
from .trace import as_outputs

__all__ = [
    "NoSympyForm", "expressions", "from_sympy", "is_sympy", "leaf_symbols", "sympy_module",
    "to_sympy",
]


class NoSympyForm(ValueError):
    """sympy refuses to build a node's expression: a comparison whose operand sympy finds
    non-real in some branch (``1/step(x)`` has ``zoo`` where step is 0), for one."""


def sympy_module() -> Any:
    """sympy, imported on first use (``import symgrad`` does not load it)."""
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
    sp = sympy_module()
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
    exprs = expressions(outs, leaf_symbols(outs))
    res = [exprs[id(o)] for o in outs]
    return res[0] if isinstance(outputs, Value) else res


def expressions(outs: Sequence[Value], syms: dict[int, Any]) -> dict[int, Any]:
    """The sympy expression of every node of the graphs of `outs`, by ``id``.

    A leaf with a symbol in `syms` (by ``id``) is that symbol, any other leaf its number.
    """
    sp = sympy_module()
    env: dict[int, Any] = {}
    for node in topological_order(outs):
        op = node.opdef
        if not node._prev:
            env[id(node)] = syms[id(node)] if id(node) in syms else _number(sp, node.data)
        elif op is None:
            raise ValueError(f"a Value with operands but no op-table entry (op {node._op!r})")
        else:
            operands = [env[id(c)] for c in node._prev]
            try:
                env[id(node)] = op.sympy(sp, *operands, **node.op_params)
            except TypeError as e:  # sympy's "Invalid comparison of non-real zoo"
                raise NoSympyForm(f"to_sympy: sympy cannot form {node._op} of "
                                  f"{', '.join(map(str, operands))}: {e}") from None
    return env


# ---- sympy in: expressions as a Value graph -----------------------------------------------------

SUPPORTED = (
    "numbers, symbols, + - * /, ** with a constant exponent (a constant base with a variable "
    "one), exp, log, sqrt, Abs, sign, Max, Min, tanh, sin, cos, Piecewise with an otherwise "
    "branch, comparisons (< <= > >= Eq Ne), And, Or, Not, Xor, Implies, ITE"
)


def is_sympy(obj: Any) -> bool:
    """Whether `obj` is a sympy object, or a list or tuple holding one (sympy is not imported:
    without it loaded, nothing can be a sympy object)."""
    sp = sys.modules.get("sympy")
    if sp is None:
        return False
    if isinstance(obj, (list, tuple)):
        return any(isinstance(o, sp.Basic) for o in obj)
    return isinstance(obj, sp.Basic)


def from_sympy(
    exprs: Any, wrt: Sequence[Any] | None = None, inputs: Sequence[Any] = (),
) -> tuple[Value | list[Value], list[Value], list[Value]]:
    """sympy expressions as a Value graph: a leaf per symbol, a node per operation.

    What `symgrad.compile` does with a sympy expression: the graph is then traced and compiled
    like any other, so value and gradient are sympy's (to rounding). A sum is added left to
    right in sympy's order of terms, a product multiplied so, divided by the product of its
    negative powers (``x/y`` is ``div(x, y)``, ``x/3`` is ``div(x, 3.0)``).

    Args:
        exprs: a sympy expression, or a list of them (several outputs).
        wrt: a list of sympy Symbols to differentiate by, in order (default: every free
            symbol of `exprs` not in `inputs`, sorted by name; two distinct symbols of one
            name, e.g. ``Symbol("x")`` and ``Symbol("x", positive=True)``, are then refused).
        inputs: a list of sympy Symbols whose value changes per call.
    Returns:
        ``(outputs, wrt_leaves, input_leaves)``: a Value (or a list, as `exprs` is), and for
        each symbol a leaf Value labelled with its name (data 0.0, the default of each call).
    Raises:
        TypeError: an object that is not a sympy expression or Symbol, `wrt` or `inputs` given
            as a set or a dict (no fixed order), a non-real constant, or an operation with no
            counterpart in the op table (named, with what is supported).
        ValueError: a free symbol in neither `wrt` nor `inputs`, a symbol listed twice, two
            distinct symbols of one name with ``wrt=None``.
    """
    sp = sympy_module()
    several = isinstance(exprs, (list, tuple))
    outs = [_sympify(sp, e, f"outputs[{i}]") for i, e in enumerate(exprs)] if several else [
        _sympify(sp, exprs, "outputs")]
    if several and not outs:
        raise ValueError("outputs: the list of expressions is empty")
    free = set().union(*(e.free_symbols for e in outs))
    given = _symbols(sp, inputs, "inputs")
    if wrt is None:
        wrt = _default_wrt(sp, free - set(given))
    params = _symbols(sp, wrt, "wrt")
    leaves = _leaves(params, given)
    missing = sorted(str(s) for s in free if s not in leaves)
    if missing:
        raise ValueError(
            f"the expression's symbol(s) {', '.join(missing)} are in neither wrt nor inputs: "
            "list each in one of them (a sympy symbol has no value to freeze)"
        )
    reader = _Reader(sp, leaves)
    values = [_as_value(reader.value(e)) for e in outs]
    return (values if several else values[0]), [leaves[s] for s in params], [
        leaves[s] for s in given]


def _sympify(sp: Any, e: Any, what: str) -> Any:
    if isinstance(e, (int, float)) and not isinstance(e, bool):
        return sp.Float(e) if isinstance(e, float) else sp.Integer(e)
    if not isinstance(e, sp.Basic):
        raise TypeError(f"{what}: expected a sympy expression, got {type(e).__name__} {e!r:.40}")
    return e


def _default_wrt(sp: Any, free: set[Any]) -> list[Any]:
    """The free symbols by name, refusing two distinct symbols of one name (``Symbol("x")``
    and ``Symbol("x", positive=True)``): nothing orders them the same in every process."""
    by_name: dict[str, list[Any]] = {}
    for s in free:
        by_name.setdefault(s.name, []).append(s)
    clash = sorted(name for name, syms in by_name.items() if len(syms) > 1)
    if clash:
        shown = "; ".join(
            f"{name!r}: {', '.join(sorted(sp.srepr(s) for s in by_name[name]))}" for name in clash)
        raise ValueError(
            f"wrt=None: the expression has distinct symbols with the same name ({shown}), "
            "which have no order by name and would share one name as parameters: pass wrt "
            "(and inputs) as lists, or give the symbols different names"
        )
    return sorted(free, key=lambda s: s.name)


def _symbols(sp: Any, syms: Any, what: str) -> list[Any]:
    if isinstance(syms, Mapping):
        # iterating a dict gives its keys: never what was meant
        raise TypeError(
            f"{what}: expected a list of sympy Symbols, got a {type(syms).__name__}; pass "
            "list(d.values()) (or list(d) if the keys are the symbols)"
        )
    if isinstance(syms, (set, frozenset)):
        raise TypeError(
            f"{what}: expected a list of sympy Symbols, got a {type(syms).__name__}, which has "
            "no order; pass a list (the order is the order of params and gradients)"
        )
    if isinstance(syms, sp.Basic) or not isinstance(syms, Iterable):
        raise TypeError(f"{what}: expected a list of sympy Symbols, got {type(syms).__name__}")
    out = list(syms)
    for i, s in enumerate(out):
        if not isinstance(s, sp.Symbol):
            raise TypeError(
                f"{what}[{i}]: expected a sympy Symbol, got {type(s).__name__} {str(s)!r:.40}")
    return out


def _leaves(params: list[Any], given: list[Any]) -> dict[Any, Value]:
    """A leaf per symbol, refusing a symbol listed twice."""
    leaves: dict[Any, Value] = {}
    where: dict[Any, str] = {}
    for what, syms in (("wrt", params), ("inputs", given)):
        for i, s in enumerate(syms):
            if s in leaves:
                raise ValueError(f"{what}[{i}]: symbol {s} is already listed as {where[s]}")
            leaves[s] = Value(0.0, label=str(s))
            where[s] = f"{what}[{i}]"
    return leaves


def _as_value(v: Value | float) -> Value:
    if isinstance(v, Value):
        return v
    out = Value(v)  # a constant expression: a literal leaf, never a parameter
    out._lit = True
    return out


Plan = tuple[list[Any], Callable[..., Any]]


class _Reader:
    """Reads sympy expressions into Values, bottom up, each distinct subexpression once."""

    def __init__(self, sp: Any, leaves: dict[Any, Value]) -> None:
        self.sp = sp
        self.memo: dict[Any, Value | float] = dict(leaves)
        self.unary = {
            sp.exp: ops.EXP, sp.log: ops.LOG, sp.tanh: ops.TANH, sp.sin: ops.SIN,
            sp.cos: ops.COS, sp.Abs: ops.ABS, sp.sign: ops.SIGN,
        }

    def value(self, expr: Any) -> Value | float:
        """The Value (or float, for a constant) of `expr`; iterative, so deep trees are fine."""
        plans: dict[Any, Plan] = {}
        stack = [expr]
        while stack:
            node = stack[-1]
            if node in self.memo:
                stack.pop()
                continue
            plan = plans.get(node)
            if plan is None:
                plan = plans[node] = self.plan(node)
            todo = [n for n in plan[0] if n not in self.memo]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            self.memo[node] = plan[1](*(self.memo[n] for n in plan[0]))
        return self.memo[expr]

    def plan(self, node: Any) -> Plan:
        """What `node` needs (subexpressions) and how to build it from their values."""
        sp = self.sp
        if not node.free_symbols:
            return [], lambda: _constant(sp, node)
        if isinstance(node, sp.Add):
            return self.known_sum(node) or (list(node.args), lambda *vs: _fold(operator.add, vs))
        if isinstance(node, sp.Mul):
            return self.product(node)
        if isinstance(node, sp.Pow):
            return self.power(node)
        if isinstance(node, sp.Piecewise):
            return self.piecewise(node)
        if isinstance(node, (sp.Max, sp.Min)):
            a = node.args[0]
            if isinstance(node, sp.Max) and len(node.args) == 2 and node.args[1] == -a:
                return [a if a.could_extract_minus_sign() is False else -a], ops.ABS
            op = ops.MAXIMUM if isinstance(node, sp.Max) else ops.MINIMUM
            return list(node.args), lambda *vs: _fold(op, vs)
        if isinstance(node, sp.Heaviside):
            return self.heaviside(node)
        if isinstance(node, (sp.Rel, sp.And, sp.Or, sp.Not, sp.Xor, sp.Implies, sp.ITE)):
            return self.logic(node)
        op = self.unary.get(node.func)
        if op is not None and len(node.args) == 1:
            return list(node.args), op
        raise TypeError(
            f"sympy {type(node).__name__} ({node!s:.60}) has no counterpart in symgrad's op "
            f"table; supported: {SUPPORTED}"
        )

    def product(self, node: Any) -> Plan:
        """Factors over divisors: ``x * y**-2 * 2/3`` as ``(2 * x) / (3 * y**2)``."""
        sp = self.sp
        num: list[Any] = []
        den: list[Any] = []
        negate = False
        for f in node.args:
            if f.is_Rational:  # the coefficient: its sign, numerator and denominator
                negate, p = f.p < 0, abs(f.p)
                num += [sp.Integer(p)] if p != 1 else []
                den += [sp.Integer(f.q)] if f.q != 1 else []
            elif isinstance(f, sp.Pow) and f.exp.is_number and bool(f.exp < 0):
                den.append(f.base if f.exp == -1 else sp.Pow(f.base, -f.exp))
            else:
                num.append(f)
        k = len(num)

        def build(*vs: Any) -> Any:
            out = _fold(operator.mul, vs[:k]) if k else 1.0
            out = out / _fold(operator.mul, vs[k:]) if len(vs) > k else out
            return -out if negate else out

        return num + den, build

    def power(self, node: Any) -> Plan:
        """A constant exponent is pow (sqrt for 1/2, a division for -1 and -1/2); a constant
        positive base with a variable exponent is ``exp(e * log(b))``, with ``log(b)`` rounded
        once (so a few ulps from the correctly rounded power: there is no pow op of a variable
        exponent)."""
        sp = self.sp
        b, e = node.args
        if not e.free_symbols:
            if e == sp.S.Half:
                return [b], ops.SQRT
            if e == -sp.S.Half:
                return [b], lambda v: 1.0 / ops.SQRT(v)
            if e == -1:
                return [b], lambda v: 1.0 / v
            p = _constant(sp, e)
            return [b], lambda v: v ** p
        if not b.free_symbols and bool(b > 0):
            k = _constant(sp, sp.log(b))
            return [e], lambda v: ops.EXP(v * k)
        raise TypeError(
            f"sympy Pow ({node!s:.60}): a variable exponent of a variable or non-positive base "
            "has no counterpart in symgrad's op table (write exp(y*log(x)) for x > 0)"
        )

    def piecewise(self, node: Any) -> Plan:
        """Nested `where`s, the first branch whose condition holds; ``Ne(c, 0)`` selects by
        ``c`` itself. The forms `to_sympy` gives relu, abs, sign and a comparison come back as
        those ops."""
        sp = self.sp
        pieces = node.args
        if pieces[-1].cond != sp.true:
            raise TypeError(
                f"sympy Piecewise ({node!s:.60}) has no otherwise branch (condition True): it "
                "is undefined where no condition holds"
            )
        known = self.known_piecewise(node)
        if known is not None:
            return known
        needs: list[Any] = []
        for x, c in pieces[:-1]:
            needs += [x, c.lhs if isinstance(c, sp.Ne) and c.rhs == 0 else c]
        needs.append(pieces[-1].expr)

        def build(*vs: Any) -> Any:
            out = vs[-1]
            for i in range(len(vs) - 3, -1, -2):
                out = ops.WHERE(vs[i + 1], vs[i], out)
            return out

        return needs, build

    def known_piecewise(self, node: Any) -> Plan | None:
        """relu or a comparison, spelled as `to_sympy` spells them, or None."""
        sp = self.sp
        (x, c), *rest = node.args
        if len(rest) != 1 or rest[0].expr != 0 or not isinstance(c, sp.Rel):
            return None
        if isinstance(c, sp.StrictGreaterThan) and c.rhs == 0 and c.lhs == x:
            return [x], ops.RELU
        if x == 1 and not isinstance(c, (sp.Eq, sp.Ne)):
            return [c], lambda v: v  # a comparison is already 1.0 or 0.0
        return None

    def known_sum(self, node: Any) -> Plan | None:
        """sign, spelled as `to_sympy` spells it (``Heaviside(x) - Heaviside(-x)``), or None."""
        sp = self.sp
        if len(node.args) != 2:
            return None
        neg, pos = sorted(node.args, key=lambda t: not t.could_extract_minus_sign())
        if (isinstance(pos, sp.Heaviside) and isinstance(-neg, sp.Heaviside)
                and (-neg).args == (-pos.args[0], pos.args[1]) and pos.args[1] == sp.S.Half):
            return [pos.args[0]], ops.SIGN
        return None

    def heaviside(self, node: Any) -> Plan:
        """Heaviside(x, 0) is step; Heaviside(x, 1) is x >= 0; sympy's default H(0) = 1/2 is
        no op's value."""
        x, h0 = node.args
        if h0 == 0:
            return [x], ops.STEP
        if h0 == 1:
            return [x], lambda v: ops.GE(v, 0.0)
        raise TypeError(
            f"sympy Heaviside ({node}) is {h0} at 0, which no op of symgrad's table gives: write "
            "Heaviside(x, 0) (symgrad's step, relu's derivative) or Heaviside(x, 1)"
        )

    def logic(self, node: Any) -> Plan:
        """Comparisons are conditions (1.0 or 0.0); And multiplies them, Or takes the
        maximum, Not is 1 - c, Xor |a - b|, Implies max(1 - a, b), ITE(c, a, b) where;
        Eq is ``a <= b`` and ``a >= b``."""
        sp = self.sp
        compare = {sp.StrictLessThan: ops.LT, sp.LessThan: ops.LE,
                   sp.StrictGreaterThan: ops.GT, sp.GreaterThan: ops.GE}
        if node.func in compare:
            return list(node.args), compare[node.func]
        if isinstance(node, (sp.Eq, sp.Ne)):
            flip = isinstance(node, sp.Ne)

            def equal(a: Any, b: Any) -> Any:
                eq = ops.LE(a, b) * ops.GE(a, b)
                return 1.0 - eq if flip else eq

            return list(node.args), equal
        if isinstance(node, sp.Not):
            return list(node.args), lambda c: 1.0 - c
        if isinstance(node, sp.ITE):
            return list(node.args), ops.WHERE
        if isinstance(node, sp.Implies):
            return list(node.args), lambda a, b: ops.MAXIMUM(1.0 - a, b)
        if isinstance(node, sp.Xor):
            return list(node.args), lambda *vs: _fold(lambda a, b: abs(a - b), vs)
        op = operator.mul if isinstance(node, sp.And) else ops.MAXIMUM
        return list(node.args), lambda *vs: _fold(op, vs)


def _fold(op: Callable[[Any, Any], Any], vs: Sequence[Any]) -> Any:
    out = vs[0]
    for v in vs[1:]:
        out = op(out, v)
    return out


# digits a constant is evaluated to before it is rounded once to the nearest double: sympy's
# default (15 digits, then truncated to 53 bits) is one ulp off for about one constant in thirty
CONSTANT_DIGITS = 40


def _constant(sp: Any, e: Any) -> float:
    """A symbol-free sympy expression as the double nearest its value (true and false as 1.0
    and 0.0): evaluated to `CONSTANT_DIGITS` digits, then rounded to nearest once."""
    from mpmath.libmp import round_nearest, to_float

    if e == sp.true or e == sp.false:
        return 1.0 if e == sp.true else 0.0
    if isinstance(e, sp.Rational) or e in (sp.oo, -sp.oo, sp.nan):
        return float(e)  # exact rationals round to nearest; inf and nan are themselves
    try:
        v = e.evalf(CONSTANT_DIGITS)
    except (TypeError, ValueError):
        v = None
    if not isinstance(v, sp.Float):
        raise TypeError(f"the sympy constant {e!s:.60} is not a real number")
    return float(to_float(v._mpf_, rnd=round_nearest))
