"""The interpreted engine against independent oracles.

Oracles: the lecture notebook's numbers and hand-derived derivatives, central finite
differences, plain `math` functions, and the original `micrograd` package, which builds the same
random graphs in parallel (micrograd has + - * / ** relu and negation, no tanh/exp/log).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st
from micrograd.engine import Value as MgValue

from symgrad import ops
from symgrad.engine import Value, topological_order


def close(a: float, b: float) -> bool:
    """The engines agree to 1e-12 relative (absolute near zero)."""
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


# ---- the notebook's numbers ---------------------------------------------------------------------


def test_lecture_expression_grads() -> None:
    a, b, c = Value(2.0), Value(-3.0), Value(10.0)
    d = a * b + c
    d.backward()
    assert d.data == 4.0
    # dd/da = b, dd/db = a, dd/dc = 1: exact in floating point
    assert (a.grad, b.grad, c.grad) == (-3.0, 2.0, 1.0)


NEURON = {"x1": 2.0, "x2": 0.0, "w1": -3.0, "w2": 1.0, "b": 6.8813735870195432}


def _neuron(x1: float, x2: float, w1: float, w2: float, b: float) -> float:
    return math.tanh(x1 * w1 + x2 * w2 + b)


def test_lecture_neuron_grads() -> None:
    v = {k: Value(x, label=k) for k, x in NEURON.items()}
    o = (v["x1"] * v["w1"] + v["x2"] * v["w2"] + v["b"]).tanh()
    o.backward()
    # b was chosen so that n = atanh(1/sqrt(2)): o = 1/sqrt(2) and do/dn = 1 - o^2 = 1/2,
    # so d(o)/d(x1) = w1/2, d/dx2 = w2/2, d/dw1 = x1/2, d/dw2 = x2/2
    assert math.isclose(o.data, 1 / math.sqrt(2), rel_tol=1e-12)
    expected = {"x1": -1.5, "x2": 0.5, "w1": 1.0, "w2": 0.0, "b": 0.5}
    for k, g in expected.items():
        assert math.isclose(v[k].grad, g, abs_tol=1e-12), k


def test_lecture_neuron_matches_finite_differences() -> None:
    v = {k: Value(x) for k, x in NEURON.items()}
    o = (v["x1"] * v["w1"] + v["x2"] * v["w2"] + v["b"]).tanh()
    o.backward()
    h = 1e-6
    for k, x in NEURON.items():
        up, down = dict(NEURON), dict(NEURON)
        up[k], down[k] = x + h, x - h
        fd = (_neuron(**up) - _neuron(**down)) / (2 * h)
        assert math.isclose(v[k].grad, fd, rel_tol=1e-7, abs_tol=1e-8), k


# ---- every op of the table vs finite differences ------------------------------------------------

EXPONENTS = (2.0, 3.0, -1.0, -2.0, 0.5, 1.5)

# independent forward references for the ops we know (a new op is still checked by FD)
REFERENCE: dict[str, Callable[..., float]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
    "neg": operator.neg,
    "pow": lambda x, p: x**p,
    "exp": math.exp,
    "log": math.log,
    "tanh": math.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)),
    "step": lambda x: float(x > 0),
    "relu": lambda x: max(x, 0.0),
    "sin": math.sin,
    "cos": math.cos,
    "abs": abs,
    "sqrt": math.sqrt,
    "sign": lambda x: math.copysign(1.0, x),  # x is never 0 here
    "maximum": max,
    "minimum": min,
    "lt": lambda x, y: float(x < y),
    "le": lambda x, y: float(x <= y),
    "gt": lambda x, y: float(x > y),
    "ge": lambda x, y: float(x >= y),
    "where": lambda c, x, y: x if c else y,
}


def _operands(op: ops.OpDef, positive: bool) -> st.SearchStrategy[float]:
    lo = max(op.domain[0], 0.0 if positive else -3.0)
    hi = min(op.domain[1], 3.0)
    # away from 0 (division, negative powers); the test keeps away from kinks
    return st.floats(lo, hi).filter(lambda x: abs(x) >= 0.25)


@pytest.mark.parametrize("name", sorted(ops.OPS))
@given(data=st.data())
def test_op_matches_finite_differences(name: str, data: st.DataObject) -> None:
    op = ops.OPS[name]
    params = {
        p: data.draw(st.sampled_from(EXPONENTS) if p == "p" else st.floats(-2.0, 2.0), label=p)
        for p in op.params
    }
    fractional = any(not float(v).is_integer() for v in params.values())
    xs = [data.draw(_operands(op, positive=fractional), label=f"x{i}") for i in range(op.arity)]
    # off kinks (max at a tie, a comparison of equal operands), so FD has a clean derivative
    assume(all(abs(d) >= 0.25 for d in op.kink_offsets(*xs)))
    leaves = [Value(x) for x in xs]
    out = op(*leaves, **params)
    assert isinstance(out, Value)
    assert out._prev == tuple(leaves)
    if name in REFERENCE:
        assert close(out.data, REFERENCE[name](*xs, **params))
    out.backward()
    for i, x in enumerate(xs):
        h = 1e-6 * max(1.0, abs(x))
        up, down = list(xs), list(xs)
        up[i], down[i] = x + h, x - h
        fd = (op.impl(*up, **params) - op.impl(*down, **params)) / (2 * h)
        assert math.isclose(leaves[i].grad, fd, rel_tol=1e-6, abs_tol=1e-6), (i, fd)


# ---- random graphs, built in parallel in symgrad and in micrograd -------------------------------

N_INPUTS = 3
BOUND = 10.0  # |value| of every node: keeps grads moderate, so 1e-12 is a fair tolerance
BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}
UNARY: dict[str, Callable[[Any, Any], Any]] = {
    "neg": lambda v, p: -v,
    "pow": lambda v, p: v**p,
    "relu": lambda v, p: v.relu(),
}
POWERS = (2.0, 3.0, -1.0, 0.5)


@st.composite
def programs(draw: st.DrawFn) -> tuple[list[float], list[tuple[Any, ...]]]:
    """Inputs and instructions; each operand is drawn by index among earlier nodes (fan-out)."""
    inputs = draw(st.lists(st.floats(-2.0, 2.0), min_size=N_INPUTS, max_size=N_INPUTS))
    prog = []
    for i in range(draw(st.integers(1, 12))):
        n = N_INPUTS + i
        op = draw(st.sampled_from(sorted(BINARY) + list(UNARY)))
        if op in BINARY:
            # vv: node op node; vc: node op number; cv: number op node (reflected operators)
            mode = draw(st.sampled_from(["vv", "vv", "vc", "cv"]))
            j, k = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
            c = draw(st.floats(-2.0, 2.0))
            prog.append((op, mode, j, k, c))
        else:
            p = draw(st.sampled_from(POWERS)) if op == "pow" else None
            prog.append((op, draw(st.integers(0, n - 1)), p))
    return inputs, prog


def _valid(op: str, args: tuple[float, ...], out: float, p: float | None = None) -> bool:
    """Whether a node keeps both engines well-conditioned (else it becomes a negation)."""
    if not math.isfinite(out) or abs(out) > BOUND:
        return False
    if op == "div" and abs(args[1]) < 0.5:
        return False
    if op == "pow" and ((p == -1.0 and abs(args[0]) < 0.5) or (p == 0.5 and args[0] < 0.25)):
        return False
    # catastrophic cancellation would amplify micrograd's different rounding of a / b
    # (it computes a * b**-1), so a tiny difference of large operands is refused
    return not (op in ("add", "sub") and 0 < abs(out) < 1e-3 * max(map(abs, args)))


def _build(inputs: list[float], prog: list[tuple[Any, ...]]) -> tuple[list[Value], list[MgValue]]:
    sv = [Value(x, label=f"x{i}") for i, x in enumerate(inputs)]
    mv = [MgValue(x) for x in inputs]
    for ins in prog:
        op = ins[0]
        if op in BINARY:
            _, mode, j, k, c = ins
            f = BINARY[op]
            if mode == "vv":
                s_args, m_args = (sv[j], sv[k]), (mv[j], mv[k])
            elif mode == "vc":
                s_args, m_args = (sv[j], c), (mv[j], c)
            else:
                s_args, m_args = (c, sv[j]), (c, mv[j])
            nums = tuple(a.data if isinstance(a, Value) else a for a in s_args)
            s = f(*s_args)
            if _valid(op, nums, s.data):
                sv.append(s)
                mv.append(f(*m_args))
                continue
            src = j
        else:
            _, j, p = ins
            s = UNARY[op](sv[j], p)
            # micrograd raises where symgrad follows IEEE (0 ** -1), so check before building it
            if _valid(op, (sv[j].data,), s.data, p):
                sv.append(s)
                mv.append(UNARY[op](mv[j], p))
                continue
            src = j
        sv.append(-sv[src])  # the fallback: always bounded, never ill-conditioned
        mv.append(-mv[src])
    return sv, mv


def _every_node(roots: list[Any]) -> list[Any]:
    """All nodes reachable through `_prev`, including micrograd's hidden ones (the -1 of a - b)."""
    seen: dict[int, Any] = {}
    stack = list(roots)
    while stack:
        v = stack.pop()
        if id(v) not in seen:
            seen[id(v)] = v
            stack.extend(v._prev)
    return list(seen.values())


