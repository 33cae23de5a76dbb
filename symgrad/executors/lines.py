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
from ..layout import CHUNK_ROWS, Kernel, Layout, n_chunks
from .base import BatchMode, Executor

__all__ = ["NumbaLines", "PythonLines"]


class NumbaLines(Executor):
    """Line kernels JIT-compiled by Numba: the fastest for small graphs, slow to compile big ones.

    Batches are summed in the chunks and order `symgrad.layout.n_chunks` fixes. A batch with
    at least `THREAD_WORK` instruction-rows (the kernel's length times the rows) runs its chunks
    on all of Numba's threads (`threads.run_on_threads`); smaller ones run in one call.
    """

    name = "lines"
    lowering = "lines"
    preparing = "Numba is compiling the generated code (kept in the disk cache for next time)"
    jit: ClassVar[bool] = True
    THREAD_WORK: ClassVar[int] = 100_000

    def __init__(self, kernels: Sequence[Kernel], title: str, header: str) -> None:
        super().__init__(kernels, title, header)
        self.source = codegen.module_source(header, kernels)
        self.module = _Module(self.source, title, self.jit,
                              {k.name: k.layout for k in kernels})
        # per kernel: where batches count their rows, and the work of one row
        self._rows_of = {k.name: (k.layout.first_per_row(), len(k.func.body)) for k in kernels}
        self._serial: dict[tuple[str, str], Callable[..., None]] = {}

    def prepare(self) -> None:
        """JIT the first kernel (the main one) now: compile time is paid in ``sg.compile``."""
        self.module.get(next(iter(self.kernels)))

    def call(self, kernel: str, arrays: Sequence[np.ndarray]) -> None:
        """One row."""
        self.module.get(kernel)(*arrays)

    def caller(self, kernel: str) -> Callable[..., None]:
        """The compiled kernel itself."""
        return self.module.get(kernel)

    def batch(self, kernel: str, arrays: Sequence[np.ndarray], mode: BatchMode,
              n_chunks: int | None = None) -> None:
        """Rows of the per-row arguments (rows counted on the first of them)."""
        if n_chunks is not None and mode == "sum":
            self._in_chunks(kernel, arrays, n_chunks)
            return
        first, length = self._rows_of[kernel]
        n = arrays[first].shape[0]
        if n * length < self.THREAD_WORK or n < 2 * CHUNK_ROWS:  # one thread: one call
            fn = self._serial.get((kernel, mode))
            if fn is None:
                fn = self._serial[kernel, mode] = self.module.get(kernel, mode)
            fn(*arrays)
            return
        self._on_threads(kernel, arrays, mode, n)

    def _in_chunks(self, kernel: str, arrays: Sequence[np.ndarray], n_chunks: int) -> None:
        """A sum in `n_chunks` chunks, on this thread: the chunked loop over one counter."""
        layout = self.kernels[kernel].layout
        acc = [i for i, (nm, _) in enumerate(layout.results, len(layout.args))
               if nm in layout.accumulate]
        bufs = {i: np.zeros((n_chunks, *arrays[i].shape)) for i in acc}
        counter = np.zeros(1, np.int64)
        self.module.get(kernel, "sum_chunks")(counter, *[bufs.get(i, a)
                                                          for i, a in enumerate(arrays)])
        for i in acc:
            _add_in_order(bufs[i], arrays[i])

    def _on_threads(self, kernel: str, arrays: Sequence[np.ndarray], mode: BatchMode,
                    n: int) -> None:
        from .threads import n_threads, run_on_threads

        threads = min(n_threads(), n_chunks(n))
        counter = np.zeros(1, np.int64)
        fn = self.module.get(kernel, f"{mode}_chunks")
        if mode == "rows":
            run_on_threads(fn, (counter, *arrays), threads)
            return
        # summed results: one buffer per chunk, added in chunk order afterwards
        layout = self.kernels[kernel].layout
        acc = [i for i, (nm, _) in enumerate(layout.results, len(layout.args))
               if nm in layout.accumulate]
        bufs = {i: np.zeros((n_chunks(n), *arrays[i].shape)) for i in acc}
        run_on_threads(fn, (counter, *[bufs.get(i, a) for i, a in enumerate(arrays)]), threads)
        for i in acc:
            _add_in_order(bufs[i], arrays[i])


