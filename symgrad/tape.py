"""The large-graph lowering: an IR function as a levelled tape of runs over a slot workspace.

Imports `ops` and `ir`. Numba's compile time grows faster than linearly with the length of
straight-line code (minutes for the 50k statements of an MLP(16,[64,64,1]) gradient), so big
graphs are not compiled line by line. Instead, in named steps (`lower`):

1. `fuse_dots`: left-folded sums of products (a neuron's ``b + w0*x0 + ...``, a backward sum of
   ``w * ct``) become single fused steps whose terms keep the original order;
2. `_runs`: steps are grouped into *runs*: same op, same level of the dependency graph (so no
   step of a run reads another's result). A micrograd model has few distinct levels and ops, so
   it becomes a few dozen runs however many neurons it has;
3. `_allocate`: every value gets a slot of a workspace, reused once the value is dead (linear
   scan over runs);
4. `_pack`: the runs become flat index arrays, the `Tape` an executor runs (see
   `symgrad.executors`): the per-instruction cost at run time is an indexed load/op/store, with
   no per-graph JIT. Compile time is the Python work of these steps, linear in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .ir import Atom, Const, Func, Var
from .ops import OPS

__all__ = ["DOT", "OPCODES", "Tape", "fuse_dots", "lower"]

OPCODES: dict[str, int] = {name: i for i, name in enumerate(sorted(OPS))}
DOT = len(OPCODES)  # the tape's own fused op (see `fuse_dots`)
MIN_DOT_TERMS = 3  # shorter sums stay as they are


@dataclass(frozen=True)
class Tape:
    """A `Func` lowered to runs over a slot workspace.

    Attributes:
        n_slots: workspace rows.
        arg_slots: slot of each function argument.
        result_slots: slot of each result (constants and arguments have slots too).
        result_b: -1, or for an accumulated result that is a product used nowhere else, the
            slot of its second factor (``result_slots`` then holds the first): the product is
            summed over the block without being stored.
        const_slots, const_values: slots filled with literals once per call.
        runs: ``(n_runs, 3)`` int64: opcode, first and last+1 index into the instruction arrays.
        out, a0, a1, a2: per-instruction slots of the result and the operands (0 where an op
            has fewer operands); for a fused sum (`DOT`), a0 and a1 delimit its terms in
            ``ta``, ``tb``, ``tu``.
        p: per-instruction static parameter (pow's exponent; 0.0 when unused).
        ta, tb, tu: the terms ``work[ta] * work[tb]`` of fused sums; ``tu`` marks a ``tb`` that is
            the same for every example (a parameter or a literal), read once.
    """

    n_slots: int
    arg_slots: np.ndarray
    result_slots: np.ndarray
    result_b: np.ndarray
    const_slots: np.ndarray
    const_values: np.ndarray
    runs: np.ndarray
    out: np.ndarray
    a0: np.ndarray
    a1: np.ndarray
    a2: np.ndarray
    p: np.ndarray
    ta: np.ndarray
    tb: np.ndarray
    tu: np.ndarray

    def describe(self) -> str:
        """A short listing of the runs, for people (``f.source`` shows it for this lowering)."""
        names = {v: k for k, v in OPCODES.items()} | {DOT: "dot"}
        lines = [
            f"# tape: {len(self.out)} instructions ({len(self.ta)} fused product terms) in "
            f"{len(self.runs)} runs, {self.n_slots} workspace slots"
        ]
        for r, (op, lo, hi) in enumerate(self.runs[:40]):
            extra = ""
            if op == DOT:
                extra = f" ({int((self.a1[lo:hi] - self.a0[lo:hi]).sum())} terms)"
            lines.append(f"#   run {r:4d}: {names[int(op)]:8s} x {hi - lo}{extra}")
        if len(self.runs) > 40:
            lines.append(f"#   ... {len(self.runs) - 40} more runs")
        return "\n".join(lines)


@dataclass
class _Step:
    """One tape instruction: a table op, or a fused sum of products (op == DOT)."""

    op: int
    out: Var
    args: tuple[Atom, ...] = ()
    p: float = 0.0
    terms: list[tuple[Atom, Atom]] | None = None

    def operands(self) -> list[Atom]:
        if self.terms is None:
            return list(self.args)
        return [a for t in self.terms for a in t]


ONE = Const(1.0)


def fuse_dots(func: Func) -> list[_Step]:
    """Fuse left-folded sums of products, ``((t1 + t2) + t3) + ...``, into single DOT steps.

    This is where the structure of micrograd models is recovered: a neuron's
    ``b + w0*x0 + w1*x1 + ...`` and the backward pass's sums of ``w * ct`` over a layer become one
    step each, whose terms are evaluated in exactly the original order (a term that is not a
    product is multiplied by 1.0, which is exact), so the result is bit-for-bit the same. Only
    intermediate sums and products used nowhere else are absorbed.
    """
    uses: dict[Var, int] = {}
    for ins in func.body:
        for a in ins.args:
            if isinstance(a, Var):
                uses[a] = uses.get(a, 0) + 1
    for r in func.results:
        if isinstance(r, Var):
            uses[r] = uses.get(r, 0) + 2  # a result is never absorbed
    defs = {ins.out: ins for ins in func.body}
    chains: dict[Var, list[tuple[Atom, Atom]]] = {}  # open chain, keyed by its current sum

    def term(x: Atom) -> tuple[Atom, Atom]:
        d = defs.get(x) if isinstance(x, Var) else None
        if d is not None and d.op == "mul" and uses[x] == 1:
            return d.args[0], d.args[1]
        return x, ONE

    for ins in func.body:
        if ins.op != "add":
            continue
        p, q = ins.args
        if isinstance(p, Var) and p in chains and uses[p] == 1:
            terms = chains.pop(p)
            terms.append(term(q))
        elif isinstance(q, Var) and q in chains and uses[q] == 1:
            terms = chains.pop(q)  # addition commutes exactly
            terms.append(term(p))
        else:
            terms = [term(p), term(q)]
        chains[ins.out] = terms

    # chains too short to be worth it stay as they were
    fused = {out: terms for out, terms in chains.items() if len(terms) >= MIN_DOT_TERMS}
    replaced = _members(fused, defs, uses)
    steps: list[_Step] = []
    for ins in func.body:
        if ins.out in fused:
            steps.append(_Step(DOT, ins.out, terms=fused[ins.out]))
        elif ins.out in replaced:
            continue
        else:
            param = ins.params[0] if ins.params else 0.0
            steps.append(_Step(OPCODES[ins.op], ins.out, ins.args, param))
    return steps


def _members(
    fused: dict[Var, list[tuple[Atom, Atom]]], defs: dict[Var, Any], uses: dict[Var, int]
) -> set[Var]:
    """The instructions fused chains replace: their inner sums and absorbed products.

    Walks each chain down from its final sum the way `fuse_dots` built it up: through the first
    single-use sum among the operands, taking every single-use product on the way.
    """
    members: set[Var] = set()
    for out in fused:
        # walk the chain down from its final sum through single-use sums
        cur = defs[out]
        while True:
            nxt = None
            for x in cur.args:
                d = defs.get(x) if isinstance(x, Var) else None
                if d is not None and d.op == "mul" and uses[x] == 1:
                    members.add(x)
            for x in cur.args:
                d = defs.get(x) if isinstance(x, Var) else None
                if (d is not None and d.op == "add" and uses[x] == 1 and x not in fused
                        and nxt is None):
                    nxt = d
            if nxt is None:
                break
            members.add(nxt.out)
            cur = nxt
    return members


def lower(func: Func, n_uniform: int = 0, n_assigned: int | None = None) -> Tape:
    """Lower `func` to a `Tape`: fuse sums of products, level, group into runs, give slots.

    The first `n_uniform` arguments are the same for every example of a batch (parameters);
    fused products read them once per block instead of once per example. Results from index
    `n_assigned` on are accumulated over examples (gradients); those that are products used
    nowhere else are summed straight from their factors.
    """
    steps = fuse_dots(func)
    n_assigned = len(func.results) if n_assigned is None else n_assigned
    reduced = _reduced_products(func, steps, n_assigned)
    steps = [st for st in steps if st.out not in reduced]
    runs = _runs(func, steps)
    slots = _allocate(func, steps, runs, reduced, n_uniform)
    return _pack(func, steps, runs, slots, reduced)


@dataclass
class _Runs:
    """Steps grouped into runs: ``groups[g]`` are step indices, ``keys[g]`` (level, opcode)."""

    groups: list[list[int]]
    keys: list[tuple[int, int]]


def _runs(func: Func, steps: list[_Step]) -> _Runs:
    """Level every step (1 + its operands' highest level) and group equal (level, op) runs."""
    level: dict[Var, int] = {a: 0 for a in func.args}
    order = []
    for idx, st in enumerate(steps):
        lv = 1 + max((level[a] for a in st.operands() if isinstance(a, Var)), default=0)
        level[st.out] = lv
        order.append((lv, st.op, idx))
    order.sort()
    runs = _Runs([], [])
    for lv, opc, idx in order:
        if runs.keys and runs.keys[-1] == (lv, opc):
            runs.groups[-1].append(idx)
        else:
            runs.keys.append((lv, opc))
            runs.groups.append([idx])
    return runs


@dataclass
class _Slots:
    """Workspace slots: of every value (by `_key`), the literals' values, the uniform slots."""

    slot_of: dict[Any, int] = field(default_factory=dict)
    consts: dict[Any, float] = field(default_factory=dict)
    uniform: set[int] = field(default_factory=set)
    n_slots: int = 0
    free: list[int] = field(default_factory=list)

    def new(self) -> int:
        if self.free:
            return self.free.pop()
        self.n_slots += 1
        return self.n_slots - 1


def _allocate(func: Func, steps: list[_Step], runs: _Runs,
              reduced: dict[Atom, tuple[Atom, Atom]], n_uniform: int) -> _Slots:
    """Give every value a slot, freeing a slot after the last run that reads its value."""
    last_use = _last_uses(func, steps, runs, reduced)
    sl = _Slots()
    for a in func.args:  # arguments and literals keep their slots for the whole tape
        sl.slot_of[_key(a)] = sl.new()
    results = [r for r in func.results if not (isinstance(r, Var) and r in reduced)]
    for a in [x for st in steps for x in st.operands()] + results + [
        x for pair in reduced.values() for x in pair
    ]:
        if isinstance(a, Const) and _key(a) not in sl.slot_of:
            sl.slot_of[_key(a)] = sl.new()
            sl.consts[_key(a)] = a.value
    pinned = set(sl.slot_of.values())
    sl.uniform = {sl.slot_of[_key(a)] for a in func.args[:n_uniform]} | {
        sl.slot_of[k] for k in sl.consts
    }
    by_run: dict[int, list[Any]] = {}
    for k, g in last_use.items():
        by_run.setdefault(g, []).append(k)
    for g, members in enumerate(runs.groups):
        # outputs are allocated before this run's dead operands are freed, so no step of a run
        # overwrites an operand another step of the same run still has to read
        for idx in members:
            sl.slot_of[_key(steps[idx].out)] = sl.new()
        sl.free += [sl.slot_of[k] for k in by_run.get(g, ()) if sl.slot_of[k] not in pinned]
        # a value never read after its own run (dead code) is freed too
        sl.free += [sl.slot_of[_key(steps[i].out)] for i in members
                    if _key(steps[i].out) not in last_use]
    return sl


def _last_uses(func: Func, steps: list[_Step], runs: _Runs,
               reduced: dict[Atom, tuple[Atom, Atom]]) -> dict[Any, int]:
    """The last run that reads each value; results stay live to the end."""
    last_use: dict[Any, int] = {}
    for g, members in enumerate(runs.groups):
        for idx in members:
            for a in steps[idx].operands():
                last_use[_key(a)] = g
    end = len(runs.groups)
    for r in func.results:
        last_use[_key(r)] = end
    for x, y in reduced.values():
        last_use[_key(x)] = last_use[_key(y)] = end
    return last_use


def _pack(func: Func, steps: list[_Step], runs: _Runs, sl: _Slots,
          reduced: dict[Atom, tuple[Atom, Atom]]) -> Tape:
    """The runs as flat index arrays, in run order."""
    n = len(steps)
    out, a0, a1, a2 = (np.zeros(n, np.int64) for _ in range(4))
    operand_slots = (a0, a1, a2)
    p = np.zeros(n, np.float64)
    ta: list[int] = []
    tb: list[int] = []
    tu: list[int] = []
    run_rows = np.zeros((len(runs.groups), 3), np.int64)
    pos = 0
    for g, members in enumerate(runs.groups):
        for idx in members:
            st = steps[idx]
            out[pos] = sl.slot_of[_key(st.out)]
            if st.terms is not None:
                a0[pos] = len(ta)
                for x, y in st.terms:
                    sx, sy = sl.slot_of[_key(x)], sl.slot_of[_key(y)]
                    if sx in sl.uniform and sy not in sl.uniform:
                        sx, sy = sy, sx  # products commute exactly: keep the uniform one second
                    ta.append(sx)
                    tb.append(sy)
                    tu.append(int(sy in sl.uniform))
                a1[pos] = len(ta)
            else:
                if len(st.args) > len(operand_slots):
                    raise ValueError(f"the tape holds ops of up to {len(operand_slots)} "
                                     f"operands, not {len(st.args)}")
                for arr, a in zip(operand_slots, st.args, strict=False):
                    arr[pos] = sl.slot_of[_key(a)]
                p[pos] = st.p
            pos += 1
        run_rows[g] = (runs.keys[g][1], pos - len(members), pos)
    slot = sl.slot_of
    return Tape(
        n_slots=max(sl.n_slots, 1),
        arg_slots=np.array([slot[_key(a)] for a in func.args], np.int64),
        result_slots=np.array(
            [slot[_key(reduced[r][0] if r in reduced else r)] for r in func.results], np.int64
        ),
        result_b=np.array(
            [slot[_key(reduced[r][1])] if r in reduced else -1 for r in func.results], np.int64
        ),
        const_slots=np.array([slot[k] for k in sl.consts], np.int64),
        const_values=np.array(list(sl.consts.values()), np.float64),
        runs=run_rows, out=out, a0=a0, a1=a1, a2=a2, p=p,
        ta=np.array(ta, np.int64), tb=np.array(tb, np.int64), tu=np.array(tu, np.int64),
    )


def _reduced_products(
    func: Func, steps: list[_Step], n_assigned: int
) -> dict[Atom, tuple[Atom, Atom]]:
    """Accumulated results that are products read by nothing else: result -> its factors."""
    mul = OPCODES["mul"]
    defs = {st.out: st for st in steps if st.op == mul}
    read = {a for st in steps for a in st.operands() if isinstance(a, Var)}
    count: dict[Atom, int] = {}
    for r in func.results:
        count[r] = count.get(r, 0) + 1
    out: dict[Atom, tuple[Atom, Atom]] = {}
    for i, r in enumerate(func.results):
        if i >= n_assigned and isinstance(r, Var) and r in defs and r not in read and count[r] == 1:
            x, y = defs[r].args
            out[r] = (x, y)
    return out


def _key(a: Atom) -> Any:
    return a if isinstance(a, Var) else ("const", a)