@given(programs())
def test_random_graphs_match_micrograd(program: tuple[list[float], list[tuple[Any, ...]]]) -> None:
    inputs, prog = program
    note(f"inputs={inputs}")
    note(f"program={prog}")
    sv, mv = _build(inputs, prog)
    for i, (s, m) in enumerate(zip(sv, mv, strict=True)):
        assert close(s.data, m.data), (i, "data", s.data, m.data)
    s_nodes, m_nodes = _every_node(sv), _every_node(mv)
    # backpropagate from every node in turn (one row of the Jacobian each), so every rule on
    # every path is exercised, not only the last node's cone
    for root in range(len(sv)):
        for v in s_nodes + m_nodes:
            v.grad = 0.0
        sv[root].backward()
        mv[root].backward()
        for i, (s, m) in enumerate(zip(sv, mv, strict=True)):
            assert close(s.grad, m.grad), (root, i, "grad", s.grad, m.grad)


# ---- fan-out: a node used more than once accumulates its gradient -------------------------------


def _diamond(V: type) -> tuple[Any, list[Any]]:
    a = V(2.0)
    d = (a * 3.0) * (a + 1.0)  # dd/da = 3(a + 1) + 3a = 15 at a = 2
    return d, [a]


def _shared_weight(V: type) -> tuple[Any, list[Any]]:
    w, x1, x2 = V(0.5), V(2.0), V(-3.0)
    y = (w * x1) ** 2 + (w * x2) ** 2  # dy/dw = 2w(x1^2 + x2^2) = 13, dy/dx1 = 2w^2 x1 = 1
    return y, [w, x1, x2]


