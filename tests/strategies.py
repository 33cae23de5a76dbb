"""Random programs over the op table, and builders that turn them into Value graphs and IR.

A program is a flat list of steps. Step k defines value ``n_inputs + k`` by applying one op of
`symgrad.ops.OPS` to earlier values drawn BY INDEX (so values fan out and subexpressions are
shared, which random expression trees miss) or to float literals (which become micrograd-style
literal leaves in a Value graph and `Const` atoms in the IR). Hypothesis shrinks a failing program
to a small one; `str(program)` prints it for assertion messages.

`programs(safe=True)` draws the leaf values together with the program and keeps every op inside
its domain at those values, away from singularities, kinks and overflow, so that every oracle
(sympy, finite differences, micrograd) is defined there. An op whose operands are unsafe gets
each operand routed through a guard ``1 / (u*u + 1) + 0.5`` (values in (0.5, 1.5], built from
micrograd's ops only), which makes every op of the table safe (a tie such as ``max(v, v)`` takes
a literal for its second operand). A safe `where` selects by a fresh comparison, so both of its
branches are taken. `programs(safe=False)` draws
unrestricted programs for the IEEE tests (nan, inf, -0.0 and all).
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from symgrad import ir
from symgrad.engine import Value
from symgrad.ops import OPS

__all__ = [
    "MICROGRAD_OPS", "POW_EXPONENTS", "Case", "Program", "Step", "evaluate", "kink_signature",
    "programs", "same_float", "to_ir", "to_micrograd", "to_values",
]

# the ops the original micrograd package has (it spells sub, div and neg with + * **)
MICROGRAD_OPS = frozenset({"add", "sub", "mul", "div", "neg", "pow", "relu"})
POW_EXPONENTS = (2.0, 3.0, -1.0, 0.5)
LITERALS = (2.0, -1.5, 0.5, 3.0, -0.25)  # nonzero: safe as divisors too


@dataclass(frozen=True)
class Step:
    """``value = op(*args; params)``: an int arg indexes an earlier value, a float is a literal."""

    op: str
    args: tuple[int | float, ...]
    params: tuple[float, ...] = ()


@dataclass(frozen=True)
class Program:
    """Inputs are values ``0 .. n_inputs-1``; step k defines value ``n_inputs + k``."""

    n_inputs: int
    steps: tuple[Step, ...]
    outputs: tuple[int, ...]

    def ops_used(self) -> set[str]:
        return {s.op for s in self.steps}

    def __str__(self) -> str:
        def arg(a: int | float) -> str:
            return f"v{a}" if isinstance(a, int) else repr(a)

        lines = [f"inputs v0..v{self.n_inputs - 1}"]
        for k, s in enumerate(self.steps):
            ps = "".join(f", p={p!r}" for p in s.params)
            lines.append(f"v{self.n_inputs + k} = {s.op}({', '.join(map(arg, s.args))}{ps})")
        lines.append("return " + ", ".join(f"v{i}" for i in self.outputs))
        return "\n".join(lines)


@dataclass(frozen=True)
class Case:
    """A program and the leaf values it is to be run at."""

    program: Program
    inputs: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.program}\nat {list(self.inputs)}"


def _params(op: str, params: Sequence[float]) -> dict[str, float]:
    return dict(zip(OPS[op].params, params, strict=True))


# ---- running a program --------------------------------------------------------------------------


def evaluate(program: Program, inputs: Sequence[float]) -> list[float]:
    """Every value of the program (inputs first) on floats, with each op's ``impl``."""
    vals = [float(x) for x in inputs]
    for s in program.steps:
        xs = [vals[a] if isinstance(a, int) else a for a in s.args]
        vals.append(OPS[s.op].impl(*xs, **_params(s.op, s.params)))
    return vals


def kink_signature(program: Program, inputs: Sequence[float]) -> tuple[int, ...]:
    """On which side of its kinks (-1, 0 on it, 1) each kinked op lies: a step whose side
    changes inside an FD stencil has no difference quotient there (relu crossing 0, a
    comparison flipping, where's condition leaving 0)."""
    vals = evaluate(program, inputs)
    sig = []
    for s in program.steps:
        xs = [vals[a] if isinstance(a, int) else a for a in s.args]
        sig += [(d > 0) - (d < 0) for d in OPS[s.op].kink_offsets(*xs)]
    return tuple(sig)


