"""The interpreted engine: micrograd's `Value`, eager, the reference semantics of symgrad.

Imports from symgrad: `ops` (the op table's entries and `OpDef`). Every forward value and every
local derivative comes from the op table, so the compiled code (which reads the same table)
computes the same numbers.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from . import ops
from .ops import OpDef

__all__ = ["Value", "topological_order"]


def _check_data(data: Any) -> float:
    if isinstance(data, Value):
        raise TypeError("Value(data): data is already a Value; use it directly")
    if isinstance(data, bool) or not isinstance(data, numbers.Real):
        shape = getattr(data, "shape", None)
        if shape is not None and shape != ():
            raise TypeError(
                f"Value(data): data must be a scalar number, got an array of shape {shape}"
            )
        raise TypeError(
            f"Value(data): data must be an int or float, got {type(data).__name__} {data!r:.40}"
        )
    try:
        return float(data)
    except OverflowError:
        raise ValueError(
            f"Value(data): {data!r:.40} is too large for a float (float64 holds up to ~1.8e308)"
        ) from None


class Value:
    """A scalar node of a computation graph, micrograd-compatible.

    Attributes:
        data: the float value.
        grad: d(root)/d(this node), filled by ``root.backward()``.
        label: a name for drawings, the IR and generated code (free text; it is sanitised).
        _prev: the operands, in order (a tuple: ``(x * x)._prev == (x, x)``).
        _op: micrograd's op string: ``''`` for a leaf, ``'+'``, ``'*'``, ``'**2'``, ``'tanh'``, ...
    """

    __slots__ = (
        "__weakref__", "_lit", "_op", "_opdef", "_params", "_prev", "data", "grad", "label",
    )

    def __init__(
        self,
        data: float,
        _children: Iterable[Value] = (),
        _op: str = "",
        label: str = "",
    ) -> None:
        self.data = _check_data(data)
        self.grad = 0.0
        self._prev: tuple[Value, ...] = tuple(_children)
        self._op = _op
        self.label = label if isinstance(label, str) else str(label)
        self._opdef: OpDef | None = None
        self._params: dict[str, float] = {}
        self._lit = False  # a leaf made from a Python number by an operator (the 2.0 in 2.0*a)

    # ---- graph construction, generic over the op table --------------------------------------

    @classmethod
    def _symgrad_apply(cls, op: OpDef, args: tuple[Any, ...], params: dict[str, float]) -> Value:
        operands = tuple(_coerce(a, op, i) for i, a in enumerate(args))
        out = cls(op.impl(*(a.data for a in operands), **params), operands, op.op_symbol(params))
        out._opdef = op
        out._params = params
        return out

    @property
    def opdef(self) -> OpDef | None:
        """The op-table entry of the operation that made this node (None for a leaf)."""
        return self._opdef

    @property
    def op_params(self) -> Mapping[str, float]:
        """That operation's static parameters by name, e.g. ``{"p": 2.0}`` for ``x ** 2``
        (empty for most ops and for leaves); read it, never change it."""
        return self._params

    def _apply(self, op: OpDef, *args: Any, **params: float) -> Value:
        return Value._symgrad_apply(op, (self, *args), params)

    def __add__(self, other: Any) -> Value:
        return self._apply(ops.ADD, other)

    def __radd__(self, other: Any) -> Value:  # other + self
        return Value._symgrad_apply(ops.ADD, (other, self), {})

    def __sub__(self, other: Any) -> Value:
        return self._apply(ops.SUB, other)

    def __rsub__(self, other: Any) -> Value:  # other - self
        return Value._symgrad_apply(ops.SUB, (other, self), {})

    def __mul__(self, other: Any) -> Value:
        return self._apply(ops.MUL, other)

    def __rmul__(self, other: Any) -> Value:  # other * self
        return Value._symgrad_apply(ops.MUL, (other, self), {})

    def __truediv__(self, other: Any) -> Value:
        return self._apply(ops.DIV, other)

    def __rtruediv__(self, other: Any) -> Value:  # other / self
        return Value._symgrad_apply(ops.DIV, (other, self), {})

    def __neg__(self) -> Value:
        return self._apply(ops.NEG)

    def __pow__(self, other: Any) -> Value:
        if isinstance(other, Value):
            raise TypeError(
                "Value ** Value is not supported: the exponent must be an int or float "
                "(write exp(y * log(x)) for a variable exponent)"
            )
        if isinstance(other, bool) or not isinstance(other, numbers.Real):
            raise TypeError(
                f"Value ** exponent: the exponent must be an int or float, "
                f"got {type(other).__name__} {other!r:.40}"
            )
        try:
            p = float(other)
        except OverflowError:
            raise ValueError(f"Value ** exponent: {other!r:.40} is too large for a float") from None
        return self._apply(ops.POW, p=p)

    def __abs__(self) -> Value:
        """|x|, with abs'(0) = 0."""
        return self._apply(ops.ABS)

    # comparisons give a traced condition: a Value whose data is 1.0 (true) or 0.0 (false), with
    # derivative zero, for `symgrad.where`; == and != stay identity (Values are dict keys)
    def __lt__(self, other: Any) -> Value:
        return self._apply(ops.LT, other)

    def __le__(self, other: Any) -> Value:
        return self._apply(ops.LE, other)

    def __gt__(self, other: Any) -> Value:
        return self._apply(ops.GT, other)

    def __ge__(self, other: Any) -> Value:
        return self._apply(ops.GE, other)

    def __rpow__(self, other: Any) -> Value:
        raise TypeError(
            f"{type(other).__name__} ** Value is not supported: the exponent must be an int or "
            "float (write exp(x * log(base)) for a variable exponent)"
        )

    def tanh(self) -> Value:
        """Hyperbolic tangent."""
        return self._apply(ops.TANH)

    def relu(self) -> Value:
        """max(0, x), with micrograd's relu'(0) = 0."""
        return self._apply(ops.RELU)

    def exp(self) -> Value:
        """e ** x (inf on overflow)."""
        return self._apply(ops.EXP)

    def log(self) -> Value:
        """Natural logarithm: -inf at 0, nan below 0 (IEEE, no exception)."""
        return self._apply(ops.LOG)

    def sigmoid(self) -> Value:
        """1 / (1 + e ** -x)."""
        return self._apply(ops.SIGMOID)

    def sqrt(self) -> Value:
        """Square root: nan below 0 (IEEE, no exception); sqrt'(0) = inf."""
        return self._apply(ops.SQRT)

    def sin(self) -> Value:
        """Sine."""
        return self._apply(ops.SIN)

    def cos(self) -> Value:
        """Cosine."""
        return self._apply(ops.COS)

    # ---- backpropagation ----------------------------------------------------------------------

    def _backward(self) -> tuple[Value, ...]:
        """Add this node's contribution to its operands' grads (micrograd's closure, as a rule).

        Returns the operands that received a contribution (a rule returns None for "zero").
        """
        op = self._opdef
        if op is None:
            return ()
        cts = op.vjp(self.grad, self.data, *(c.data for c in self._prev), **self._params)
        reached = []
        for child, ct in zip(self._prev, cts, strict=True):
            if ct is not None:
                child.grad += ct
                reached.append(child)
        return tuple(reached)

    def backward(self) -> None:
        """Backpropagate from this node: every node's ``.grad`` += d(self)/d(node).

        Like micrograd, it sets ``self.grad = 1.0`` and accumulates into the other nodes, so
        call ``zero_grad()`` (or reset ``.grad``) between steps.
        """
        topo = topological_order([self])
        self.grad = 1.0
        # a node no cotangent reached (only behind a rule's None, e.g. relu's step) is skipped,
        # exactly as compiled code never computes its adjoint: 0 * nan would otherwise leak in
        reached = {id(self)}
        for node in reversed(topo):
            if id(node) in reached:
                reached.update(id(c) for c in node._backward())

    def __repr__(self) -> str:
        lab = f", label={self.label!r}" if self.label else ""
        return f"Value(data={self.data}, grad={self.grad}{lab})"

    def __bool__(self) -> bool:
        op = self._opdef
        condition = op is not None and op in ops.COMPARISONS.values()
        what = (f"the truth value of a traced condition ({self._op}) is not known at trace time"
                if condition else "the truth value of a Value is not traced")
        # a chained comparison `0 < x < 2` is `(0 < x) and (x < 2)`: Python asks for bool() here
        chained = (" A chained comparison (0 < x < 2) is a Python `and` too: conditions are "
                   "1.0 or 0.0, so write (x > 0) * (x < 2) for `and`, sg.maximum(c1, c2) for "
                   "`or`, 1 - c for `not`, e.g. sg.where((x > 0) * (x < 2), x, 0.0)."
                   if condition else "")
        raise TypeError(
            f"{what}: a Python `if`, `and`, `or`, `while`, `max()` or `sorted()` would fix one "
            "branch for every later call. Select between Values with sg.where(a > b, x, y) "
            "(or sg.maximum, sg.minimum, sg.abs); branch on .data only where the branch must not "
            f"follow the data.{chained}"
        )


