"""The large-graph lowering: a levelled tape run by one interpreter compiled once per op table.

Imports `ops`, `ir` and `codegen`. Numba's compile time grows faster than linearly with the
length of straight-line code (minutes for the 50k statements of an MLP(16,[64,64,1]) gradient),
so big graphs are not compiled line by line. Instead:

1. instructions are grouped into *runs*: same op, same level of the dependency graph (so no
   instruction of a run reads another's result). A micrograd model has few distinct levels and
   ops, so it becomes a few hundred runs however many neurons it has: every product
   ``w[i, j] * x[j]`` of a layer is one run, every step of the neurons' sums another;
2. every value gets a slot of a workspace, reused once the value is dead (linear scan over runs);
3. one generic interpreter, generated from the op table's templates and JIT-compiled once, runs
   each run as a loop over its index arrays, on a block of examples at a time, laid out
   structure-of-arrays (``work[slot, example]``) so the innermost loop is over examples and
   vectorises.

Compile time is the Python work of steps 1-2, linear in the graph; the per-instruction cost at
run time is an indexed load/op/store, with no per-graph JIT.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import cache
from .codegen import IEEE_NUMPY, Layout, exec_source, jit_compile
from .ir import Atom, Const, Func, Var
from .ops import OPS

__all__ = [
    "BLOCK", "Tape", "interpreter_source", "lower", "run", "run_layout", "with_layout",
]

BLOCK = 32  # examples per block: the innermost loop's length
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
        out, a0, a1: per-instruction slots (a1 is 0 for unary ops); for a fused sum (`DOT`),
            a0 and a1 delimit its terms in ``ta``, ``tb``, ``tu``.
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
    level: dict[Var, int] = {a: 0 for a in func.args}
    order = []
    for idx, st in enumerate(steps):
        lv = 1 + max((level[a] for a in st.operands() if isinstance(a, Var)), default=0)
        level[st.out] = lv
        order.append((lv, st.op, idx))
    order.sort()
    # runs: maximal groups with equal (level, opcode)
    groups: list[list[int]] = []
    keys: list[tuple[int, int]] = []
    for lv, opc, idx in order:
        if keys and keys[-1] == (lv, opc):
            groups[-1].append(idx)
        else:
            keys.append((lv, opc))
            groups.append([idx])

    # last run that reads each value; results stay live to the end
    last_use: dict[Any, int] = {}
    for g, members in enumerate(groups):
        for idx in members:
            for a in steps[idx].operands():
                last_use[_key(a)] = g
    for r in func.results:
        last_use[_key(r)] = len(groups)
    for x, y in reduced.values():
        last_use[_key(x)] = last_use[_key(y)] = len(groups)

    slot_of: dict[Any, int] = {}
    free: list[int] = []
    n_slots = 0

    def new_slot() -> int:
        nonlocal n_slots
        if free:
            return free.pop()
        n_slots += 1
        return n_slots - 1

    for a in func.args:  # arguments and literals keep their slots for the whole tape
        slot_of[_key(a)] = new_slot()
    consts: dict[Any, float] = {}
    results = [r for r in func.results if not (isinstance(r, Var) and r in reduced)]
    for a in [x for st in steps for x in st.operands()] + results + [
        x for pair in reduced.values() for x in pair
    ]:
        if isinstance(a, Const) and _key(a) not in slot_of:
            slot_of[_key(a)] = new_slot()
            consts[_key(a)] = a.value
    pinned = set(slot_of.values())
    uniform = {slot_of[_key(a)] for a in func.args[:n_uniform]} | {
        slot_of[k] for k in consts
    }

    by_run: dict[int, list[Any]] = {}
    for k, g in last_use.items():
        by_run.setdefault(g, []).append(k)

    n = len(steps)
    out = np.zeros(n, np.int64)
    a0 = np.zeros(n, np.int64)
    a1 = np.zeros(n, np.int64)
    p = np.zeros(n, np.float64)
    ta: list[int] = []
    tb: list[int] = []
    tu: list[int] = []
    runs = np.zeros((len(groups), 3), np.int64)
    pos = 0
    for g, members in enumerate(groups):
        # outputs are allocated before this run's dead operands are freed, so no instruction of
        # a run overwrites an operand another instruction of the same run still has to read
        for idx in members:
            st = steps[idx]
            s = new_slot()
            slot_of[_key(st.out)] = s
            out[pos] = s
            if st.terms is not None:
                a0[pos] = len(ta)
                for x, y in st.terms:
                    sx, sy = slot_of[_key(x)], slot_of[_key(y)]
                    if sx in uniform and sy not in uniform:
                        sx, sy = sy, sx  # products commute exactly: keep the uniform one second
                    ta.append(sx)
                    tb.append(sy)
                    tu.append(int(sy in uniform))
                a1[pos] = len(ta)
            else:
                a0[pos] = slot_of[_key(st.args[0])]
                a1[pos] = slot_of[_key(st.args[1])] if len(st.args) > 1 else 0
                p[pos] = st.p
            pos += 1
        runs[g] = (keys[g][1], pos - len(members), pos)
        for k in by_run.get(g, ()):
            s = slot_of[k]
            if s not in pinned:
                free.append(s)
        # a value never read after its own run (dead code) is freed too
        for idx in members:
            k = _key(steps[idx].out)
            if k not in last_use:
                free.append(slot_of[k])
    return Tape(
        n_slots=max(n_slots, 1),
        arg_slots=np.array([slot_of[_key(a)] for a in func.args], np.int64),
        result_slots=np.array(
            [slot_of[_key(reduced[r][0] if r in reduced else r)] for r in func.results], np.int64
        ),
        result_b=np.array(
            [slot_of[_key(reduced[r][1])] if r in reduced else -1 for r in func.results],
            np.int64,
        ),
        const_slots=np.array([slot_of[k] for k in consts], np.int64),
        const_values=np.array(list(consts.values()), np.float64),
        runs=runs, out=out, a0=a0, a1=a1, p=p,
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


# ---- the interpreter -------------------------------------------------------------------------


def interpreter_source() -> str:
    """Source of ``run_block``, generated from the op table: one branch per op."""
    lines = [
        "# generated by symgrad from the op table: the tape interpreter",
        "import numpy as np",
        "",
        "",
        "def run_block(runs, out, a0, a1, p, ta, tb, tu, work, acc, nb):",
        "    for r in range(runs.shape[0]):",
        "        op = runs[r, 0]",
        "        lo = runs[r, 1]",
        "        hi = runs[r, 2]",
    ]
    first = True
    for name, code in OPCODES.items():
        op = OPS[name]
        operands = ["work[a, e]", "work[b, e]"][: op.arity]
        expr = op.py.format(*operands, p="pk")
        kw = "if" if first else "elif"
        first = False
        lines += [
            f"        {kw} op == {code}:  # {name}",
            "            for k in range(lo, hi):",
            "                o = out[k]",
            "                a = a0[k]",
            "                b = a1[k]",
            "                pk = p[k]",
            "                for e in range(nb):",
            f"                    work[o, e] = {expr}",
        ]
    lines += [
        f"        elif op == {DOT}:  # fused sum of products, in the original order",
        "            for k in range(lo, hi):",
        "                for t in range(a0[k], a1[k]):",
        "                    a = ta[t]",
        "                    b = tb[t]",
        "                    if tu[t]:  # the same for every example: read it once",
        "                        s = work[b, 0]",
        "                        if t == a0[k]:",
        "                            for e in range(nb):",
        "                                acc[e] = work[a, e] * s",
        "                        else:",
        "                            for e in range(nb):",
        "                                acc[e] = acc[e] + work[a, e] * s",
        "                    elif t == a0[k]:",
        "                        for e in range(nb):",
        "                            acc[e] = work[a, e] * work[b, e]",
        "                    else:",
        "                        for e in range(nb):",
        "                            acc[e] = acc[e] + work[a, e] * work[b, e]",
        "                o = out[k]",
        "                for e in range(nb):",
        "                    work[o, e] = acc[e]",
    ]
    args = (
        "tape_runs, out, a0, a1, p, ta, tb, tu,\n"
        "        arg_slots, const_slots, const_values, result_slots, result_b,\n"
        "        n_slots, block, n_chunks, params, X, n_out, values, acc, per_row"
    )
    lines += [
        "",
        "",
        "def run_chunk(c, chunk_acc, " + args + "):",
        "    # chunk c of the rows' blocks: params are broadcast over a block, X rows are",
        "    # examples; the first n_out results are values, the rest are added into acc[row]",
        "    # (per_row) or summed into chunk_acc[c]",
        "    n = X.shape[0]",
        "    n_params = params.shape[0]",
        "    n_acc = result_slots.shape[0] - n_out",
        "    n_blocks = (n + block - 1) // block",
        "    work = np.empty((n_slots, block))",
        "    dot_acc = np.empty(block)",
        "    # one partial sum per lane (example slot of a block), summed once per chunk: the",
        "    # lanes are independent, so the loop vectorises (a running scalar sum cannot)",
        "    lanes = np.zeros((0 if per_row else n_acc, block))",
        "    for s in range(const_slots.shape[0]):",
        "        work[const_slots[s], :] = const_values[s]",
        "    for j in range(n_params):",
        "        work[arg_slots[j], :] = params[j]",
        "    for bi in range(c * n_blocks // n_chunks, (c + 1) * n_blocks // n_chunks):",
        "        start = bi * block",
        "        nb = min(block, n - start)",
        "        for j in range(X.shape[1]):",
        "            s = arg_slots[n_params + j]",
        "            for e in range(nb):",
        "                work[s, e] = X[start + e, j]",
        "        run_block(tape_runs, out, a0, a1, p, ta, tb, tu, work, dot_acc, nb)",
        "        for k in range(n_out):",
        "            s = result_slots[k]",
        "            for e in range(nb):",
        "                values[start + e, k] = work[s, e]",
        "        for k in range(n_acc):",
        "            s = result_slots[n_out + k]",
        "            s2 = result_b[n_out + k]  # >= 0: the result is work[s] * work[s2]",
        "            if per_row:",
        "                if s2 < 0:",
        "                    for e in range(nb):",
        "                        acc[start + e, k] += work[s, e]",
        "                else:",
        "                    for e in range(nb):",
        "                        acc[start + e, k] += work[s, e] * work[s2, e]",
        "            elif s2 < 0:",
        "                for e in range(nb):",
        "                    lanes[k, e] += work[s, e]",
        "            else:",
        "                for e in range(nb):",
        "                    lanes[k, e] += work[s, e] * work[s2, e]",
        "    if not per_row:",
        "        for k in range(n_acc):",
        "            t = 0.0",
        "            for e in range(block):",
        "                t += lanes[k, e]",
        "            chunk_acc[c, k] = t",
    ]
    batch = [
        "",
        "",
        "def run_batch{suffix}(" + args + "):",
        "    # the rows' blocks split into n_chunks chunks (one thread each in",
        "    # run_batch_parallel), whose sums are added in chunk order: the result does not",
        "    # depend on the number of threads",
        "    chunk_acc = np.zeros((n_chunks, result_slots.shape[0] - n_out))",
        "    for c in {rng}(n_chunks):",
        "        run_chunk(c, chunk_acc, "
        + args.replace("\n        ", "\n                  ") + ")",
        "    if not per_row:",
        "        for c in range(n_chunks):",
        "            for k in range(chunk_acc.shape[1]):",
        "                acc[0, k] += chunk_acc[c, k]",
    ]
    for suffix, rng in (("", "range"), ("_parallel", "prange")):
        # two functions, not one built twice: Numba's disk cache does not tell the builds apart
        lines += [ln.replace("{suffix}", suffix).replace("{rng}", rng) for ln in batch]
    return "\n".join(lines) + "\n"


_lock = threading.Lock()
_interpreters: dict[tuple[str, bool], Callable[..., None]] = {}
_namespaces: dict[str, tuple[dict[str, Any], bool]] = {}

N_CHUNKS = 16  # at most; fixed, so results do not depend on the thread count
# batches this large use the threaded build (numba). It gains from ~64 rows (100 rows of an
# MLP(2,[16,16,1]) gradient: 73 -> 55 us on 2 cores), but Numba compiles it in ~3 s (once,
# then disk-cached), so small batches keep the serial build, compiled in ~1 s
PARALLEL_ROWS = 512


def interpreter(backend: str, parallel: bool = False) -> Callable[..., None]:
    """``run_batch`` for `backend`, built (and, for numba, JIT-compiled) once per process.

    `parallel` asks for the threaded build (numba only); it computes the same numbers.
    """
    parallel = parallel and backend == "numba"
    with _lock:
        fn = _interpreters.get((backend, parallel))
        if fn is not None:
            return fn
        if backend not in _namespaces:
            src = interpreter_source()
            mod, extra = None, None
            if backend == "numba":
                import numba

                extra = {"prange": numba.prange}
                mod = cache.load_module(src, "tape_interpreter", extra)
            ns = mod.__dict__ if mod is not None else exec_source(src, "tape", extra)
            if backend != "numba":
                ns["np"] = IEEE_NUMPY  # after the source's own `import numpy as np`
            _namespaces[backend] = (ns, mod is not None)
        ns, cached = _namespaces[backend]
        fn = ns["run_batch_parallel" if parallel else "run_batch"]
        if backend == "numba":
            fn = _jit_interpreter(ns, cached, parallel)
        _interpreters[(backend, parallel)] = fn
    return fn


_I1 = "int64[::1]"
_SIG_BLOCK = (
    f"void(int64[:, ::1], {_I1}, {_I1}, {_I1}, float64[::1], {_I1}, {_I1}, {_I1}, "
    "float64[:, ::1], float64[::1], int64)"
)
_SIG_BATCH = (
    f"void(int64[:, ::1], {_I1}, {_I1}, {_I1}, float64[::1], {_I1}, {_I1}, {_I1}, {_I1}, "
    f"{_I1}, float64[::1], {_I1}, {_I1}, int64, int64, int64, float64[::1], float64[:, ::1], "
    "int64, float64[:, ::1], float64[:, ::1], boolean)"
)


_SIG_CHUNK = _SIG_BATCH.replace("void(", "void(int64, float64[:, ::1], ", 1)


def _jit_interpreter(ns: dict[str, Any], cached: bool, parallel: bool) -> Callable[..., None]:
    f = ns.get("__file__")
    # the big serial functions are compiled on their own, so the parallel one stays small
    # (Numba's parallel analysis of the whole interpreter took 4 s; of this loop, a fraction)
    if not hasattr(ns["run_block"], "py_func"):
        ns["run_block"] = jit_compile(ns["run_block"], _SIG_BLOCK, False, cached, f)
    if not hasattr(ns["run_chunk"], "py_func"):
        ns["run_chunk"] = jit_compile(ns["run_chunk"], _SIG_CHUNK, False, cached, f)
    name = "run_batch_parallel" if parallel else "run_batch"
    return jit_compile(ns[name], _SIG_BATCH, parallel, cached, f)


def run(tape: Tape, backend: str, params: np.ndarray, X: np.ndarray, n_out: int,
        values: np.ndarray, acc: np.ndarray, per_row: bool) -> None:
    """Run `tape` over the rows of `X`: values ``(N, n_out)``; acc ``(1 or N, n_acc)``."""
    n = X.shape[0]
    fn = interpreter(backend, parallel=n >= PARALLEL_ROWS)
    n_chunks = max(1, min(N_CHUNKS, (n + BLOCK - 1) // BLOCK))
    fn(tape.runs, tape.out, tape.a0, tape.a1, tape.p, tape.ta, tape.tb, tape.tu,
       tape.arg_slots, tape.const_slots, tape.const_values, tape.result_slots, tape.result_b,
       tape.n_slots, BLOCK, n_chunks, params, X, n_out, values, acc, per_row)


def n_assigned(layout: Layout) -> int:
    """How many results of `layout` are assigned per row (they come before accumulated ones)."""
    return sum(int(np.prod(s)) for nm, s in layout.results if nm not in layout.accumulate)


def n_uniform(layout: Layout) -> int:
    """How many leading arguments of `layout` are the same for every row of a batch."""
    n = 0
    for name, length in layout.args:
        if name in layout.per_row:
            break
        n += length
    return n


Runner = Callable[[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray, bool], None]


def run_layout(tape: Tape, layout: Layout, backend: str, batch: str | None,
               arrays: tuple[np.ndarray, ...]) -> None:
    """Run `tape` on `backend` with a kernel's calling convention (see `with_layout`)."""
    with_layout(tape, layout, batch, arrays, functools.partial(run, tape, backend))


