"""Code generation: IR -> Python source -> callables (plain Python or Numba-JIT'd).

Imports `ops`, `ir` and `cache` (numba lazily, for the "numba" backend). The source mirrors
the IR line for line: one assignment per instruction, the same names, derivative provenance as
comments. It is compiled under a unique filename registered in `linecache`, so tracebacks and
`inspect` show the generated lines. User text reaches the source only as sanitised identifiers.

A `Layout` says which 1-D arrays a `Func`'s arguments are read from and which arrays its results
go to; the generated kernel is ``name(*arg_arrays, *result_arrays)``. Result arrays marked
`accumulate` are added into (``grad[0, 3] += w_bar``), so batch loops can sum gradients without
allocating one row per example. The batch loops are generated from the same layout.
"""

from __future__ import annotations

import collections
import itertools
import linecache
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import cache
from .ir import Const, Func, Instr, Var, atom_text, instr_text, names
from .ops import OPS, format_literal

__all__ = ["BACKENDS", "Layout", "Module", "instr_source", "kernel_source", "module_source"]

BACKENDS = ("numba", "python", "tape", "vector")

# batch loops split the rows into this many chunks (fewer for small batches), each with its own
# gradient accumulator, summed in chunk order: the result does not depend on the thread count
N_CHUNKS = 64

# batches with at least this many rows run on all cores (numba backend)
PARALLEL_ROWS = 512

# Numba's OpenMP threads keep spinning after a parallel loop (300,000 spins by default), which
# on a small machine takes the cores that NumPy's BLAS (the vector backend, the user's own
# numpy) needs next: measured 2-3x slower matrix products right after a threaded batch. A short
# spin keeps short parallel loops fast. Read when OpenMP starts; a value the user set wins.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")


@dataclass(frozen=True)
class Layout:
    """Where a kernel reads its arguments and writes its results.

    Attributes:
        args: ``(array name, length)`` pairs; the function's arguments are read in this order.
        results: ``(array name, shape)`` pairs; the function's results fill them row-major.
        accumulate: result arrays that are added into instead of assigned.
        per_row: argument arrays that hold one row per example in batch loops (e.g. "inputs").
    """

    args: tuple[tuple[str, int], ...]
    results: tuple[tuple[str, tuple[int, ...]], ...]
    accumulate: frozenset[str] = field(default_factory=frozenset)
    per_row: frozenset[str] = field(default_factory=frozenset)

    def arrays(self) -> list[str]:
        """The kernel's parameter names, in order."""
        return [a for a, _ in self.args] + [r for r, _ in self.results]


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
    axis, accumulated results are summed over rows (``_sum``, chunked) or kept per row
    (``_rows``). Each loop comes twice: with ``range``, and as ``..._parallel`` with numba's
    ``prange`` (distinct functions, so Numba's disk cache never serves one for the other).
    """
    return "\n\n".join(
        _batch_loops(kernel, layout, suffix, rng)
        for suffix, rng in (("", "range"), ("_parallel", "prange"))
    )


def _batch_loops(kernel: str, layout: Layout, suffix: str, rng: str) -> str:
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
    lines.append(f"    n_chunks = min(n, {N_CHUNKS})")
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


def module_source(header: str, kernels: list[tuple[Func, str, Layout]]) -> str:
    """A whole generated module: a header comment, then each kernel and its batch loops."""
    parts = [f"# {line}" for line in header.splitlines()] + ["import numpy as np", "", ""]
    out = "\n".join(parts) + "\n"
    chunks = []
    for func, name, layout in kernels:
        chunks.append(kernel_source(func, name, layout))
        chunks.append(batch_source(name, layout))
    return out + "\n\n".join(chunks)


class _IEEENumpy:
    """``np`` for plain-Python runs of generated code: the op table's own rules for the
    functions templates call (``np.tanh`` is ``OPS["tanh"].impl``), numpy for the rest.

    numpy's scalar tanh, exp and log may differ from libm (what the interpreted engine and
    Numba use) in the last bit, and ``1 - tanh(x)**2`` turns one bit into many; with the rules
    themselves the Python backend computes the engine's numbers exactly. Results are numpy
    floats, so later arithmetic keeps IEEE semantics (``x / 0.0`` is inf, not an exception).
    """

    def __init__(self) -> None:
        for name, op in OPS.items():
            if op.arity == 1 and not op.params and f"np.{name}(" in " ".join(
                o.py for o in OPS.values()
            ):
                setattr(self, name, _as_np(op.impl))

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _as_np(impl: Callable[[float], float]) -> Callable[[Any], np.float64]:
    def f(x: Any) -> np.float64:
        return np.float64(impl(float(x)))

    f.__name__ = impl.__name__
    return f


IEEE_NUMPY = _IEEENumpy()

_counter = itertools.count()
_lock = threading.Lock()


def exec_source(source: str, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Execute generated source under a unique filename that `linecache` can show."""
    with _lock:
        filename = f"<symgrad:{name}:{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "symgrad._generated", "np": np, "prange": range}
    # (prange is numba's in jitted modules; in plain Python the parallel loops run serially)
    namespace.update(extra or {})
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def _sig(layout: Layout, batch: str | None) -> str:
    """The numba signature of a kernel (batch None) or of its ``rows``/``sum`` loop."""
    shapes = dict(layout.results)
    types = []
    for a in layout.arrays():
        nd = len(shapes[a]) if a in shapes else 1
        if batch is not None and (
            a in layout.per_row
            or (a in shapes and a not in layout.accumulate)
            or (batch == "rows" and a in layout.accumulate)
        ):
            nd += 1
        types.append("float64[" + ", ".join([":"] * (nd - 1) + ["::1"]) + "]")
    return f"void({', '.join(types)})"