def to_values(
    program: Program, inputs: Sequence[float], labels: Sequence[str] | None = None
) -> tuple[list[Value], list[Value], list[Value | float]]:
    """A symgrad Value graph: (leaves, outputs, every value by index). Leaves are labelled x0.."""
    labels = labels if labels is not None else [f"x{i}" for i in range(program.n_inputs)]
    leaves = [Value(float(x), label=lab) for x, lab in zip(inputs, labels, strict=True)]
    nodes: list[Any] = list(leaves)
    for s in program.steps:
        args = [nodes[a] if isinstance(a, int) else a for a in s.args]
        nodes.append(OPS[s.op](*args, **_params(s.op, s.params)))
    return leaves, [nodes[i] for i in program.outputs], nodes


def to_micrograd(program: Program, inputs: Sequence[float]) -> tuple[list[Any], list[Any]]:
    """The same graph in the original micrograd package (only `MICROGRAD_OPS`)."""
    from micrograd.engine import Value as MgValue

    spell: dict[str, Callable[..., Any]] = {
        "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "mul": lambda a, b: a * b,
        "div": lambda a, b: a / b,
        "neg": lambda a: -a,
        "pow": lambda a, p: a**p,
        "relu": lambda a: a.relu(),
    }
    leaves = [MgValue(float(x)) for x in inputs]
    nodes: list[Any] = list(leaves)
    for s in program.steps:
        if s.op not in spell:
            raise ValueError(f"micrograd has no {s.op}")
        args = [nodes[a] if isinstance(a, int) else a for a in s.args]
        if all(not isinstance(a, MgValue) for a in args):  # a literal-only step (not drawn)
            args[0] = MgValue(args[0])
        if isinstance(args[0], MgValue):
            nodes.append(spell[s.op](*args, *s.params))
        else:  # literal on the left: micrograd's reflected operators
            nodes.append(spell[s.op](MgValue(args[0]), *args[1:], *s.params))
    return leaves, [nodes[i] for i in program.outputs]


def to_ir(program: Program, name: str = "f") -> ir.Func:
    """The program as an IR `Func` built directly with `ir.Builder` (no tracer, no folding)."""
    b = ir.Builder()
    atoms: list[ir.Atom] = [b.arg(f"x{i}") for i in range(program.n_inputs)]
    for s in program.steps:
        args = [atoms[a] if isinstance(a, int) else ir.Const(a) for a in s.args]
        atoms.append(b.emit(s.op, args, s.params))
    return b.build(name, [atoms[i] for i in program.outputs])


def same_float(a: float, b: float) -> bool:
    """IEEE identity: equal bits (so -0.0 != 0.0), except that every nan equals every nan."""
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return struct.pack("<d", a) == struct.pack("<d", b)


# ---- drawing programs ----------------------------------------------------------------------------

MAX_MAGNITUDE = 1e4
DOMAIN_MARGIN = 0.1  # distance kept from a finite domain bound (log's 0)
KINK_MARGIN = 1e-2  # distance kept from relu/step's kink: wider than any FD stencil used here


def _safe(
    op: str, xs: Sequence[float], params: Sequence[float], out: float,
    max_magnitude: float = MAX_MAGNITUDE,
) -> bool:
    """Whether `op` at operands `xs` is well inside its domain, off its kinks, without overflow.

    A `where` whose condition is a comparison's 0.0 (`_condition_steps`) is safe: the condition
    stays 0.0 under small changes of the leaves, since the comparison is off its own kink.
    """
    d = OPS[op]
    if not math.isfinite(out) or abs(out) > max_magnitude:
        return False
    lo, hi = d.domain
    values = xs[1:] if op == "where" else xs  # where's condition is not in its domain
    for x in values:
        if not (lo + DOMAIN_MARGIN <= x if math.isfinite(lo) else True):
            return False
        if not (x <= hi - DOMAIN_MARGIN if math.isfinite(hi) else True):
            return False
    if op == "where" and xs[0] in (0.0, 1.0):
        pass  # a comparison's result (programs() makes every safe condition one)
    elif any(abs(k) < KINK_MARGIN for k in d.kink_offsets(*xs)):
        return False
    if op == "div" and abs(xs[1]) < 0.25:
        return False
    if op == "pow":
        (p,) = params
        if p < 0 and abs(xs[0]) < 0.25:
            return False
        if not float(p).is_integer() and xs[0] < DOMAIN_MARGIN:
            return False
    # saturated tanh/sigmoid: the rules' 1 - out*out and out*(1 - out) keep no significant digits
    return not (op in ("tanh", "sigmoid") and abs(xs[0]) > 5.0)