def with_layout(tape: Tape, layout: Layout, batch: str | None, arrays: tuple[np.ndarray, ...],
                runner: Runner) -> None:
    """Run a tape executor with a kernel's calling convention (see `codegen.Layout`).

    `arrays` are the kernel's arrays (batch None) or its batch loop's ("rows"/"sum"). Arguments
    that are not per-row are broadcast over the rows; results assigned per row come before
    accumulated ones, as in every kernel symgrad builds. `runner(params, X, n_out, values, acc,
    per_row)` runs `tape` (`run` with a backend, or another executor).
    """
    n_args = len(layout.args)
    names = [nm for nm, _ in layout.args]
    if any(nm in layout.per_row for nm in names[: len(names) - len(layout.per_row)]):
        raise ValueError(f"per-row arguments must come last in a tape layout, got {names}")
    arg_arrays, res_arrays = arrays[:n_args], arrays[n_args:]
    named = list(zip(names, arg_arrays, strict=True))
    fixed = [a.reshape(-1) for nm, a in named if nm not in layout.per_row]
    rows = [a for nm, a in named if nm in layout.per_row]
    if batch is None:
        rows = [r.reshape(1, -1) for r in rows]
    n = rows[0].shape[0] if rows else 1
    params = np.ascontiguousarray(np.concatenate(fixed)) if fixed else np.zeros(0)
    X = np.ascontiguousarray(np.hstack(rows)) if rows else np.zeros((n, 0))
    pairs = list(zip(layout.results, res_arrays, strict=True))
    assigned = [a for (nm, _), a in pairs if nm not in layout.accumulate]
    accumulated = [a for (nm, _), a in pairs if nm in layout.accumulate]
    n_out = n_assigned(layout)
    n_acc = len(tape.result_slots) - n_out
    per_row = batch == "rows"
    lead = n if per_row else 1
    # with one result array of each kind (as `Compiled` has) the executor writes into it
    values = _direct(assigned, (n, n_out))
    values = np.zeros((n, n_out)) if values is None else values
    acc = _direct(accumulated, (lead, n_acc))
    acc = np.zeros((lead, n_acc)) if acc is None else acc
    runner(params, X, n_out, values, acc, per_row)
    col = 0
    for a in assigned:
        width = a.size // n if batch is not None else a.size
        if not np.shares_memory(a, values):
            a.reshape(n, width)[:] = values[:, col: col + width]
        col += width
    col = 0
    for a in accumulated:
        width = a.size // lead
        if not np.shares_memory(a, acc):
            a.reshape(lead, width)[:] += acc[:, col: col + width]
        col += width


def _direct(arrays: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray | None:
    """The only array of `arrays` viewed as `shape`, when that is a view of float64 memory."""
    if len(arrays) != 1:
        return None
    a = arrays[0]
    if a.dtype != np.float64 or not a.flags.c_contiguous or a.size != shape[0] * shape[1]:
        return None
    return a.reshape(shape)
