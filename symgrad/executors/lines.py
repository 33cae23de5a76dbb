"""Line kernels: the generated source (one statement per instruction) under Numba or plain Python.

Imports `codegen`, `jit` and `layout`. The module holding every kernel and its batch loops is
generated once (`codegen.module_source`); under Numba each function is JIT-compiled the first
time it is asked for (``error_model="numpy"``: IEEE division, ``1/0`` is inf), loaded from
Numba's disk cache when the persistent cache is on. Under plain Python (``backend="python"``)
the same source runs with the op table's own rules, readable and debuggable with pdb.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from .. import codegen, jit
from ..layout import Kernel, Layout
from .base import BatchMode, Executor

__all__ = ["NumbaLines", "PythonLines"]


class NumbaLines(Executor):
    """Line kernels JIT-compiled by Numba: the fastest for small graphs, slow to compile big ones.

    Batches are split into at most `N_CHUNKS` chunks of consecutive rows, each summed into its
    own accumulator and added in chunk order, so sums do not depend on the thread count; batches
    of `PARALLEL_ROWS` rows or more run the chunks on all cores.
    """

    name = "lines"
    lowering = "lines"
    jit: ClassVar[bool] = True
    N_CHUNKS: ClassVar[int] = 64
    PARALLEL_ROWS: ClassVar[int] = 512

    def __init__(self, kernels: Sequence[Kernel], title: str, header: str) -> None:
        super().__init__(kernels, title, header)
        self.source = codegen.module_source(header, kernels, self.N_CHUNKS)
        self.module = _Module(self.source, title, self.jit,
                              {k.name: k.layout for k in kernels})

    def prepare(self) -> None:
        """JIT the first kernel (the main one) now: compile time is paid in ``sg.compile``."""
        self.module.get(next(iter(self.kernels)))

    def call(self, kernel: str, arrays: Sequence[np.ndarray]) -> None:
        """One row."""
        self.module.get(kernel)(*arrays)

    def caller(self, kernel: str) -> Callable[..., None]:
        """The compiled kernel itself."""
        return self.module.get(kernel)

    def batch(self, kernel: str, arrays: Sequence[np.ndarray], mode: BatchMode) -> None:
        """Rows of the per-row arguments (rows counted on the first of them)."""
        layout = self.kernels[kernel].layout
        parallel = arrays[layout.first_per_row()].shape[0] >= self.PARALLEL_ROWS
        self.module.get(kernel, mode, parallel)(*arrays)


class PythonLines(NumbaLines):
    """The same source run by Python, not JIT-compiled: readable, debuggable, no Numba needed."""

    name = "python"
    jit = False

    def call(self, kernel: str, arrays: Sequence[np.ndarray]) -> None:
        """One row, with IEEE results (as Numba's ``error_model="numpy"``), no warnings."""
        with np.errstate(all="ignore"):
            super().call(kernel, arrays)

    def caller(self, kernel: str) -> Callable[..., None]:
        """The kernel, run with IEEE results and no warnings."""
        return lambda *arrays: self.call(kernel, arrays)

    def batch(self, kernel: str, arrays: Sequence[np.ndarray], mode: BatchMode) -> None:
        """Rows of the per-row arguments, serially."""
        with np.errstate(all="ignore"):
            super().batch(kernel, arrays, mode)


class _Module:
    """The callables of one generated module: kernels and their batch loops.

    A cached module is shared by every `_Module` with the same source (through ``sys.modules``),
    so its jitted functions and their lock live in its namespace: compiled once a process.
    """

    def __init__(self, source: str, name: str, use_jit: bool,
                 layouts: dict[str, Layout]) -> None:
        self.jit = use_jit
        self.layouts = layouts
        self._ns, self._cached = jit.load(source, name, use_jit)
        self._compiled: dict[str, Callable[..., None]] = self._ns.setdefault("__jitted__", {})
        # reentrant: a batch loop first builds its kernel
        self._lock: threading.RLock = self._ns.setdefault("__jit_lock__", threading.RLock())

    def get(self, kernel: str, batch: str | None = None,
            parallel: bool = False) -> Callable[..., None]:
        """The callable for `kernel` (batch None), or for its "rows" / "sum" loop.

        `parallel` picks the multi-threaded build of a loop (Numba only); both builds split the
        rows into the same chunks, so they give the same numbers.
        """
        parallel = parallel and batch is not None and self.jit
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
        if not self.jit:
            return py  # type: ignore[no-any-return]
        if batch is not None:
            self._ns[kernel] = self.get(kernel)  # the loop calls the jitted kernel
        return jit.jit_compile(py, _signature(self.layouts[kernel], batch), parallel,
                               self._cached, self._ns.get("__file__"))


def _signature(layout: Layout, batch: str | None) -> str:
    """The Numba signature of a kernel (batch None) or of its "rows" / "sum" loop."""
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