COMPARISONS = ("ge", "gt", "le", "lt")


def _make_safe(
    op: str, args: list[int | float], params: tuple[float, ...], vals: list[float],
    push: Callable[[Step], int],
) -> list[int]:
    """Route `args` through guards (in place) unless `op` is safe on them already; a guarded
    tie (max(v, v), v < v) takes the literal 2.0, which no guard reaches. Returns the guards'
    results."""
    xs = [vals[a] if isinstance(a, int) else a for a in args]
    if _safe(op, xs, params, OPS[op].impl(*xs, **_params(op, params))):
        return []
    made = []
    for i, a in enumerate(args):
        if isinstance(a, int) and not (op == "where" and i == 0):
            for g in _guard_steps(a, len(vals)):
                push(g)
            args[i] = len(vals) - 1
            made.append(args[i])
    xs = [vals[a] if isinstance(a, int) else a for a in args]
    if not _safe(op, xs, params, OPS[op].impl(*xs, **_params(op, params))):
        args[-1] = 2.0
    return made


def _safe_step(
    op: str, args: list[int | float], params: tuple[float, ...], vals: list[float],
    push: Callable[[Step], int],
) -> int:
    """Push ``op(args)``, made safe, and return its value's index."""
    _make_safe(op, args, params, vals, push)
    return push(Step(op, tuple(args), params))


def _guard_steps(u: int, first: int) -> list[Step]:
    """``1 / (u*u + 1) + 0.5`` in (0.5, 1.5]: safe for every op; micrograd's ops only."""
    return [
        Step("mul", (u, u)),
        Step("add", (first, 1.0)),
        Step("pow", (first + 1,), (-1.0,)),
        Step("add", (first + 2, 0.5)),
    ]


safe_floats = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)


@st.composite
def programs(
    draw: st.DrawFn,
    n_inputs: tuple[int, int] = (1, 3),
    max_ops: int = 8,
    ops: Sequence[str] | None = None,
    safe: bool = True,
    n_outputs: int = 1,
    leaf_values: st.SearchStrategy[float] | None = None,
) -> Case:
    """A `Case`: a random program over `ops` (default: all of OPS) and leaf values to run it at.

    Args:
        n_inputs: (min, max) number of inputs.
        max_ops: at most this many drawn ops (guards add up to 4 steps per operand).
        ops: op names to draw from (sorted for reproducibility).
        safe: keep every op well inside its domain at the drawn leaves (see module docstring).
        n_outputs: how many outputs (the last value, then values drawn by index).
        leaf_values: strategy for the leaves (default: [-3, 3] when safe, any float otherwise).
    """
    names = sorted(ops if ops is not None else OPS)
    if leaf_values is None:
        leaf_values = safe_floats if safe else st.floats()
    n = draw(st.integers(*n_inputs))
    inputs = [draw(leaf_values) for _ in range(n)]
    vals = list(inputs)
    steps: list[Step] = []
    # operands are drawn from the inputs, the drawn ops and the guards' results, not from a
    # guard's intermediates (u*u may be as large as MAX_MAGNITUDE**2)
    pickable = list(range(n))

    def push(step: Step) -> int:
        xs = [vals[a] if isinstance(a, int) else a for a in step.args]
        vals.append(OPS[step.op].impl(*xs, **_params(step.op, step.params)))
        steps.append(step)
        return len(vals) - 1

    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(names))
        d = OPS[op]
        params = tuple(draw(st.sampled_from(POW_EXPONENTS)) for _ in d.params)
        args: list[int | float] = [draw(st.sampled_from(pickable)) for _ in range(d.arity)]
        if d.arity >= 2 and draw(st.integers(0, 4)) == 0:
            args[draw(st.integers(0, d.arity - 1))] = draw(st.sampled_from(LITERALS))
        if safe and op == "where":
            # a condition that holds still: a comparison of two drawn values, made safe
            cmp = draw(st.sampled_from(COMPARISONS))
            pair = [draw(st.sampled_from(pickable)) for _ in range(2)]
            args[0] = _safe_step(cmp, pair, (), vals, push)
            pickable.append(args[0])
        if safe:
            pickable += _make_safe(op, args, params, vals, push)
        pickable.append(push(Step(op, tuple(args), params)))
    outputs = [len(vals) - 1]
    outputs += [draw(st.sampled_from(pickable)) for _ in range(n_outputs - 1)]
    prog = Program(n, tuple(steps), tuple(outputs))
    if safe:
        _assert_safe(prog, inputs)
    return Case(prog, tuple(inputs))