FAN_OUT = {
    "a + a": (lambda V: ((a := V(3.0)) + a, [a]), [2.0]),
    "x * x": (lambda V: ((x := V(3.0)) * x, [x]), [6.0]),
    "x * x * x": (lambda V: ((x := V(-2.0)) * x * x, [x]), [12.0]),
    "a - a": (lambda V: ((a := V(1.5)) - a, [a]), [0.0]),
    "diamond": (_diamond, [15.0]),
    "shared weight": (_shared_weight, [13.0, 1.0, -1.5]),
}


@pytest.mark.parametrize("case", sorted(FAN_OUT))
def test_fan_out_accumulates(case: str) -> None:
    build, expected = FAN_OUT[case]
    root, leaves = build(Value)
    root.backward()
    assert [v.grad for v in leaves] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    mg_root, mg_leaves = build(MgValue)
    mg_root.backward()
    for s, m in zip(leaves, mg_leaves, strict=True):
        assert close(s.grad, m.grad)
    assert close(root.data, mg_root.data)


def test_shared_weight_through_tanh() -> None:
    w = Value(0.5)
    xs = (2.0, -3.0)
    y = (w * xs[0]).tanh() + (w * xs[1]).tanh()
    y.backward()
    expected = sum(x * (1 - math.tanh(0.5 * x) ** 2) for x in xs)
    assert math.isclose(w.grad, expected, rel_tol=1e-12)


def test_long_chain_has_no_recursion_limit() -> None:
    n = 100_000
    x = Value(0.5, label="x")
    y = x
    for _ in range(n):
        y = y + x
    assert len(topological_order([y])) == n + 1
    y.backward()
    assert y.data == 0.5 * (n + 1)
    assert x.grad == n + 1.0


