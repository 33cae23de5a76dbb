"""Code generation: IR -> Python source, one line per instruction (pure: nothing is executed).

Imports `ops`, `ir` and `layout`. The source mirrors the IR line for line: one assignment per
instruction, the same names, derivative provenance as comments. User text reaches the source only
as sanitised identifiers. `symgrad.jit` turns the source into callables.

A kernel's `Layout` says which 1-D arrays a `Func`'s arguments are read from and which arrays its
results go to; the generated kernel is ``name(*arg_arrays, *result_arrays)``. Result arrays
marked `accumulate` are added into (``grad[0, 3] += w_bar``), so batch loops can sum gradients
without allocating one row per example. The batch loops are generated from the same layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .ir import Const, Func, Instr, Var, atom_text, instr_text, names
from .layout import ALIGN, CHUNK_ROWS, MAX_CHUNKS, Kernel, Layout
from .ops import OPS, format_literal

__all__ = ["batch_source", "instr_source", "kernel_source", "module_body", "module_source"]


def instr_source(ins: Instr, nm: dict[Var, str]) -> str:
    """One IR instruction as one line of Python, from the op's template."""
    op = OPS[ins.op]
    args = [atom_text(a, nm) for a in ins.args]
    if args and all(isinstance(a, Const) for a in ins.args):
        # all-literal (unfolded IR): make the first a numpy float so 1.0 / 0.0 is inf, not raise
        args[0] = f"np.float64({args[0]})"
    params = {k: format_literal(v) for k, v in ins.param_dict().items()}
    return f"{nm[ins.out]} = {op.py.format(*args, **params)}"


def kernel_source(func: Func, name: str, layout: Layout) -> str:
    """The kernel for `func` as Python source: one line per argument, instruction and result."""
    n_args = sum(n for _, n in layout.args)
    n_res = sum(int(np.prod(s)) for _, s in layout.results)
    if n_args != len(func.args) or n_res != len(func.results):
        raise ValueError(
            f"layout has {n_args} argument(s) and {n_res} result(s); "
            f"{func.name} has {len(func.args)} and {len(func.results)}"
        )
    nm = names(func)
    lines = [f"def {name}({', '.join(layout.arrays())}):"]
    j = 0
    for arr, n in layout.args:
        for i in range(n):
            lines.append(f"    {nm[func.args[j]]} = {arr}[{i}]")
            j += 1
    section = ""
    last_note = ""
    for ins in func.body:
        if ins.origin is None:
            want = "# forward"
        else:
            want = "# backward" if ins.note == "grad" else f"# {ins.note}s"
        if want != section:
            lines.append(f"    {want}")
            section = want
        if ins.origin is not None:
            note = f"# {ins.note} of {instr_text(ins.origin, nm)}"
            if note != last_note:
                lines.append(f"    {note}")
                last_note = note
        lines.append(f"    {instr_source(ins, nm)}")
    r = 0
    for arr, shape in layout.results:
        acc = arr in layout.accumulate
        for idx in np.ndindex(*shape):
            res = func.results[r]
            r += 1
            if acc and isinstance(res, Const) and res == Const(0.0):
                continue  # accumulators start at +0.0: adding +0.0 changes nothing
            at = ", ".join(map(str, idx))
            lines.append(f"    {arr}[{at}] {'+=' if acc else '='} {atom_text(res, nm)}")
    lines.append("    return")
    return "\n".join(lines) + "\n"


def batch_source(kernel: str, layout: Layout) -> str:
    """Batch loops over rows for `kernel`: ``_rows`` and, given accumulators, ``_sum``.

    Per-row argument arrays become 2-D (row i is ``X[i]``), assigned results gain a leading row
    axis, accumulated results are kept per row (``_rows``) or summed over the rows (``_sum``) in
    the chunks and order `symgrad.layout.n_chunks` fixes. Each loop also comes as ``..._chunks``
    taking a counter first: the chunks it claims with ``fetch_add(counter)`` are run until none
    is left, so several threads can share a batch (summed chunks go to buffers that the caller
    adds in chunk order).
    """
    loops = _BatchLoops(kernel, layout)
    parts = [loops.rows(), loops.rows_chunks()]
    if loops.acc:
        parts += [loops.sum(), loops.sum_chunks()]
    return "\n\n".join(parts)