def _assert_safe(prog: Program, inputs: Sequence[float]) -> None:
    """Every step of a program drawn safe is inside its domain at `inputs` (the generator's own
    check)."""
    vals = evaluate(prog, inputs)
    for k, s in enumerate(prog.steps):
        xs = [vals[a] if isinstance(a, int) else a for a in s.args]
        # a guard squares a value of up to MAX_MAGNITUDE, hence the wider bound here
        assert _safe(s.op, xs, s.params, vals[prog.n_inputs + k], MAX_MAGNITUDE**2), \
            f"step {k}:\n{prog}"


# ---- numerical slack ----------------------------------------------------------------------------


def engine_value_and_grad(
    case: Case, perturb: float = 0.0, rng: random.Random | None = None
) -> tuple[list[float], list[list[float]]]:
    """Values and Jacobian (outputs x inputs) by the interpreted engine's ``backward()``.

    With ``perturb > 0`` every op's result is multiplied by ``1 + U(-perturb, perturb)`` as the
    graph is built (later ops, and the backward rules, see the perturbed data): runs like this
    measure how much the results move under rounding-sized changes, the slack needed when
    comparing two correct float computations that round differently (np.tanh vs math.tanh).
    """
    prog = case.program
    leaves = [Value(float(x), label=f"x{i}") for i, x in enumerate(case.inputs)]
    nodes: list[Any] = list(leaves)
    for s in prog.steps:
        args = [nodes[a] if isinstance(a, int) else a for a in s.args]
        v = OPS[s.op](*args, **_params(s.op, s.params))
        if perturb and rng is not None:
            v.data *= 1.0 + rng.uniform(-perturb, perturb)
        nodes.append(v)
    values, jac = [], []
    for o in prog.outputs:
        for v in nodes:
            v.grad = 0.0
        nodes[o].backward()
        values.append(nodes[o].data)
        jac.append([leaf.grad for leaf in leaves])
    return values, jac


def rounding_slack(
    case: Case, runs: int = 4, seed: int = 0
) -> tuple[list[float], list[list[float]]]:
    """Per-result absolute slack for comparing two correct float computations of `case`.

    The larger of: 30x the largest move of the engine's results under 1e-15 relative
    perturbations of every value (last-bit differences in tanh, exp, log amplified by the
    program's conditioning), and ``4 * n_steps * eps`` times the sum of the absolute values of
    every contribution summed into each gradient (a different summation order, as micrograd's
    or a multi-output sweep's, can cancel differently).
    """
    base_v, base_j = engine_value_and_grad(case)
    rng = random.Random(seed)
    sv = [0.0] * len(base_v)
    sj = [[0.0] * len(r) for r in base_j]
    for _ in range(runs):
        v, j = engine_value_and_grad(case, 1e-15, rng)
        for k in range(len(v)):
            sv[k] = max(sv[k], _move(v[k], base_v[k]))
            for i in range(len(j[k])):
                sj[k][i] = max(sj[k][i], _move(j[k][i], base_j[k][i]))
    order = 4 * (len(case.program.steps) + 1) * 2.2e-16
    absolute = _absolute_adjoints(case)
    return (
        [30 * s for s in sv],
        [
            [max(30 * s, order * a) for s, a in zip(r, ra, strict=True)]
            for r, ra in zip(sj, absolute, strict=True)
        ],
    )


def _absolute_adjoints(case: Case) -> list[list[float]]:
    """Per output, per input: the sum over all chain-rule paths of |local derivative products|."""
    prog = case.program
    vals = evaluate(prog, case.inputs)
    n = prog.n_inputs
    rows = []
    for o in prog.outputs:
        adj = [0.0] * len(vals)
        adj[o] = 1.0
        for k in reversed(range(len(prog.steps))):
            s = prog.steps[k]
            if adj[n + k] == 0.0:
                continue
            xs = [vals[a] if isinstance(a, int) else a for a in s.args]
            local = OPS[s.op].vjp(1.0, vals[n + k], *xs, **_params(s.op, s.params))
            for a, d in zip(s.args, local, strict=True):
                if isinstance(a, int) and d is not None:
                    adj[a] += abs(d) * adj[n + k]
        rows.append(adj[:n])
    return rows


def _move(a: float, b: float) -> float:
    if math.isfinite(a) and math.isfinite(b):
        return abs(a - b)
    return 0.0 if same_float(a, b) else math.inf
