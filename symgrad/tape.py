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

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import cache
from .codegen import Layout, exec_source, jit_compile
from .ir import Atom, Const, Func, Var
from .ops import OPS

__all__ = ["BLOCK", "Tape", "interpreter_source", "lower", "run", "run_layout"]

BLOCK = 32  # examples per block: the innermost loop's length
OPCODES: dict[str, int] = {name: i for i, name in enumerate(sorted(OPS))}


@dataclass(frozen=True)
class Tape:
    """A `Func` lowered to runs over a slot workspace.

    Attributes:
        n_slots: workspace rows.
        arg_slots: slot of each function argument.
        result_slots: slot of each result (constants and arguments have slots too).
        const_slots, const_values: slots filled with literals once per block.
        runs: ``(n_runs, 3)`` int64: opcode, first and last+1 index into the instruction arrays.
        out, a0, a1: per-instruction slots (a1 is 0 for unary ops).
        p: per-instruction static parameter (pow's exponent; 0.0 when unused).
    """

    n_slots: int
    arg_slots: np.ndarray
    result_slots: np.ndarray
    const_slots: np.ndarray
    const_values: np.ndarray
    runs: np.ndarray
    out: np.ndarray
    a0: np.ndarray
    a1: np.ndarray
    p: np.ndarray

    def describe(self) -> str:
        """A short listing of the runs, for people (``f.source`` shows it for this lowering)."""
        names = {v: k for k, v in OPCODES.items()}
        lines = [
            f"# tape: {len(self.out)} instructions in {len(self.runs)} runs, "
            f"{self.n_slots} workspace slots"
        ]
        for r, (op, lo, hi) in enumerate(self.runs[:40]):
            lines.append(f"#   run {r:4d}: {names[int(op)]:8s} x {hi - lo}")
        if len(self.runs) > 40:
            lines.append(f"#   ... {len(self.runs) - 40} more runs")
        return "\n".join(lines)


def lower(func: Func) -> Tape:
    """Lower `func` to a `Tape`: level, group into runs, allocate slots."""
    level: dict[Var, int] = {a: 0 for a in func.args}
    order = []
    for idx, ins in enumerate(func.body):
        lv = 1 + max((level[a] for a in ins.args if isinstance(a, Var)), default=0)
        level[ins.out] = lv
        order.append((lv, OPCODES[ins.op], idx))
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
            for a in func.body[idx].args:
                last_use[_key(a)] = g
    end = len(groups)
    for r in func.results:
        last_use[_key(r)] = end

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
    for ins in func.body:
        for a in ins.args:
            if isinstance(a, Const) and _key(a) not in slot_of:
                slot_of[_key(a)] = new_slot()
                consts[_key(a)] = a.value
    for r in func.results:
        if isinstance(r, Const) and _key(r) not in slot_of:
            slot_of[_key(r)] = new_slot()
            consts[_key(r)] = r.value
    pinned = set(slot_of.values())

    by_run: dict[int, list[Any]] = {}
    for k, g in last_use.items():
        by_run.setdefault(g, []).append(k)

    n = len(func.body)
    out = np.zeros(n, np.int64)
    a0 = np.zeros(n, np.int64)
    a1 = np.zeros(n, np.int64)
    p = np.zeros(n, np.float64)
    runs = np.zeros((len(groups), 3), np.int64)
    pos = 0
    for g, members in enumerate(groups):
        # outputs are allocated before this run's dead operands are freed, so no instruction of
        # a run overwrites an operand another instruction of the same run still has to read
        for idx in members:
            ins = func.body[idx]
            s = new_slot()
            slot_of[_key(ins.out)] = s
            out[pos] = s
            a0[pos] = slot_of[_key(ins.args[0])]
            a1[pos] = slot_of[_key(ins.args[1])] if len(ins.args) > 1 else 0
            p[pos] = ins.params[0] if ins.params else 0.0
            pos += 1
        runs[g] = (keys[g][1], pos - len(members), pos)
        for k in by_run.get(g, ()):
            s = slot_of[k]
            if s not in pinned:
                free.append(s)
        # a value never read after its own run (dead code) is freed too
        for idx in members:
            k = _key(func.body[idx].out)
            if k not in last_use:
                free.append(slot_of[k])
    return Tape(
        n_slots=max(n_slots, 1),
        arg_slots=np.array([slot_of[_key(a)] for a in func.args], np.int64),
        result_slots=np.array([slot_of[_key(r)] for r in func.results], np.int64),
        const_slots=np.array([slot_of[k] for k in consts], np.int64),
        const_values=np.array(list(consts.values()), np.float64),
        runs=runs, out=out, a0=a0, a1=a1, p=p,
    )


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
        "def run_block(runs, out, a0, a1, p, work, nb):",
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
        "",
        "",
        "def run_batch(tape_runs, out, a0, a1, p, arg_slots, const_slots, const_values,",
        "              result_slots, n_slots, block, params, X, n_out, values, acc, per_row):",
        "    # params broadcast over a block; X rows are examples; the first n_out results are",
        "    # values, the rest are added into acc (summed over rows) or, per_row, into acc[row]",
        "    n = X.shape[0]",
        "    n_params = params.shape[0]",
        "    work = np.empty((n_slots, block))",
        "    for s in range(const_slots.shape[0]):",
        "        work[const_slots[s], :] = const_values[s]",
        "    for j in range(n_params):",
        "        work[arg_slots[j], :] = params[j]",
        "    n_acc = result_slots.shape[0] - n_out",
        "    for start in range(0, n, block):",
        "        nb = min(block, n - start)",
        "        for j in range(X.shape[1]):",
        "            s = arg_slots[n_params + j]",
        "            for e in range(nb):",
        "                work[s, e] = X[start + e, j]",
        "        run_block(tape_runs, out, a0, a1, p, work, nb)",
        "        for k in range(n_out):",
        "            s = result_slots[k]",
        "            for e in range(nb):",
        "                values[start + e, k] = work[s, e]",
        "        for k in range(n_acc):",
        "            s = result_slots[n_out + k]",
        "            if per_row:",
        "                for e in range(nb):",
        "                    acc[start + e, k] += work[s, e]",
        "            else:",
        "                t = 0.0",
        "                for e in range(nb):",
        "                    t += work[s, e]",
        "                acc[0, k] += t",
    ]
    return "\n".join(lines) + "\n"