def _add_in_order(bufs: np.ndarray, acc: np.ndarray) -> None:
    """``acc += bufs[c]`` for each chunk c in order (what the serial loop does)."""
    for c in range(bufs.shape[0]):
        acc += bufs[c]


class PythonLines(NumbaLines):
    """The same source run by Python, not JIT-compiled: readable, debuggable, no Numba needed."""

    name = "python"
    preparing = "loading the generated code"
    jit = False

    def call(self, kernel: str, arrays: Sequence[np.ndarray]) -> None:
        """One row, with IEEE results (as Numba's ``error_model="numpy"``), no warnings."""
        with np.errstate(all="ignore"):
            super().call(kernel, arrays)

    def caller(self, kernel: str) -> Callable[..., None]:
        """The kernel, run with IEEE results and no warnings."""
        return lambda *arrays: self.call(kernel, arrays)

    def batch(self, kernel: str, arrays: Sequence[np.ndarray], mode: BatchMode,
              n_chunks: int | None = None) -> None:
        """Rows of the per-row arguments, on this thread."""
        with np.errstate(all="ignore"):
            if n_chunks is not None and mode == "sum":
                self._in_chunks(kernel, arrays, n_chunks)
            else:
                self.module.get(kernel, mode)(*arrays)


class _Module:
    """The callables of one generated module: kernels and their batch loops.

    A cached module is shared by every `_Module` with the same source (through ``sys.modules``),
    so its jitted functions and their lock live in its namespace: compiled once a process.
    """

    def __init__(self, source: str, name: str, use_jit: bool,
                 layouts: dict[str, Layout]) -> None:
        self.jit = use_jit
        self.layouts = layouts
        if use_jit:
            from .threads import fetch_add
        else:
            fetch_add = _fetch_add_serial
        self._ns, self._cached = jit.load(source, name, use_jit, {"fetch_add": fetch_add})
        self._compiled: dict[str, Callable[..., None]] = self._ns.setdefault("__jitted__", {})
        # reentrant: a batch loop first builds its kernel
        self._lock: threading.RLock = self._ns.setdefault("__jit_lock__", threading.RLock())

    def get(self, kernel: str, batch: str | None = None) -> Callable[..., None]:
        """The callable for `kernel` (batch None), or for its "rows" / "sum" loop, or their
        "rows_chunks" / "sum_chunks" variants (see `codegen.batch_source`)."""
        key = kernel if batch is None else f"{kernel}_{batch}"
        fn = self._compiled.get(key)
        if fn is not None:
            return fn
        with self._lock:  # compile once even when several threads call at once
            fn = self._compiled.get(key)
            if fn is None:
                fn = self._build(kernel, batch)
                self._compiled[key] = fn
        return fn

    def _build(self, kernel: str, batch: str | None) -> Callable[..., None]:
        py = self._ns[kernel if batch is None else f"{kernel}_{batch}"]
        py = getattr(py, "py_func", py)  # the kernel's global may already be its dispatcher
        if not self.jit:
            return py  # type: ignore[no-any-return]
        if batch is not None:
            self._ns[kernel] = self.get(kernel)  # the loop calls the jitted kernel
        return jit.jit_compile(py, _signature(self.layouts[kernel], batch),
                               self._cached, self._ns.get("__file__"),
                               nogil=batch is not None and batch.endswith("_chunks"))


def _fetch_add_serial(counter: np.ndarray) -> int:
    """`threads.fetch_add` for plain Python (one thread)."""
    c = int(counter[0])
    counter[0] += 1
    return c


def _signature(layout: Layout, batch: str | None) -> str:
    """The Numba signature of a kernel (batch None) or of one of its batch loops."""
    shapes = dict(layout.results)
    mode = (batch or "").removesuffix("_chunks")
    types = ["int64[::1]"] if batch is not None and batch.endswith("_chunks") else []
    for a in layout.arrays():
        nd = len(shapes[a]) if a in shapes else 1
        if batch is not None and (
            a in layout.per_row
            or (a in shapes and a not in layout.accumulate)
            or (a in layout.accumulate and (mode == "rows" or batch == "sum_chunks"))
        ):
            nd += 1
        types.append("float64[" + ", ".join([":"] * (nd - 1) + ["::1"]) + "]")
    return f"void({', '.join(types)})"
