"""Tracing: a `Value` graph becomes an IR `Func`.

Imports from symgrad: `engine` (`Value`, `topological_order`) and `ir` (`Atom`, `Builder`,
`Const`, `Func`). The `wrt` leaves, then the `inputs` leaves, become the function's
arguments; every other leaf is a constant frozen at trace time. Shared sub-graphs stay shared
(one instruction per Value node), and the walk is iterative, so 100k-node graphs trace fine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .engine import Value, topological_order
from .ir import Atom, Builder, Const, Func

__all__ = ["Traced", "as_outputs", "check_leaves", "trace"]


@dataclass(frozen=True)
class Traced:
    """A traced graph: the IR and what its arguments and results mean."""

    func: Func
    wrt: tuple[Value, ...]
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]


def as_outputs(outputs: Value | Iterable[Value], what: str = "outputs") -> tuple[Value, ...]:
    """Normalise one Value or a sequence of Values to a tuple, with a clear error otherwise."""
    if isinstance(outputs, Value):
        return (outputs,)
    if isinstance(outputs, (str, bytes)) or not isinstance(outputs, Iterable):
        raise TypeError(
            f"{what}: expected a Value or a list of Values, got {type(outputs).__name__}"
        )
    outs = tuple(outputs)
    if not outs:
        raise ValueError(f"{what}: the list of outputs is empty")
    for i, o in enumerate(outs):
        if not isinstance(o, Value):
            raise TypeError(f"{what}[{i}]: expected a Value, got {type(o).__name__} {o!r:.40}")
    return outs


def check_leaves(wrt: Sequence[Value], inputs: Sequence[Value]) -> None:
    """Refuse non-leaves, leaves listed twice and leaves in both `wrt` and `inputs`."""
    seen: dict[int, str] = {}
    for what, leaves in (("wrt", wrt), ("inputs", inputs)):
        for i, v in enumerate(leaves):
            where = f"{what}[{i}]"
            if not isinstance(v, Value):
                raise TypeError(f"{where}: expected a Value leaf, got {type(v).__name__} {v!r:.40}")
            if v._prev:
                raise ValueError(
                    f"{where}: {_desc(v)} is not a leaf (it is the result of {v._op!r}); "
                    "wrt and inputs must be leaves (Values created directly)"
                )
            if id(v) in seen:
                raise ValueError(f"{where}: {_desc(v)} is already listed as {seen[id(v)]}")
            seen[id(v)] = where


def _desc(v: Value) -> str:
    return f"Value {v.label!r}" if v.label else f"Value(data={v.data})"


def trace(
    outputs: Value | Iterable[Value],
    wrt: Sequence[Value] = (),
    inputs: Sequence[Value] = (),
    name: str = "f",
) -> Traced:
    """Lower a Value graph to IR, one instruction per operation node, nothing optimised.

    Args:
        outputs: the Value (or Values) the function returns.
        wrt: leaves that become the first arguments (the parameters to differentiate by).
        inputs: leaves that become the remaining arguments (data that changes per call).
        name: the function's name, used when printing and in generated source.
    Returns:
        a `Traced` holding the `Func` and the leaves and outputs in argument order.
    """
    outs = as_outputs(outputs)
    wrt, inputs = tuple(wrt), tuple(inputs)
    check_leaves(wrt, inputs)
    b = Builder()
    env: dict[int, Atom] = {id(v): b.arg(v.label) for v in (*wrt, *inputs)}
    for node in topological_order(outs):
        if id(node) in env:
            continue
        if not node._prev:
            env[id(node)] = Const(node.data)  # a leaf neither in wrt nor in inputs: frozen
            continue
        op = node.opdef
        if op is None:
            raise ValueError(
                f"{_desc(node)} has operands but no op-table entry (op {node._op!r}); "
                "build graphs with Value's operators and methods"
            )
        args = [env[id(c)] for c in node._prev]
        params = [node.op_params[p] for p in op.params]
        env[id(node)] = b.emit(op, args, params, hint=node.label)
    return Traced(b.build(name, [env[id(o)] for o in outs]), wrt, inputs, outs)