_lock = threading.Lock()
_interpreters: dict[str, Callable[..., None]] = {}


def interpreter(backend: str) -> Callable[..., None]:
    """``run_batch`` for `backend`, built (and, for numba, JIT-compiled) once per process."""
    with _lock:
        fn = _interpreters.get(backend)
        if fn is None:
            src = interpreter_source()
            mod = cache.load_module(src, "tape_interpreter", {}) if backend == "numba" else None
            ns = mod.__dict__ if mod is not None else exec_source(src, "tape")
            fn = ns["run_batch"]
            if backend == "numba":
                fn = _jit_interpreter(ns, cached=mod is not None)
            _interpreters[backend] = fn
    return fn


_SIG_BLOCK = (
    "void(int64[:, ::1], int64[::1], int64[::1], int64[::1], float64[::1], float64[:, ::1], "
    "int64)"
)
_SIG_BATCH = (
    "void(int64[:, ::1], int64[::1], int64[::1], int64[::1], float64[::1], int64[::1], "
    "int64[::1], float64[::1], int64[::1], int64, int64, float64[::1], float64[:, ::1], int64, "
    "float64[:, ::1], float64[:, ::1], boolean)"
)


def _jit_interpreter(ns: dict[str, Any], cached: bool) -> Callable[..., None]:
    f = ns.get("__file__")
    ns["run_block"] = jit_compile(ns["run_block"], _SIG_BLOCK, False, cached, f)
    return jit_compile(ns["run_batch"], _SIG_BATCH, False, cached, f)


def run(tape: Tape, backend: str, params: np.ndarray, X: np.ndarray, n_out: int,
        values: np.ndarray, acc: np.ndarray, per_row: bool) -> None:
    """Run `tape` over the rows of `X`: values ``(N, n_out)``; acc ``(1 or N, n_acc)``."""
    fn = interpreter(backend)
    fn(tape.runs, tape.out, tape.a0, tape.a1, tape.p, tape.arg_slots, tape.const_slots,
       tape.const_values, tape.result_slots, tape.n_slots, BLOCK, params, X, n_out,
       values, acc, per_row)


def run_layout(tape: Tape, layout: Layout, backend: str, batch: str | None,
               arrays: tuple[np.ndarray, ...]) -> None:
    """Run `tape` with a kernel's calling convention (see `codegen.Layout`).

    `arrays` are the kernel's arrays (batch None) or its batch loop's ("rows"/"sum"). Arguments
    that are not per-row are broadcast over the block; results assigned per row must come before
    accumulated ones in the layout, as they do for every kernel symgrad builds.
    """
    n_args = len(layout.args)
    arg_arrays, res_arrays = arrays[:n_args], arrays[n_args:]
    named = list(zip((nm for nm, _ in layout.args), arg_arrays, strict=True))
    fixed = [a.reshape(-1) for nm, a in named if nm not in layout.per_row]
    rows = [a for nm, a in named if nm in layout.per_row]
    if batch is None:
        rows = [r.reshape(1, -1) for r in rows]
    n = rows[0].shape[0] if rows else 1
    params = np.concatenate(fixed) if fixed else np.zeros(0)
    X = np.ascontiguousarray(np.hstack(rows)) if rows else np.zeros((n, 0))
    assigned = [(nm, a) for (nm, _), a in zip(layout.results, res_arrays, strict=True)
                if nm not in layout.accumulate]
    accumulated = [(nm, a) for (nm, _), a in zip(layout.results, res_arrays, strict=True)
                   if nm in layout.accumulate]
    n_out = sum(int(np.prod(s)) for nm, s in layout.results if nm not in layout.accumulate)
    n_acc = len(tape.result_slots) - n_out
    per_row = batch == "rows"
    values = np.zeros((n, n_out))
    acc = np.zeros((n if per_row else 1, n_acc))
    run(tape, backend, params, X, n_out, values, acc, per_row)
    col = 0
    for _, a in assigned:
        width = a.size // n if batch is not None else a.size
        a.reshape(n, width)[:] = values[:, col:col + width]
        col += width
    col = 0
    for _, a in accumulated:
        lead = n if per_row else 1
        width = a.size // lead
        a.reshape(lead, width)[:] += acc[:, col:col + width]
        col += width
