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
from .layout import Kernel, Layout
from .ops import OPS, format_literal

__all__ = ["batch_source", "instr_source", "kernel_source", "module_source"]


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


def batch_source(kernel: str, layout: Layout, n_chunks: int) -> str:
    """Batch loops over rows for `kernel`: ``_rows`` and, given accumulators, ``_sum``.

    Per-row argument arrays become 2-D (row i is ``X[i]``), assigned results gain a leading row
    axis, accumulated results are summed over rows (``_sum``: at most `n_chunks` chunks of
    consecutive rows, each summed into its own accumulator, the chunks then added in order) or
    kept per row (``_rows``). Each loop comes twice: with ``range``, and as ``..._parallel``
    with numba's ``prange`` (distinct functions, so Numba's disk cache never serves one for the
    other).
    """
    return "\n\n".join(
        _batch_loops(kernel, layout, suffix, rng, n_chunks)
        for suffix, rng in (("", "range"), ("_parallel", "prange"))
    )


def _batch_loops(kernel: str, layout: Layout, suffix: str, rng: str, n_chunks: int) -> str:
    arrs = layout.arrays()
    acc = [r for r, _ in layout.results if r in layout.accumulate]
    shapes = dict(layout.results)

    def call(row: str, acc_expr: Callable[[str], str]) -> str:
        parts = []
        for a in arrs:
            if a in layout.per_row or (a in shapes and a not in layout.accumulate):
                parts.append(f"{a}[{row}]")
            elif a in layout.accumulate:
                parts.append(acc_expr(a))
            else:
                parts.append(a)
        return f"{kernel}({', '.join(parts)})"

    first = next(a for a in arrs if a in layout.per_row or a in shapes)
    sig = ", ".join(arrs)
    lines = [f"def {kernel}_rows{suffix}({sig}):"]
    lines.append(f"    for i in {rng}({first}.shape[0]):")
    lines.append(f"        {call('i', lambda a: f'{a}[i]')}")
    if not acc:
        return "\n".join(lines) + "\n"
    lines.append("")
    lines.append("")
    lines.append(f"def {kernel}_sum{suffix}({sig}):")
    lines.append(f"    n = {first}.shape[0]")
    lines.append(f"    n_chunks = min(n, {n_chunks})")
    for a in acc:
        dims = ", ".join(["n_chunks"] + [str(d) for d in shapes[a]])
        lines.append(f"    {a}_chunks = np.zeros(({dims}))")
    lines.append(f"    for c in {rng}(n_chunks):")
    lines.append("        for i in range(c * n // n_chunks, (c + 1) * n // n_chunks):")
    lines.append(f"            {call('i', lambda a: f'{a}_chunks[c]')}")
    lines.append("    for c in range(n_chunks):  # in chunk order: deterministic")
    for a in acc:
        lines.append(f"        {a} += {a}_chunks[c]")
    return "\n".join(lines) + "\n"


def module_source(header: str, kernels: Sequence[Kernel], n_chunks: int) -> str:
    """A whole generated module: a header comment, then each kernel and its batch loops."""
    parts = [f"# {line}" for line in header.splitlines()] + ["import numpy as np", "", ""]
    out = "\n".join(parts) + "\n"
    chunks = []
    for k in kernels:
        chunks.append(kernel_source(k.func, k.name, k.layout))
        chunks.append(batch_source(k.name, k.layout, n_chunks))
    return out + "\n\n".join(chunks)