# ---- structure ----------------------------------------------------------------------------------


def test_prev_is_an_ordered_tuple() -> None:
    x, a, b = Value(3.0), Value(1.0), Value(2.0)
    sq = x * x
    assert isinstance(sq._prev, tuple)
    assert sq._prev == (x, x)  # micrograd's set would keep one x
    assert (a - b)._prev == (a, b)
    assert (b - a)._prev == (b, a)
    r = 2.0 - a  # reflected: the number becomes the first operand
    assert r._prev[1] is a
    assert r._prev[0].data == 2.0 and r._prev[0]._lit
    assert not a._lit


def test_opdef_and_op_params_name_the_operation_and_are_read_only() -> None:
    x = Value(3.0)
    assert x.opdef is None and dict(x.op_params) == {}
    for v, name, params in [(x.tanh(), "tanh", {}), (x ** 2, "pow", {"p": 2.0}),
                            (2.0 - x, "sub", {})]:
        assert v.opdef is ops.OPS[name]
        assert dict(v.op_params) == params
        # the entry's rule gives the node's value: it is the operation that made it
        assert v.opdef.impl(*(c.data for c in v._prev), **v.op_params) == v.data
    with pytest.raises(AttributeError):
        x.tanh().opdef = ops.EXP  # type: ignore[misc]


# ---- IEEE semantics: no Python exceptions -------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: Value(-1.0).log(), math.nan),
        (lambda: Value(0.0).log(), -math.inf),
        (lambda: Value(1.0) / 0.0, math.inf),
        (lambda: Value(-1.0) / 0.0, -math.inf),
        (lambda: Value(0.0) / 0.0, math.nan),
        (lambda: Value(1000.0).exp(), math.inf),
        (lambda: Value(0.0) ** -1, math.inf),
        (lambda: Value(-1.0) ** 0.5, math.nan),
        (lambda: Value(1e200) ** 2, math.inf),
    ],
    ids=["log(-1)", "log(0)", "1/0", "-1/0", "0/0", "exp(1000)", "0**-1", "(-1)**0.5", "1e200**2"],
)
def test_ieee_results(build: Callable[[], Value], expected: float) -> None:
    out = build()
    if math.isnan(expected):
        assert math.isnan(out.data)
    else:
        assert out.data == expected
    out.backward()  # the derivative rules follow IEEE too: no exception


def test_op_table_called_directly_with_int_parameters() -> None:
    # POW(v, p=-1) with an int exponent follows IEEE like v ** -1 (0 ** -1 = inf, no exception)
    assert ops.POW(Value(0.0), p=-1).data == math.inf
    assert ops.POW(Value(3.0), p=2).data == 9.0
    with pytest.raises(TypeError, match="parameter p must be a number, got str"):
        ops.POW(Value(2.0), p="a")


def test_zeroth_power_has_zero_derivative_everywhere() -> None:
    # sympy: d/dx x**0 = 0; the rule must not compute 0 * 0 ** -1 = nan at x = 0
    for x0 in (0.0, -2.0, 3.0):
        x = Value(x0)
        y = x**0
        y.backward()
        assert y.data == 1.0 and x.grad == 0.0


# ---- bad operands -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Value("x"), r"str 'x'"),
        (lambda: Value([1, 2]), r"list \[1, 2\]"),
        (lambda: Value(True), r"bool"),
        (lambda: Value(np.array([1.0, 2.0])), r"shape \(2,\)"),
        (lambda: Value(1) + "x", r"operand 1 is str 'x'"),
        (lambda: "x" + Value(1), r"operand 0 is str 'x'"),
        (lambda: Value(1) * None, r"NoneType"),
        (lambda: Value(2) ** Value(3), r"Value \*\* Value"),
        (lambda: 2 ** Value(3), r"int \*\* Value"),
        (lambda: Value(2) ** "a", r"exponent .* str 'a'"),
    ],
    ids=["str", "list", "bool", "array", "V+str", "str+V", "V*None", "V**V", "int**V", "V**str"],
)
def test_bad_operands_raise_type_error(build: Callable[[], Any], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        build()