class _BatchLoops:
    """The source of one kernel's batch loops (see `batch_source`)."""

    def __init__(self, kernel: str, layout: Layout) -> None:
        self.kernel, self.layout = kernel, layout
        self.arrs = layout.arrays()
        self.shapes = dict(layout.results)
        self.acc = [r for r, _ in layout.results if r in layout.accumulate]
        self.first = next(a for a in self.arrs if a in layout.per_row or a in self.shapes)

    def call(self, row: str, acc_expr: Callable[[str], str]) -> str:
        """The kernel's call for one row, accumulated arrays given by `acc_expr`."""
        parts = []
        for a in self.arrs:
            if a in self.layout.per_row or (a in self.shapes and a not in self.layout.accumulate):
                parts.append(f"{a}[{row}]")
            elif a in self.layout.accumulate:
                parts.append(acc_expr(a))
            else:
                parts.append(a)
        return f"{self.kernel}({', '.join(parts)})"

    def _sig(self, chunked: bool, buffers: bool = False) -> str:
        names = [f"{a}_chunks" if buffers and a in self.acc else a for a in self.arrs]
        return ", ".join((["counter"] if chunked else []) + names)

    def _head(self, suffix: str, chunked: bool, buffers: bool = False) -> list[str]:
        return [
            f"def {self.kernel}_{suffix}({self._sig(chunked, buffers)}):",
            f"    n = {self.first}.shape[0]",
            f"    n_chunks = max(1, min({MAX_CHUNKS}, n // {CHUNK_ROWS}))",
        ]

    @staticmethod
    def _rows(indent: str) -> list[str]:
        """Chunk c's rows (`symgrad.layout.chunk_rows`)."""
        return [
            f"{indent}first = (c * n // n_chunks) // {ALIGN} * {ALIGN}",
            f"{indent}last = n if c + 1 == n_chunks else ((c + 1) * n // n_chunks) // {ALIGN} "
            f"* {ALIGN}",
            f"{indent}for i in range(first, last):",
        ]

    def _claim(self) -> list[str]:
        return [
            "    while True:",
            "        c = fetch_add(counter)",
            "        if c >= n_chunks:",
            "            return",
            *self._rows("        "),
        ]

    def rows(self) -> str:
        """Every row in order, accumulated results per row."""
        return "\n".join([
            f"def {self.kernel}_rows({self._sig(False)}):",
            f"    for i in range({self.first}.shape[0]):",
            f"        {self.call('i', lambda a: f'{a}[i]')}",
        ]) + "\n"

    def rows_chunks(self) -> str:
        """The rows of the chunks claimed from `counter`."""
        lines = self._head("rows_chunks", True) + self._claim()
        lines.append(f"            {self.call('i', lambda a: f'{a}[i]')}")
        return "\n".join(lines) + "\n"

    def sum(self) -> str:
        """Every chunk into its buffer, then the buffers added in chunk order."""
        lines = self._head("sum", False)
        for a in self.acc:
            dims = ", ".join(["n_chunks"] + [str(d) for d in self.shapes[a]])
            lines.append(f"    {a}_chunks = np.zeros(({dims}))")
        lines += [
            "    for c in range(n_chunks):",
            *self._rows("        "),
            f"            {self.call('i', lambda a: f'{a}_chunks[c]')}",
            "    for c in range(n_chunks):  # in chunk order: deterministic",
        ]
        lines += [f"        {a} += {a}_chunks[c]" for a in self.acc]
        return "\n".join(lines) + "\n"

    def sum_chunks(self) -> str:
        """The chunks claimed from `counter`, each into its buffer (the caller adds them)."""
        lines = self._head("sum_chunks", True, buffers=True)
        lines[2] = f"    n_chunks = {self.acc[0]}_chunks.shape[0]"
        lines += self._claim()
        lines.append(f"            {self.call('i', lambda a: f'{a}_chunks[c]')}")
        return "\n".join(lines) + "\n"


def module_body(kernels: Sequence[Kernel]) -> str:
    """Each kernel and its batch loops, as source (what `module_source` wraps)."""
    chunks = []
    for k in kernels:
        chunks.append(kernel_source(k.func, k.name, k.layout))
        chunks.append(batch_source(k.name, k.layout))
    return "\n\n".join(chunks)


# symgrad binds pow_libm and fetch_add before a generated module runs; run by itself (e.g. with
# exec), the module defines stand-ins at its end. No string literals: see the hostile-label test.
_POW_STAND_IN = """
try:
    pow_libm
except NameError:
    def pow_libm(x, p):  # C pow(x, p), as numpy computes a float64 power
        return np.float64(x) ** np.float64(p)
"""
_FETCH_ADD_STAND_IN = """
try:
    fetch_add
except NameError:
    def fetch_add(counter):  # counter[0] += 1, returning the old value (one thread)
        c = int(counter[0])
        counter[0] += 1
        return c
"""


def module_source(header: str, kernels: Sequence[Kernel]) -> str:
    """A whole generated module: a header comment, then each kernel and its batch loops, then
    stand-ins for the functions symgrad provides (so that ``exec(f.source)`` runs)."""
    parts = [f"# {line}" for line in header.splitlines()] + ["import numpy as np", "", ""]
    body = module_body(kernels)
    stand_ins = [_POW_STAND_IN] if "pow_libm(" in body else []
    stand_ins.append(_FETCH_ADD_STAND_IN)
    tail = "\n\n# run without symgrad (e.g. exec), these stand in for what it binds\n"
    tail += "\n".join(s.strip("\n") + "\n" for s in stand_ins)
    return "\n".join(parts) + "\n" + body + tail