def _coerce(a: Any, op: OpDef, i: int) -> Value:
    if isinstance(a, Value):
        return a
    if isinstance(a, bool) or not isinstance(a, numbers.Real):
        raise TypeError(
            f"unsupported operand for {op.name} ({op.symbol}): operand {i} is "
            f"{type(a).__name__} {a!r:.40}; expected a Value, int or float"
        )
    try:
        v = Value(float(a))
    except OverflowError:
        raise ValueError(ops.operand_too_large(op, f"operand {i}", a)) from None
    v._lit = True
    return v


def topological_order(roots: Iterable[Value]) -> list[Value]:
    """Nodes reachable from `roots`, operands before users, deterministic, without recursion.

    The order is that of a depth-first post-order visiting operands left to right, the order
    micrograd's recursive ``build_topo`` gives (when its ``_prev`` is ordered).
    """
    topo: list[Value] = []
    visited: set[int] = set()
    for root in roots:
        if not isinstance(root, Value):
            raise TypeError(f"expected a Value, got {type(root).__name__}")
        if id(root) in visited:
            continue
        visited.add(id(root))
        stack: list[tuple[Value, Iterator[Value]]] = [(root, iter(root._prev))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if id(child) not in visited:
                    visited.add(id(child))
                    stack.append((child, iter(child._prev)))
                    break
            else:
                stack.pop()
                topo.append(node)
    return topo
