"""The op table: one entry per primitive, the single source of truth for every stage.

Imports nothing from symgrad. Each `OpDef` holds, side by side, what every stage needs to know
about a primitive: its arity and static parameters, its numeric rule (IEEE semantics, never a
Python exception), its vector-Jacobian rule, its source template and its sympy counterpart. The
engine, the tracer, autodiff, the passes, codegen and the sympy bridge are generic over `OPS`, so
adding an op touches this file only.

Derivative rules are written once and run in two worlds: on floats (the interpreted engine's
`backward`) and on IR handles (autodiff emits them as IR instructions). So a rule may use `+`, `-`,
`*` and unary `-` on its arguments (never raising on floats) and must call ops such as `DIV`, `POW`,
`EXP` for anything else, which keeps IEEE semantics on floats: `1.0 / 0.0` would raise, `DIV(1, 0)`
is inf.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OPS", "OpDef", "apply", "defop", "format_literal"]


@dataclass(frozen=True, eq=False)
class OpDef:
    """One primitive of the op table.

    Attributes:
        name: the IR name, printed as ``v3 = tanh(v2)``; also the sympy/numpy-style user name.
        arity: number of operands (Values in the engine, atoms in the IR).
        impl: numeric rule on floats with IEEE semantics (nan/inf, never an exception).
        vjp: ``(ct, out, *args, **params) -> tuple`` with one cotangent (or None for "zero")
            per operand. Arguments are floats or IR handles; see the module docstring.
        py: source template over operands ``{0}``, ``{1}`` and parameters ``{p}``. Its result
            must be a numpy float (never a bare Python literal), so that plain-Python runs of
            generated code keep IEEE semantics: ``np.float64(0.0) ** -1`` is inf, ``0.0 ** -1``
            raises. Besides ``np``, a template may call the functions of
            `symgrad.jit.template_globals` (``pow_libm``).
        sympy: ``(*sympy_args, **params) -> sympy expression``; takes the sympy module first.
        symbol: the ``Value._op`` string (micrograd's spelling: ``+``, ``*``, ``**2``, ``ReLU``).
        params: names of static (non-differentiable) float parameters, e.g. pow's exponent.
        domain: where tests may sample operands (the rule and sympy agree there).
        commutative: operands may be swapped (CSE canonicalises their order).
        kinks: values of the op's kink coordinate where its derivative is a convention or its
            value jumps (relu at 0, max at a tie, a comparison where its operands are equal);
            sympy oracles and finite differences are kept away from them.
        kink_coordinate: the quantity `kinks` are values of, from the operands; None means the
            first operand (``a - b`` for max, min and the comparisons).
    """

    name: str
    arity: int
    impl: Callable[..., float]
    vjp: Callable[..., tuple[Any, ...]]
    py: str
    sympy: Callable[..., Any]
    symbol: str
    params: tuple[str, ...] = ()
    domain: tuple[float, float] = (-math.inf, math.inf)
    commutative: bool = False
    kinks: tuple[float, ...] = field(default=())
    kink_coordinate: Callable[..., float] | None = None

    def __call__(self, *args: Any, **params: float) -> Any:
        """Apply the op to floats (eagerly), Values (builds a graph) or IR handles (emits)."""
        return apply(self, args, params)

    def op_symbol(self, params: dict[str, float]) -> str:
        """The micrograd-style ``_op`` string for this op with these parameters."""
        return self.symbol.format(**{k: _short(v) for k, v in params.items()})

    def kink_offsets(self, *xs: float) -> tuple[float, ...]:
        """How far the operands `xs` are from each kink, signed: ``coordinate - kink``."""
        if not self.kinks:
            return ()
        c = xs[0] if self.kink_coordinate is None else self.kink_coordinate(*xs)
        return tuple(c - k for k in self.kinks)

    def __repr__(self) -> str:
        return f"OpDef({self.name!r}, arity={self.arity})"


OPS: dict[str, OpDef] = {}


def defop(name: str, arity: int, **fields: Any) -> OpDef:
    """Create an `OpDef`, register it in `OPS` and return it."""
    if name in OPS:
        raise ValueError(f"op {name!r} is already defined")
    op = OpDef(name=name, arity=arity, **fields)
    OPS[name] = op
    return op


def apply(op: OpDef, args: tuple[Any, ...], params: dict[str, float]) -> Any:
    """Dispatch an op on its operands.

    An operand type takes part by defining a ``_symgrad_apply(op, args, params)`` classmethod
    (the engine's `Value` and the IR's handles do); plain numbers are evaluated with ``op.impl``.
    """
    if len(args) != op.arity:
        raise TypeError(f"{op.name} takes {op.arity} operand(s), got {len(args)}")
    if set(params) != set(op.params):
        raise TypeError(f"{op.name} takes parameters {op.params}, got {tuple(params)}")
    # floats for every caller, hooks included: POW(v, p=-1) must not hand _pow an int
    params = {k: _param(op, k, v) for k, v in params.items()}
    for a in args:
        hook = getattr(type(a), "_symgrad_apply", None)
        if hook is not None:
            return hook(op, args, params)
    nums = []
    for i, a in enumerate(args):
        try:
            nums.append(_as_float(a))
        except TypeError:
            raise TypeError(
                f"{op.name}: operand {i} must be a number or a Value, "
                f"got {type(a).__name__} {a!r:.40}"
            ) from None
        except OverflowError:
            raise ValueError(operand_too_large(op, f"operand {i}", a)) from None
    return op.impl(*nums, **{k: float(v) for k, v in params.items()})


def _as_float(a: Any) -> float:
    # numpy scalars and other real numbers; arrays and strings are refused (TypeError); an int
    # too large for a float raises OverflowError
    import numbers

    if isinstance(a, numbers.Real) and not isinstance(a, bool):
        return float(a)
    raise TypeError


def operand_too_large(op: OpDef, what: str, a: Any) -> str:
    """The message for a number too large for a float, given as `what` (an operand or a
    parameter) of `op`: as ``Value(10**400)`` says it."""
    name = op.name if "{" in op.symbol else f"{op.name} ({op.symbol})"
    return f"{name}: {what}, {a!r:.40}, is too large for a float (float64 holds up to ~1.8e308)"


def _param(op: OpDef, name: str, v: Any) -> float:
    try:
        return _as_float(v)
    except TypeError:
        raise TypeError(
            f"{op.name}: parameter {name} must be a number, got {type(v).__name__} {v!r:.40}"
        ) from None
    except OverflowError:
        raise ValueError(operand_too_large(op, f"parameter {name}", v)) from None


def _short(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)


def format_literal(v: float) -> str:
    """A float as Python source that round-trips: negatives parenthesised, inf/nan via numpy."""
    if math.isnan(v):
        return "np.nan"
    if math.isinf(v):
        return "np.inf" if v > 0 else "(-np.inf)"
    s = repr(float(v))
    return f"({s})" if s.startswith("-") else s


# ---- IEEE-safe numeric rules: Python's math raises where IEEE returns inf or nan ----------------


def _div(x: float, y: float) -> float:
    try:
        return x / y
    except ZeroDivisionError:
        if x == 0.0 or math.isnan(x):
            return math.nan
        # sign of inf follows the signs of x and of the zero
        return math.copysign(math.inf, x) * math.copysign(1.0, y)


def _pow(x: float, p: float) -> float:
    try:
        r = x**p
    except ZeroDivisionError:  # 0.0 ** negative
        odd = p.is_integer() and int(p) % 2 == 1
        return math.copysign(math.inf, x) if odd else math.inf
    except OverflowError:
        if x < 0 and not p.is_integer():
            return math.nan  # a negative base to a fractional power, however large
        odd = p.is_integer() and int(p) % 2 == 1
        return -math.inf if (odd and x < 0) else math.inf
    if isinstance(r, complex):  # negative base, fractional exponent
        return math.nan
    return float(r)


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _log(x: float) -> float:
    if x > 0.0:
        return math.log(x)
    if x == 0.0:
        return -math.inf
    return math.nan  # negative or nan


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + _exp(-x))


def _relu(x: float) -> float:
    # micrograd's spelling: relu(nan) is nan and relu(-0.0) is -0.0
    return 0.0 if x < 0.0 else x


def _step(x: float) -> float:
    return 1.0 if x > 0.0 else 0.0


def _trig(f: Callable[[float], float]) -> Callable[[float], float]:
    def impl(x: float) -> float:
        return math.nan if math.isinf(x) else f(x)  # math.sin(inf) raises; IEEE says nan

    impl.__name__ = f.__name__
    return impl


def _sqrt(x: float) -> float:
    # IEEE: sqrt(-0.0) is -0.0; below zero (and of nan) nan, where math.sqrt raises
    return math.sqrt(x) if x >= 0.0 else math.nan


def _sign(x: float) -> float:
    # a zero keeps its sign and nan stays nan (the derivative of abs there)
    return 1.0 if x > 0.0 else -1.0 if x < 0.0 else x


def _maximum(x: float, y: float) -> float:
    # numpy's rule: a nan operand gives nan, a tie gives x (so maximum(-0.0, 0.0) is -0.0)
    return x if (x >= y or x != x) else y


def _minimum(x: float, y: float) -> float:
    return x if (x <= y or x != x) else y


def _where(c: float, x: float, y: float) -> float:
    # any nonzero condition selects x, nan included (as bool(nan) and numpy's where do)
    return x if c != 0.0 else y


def _difference(x: float, y: float) -> float:
    return x - y


def _condition(sp: Any, c: Any) -> Any:
    """A condition for a sympy Piecewise: a comparison's own relation, else ``c != 0``."""
    if isinstance(c, sp.Piecewise) and len(c.args) == 2 and c.args[1].cond == sp.true:
        (one, rel), (zero, _) = c.args
        if one == 1 and zero == 0:
            return rel
    return sp.Ne(c, 0)


def _piecewise(sp: Any, *pairs: tuple[Any, Any]) -> Any:
    """A sympy Piecewise left as written: sympy's own simplification of the conditions can
    recurse without end on some of them (a comparison of a log with a rational function)."""
    return sp.Piecewise(*pairs, evaluate=False)


def _sp(name: str) -> Callable[..., Any]:
    """A sympy counterpart that is a plain sympy function of the same operands."""
    return lambda sp, *a: getattr(sp, name)(*a)


# ---- the table ----------------------------------------------------------------------------------
# vjp rules take (ct, out, *operands, **params); None means "no contribution".

ADD = defop(
    "add", 2, impl=lambda x, y: x + y, vjp=lambda ct, out, x, y: (ct, ct),
    py="{0} + {1}", sympy=lambda sp, x, y: x + y, symbol="+", commutative=True,
)
SUB = defop(
    "sub", 2, impl=lambda x, y: x - y, vjp=lambda ct, out, x, y: (ct, -ct),
    py="{0} - {1}", sympy=lambda sp, x, y: x - y, symbol="-",
)
MUL = defop(
    "mul", 2, impl=lambda x, y: x * y, vjp=lambda ct, out, x, y: (y * ct, x * ct),
    py="{0} * {1}", sympy=lambda sp, x, y: x * y, symbol="*", commutative=True,
)
DIV: OpDef = defop(
    "div", 2, impl=_div,
    # d(x/y)/dy = -x/y**2 = -out/y
    vjp=lambda ct, out, x, y: (DIV(ct, y), -DIV(out * ct, y)),
    py="{0} / {1}", sympy=lambda sp, x, y: x / y, symbol="/",
)
NEG = defop(
    "neg", 1, impl=lambda x: -x, vjp=lambda ct, out, x: (-ct,),
    py="-{0}", sympy=lambda sp, x: -x, symbol="neg",
)
POW: OpDef = defop(
    "pow", 1, impl=_pow, params=("p",),
    # the exponent is a compile-time constant, so only the base gets a cotangent
    # x ** 0 is constant: no cotangent (0 * x ** -1 would be nan at x = 0)
    vjp=lambda ct, out, x, p: (None if p == 0.0 else (p * POW(x, p=p - 1.0)) * ct,),
    # C's pow, which Python's x ** p is: Numba would turn a literal x ** 2.0 into x * x (and
    # x ** 0.5 into sqrt, x ** -1.0 into 1 / x), which round differently for some x
    py="pow_libm({0}, {p})", symbol="**{p}",
    # the exponent stays the number it is (an Integer when integral, else the exact double)
    sympy=lambda sp, x, p: x ** (sp.Integer(int(p)) if float(p).is_integer() else sp.Float(p)),
)
EXP = defop(
    "exp", 1, impl=_exp, vjp=lambda ct, out, x: (out * ct,),
    py="np.exp({0})", sympy=_sp("exp"), symbol="exp",
)
LOG = defop(
    "log", 1, impl=_log, vjp=lambda ct, out, x: (DIV(ct, x),),
    py="np.log({0})", sympy=_sp("log"), symbol="log", domain=(0.0, math.inf),
)
TANH = defop(
    "tanh", 1, impl=math.tanh, vjp=lambda ct, out, x: ((1.0 - out * out) * ct,),
    py="np.tanh({0})", sympy=_sp("tanh"), symbol="tanh",
)
SIGMOID = defop(
    "sigmoid", 1, impl=_sigmoid, vjp=lambda ct, out, x: ((out * (1.0 - out)) * ct,),
    py="1.0 / (1.0 + np.exp(-{0}))", sympy=lambda sp, x: 1 / (1 + sp.exp(-x)), symbol="sigmoid",
)
STEP = defop(
    # the derivative of relu; its own derivative is zero wherever it is defined
    "step", 1, impl=_step, vjp=lambda ct, out, x: (None,),
    py="np.float64(1.0) if {0} > 0.0 else np.float64(0.0)", symbol="step", kinks=(0.0,),
    sympy=lambda sp, x: _piecewise(sp, (1, x > 0), (0, True)),
)
RELU = defop(
    # relu'(0) = 0 (micrograd's convention): the rule reads the output, and step(0) = 0
    "relu", 1, impl=_relu, vjp=lambda ct, out, x: (STEP(out) * ct,),
    py="np.float64(0.0) if {0} < 0.0 else {0}", symbol="ReLU", kinks=(0.0,),
    sympy=lambda sp, x: _piecewise(sp, (x, x > 0), (0, True)),
)
SIN = defop(
    "sin", 1, impl=_trig(math.sin), vjp=lambda ct, out, x: (COS(x) * ct,),
    py="np.sin({0})", sympy=_sp("sin"), symbol="sin",
)
COS: OpDef = defop(
    "cos", 1, impl=_trig(math.cos), vjp=lambda ct, out, x: (-(SIN(x) * ct),),
    py="np.cos({0})", sympy=_sp("cos"), symbol="cos",
)


# ---- piecewise ops: kinks, comparisons and selection ---------------------------------------------
# a comparison is a traced condition: a Value whose data is 1.0 (true) or 0.0 (false), derivative
# zero; `where` selects between two operands by it. A rule that selects (max, min, where) gives
# the cotangent to the chosen operand and a literal 0.0 to the other, so an inf or nan in the
# other's own derivative still makes the gradient nan through 0 * inf (as in JAX).

SIGN = defop(
    # abs's derivative; its own derivative is zero wherever it is defined
    "sign", 1, impl=_sign, vjp=lambda ct, out, x: (None,), kinks=(0.0,),
    py="np.float64(1.0) if {0} > 0.0 else (np.float64(-1.0) if {0} < 0.0 else {0})",
    # Heaviside(0) = 1/2 makes sign(0) = 0; sympy differentiates Heaviside(f) for any f, but
    # sign(f) only where it can prove f real
    symbol="sign", sympy=lambda sp, x: sp.Heaviside(x) - sp.Heaviside(-x),
)
ABS = defop(
    # abs'(0) = 0 (sign(0) = 0, as in PyTorch): the smallest subgradient, like relu'(0) = 0
    "abs", 1, impl=math.fabs, vjp=lambda ct, out, x: (SIGN(x) * ct,),
    py="np.abs({0})", symbol="abs", kinks=(0.0,),
    # Max(x, -x), whose sympy derivative Heaviside(2x) - Heaviside(-2x) is 0 at 0 too: sympy
    # differentiates Abs(f) only where it can prove f real (not log(x), sqrt(x))
    sympy=lambda sp, x: sp.Max(x, -x),
)
SQRT = defop(
    # sqrt'(0) = inf, the one-sided limit (and -inf at -0.0: 1 / (2 * -0.0)), as in PyTorch and
    # JAX; the rule reads the output, one division as PyTorch's grad / (2 * result)
    "sqrt", 1, impl=_sqrt, vjp=lambda ct, out, x: (DIV(ct, 2.0 * out),),
    py="np.sqrt({0})", sympy=_sp("sqrt"), symbol="sqrt", domain=(0.0, math.inf), kinks=(0.0,),
)


def _compare(name: str, symbol: str, relation: str) -> OpDef:
    """A comparison (`operator`'s `name`, sympy's `relation`): 1.0 where it holds, else 0.0
    (nan compares false); derivative zero. Its kink is where the operands are equal: the value
    jumps there."""
    test = getattr(operator, name)
    return defop(
        name, 2, impl=lambda x, y: 1.0 if test(x, y) else 0.0,
        vjp=lambda ct, out, x, y: (None, None),
        py=f"np.float64(1.0) if {{0}} {symbol} {{1}} else np.float64(0.0)", symbol=symbol,
        sympy=lambda sp, x, y: _piecewise(sp, (1, getattr(sp, relation)(x, y)), (0, True)),
        kinks=(0.0,), kink_coordinate=_difference,
    )


LT = _compare("lt", "<", "Lt")
LE = _compare("le", "<=", "Le")
GT = _compare("gt", ">", "Gt")
GE = _compare("ge", ">=", "Ge")

WHERE: OpDef = defop(
    # where(c, x, y) is x where c != 0 (nan counts as true), else y. The derivative flows to the
    # chosen operand only and never to the condition; its kink is the jump at c = 0
    "where", 3, impl=_where,
    vjp=lambda ct, out, c, x, y: (None, WHERE(c, ct, 0.0), WHERE(c, 0.0, ct)),
    py="np.float64({1}) if {0} != 0.0 else np.float64({2})", symbol="where", kinks=(0.0,),
    sympy=lambda sp, c, x, y: _piecewise(sp, (x, _condition(sp, c)), (y, True)),
)


def _maximum_vjp(ct: Any, out: Any, x: Any, y: Any) -> tuple[Any, Any]:
    lose = LT(x, y)  # y is the maximum
    return WHERE(lose, 0.0, ct), WHERE(lose, ct, 0.0)


def _minimum_vjp(ct: Any, out: Any, x: Any, y: Any) -> tuple[Any, Any]:
    lose = GT(x, y)  # y is the minimum
    return WHERE(lose, 0.0, ct), WHERE(lose, ct, 0.0)


MAXIMUM = defop(
    # at a tie the whole derivative goes to x, the first operand (as where(x >= y, x, y) gives);
    # so it does when either operand is nan (the value is nan then)
    "maximum", 2, impl=_maximum, vjp=_maximum_vjp,
    py="np.float64({0}) if {0} >= {1} or {0} != {0} else np.float64({1})",
    sympy=lambda sp, x, y: sp.Max(x, y), symbol="max", kinks=(0.0,), kink_coordinate=_difference,
)
MINIMUM = defop(
    # at a tie (and with a nan operand) the derivative goes to x, as for maximum
    "minimum", 2, impl=_minimum, vjp=_minimum_vjp,
    py="np.float64({0}) if {0} <= {1} or {0} != {0} else np.float64({1})",
    sympy=lambda sp, x, y: sp.Min(x, y), symbol="min", kinks=(0.0,), kink_coordinate=_difference,
)

# the comparisons, by the Python operator that makes them on Values
COMPARISONS: dict[str, OpDef] = {"<": LT, "<=": LE, ">": GT, ">=": GE}