class Module:
    """The compiled callables of one generated module: kernels and their batch loops.

    Imports the source from the persistent cache when it is on (else ``exec``). With the
    "numba" backend every function is ``numba.njit(error_model="numpy")`` (IEEE division:
    ``1/0`` is inf, not an exception), compiled when `get` first asks for it; the plain-Python
    backend computes with the op table's rules (`IEEE_NUMPY`).
    """

    def __init__(self, source: str, name: str, backend: str,
                 layouts: dict[str, Layout]) -> None:
        if backend not in ("numba", "python"):
            raise ValueError(f"a generated module runs on 'numba' or 'python', not {backend!r}")
        self.source = source
        self.backend = backend
        self.layouts = layouts
        self._cached = False
        if backend == "numba":
            import numba

            mod = cache.load_module(source, name, {"prange": numba.prange})
            if mod is not None:
                self._ns = mod.__dict__
                self._cached = True
            else:
                self._ns = exec_source(source, name, {"prange": numba.prange})
        else:
            self._ns = exec_source(source, name)
            self._ns["np"] = IEEE_NUMPY  # after the source's own `import numpy as np`
        # a cached module is shared by every Module with the same source (sys.modules), so
        # its jitted functions and their lock live in its namespace: compiled once a process
        self._compiled: dict[str, Callable[..., None]] = self._ns.setdefault("__jitted__", {})
        # reentrant: a batch loop first builds its kernel
        self._lock: threading.RLock = self._ns.setdefault("__jit_lock__", threading.RLock())

    def get(
        self, kernel: str, batch: str | None = None, parallel: bool = False
    ) -> Callable[..., None]:
        """The callable for `kernel` (batch None), or for its "rows" / "sum" loop.

        `parallel` picks the multi-threaded build of a loop (numba only). Both builds split rows
        into the same chunks, so they give the same numbers; the parallel one costs about a
        second more to compile, which pays off on large batches only.
        """
        parallel = parallel and batch is not None and self.backend == "numba"
        key = kernel if batch is None else f"{kernel}_{batch}"
        if parallel:
            key += "/parallel"
        fn = self._compiled.get(key)
        if fn is not None:
            return fn
        with self._lock:  # compile once even when several threads call at once
            fn = self._compiled.get(key)
            if fn is None:
                fn = self._build(kernel, batch, parallel)
                self._compiled[key] = fn
        return fn

    def _build(self, kernel: str, batch: str | None, parallel: bool) -> Callable[..., None]:
        py = self._ns[kernel if batch is None else f"{kernel}_{batch}" + "_parallel" * parallel]
        py = getattr(py, "py_func", py)  # the kernel's global may already be its dispatcher
        if self.backend == "python":
            return py  # type: ignore[no-any-return]

        if batch is not None:
            self._ns[kernel] = self.get(kernel)  # the loop calls the jitted kernel
        return jit_compile(py, _sig(self.layouts[kernel], batch), parallel, self._cached,
                           self._ns.get("__file__"))


def jit_compile(py: Callable[..., None], sig: str, parallel: bool, cached: bool,
                module_file: str | None) -> Callable[..., None]:
    """``numba.njit`` `py` for `sig` (IEEE division), through Numba's disk cache when `cached`.

    A cache entry that fails to load is deleted and rebuilt; if that fails too, the function
    is compiled without the cache.
    """
    import numba

    attempts = (True, True, False) if cached else (False,)
    for i, use_cache in enumerate(attempts):
        try:
            fn = numba.njit(error_model="numpy", parallel=parallel, cache=use_cache)(py)
            fn.compile(sig)
            break
        except Exception:
            if i == len(attempts) - 1:
                raise
            if module_file:
                cache.drop_numba_cache_file(module_file)
    fn.disable_compile()  # no silent recompiles for other argument types
    hits = sum(fn.stats.cache_hits.values())
    CACHE_EVENTS["hits" if hits else ("misses" if cached else "uncached")] += 1
    return fn  # type: ignore[no-any-return]


# how JIT compilations went in this process: loaded from the disk cache, compiled and saved to
# it, or compiled without it (tests and `stats` read this)
CACHE_EVENTS: collections.Counter[str] = collections.Counter()
