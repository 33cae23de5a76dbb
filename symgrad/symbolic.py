"""The sympy export: `Value` graphs as sympy expressions, with symbols named after labels.

Imports from symgrad: `engine` (`Value`, `topological_order`) and `trace` (`as_outputs`); sympy
lazily, when an expression is made. `symgrad.checking` compares derivatives with these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from .engine import Value, topological_order
from .trace import as_outputs

__all__ = ["expressions", "leaf_symbols", "sympy_module", "to_sympy"]


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
            env[id(node)] = op.sympy(sp, *(env[id(c)] for c in node._prev), **node.op_params)
    return env
